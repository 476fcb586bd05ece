"""Per-agent daily scorecards in ClickHouse: the ``agent_daily_metrics`` table and the SQL that fills it.

:class:`AgentMetrics` is mixed into :class:`raysys.storage.warehouse.Warehouse`, so the Warehouse actor
exposes :meth:`AgentMetrics.aggregate_agents` and :meth:`AgentMetrics.agent_metrics` like its other
methods. Every query takes ``tenant_id`` as a bound parameter.

Per tenant, day (UTC) and agent (calls without an agent id are left out of the scorecards but still
count as repeat contacts for FCR):

- ``calls``; ``aht_mean``, ``aht_p90`` and the means of its parts ``talk_mean``, ``hold_mean``, ``acw_mean``;
- ``fcr``: the agent's calls that are resolved with no repeat contact by the same customer for the same
  intent within ``FCR_WINDOW_DAYS`` (whoever took the repeat), over the agent's calls; ``fcr_final`` as
  in ``daily_metrics``;
- ``sentiment_start``/``sentiment_end``: means of the calls' sentiment at the start and end (the
  customer's where known, else everyone's); ``customer_sentiment_start``/``_end``: means over the calls
  with customer speech only (NULL when none had), ``customer_sentiment_calls`` how many;
- ``talk_share``: mean share of the call's speech that was the agent's (NULL when unknown);
- ``agent_interruptions`` (by the agent) and ``interruptions`` (by anyone) summed over the calls;
  ``silence_mean``, ``overlap_mean`` seconds per call;
- ``escalations`` among ``escalations_known`` calls whose transcript says whether they were escalated;
- ``top_intents``: the three most frequent non-empty intents.

The per-call inputs that ``call_facts`` lacked before are added to it by :data:`AGENT_SCHEMA` (``ALTER
TABLE ... ADD COLUMN IF NOT EXISTS``, so an existing warehouse gains them on open).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

TOP_AGENT_INTENTS = 3

# call_facts columns for the scorecards, with what a row without them holds (NULL: not known).
AGENT_FACT_DEFAULTS: dict[str, Any] = {
    "agent_talk_share": None, "agent_interruptions": 0, "customer_sentiment_start": None,
    "customer_sentiment_end": None, "escalated": None,
}

AGENT_SCHEMA: tuple[str, ...] = (
    "ALTER TABLE call_facts ADD COLUMN IF NOT EXISTS agent_talk_share Nullable(Float64)",
    "ALTER TABLE call_facts ADD COLUMN IF NOT EXISTS agent_interruptions UInt32",
    "ALTER TABLE call_facts ADD COLUMN IF NOT EXISTS customer_sentiment_start Nullable(Float64)",
    "ALTER TABLE call_facts ADD COLUMN IF NOT EXISTS customer_sentiment_end Nullable(Float64)",
    "ALTER TABLE call_facts ADD COLUMN IF NOT EXISTS escalated Nullable(UInt8)",
    """
    CREATE TABLE IF NOT EXISTS agent_daily_metrics (
        tenant_id                 String,
        day                       Date,
        agent_id                  String,
        calls                     UInt64,
        aht_mean                  Float64,
        aht_p90                   Float64,
        talk_mean                 Float64,
        hold_mean                 Float64,
        acw_mean                  Float64,
        fcr                       Float64,
        fcr_final                 UInt8,
        sentiment_start           Float64,
        sentiment_end             Float64,
        customer_sentiment_start  Nullable(Float64),
        customer_sentiment_end    Nullable(Float64),
        customer_sentiment_calls  UInt64,
        talk_share                Nullable(Float64),
        agent_interruptions       UInt64,
        interruptions             UInt64,
        silence_mean              Float64,
        overlap_mean              Float64,
        escalations               UInt64,
        escalations_known         UInt64,
        top_intents               Array(Tuple(String, UInt64)),
        computed_at               DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    ORDER BY (tenant_id, day, agent_id)
    """,
)

AGENT_COLUMNS: tuple[str, ...] = (
    "tenant_id", "day", "agent_id", "calls", "aht_mean", "aht_p90", "talk_mean", "hold_mean", "acw_mean", "fcr",
    "fcr_final", "sentiment_start", "sentiment_end", "customer_sentiment_start", "customer_sentiment_end",
    "customer_sentiment_calls", "talk_share", "agent_interruptions", "interruptions", "silence_mean",
    "overlap_mean", "escalations", "escalations_known", "top_intents", "computed_at",
)

_AGGREGATE_SQL = """
INSERT INTO agent_daily_metrics ({columns})
SELECT
    m.tenant_id, m.day, m.agent_id, m.calls, m.aht_mean, m.aht_p90, m.talk_mean, m.hold_mean, m.acw_mean,
    f.first_contact_resolved / m.calls,
    toUInt8(m.day + {{window:UInt32}} < {{today:Date}}),
    m.s_start, m.s_end, m.cs_start, m.cs_end, m.cs_calls, m.talk_share, m.agent_int, m.all_int, m.silence_mean,
    m.overlap_mean, m.escalations, m.escalations_known,
    arraySlice(arraySort(x -> (-x.2, x.1), arrayZip(m.intent_counts.1, m.intent_counts.2)), 1, {{top:UInt32}}),
    now64(3)
FROM (
    SELECT
        tenant_id, day, agent_id, cityHash64(agent_id) AS agent_key,
        count() AS calls,
        avg(aht_seconds) AS aht_mean,
        quantileExactInclusive(0.9)(aht_seconds) AS aht_p90,
        avg(talk_seconds) AS talk_mean, avg(hold_seconds) AS hold_mean, avg(acw_seconds) AS acw_mean,
        -- aliases differ from the column names: ClickHouse would resolve a reused name to the aggregate
        avg(sentiment_start) AS s_start, avg(sentiment_end) AS s_end,
        avg(customer_sentiment_start) AS cs_start, avg(customer_sentiment_end) AS cs_end,
        count(customer_sentiment_start) AS cs_calls,
        avg(agent_talk_share) AS talk_share,
        sum(agent_interruptions) AS agent_int, sum(interruptions) AS all_int,
        avg(silence_seconds) AS silence_mean, avg(overlap_seconds) AS overlap_mean,
        countIf(ifNull(escalated, 0) = 1) AS escalations, count(escalated) AS escalations_known,
        sumMapIf([intent], [toUInt64(1)], intent != '') AS intent_counts
    FROM call_facts FINAL
    WHERE day BETWEEN {{lo:Date}} AND {{hi:Date}} AND agent_id != '' {tenant_filter}
    GROUP BY tenant_id, day, agent_id
) AS m
LEFT JOIN (
    -- As in daily_metrics (raysys.analytics.aggregation): each (customer, intent) group's calls sorted by
    -- start; a call repeats when the next one starts within the window. Here each call keeps its agent, as a
    -- 64-bit hash: carrying the id strings through the sorts cost about 30 % more CPU (1M calls).
    SELECT tenant_id, call.1 AS day, call.2 AS agent_key, sum(call.3) AS first_contact_resolved
    FROM (
        SELECT tenant_id,
               arraySort(x -> x.1, groupArray((started_at, day, resolved, cityHash64(agent_id)))) AS calls,
               arrayJoin(arrayMap((c, i) -> (c.2, c.4, toUInt64(c.3 = 1 AND NOT (NOT anonymous AND i < length(calls)
                                                 AND calls[i + 1].1 <= c.1 + toIntervalDay({{window:UInt32}})))),
                                  calls, arrayEnumerate(calls))) AS call
        FROM call_facts FINAL
        WHERE day BETWEEN {{lo:Date}} AND {{hi_ext:Date}} {tenant_filter}
        GROUP BY tenant_id, cityHash64(customer_id, intent), customer_id = '' AS anonymous
    )
    WHERE day BETWEEN {{lo:Date}} AND {{hi:Date}} AND agent_key != cityHash64('')
    GROUP BY tenant_id, day, agent_key
) AS f ON f.tenant_id = m.tenant_id AND f.day = m.day AND f.agent_key = m.agent_key
"""

# What a reader gets: the stored columns and the changes and rates derived from them.
_READ_COLUMNS = (
    "*, sentiment_end - sentiment_start AS sentiment_change, "
    "customer_sentiment_end - customer_sentiment_start AS customer_sentiment_change, "
    "agent_interruptions / calls AS agent_interruptions_per_call, "
    "if(escalations_known = 0, NULL, escalations / escalations_known) AS escalation_rate"
)


def agent_aggregate_sql(*, tenant: bool) -> str:
    """The ``INSERT ... SELECT`` that recomputes ``agent_daily_metrics`` (for one tenant or all)."""
    return _AGGREGATE_SQL.format(columns=", ".join(AGENT_COLUMNS),
                                 tenant_filter="AND tenant_id = {tenant:String}" if tenant else "")


class AgentMetrics:
    """The per-agent methods of the Warehouse (a mixin: it uses the Warehouse's ``command`` and ``query``)."""

    def aggregate_agents(self, first: date, last: date, window_days: int, tenant_id: str | None = None,
                         today: date | None = None) -> int:
        """Recompute the agents' rows of ``first..last`` (one tenant or all) with one statement.

        Calls up to ``window_days`` after ``last`` are read too, so the repeat contacts that followed count.
        Returns the number of agent rows of ``last``. Raises ValueError when ``last`` is before ``first``.
        """
        if last < first:
            raise ValueError("last day before first day")
        params: dict[str, Any] = {"lo": first, "hi": last, "hi_ext": last + timedelta(days=window_days),
                                  "window": window_days, "today": today or datetime.now(UTC).date(),
                                  "top": TOP_AGENT_INTENTS}
        if tenant_id is not None:
            params["tenant"] = tenant_id
        tenant_filter = " AND tenant_id = {tenant:String}" if tenant_id is not None else ""
        self.command(agent_aggregate_sql(tenant=tenant_id is not None), params)
        return int(self.command(f"SELECT count() FROM agent_daily_metrics FINAL WHERE day = {{hi:Date}}{tenant_filter}",
                                params))

    def agent_metrics(self, tenant_id: str, start: date, end: date, agent_id: str | None = None,
                      limit: int = 10_000) -> list[dict[str, Any]]:
        """The tenant's agent rows for ``start <= day <= end`` (one agent or all), by day then agent.

        Each row has the :data:`AGENT_COLUMNS` and ``sentiment_change``, ``customer_sentiment_change``,
        ``agent_interruptions_per_call`` and ``escalation_rate`` (NULL when no call's escalation is known).
        """
        agent_filter = " AND agent_id = {a:String}" if agent_id is not None else ""
        return self.query(
            f"SELECT {_READ_COLUMNS} FROM agent_daily_metrics FINAL WHERE tenant_id = {{t:String}} "
            f"AND day BETWEEN {{s:Date}} AND {{e:Date}}{agent_filter} ORDER BY day, agent_id LIMIT {{n:UInt32}}",
            {"t": tenant_id, "s": start, "e": end, "a": agent_id or "", "n": limit})
