"""Per-agent daily scorecards in ClickHouse: the ``agent_daily_metrics`` table and its reader.

:class:`AgentMetrics` is mixed into :class:`raysys.storage.warehouse.Warehouse`, so the Warehouse actor
exposes :meth:`AgentMetrics.agent_metrics` like its other methods; the rows are computed with the
tenants' daily rows by :mod:`raysys.storage.aggregation` (``aggregate_agents``, ``aggregate_daily``).
Every query takes ``tenant_id`` as a bound parameter.

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

from datetime import date
from typing import Any

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

# What a reader gets: the stored columns and the changes and rates derived from them.
_READ_COLUMNS = (
    "*, sentiment_end - sentiment_start AS sentiment_change, "
    "customer_sentiment_end - customer_sentiment_start AS customer_sentiment_change, "
    "agent_interruptions / calls AS agent_interruptions_per_call, "
    "if(escalations_known = 0, NULL, escalations / escalations_known) AS escalation_rate"
)


class AgentMetrics:
    """The per-agent reader of the Warehouse (a mixin: it uses the Warehouse's ``query``)."""

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
