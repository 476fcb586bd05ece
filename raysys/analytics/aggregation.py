"""Daily metrics in ClickHouse: one ``INSERT ... SELECT`` over ``call_facts`` per run, idempotent per day.

Per tenant and day (UTC):

- ``total_calls``; ``aht_mean`` and ``aht_p90`` of ``aht_seconds`` (talk + hold + after-call work);
  the p90 interpolates linearly between ranks (``quantileExactInclusive``, numpy's default percentile);
- ``fcr``: first-contact resolution = calls that are resolved *and* not followed by another call from
  the same customer for the same intent within ``FCR_WINDOW_DAYS`` (start to start), divided by all
  calls of the day. Calls with no customer id never count as repeats. ``fcr_final`` is 1 once the
  window of every call of the day has closed (``day + window < today``); until then a later call can
  still lower the day's FCR, so each run recomputes the last ``window`` days before the target day too;
- ``csat_proxy``: mean ``sentiment_mean`` of the day's calls, in [-1, 1];
- ``top_intents``: the ten most frequent non-empty intents with their counts (ties by name);
- ``calls_by_hour``: 24 counts by UTC hour of ``started_at``.

``daily_metrics`` is a ReplacingMergeTree keyed by (tenant, day) and versioned by ``computed_at``, so
running a day again replaces its row; readers use ``FINAL``. ``call_facts`` is read with ``FINAL`` too,
so a re-processed call counts once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from raysys.errors import InvalidInput

TOP_INTENTS = 10

_SQL = """
INSERT INTO daily_metrics (tenant_id, day, total_calls, aht_mean, aht_p90, fcr, fcr_final, csat_proxy,
                           top_intents, calls_by_hour, computed_at)
SELECT
    m.tenant_id, m.day, m.total_calls, m.aht_mean, m.aht_p90,
    f.first_contact_resolved / m.total_calls,
    toUInt8(m.day + {window:UInt32} < {today:Date}),
    m.csat_proxy,
    arraySlice(arraySort(x -> (-x.2, x.1), arrayZip(m.intent_counts.1, m.intent_counts.2)), 1, {top:UInt32}),
    arrayMap(h -> toUInt64(if(has(m.hour_counts.1, h), m.hour_counts.2[indexOf(m.hour_counts.1, h)], 0)), range(24)),
    now64(3)
FROM (
    -- per tenant and day: volume, AHT, sentiment, intents, hours
    SELECT
        tenant_id, day,
        count() AS total_calls,
        avg(aht_seconds) AS aht_mean,
        quantileExactInclusive(0.9)(aht_seconds) AS aht_p90,
        avg(sentiment_mean) AS csat_proxy,
        sumMapIf([intent], [toUInt64(1)], intent != '') AS intent_counts,
        sumMap([toUInt8(toHour(started_at))], [toUInt64(1)]) AS hour_counts
    FROM call_facts FINAL
    WHERE day BETWEEN {lo:Date} AND {hi:Date} {tenant_filter}
    GROUP BY tenant_id, day
) AS m
LEFT JOIN (
    -- per tenant and day: calls resolved with no repeat contact (same customer and intent) within the
    -- window. Each (customer, intent) group's calls are sorted by start; a call repeats when the next one
    -- starts within the window. Grouping on a 64-bit hash of (customer, intent) and sorting inside the
    -- small groups costs about 20 % less CPU than a window function over the strings (1M calls).
    SELECT tenant_id, call.1 AS day, sum(call.2) AS first_contact_resolved
    FROM (
        SELECT tenant_id,
               arraySort(x -> x.1, groupArray((started_at, day, resolved))) AS calls,
               arrayJoin(arrayMap((c, i) -> (c.2, toUInt64(c.3 = 1 AND NOT (NOT anonymous AND i < length(calls)
                                                 AND calls[i + 1].1 <= c.1 + toIntervalDay({window:UInt32})))),
                                  calls, arrayEnumerate(calls))) AS call
        FROM call_facts FINAL
        WHERE day BETWEEN {lo:Date} AND {hi_ext:Date} {tenant_filter}
        GROUP BY tenant_id, cityHash64(customer_id, intent), customer_id = '' AS anonymous
    )
    WHERE day BETWEEN {lo:Date} AND {hi:Date}
    GROUP BY tenant_id, day
) AS f ON f.tenant_id = m.tenant_id AND f.day = m.day
"""


def days_to_recompute(day: date, window_days: int) -> tuple[date, date]:
    """(first, last) day whose FCR a run for ``day`` can change: the window before it and the day itself."""
    return day - timedelta(days=window_days), day


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


def aggregate_sql(*, tenant: bool) -> str:
    return _SQL.replace("{tenant_filter}", "AND tenant_id = {tenant:String}" if tenant else "")


def aggregate_days(command: Callable[[str, dict[str, Any]], Any], first: date, last: date, *, window_days: int,
                   tenant_id: str | None = None, today: date | None = None) -> dict[str, Any]:
    """Recompute ``daily_metrics`` for ``first..last`` (one tenant or all) with one statement.

    ``command(sql, params)`` runs a statement on the warehouse (``Warehouse.command`` or, on a cluster,
    ``wh_call(settings, "command", ...)``). Calls up to ``window_days`` after ``last`` are read too, so a
    backfill sees the repeat contacts that followed.
    """
    if last < first:
        raise ValueError("last day before first day")
    today = today or datetime.now(UTC).date()
    params: dict[str, Any] = {"lo": first, "hi": last, "hi_ext": last + timedelta(days=window_days),
                              "window": window_days, "today": today, "top": TOP_INTENTS}
    if tenant_id is not None:
        params["tenant"] = tenant_id
    command(aggregate_sql(tenant=tenant_id is not None), params)
    return {"first": first.isoformat(), "last": last.isoformat(), "tenant_id": tenant_id,
            "window_days": window_days}
