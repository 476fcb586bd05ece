"""Daily aggregation in real chDB (through the Warehouse actor) on hand-checkable calls."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from analytics_fixtures import utc

from raysys.analytics.aggregation import aggregate_days
from raysys.errors import InvalidInput
from raysys.tasks.metrics import aggregate_daily_metrics

D1 = date(2025, 3, 3)


def fact(tenant, call_id, when, customer, intent, resolved, aht, sentiment=0.0):
    return {"tenant_id": tenant, "call_id": call_id, "started_at": when, "customer_id": customer, "intent": intent,
            "resolved": resolved, "aht_seconds": float(aht), "sentiment_mean": sentiment}


def day_row(warehouse, tenant, day):
    rows = warehouse.daily_metrics(tenant, day, day)
    assert len(rows) <= 1
    return rows[0] if rows else None


def test_daily_metrics_fcr_window_p90_top_intents_and_recompute(ctx, warehouse, tenant_id):
    t = tenant_id
    warehouse.insert_call_facts([
        fact(t, "c1", utc(2025, 3, 3, 9, 10), "A", "billing", True, 100, 0.5),
        fact(t, "c2", utc(2025, 3, 3, 9, 30), "B", "card", True, 200, -0.5),
        fact(t, "c3", utc(2025, 3, 3, 14, 0), "C", "billing", False, 300, 0.0),
        fact(t, "c4", utc(2025, 3, 3, 15, 0), "A", "card", True, 400, 1.0),   # same customer, other intent
        fact(t, "c5", utc(2025, 3, 3, 15, 30), "", "billing", True, 500, 0.0),  # anonymous caller
        fact("other_" + t, "x1", utc(2025, 3, 3, 10, 0), "A", "billing", True, 999),  # another tenant's call
    ])
    out = aggregate_daily_metrics(ctx, date=D1.isoformat(), tenant_id=t)
    assert out["recomputed"] == ["2025-02-24", "2025-03-03"] and out["tenants"] == 1
    row = day_row(warehouse, t, D1)
    assert row["total_calls"] == 5
    assert row["aht_mean"] == pytest.approx(300.0)
    assert row["aht_p90"] == pytest.approx(np.percentile([100, 200, 300, 400, 500], 90)) == pytest.approx(460.0)
    assert row["fcr"] == pytest.approx(4 / 5)  # c3 unresolved
    assert row["fcr_final"] == 1
    assert row["csat_proxy"] == pytest.approx(0.2)
    assert [tuple(x) for x in row["top_intents"]] == [("billing", 3), ("card", 2)]
    hours = list(row["calls_by_hour"])
    assert len(hours) == 24 and hours[9] == 2 and hours[14] == 1 and hours[15] == 2 and sum(hours) == 5

    # Three days later customer A calls again about billing: c1 was not resolved at first contact.
    # Aggregating the later day recomputes D1, which is inside the FCR window.
    warehouse.insert_call_facts([fact(t, "c6", utc(2025, 3, 6, 11, 0), "A", "billing", True, 50),
                                 fact(t, "c7", utc(2025, 3, 11, 9, 31), "B", "card", True, 50),  # > 7 days
                                 fact(t, "c8", utc(2025, 3, 4, 8, 0), "", "billing", True, 50)])
    aggregate_daily_metrics(ctx, date="2025-03-06", tenant_id=t)
    assert day_row(warehouse, t, D1)["fcr"] == pytest.approx(3 / 5)
    assert day_row(warehouse, t, date(2025, 3, 6))["total_calls"] == 1
    assert day_row(warehouse, t, date(2025, 3, 11)) is None  # not aggregated yet
    aggregate_daily_metrics(ctx, date=D1.isoformat(), tenant_id=t)
    assert day_row(warehouse, t, D1)["fcr"] == pytest.approx(3 / 5), "c7 is 8 days after c2: not a repeat"

    # Idempotent: re-running a day replaces its row; a re-processed call counts once.
    warehouse.insert_call_facts([fact(t, "c3", utc(2025, 3, 3, 14, 0), "C", "billing", True, 300)])
    aggregate_daily_metrics(ctx, date=D1.isoformat(), tenant_id=t)
    aggregate_daily_metrics(ctx, date=D1.isoformat(), tenant_id=t)
    row = day_row(warehouse, t, D1)
    assert row["total_calls"] == 5 and row["fcr"] == pytest.approx(4 / 5)
    count = warehouse.query("SELECT count() AS n FROM daily_metrics FINAL WHERE tenant_id = {t:String} "
                            "AND day = {d:Date}", {"t": t, "d": D1})
    assert count[0]["n"] == 1
    assert day_row(warehouse, "other_" + t, D1) is None, "a tenant's run leaves other tenants alone"


def test_all_tenants_provisional_fcr_and_bad_dates(ctx, warehouse, tenant_id):
    today = datetime.now(UTC).date()
    recent = today - timedelta(days=2)
    when = datetime.combine(recent, datetime.min.time(), UTC) + timedelta(hours=12)
    tenants = [tenant_id + "_a", tenant_id + "_b"]
    warehouse.insert_call_facts([fact(x, "c1", when, "A", "billing", True, 60) for x in tenants])
    out = aggregate_daily_metrics(ctx, date=recent.isoformat())
    mine = [m for m in out["metrics"] if m["tenant_id"] in tenants]
    assert len(mine) == 2 and all(m["total_calls"] == 1 and m["fcr_final"] == 0 for m in mine)
    with pytest.raises(InvalidInput, match="YYYY-MM-DD"):
        aggregate_daily_metrics(ctx, date="yesterday-ish")


def test_aggregate_days_with_a_plain_command_callable(warehouse, tenant_id):
    """aggregate_days takes any command(sql, params); 'today' decides when a day's FCR is final."""
    warehouse.insert_call_facts([fact(tenant_id, "c1", utc(2025, 5, 1, 8), "A", "x", True, 10)])
    aggregate_days(warehouse.command, date(2025, 5, 1), date(2025, 5, 1),
                   window_days=7, tenant_id=tenant_id, today=date(2025, 5, 5))
    assert day_row(warehouse, tenant_id, date(2025, 5, 1))["fcr_final"] == 0
