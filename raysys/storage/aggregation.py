"""The daily aggregation in ClickHouse: ``daily_metrics`` (per tenant and day) and ``agent_daily_metrics``
(per tenant, day and agent) recomputed from ``call_facts``, idempotent per day.

Per tenant and day (UTC), ``daily_metrics`` holds:

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

The agents' columns are described in :mod:`raysys.storage.agent_metrics` (calls without an agent id
count in the tenant's rows and as repeat contacts, not in the scorecards).

How: one ``INSERT ... SELECT`` per table. The repeat contacts are found by grouping only the calls of each
(tenant, customer, intent) that has more than one call, sorting them by start and keeping the resolved
calls whose next call starts within the window; a row's FCR is (resolved calls - such calls) / calls
(identical to counting the resolved calls with no repeat, at about half the CPU). Both tables are ReplacingMergeTree versioned by ``computed_at``, so running a day
again replaces its rows; readers use ``FINAL``. ``call_facts`` is read with ``FINAL`` too, so a
re-processed call counts once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

TOP_INTENTS = 10
TOP_AGENT_INTENTS = 3

Command = Callable[[str, dict[str, Any]], Any]

# How each run groups: (group of the per-call aggregates, agent column, level (1: tenant row, 0: agent row),
# group of the repeat contacts, their agent key). Rows of the tenant level have agent key 0 on both sides.
_LEVELS = {
    (True, False): ("tenant_id, day", "''", "1", "tenant, day", "toUInt64(0)"),
    (False, True): ("tenant_id, day, agent_id", "agent_id", "0", "tenant, day, agent_key", "call.4"),
}

_GROUPED = """
SELECT m.*, m.resolved_calls - f.followed AS fcr_calls
FROM (
    SELECT
        tenant_id, day, {agent} AS agent, {level} AS lvl, if(lvl = 1, toUInt64(0), cityHash64(agent)) AS agent_key,
        count() AS calls,
        countIf(resolved = 1) AS resolved_calls,
        avg(aht_seconds) AS aht_mean_,
        quantileExactInclusive(0.9)(aht_seconds) AS aht_p90_,
        avg(sentiment_mean) AS csat_proxy_,
        -- aliases differ from the column names: ClickHouse would resolve a reused name to the aggregate
        avg(talk_seconds) AS talk_mean_, avg(hold_seconds) AS hold_mean_, avg(acw_seconds) AS acw_mean_,
        avg(sentiment_start) AS s_start, avg(sentiment_end) AS s_end,
        avg(customer_sentiment_start) AS cs_start, avg(customer_sentiment_end) AS cs_end,
        count(customer_sentiment_start) AS cs_calls,
        avg(agent_talk_share) AS talk_share_,
        sum(agent_interruptions) AS agent_int, sum(interruptions) AS all_int,
        avg(silence_seconds) AS silence_mean_, avg(overlap_seconds) AS overlap_mean_,
        countIf(ifNull(escalated, 0) = 1) AS escalations_, count(escalated) AS escalations_known_,
        sumMapIf([intent], [toUInt64(1)], intent != '') AS intent_counts,
        sumMap([toUInt8(toHour(started_at))], [toUInt64(1)]) AS hour_counts
    FROM call_facts FINAL
    WHERE day BETWEEN {{lo:Date}} AND {{hi:Date}} {tenant_filter}
    GROUP BY {group}
) AS m
LEFT JOIN (
    -- The resolved calls followed by a repeat contact: the calls of each (tenant, customer, intent) with more
    -- than one call (a 64-bit hash as the key: grouping on the strings costs more), sorted by start; a call
    -- repeats when the next one starts within the window. Each keeps its day and agent (hashed).
    SELECT tenant, call.2 AS day, {f_key} AS agent_key, count() AS followed
    FROM (
        SELECT any(tenant_id) AS tenant,
               arraySort(x -> x.1, groupArray((started_at, day, resolved, cityHash64(agent_id)))) AS calls,
               arrayJoin(arrayFilter((c, i) -> c.3 = 1 AND i < length(calls)
                                               AND calls[i + 1].1 <= c.1 + toIntervalDay({{window:UInt32}}),
                                     calls, arrayEnumerate(calls))) AS call
        FROM call_facts FINAL
        WHERE day BETWEEN {{lo:Date}} AND {{hi_ext:Date}} AND customer_id != '' {tenant_filter}
        GROUP BY cityHash64(tenant_id, customer_id, intent)
        HAVING count() > 1
    )
    WHERE day BETWEEN {{lo:Date}} AND {{hi:Date}}
    GROUP BY {f_group}
) AS f ON f.tenant = m.tenant_id AND f.day = m.day AND f.agent_key = m.agent_key
"""

_TENANT_INSERT = """
INSERT INTO daily_metrics (tenant_id, day, total_calls, aht_mean, aht_p90, fcr, fcr_final, csat_proxy,
                           top_intents, calls_by_hour, computed_at)
SELECT
    tenant_id, day, calls, aht_mean_, aht_p90_, fcr_calls / calls, toUInt8(day + {{window:UInt32}} < {{today:Date}}),
    csat_proxy_,
    arraySlice(arraySort(x -> (-x.2, x.1), arrayZip(intent_counts.1, intent_counts.2)), 1, {{top:UInt32}}),
    arrayMap(h -> toUInt64(if(has(hour_counts.1, h), hour_counts.2[indexOf(hour_counts.1, h)], 0)), range(24)),
    now64(3)
FROM {source}
WHERE lvl = 1
"""

_AGENT_INSERT = """
INSERT INTO agent_daily_metrics (tenant_id, day, agent_id, calls, aht_mean, aht_p90, talk_mean, hold_mean, acw_mean,
    fcr, fcr_final, sentiment_start, sentiment_end, customer_sentiment_start, customer_sentiment_end,
    customer_sentiment_calls, talk_share, agent_interruptions, interruptions, silence_mean, overlap_mean,
    escalations, escalations_known, top_intents, computed_at)
SELECT
    tenant_id, day, agent, calls, aht_mean_, aht_p90_, talk_mean_, hold_mean_, acw_mean_,
    fcr_calls / calls, toUInt8(day + {{window:UInt32}} < {{today:Date}}),
    s_start, s_end, cs_start, cs_end, cs_calls, talk_share_, agent_int, all_int, silence_mean_, overlap_mean_,
    escalations_, escalations_known_,
    arraySlice(arraySort(x -> (-x.2, x.1), arrayZip(intent_counts.1, intent_counts.2)), 1, {{agent_top:UInt32}}),
    now64(3)
FROM {source}
WHERE lvl = 0 AND agent != ''
"""


def grouped_sql(*, tenants: bool, agents: bool, tenant: bool) -> str:
    """The ``SELECT`` of the grouped rows (tenant level, agent level or both; for one tenant or all)."""
    group, agent, level, f_group, f_key = _LEVELS[(tenants, agents)]
    return _GROUPED.format(group=group, agent=agent, level=level, f_group=f_group, f_key=f_key,
                           tenant_filter="AND tenant_id = {tenant:String}" if tenant else "")


def aggregation_statements(*, tenants: bool = True, agents: bool = True, tenant: bool = False) -> list[str]:
    """The statements of one run, in order: an ``INSERT ... SELECT`` per table asked for.

    One statement per table, not one ``GROUPING SETS`` scan into a scratch table for both: chDB 4.4 ran that
    scan on one thread (1.45 s CPU = wall for 1M calls), the two statements run on all cores and each
    computes only its own columns (about 0.7 s CPU each, loaded 2-core machine).
    """
    if not (tenants or agents):
        raise ValueError("nothing to aggregate")
    return [insert.format(source=f"({grouped_sql(tenants=t, agents=not t, tenant=tenant)})")
            for t, insert in ((True, _TENANT_INSERT), (False, _AGENT_INSERT)) if (tenants if t else agents)]


def aggregate(command: Command, first: date, last: date, *, window_days: int, tenant_id: str | None = None,
              today: date | None = None, tenants: bool = True, agents: bool = True) -> None:
    """Recompute ``daily_metrics`` and/or ``agent_daily_metrics`` for ``first..last`` (one tenant or all).

    ``command(sql, params)`` runs a statement on the warehouse (``Warehouse.command`` or the cluster's
    proxy of it). Calls up to ``window_days`` after ``last`` are read too, so a backfill sees the repeat
    contacts that followed. Raises ValueError when ``last`` is before ``first``.
    """
    if last < first:
        raise ValueError("last day before first day")
    params: dict[str, Any] = {"lo": first, "hi": last, "hi_ext": last + timedelta(days=window_days),
                              "window": window_days, "today": today or datetime.now(UTC).date(),
                              "top": TOP_INTENTS, "agent_top": TOP_AGENT_INTENTS}
    if tenant_id is not None:
        params["tenant"] = tenant_id
    for sql in aggregation_statements(tenants=tenants, agents=agents, tenant=tenant_id is not None):
        command(sql, params)


class DailyAggregation:
    """The aggregation methods of the Warehouse (a mixin: it uses the Warehouse's ``command``)."""

    command: Callable[..., Any]

    def aggregate_days(self, first: date, last: date, window_days: int, tenant_id: str | None = None,
                       today: date | None = None) -> None:
        """Recompute the tenants' ``daily_metrics`` rows of ``first..last`` (one tenant or all)."""
        aggregate(self.command, first, last, window_days=window_days, tenant_id=tenant_id, today=today, agents=False)

    def aggregate_agents(self, first: date, last: date, window_days: int, tenant_id: str | None = None,
                         today: date | None = None) -> int:
        """Recompute the agents' rows of ``first..last`` (one tenant or all); the number of agent rows of ``last``."""
        aggregate(self.command, first, last, window_days=window_days, tenant_id=tenant_id, today=today,
                  tenants=False)
        return self._agent_rows(last, tenant_id)

    def aggregate_daily(self, first: date, last: date, window_days: int, tenant_id: str | None = None,
                        today: date | None = None) -> int:
        """Both tables' rows of ``first..last`` (what the daily task runs); the number of agent rows of ``last``."""
        aggregate(self.command, first, last, window_days=window_days, tenant_id=tenant_id, today=today)
        return self._agent_rows(last, tenant_id)

    def _agent_rows(self, day: date, tenant_id: str | None) -> int:
        tenant_filter = " AND tenant_id = {tenant:String}" if tenant_id is not None else ""
        return int(self.command(f"SELECT count() FROM agent_daily_metrics FINAL WHERE day = {{d:Date}}{tenant_filter}",
                                {"d": day, "tenant": tenant_id or ""}))
