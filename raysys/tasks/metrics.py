"""``workers.tasks.aggregate_daily_metrics(date=None, tenant_id=None)`` (queue ``analytics``).

Recomputes ``daily_metrics`` in ClickHouse for the target day (default: yesterday, UTC) and for the
``FCR_WINDOW_DAYS`` days before it, whose first-contact resolution a call on the target day can still
change. One SQL statement per run (see :mod:`raysys.analytics.aggregation`); running it again for the
same day replaces the rows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from raysys.analytics.aggregation import aggregate_days, days_to_recompute
from raysys.errors import InvalidInput
from raysys.tasks.analytics import ORCHESTRATION_CPUS, warehouse_call
from raysys.tasks.registry import TaskContext, task


def parse_day(value: Any) -> date:
    """``None`` -> yesterday (UTC); a ``YYYY-MM-DD`` string, an ISO datetime or a date. InvalidInput otherwise."""
    if value is None or value == "":
        return datetime.now(UTC).date() - timedelta(days=1)
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10]) if len(value) >= 10 else date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidInput(f"date must be YYYY-MM-DD, got {value!r}")


@task("workers.tasks.aggregate_daily_metrics", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def aggregate_daily_metrics(ctx: TaskContext, date: Any = None, tenant_id: str | None = None) -> dict[str, Any]:  # noqa: A002
    """Aggregate one day (and re-aggregate the FCR window before it), for one tenant or all.

    Returns ``{"day", "recomputed": [first, last], "tenants": n, "agents": n, "metrics": [{tenant_id,
    total_calls, aht_mean, aht_p90, fcr, fcr_final, csat_proxy, top_intents}]}`` for the target day
    (``agents``: the per-agent scorecard rows of that day, see :mod:`raysys.storage.agent_metrics`).
    """
    settings = ctx.settings
    day = parse_day(date)
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise InvalidInput("tenant_id must be a non-empty string or null")
    first, last = days_to_recompute(day, settings.fcr_window_days)
    aggregate_days(lambda sql, params: warehouse_call(settings, "command", sql, params), first, last,
                   window_days=settings.fcr_window_days, tenant_id=tenant_id)
    agents = warehouse_call(settings, "aggregate_agents", first, last, settings.fcr_window_days, tenant_id)
    where = "day = {d:Date}" + (" AND tenant_id = {t:String}" if tenant_id else "")
    rows = warehouse_call(settings, "query",
                          "SELECT tenant_id, total_calls, aht_mean, aht_p90, fcr, fcr_final, csat_proxy, top_intents "
                          f"FROM daily_metrics FINAL WHERE {where} ORDER BY tenant_id LIMIT 1000",
                          {"d": day, "t": tenant_id or ""})
    metrics = [{**r, "top_intents": [list(t) for t in r["top_intents"]]} for r in rows]
    return {"day": day.isoformat(), "recomputed": [first.isoformat(), last.isoformat()],
            "tenants": len(metrics), "agents": agents, "metrics": metrics}
