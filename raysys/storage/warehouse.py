"""ClickHouse through clickhouse-connect: call facts, daily metrics, model audits.

One client for both deployments: an embedded chDB (``chdb:///<dir>``, the default) or a ClickHouse
server (``CLICKHOUSE_URL=http://host:8123``). chDB allows one process per data directory, so on a
cluster a single Warehouse actor (``raysys.actors.warehouse``) owns the client and everything else
calls it. Every query takes ``tenant_id`` as a bound parameter.

Tables are ReplacingMergeTree keyed so that re-inserting a call or a day replaces the old row;
queries read with ``FINAL`` so a replaced row is never counted twice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from raysys.storage.agent_metrics import AGENT_FACT_DEFAULTS, AGENT_SCHEMA, AgentMetrics
from raysys.storage.aggregation import DailyAggregation

SCHEMA: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS call_facts (
        tenant_id       String,
        call_id         String,
        day             Date,
        started_at      DateTime64(3, 'UTC'),
        customer_id     String,
        agent_id        String,
        channel         LowCardinality(String),
        intent          LowCardinality(String),
        resolved        UInt8,
        talk_seconds    Float64,
        hold_seconds    Float64,
        acw_seconds     Float64,
        aht_seconds     Float64,
        sentiment_mean  Float64,
        sentiment_start Float64,
        sentiment_end   Float64,
        num_speakers    UInt8,
        silence_seconds Float64,
        overlap_seconds Float64,
        interruptions   UInt32,
        version         UInt64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (tenant_id, day, call_id)
    """,
    """
    CREATE TABLE IF NOT EXISTS daily_metrics (
        tenant_id      String,
        day            Date,
        total_calls    UInt64,
        aht_mean       Float64,
        aht_p90        Float64,
        fcr            Float64,
        fcr_final      UInt8,
        csat_proxy     Float64,
        top_intents    Array(Tuple(String, UInt64)),
        calls_by_hour  Array(UInt64),
        computed_at    DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(computed_at)
    ORDER BY (tenant_id, day)
    """,
    """
    CREATE TABLE IF NOT EXISTS model_audits (
        run_id        String,
        model         LowCardinality(String),
        version       String,
        metric        LowCardinality(String),
        value         Float64,
        rtf           Float64,
        baseline      Nullable(Float64),
        regression    UInt8,
        details       String,
        run_at        DateTime64(3, 'UTC')
    ) ENGINE = MergeTree
    ORDER BY (model, metric, run_at)
    """,
) + AGENT_SCHEMA

CALL_FACT_COLUMNS: tuple[str, ...] = (
    "tenant_id", "call_id", "day", "started_at", "customer_id", "agent_id", "channel", "intent", "resolved",
    "talk_seconds", "hold_seconds", "acw_seconds", "aht_seconds", "sentiment_mean", "sentiment_start",
    "sentiment_end", "num_speakers", "silence_seconds", "overlap_seconds", "interruptions", "version",
) + tuple(AGENT_FACT_DEFAULTS)

DAILY_COLUMNS: tuple[str, ...] = (
    "tenant_id", "day", "total_calls", "aht_mean", "aht_p90", "fcr", "fcr_final", "csat_proxy", "top_intents",
    "calls_by_hour", "computed_at",
)

AUDIT_COLUMNS: tuple[str, ...] = (
    "run_id", "model", "version", "metric", "value", "rtf", "baseline", "regression", "details", "run_at",
)


class Warehouse(DailyAggregation, AgentMetrics):
    """A clickhouse-connect client on chDB or a server, with raysys' schema applied on open."""

    def __init__(self, dsn: str) -> None:
        import clickhouse_connect  # noqa: PLC0415 - clickhouse_connect: heavy, only where the warehouse is a server

        self.dsn = dsn
        if dsn.startswith("chdb://"):
            Path(dsn[len("chdb://"):]).mkdir(parents=True, exist_ok=True)
            self.client = clickhouse_connect.get_client(dsn=dsn)
        else:
            self.client = clickhouse_connect.get_client(dsn=dsn.replace("clickhouse://", "http://", 1))
        # chDB's session is not safe for concurrent use; a server client is, but a lock costs little.
        self._lock = threading.Lock()
        for ddl in SCHEMA:
            self.command(ddl)

    # primitives ----------------------------------------------------------------------------------------

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self.client.command(sql, parameters=parameters)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts. Use ``{name:Type}`` placeholders for every value."""
        with self._lock:
            result = self.client.query(sql, parameters=parameters)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> int:
        if not rows:
            return 0
        with self._lock:
            self.client.insert(table, rows, column_names=list(columns))
        return len(rows)

    def version(self) -> str:
        return f"clickhouse {self.command('SELECT version()')}"

    def ping(self) -> bool:
        return self.command("SELECT 1") == 1

    # call facts ------------------------------------------------------------------------------------------

    def insert_call_facts(self, facts: Sequence[dict[str, Any]]) -> int:
        """Insert (or replace, by tenant/day/call) one row per call; missing numeric fields are 0."""
        now = int(datetime.now(UTC).timestamp() * 1_000_000)
        rows = []
        for f in facts:
            row = {"agent_id": "", "channel": "voice", "intent": "", "resolved": 0, "num_speakers": 0,
                   "silence_seconds": 0.0, "overlap_seconds": 0.0, "interruptions": 0, "sentiment_start": 0.0,
                   "sentiment_end": 0.0, "sentiment_mean": 0.0, "talk_seconds": 0.0, "hold_seconds": 0.0,
                   "acw_seconds": 0.0, "aht_seconds": 0.0, "version": now, **AGENT_FACT_DEFAULTS, **f}
            if isinstance(row["started_at"], str):
                row["started_at"] = datetime.fromisoformat(row["started_at"])
            row.setdefault("day", row["started_at"].date())
            if isinstance(row["day"], str):
                row["day"] = date.fromisoformat(row["day"])
            row["resolved"] = int(bool(row["resolved"]))
            row["agent_id"] = row["agent_id"] or ""
            row["intent"] = row["intent"] or ""
            if row["escalated"] is not None:
                row["escalated"] = int(bool(row["escalated"]))
            rows.append([row[c] for c in CALL_FACT_COLUMNS])
        return self.insert("call_facts", rows, CALL_FACT_COLUMNS)

    def call_fact(self, tenant_id: str, call_id: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT * FROM call_facts FINAL WHERE tenant_id = {t:String} AND call_id = {c:String}",
            {"t": tenant_id, "c": call_id})
        return rows[0] if rows else None

    def count_call_facts(self, tenant_id: str) -> int:
        return int(self.command("SELECT count() FROM call_facts FINAL WHERE tenant_id = {t:String}", {"t": tenant_id}))

    def delete_tenant(self, tenant_id: str) -> None:
        """Remove a tenant's rows (tests and tenant off-boarding)."""
        for table in ("call_facts", "daily_metrics", "agent_daily_metrics"):
            self.command(f"DELETE FROM {table} WHERE tenant_id = {{t:String}}", {"t": tenant_id})

    # daily metrics ---------------------------------------------------------------------------------------

    def daily_metrics(self, tenant_id: str, start: date, end: date) -> list[dict[str, Any]]:
        """The tenant's daily rows for ``start <= day <= end``, oldest first."""
        return self.query(
            "SELECT * FROM daily_metrics FINAL WHERE tenant_id = {t:String} AND day BETWEEN {a:Date} AND {b:Date} "
            "ORDER BY day", {"t": tenant_id, "a": start, "b": end})

    def day_metrics(self, day: date, tenant_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The ``daily_metrics`` rows of ``day`` (one tenant, or every tenant by id), ``top_intents`` as lists."""
        where = "day = {d:Date}" + (" AND tenant_id = {t:String}" if tenant_id else "")
        rows = self.query(
            "SELECT tenant_id, total_calls, aht_mean, aht_p90, fcr, fcr_final, csat_proxy, top_intents "
            f"FROM daily_metrics FINAL WHERE {where} ORDER BY tenant_id LIMIT {{n:UInt32}}",
            {"d": day, "t": tenant_id or "", "n": limit})
        return [{**r, "top_intents": [list(t) for t in r["top_intents"]]} for r in rows]

    def calls_of_day(self, tenant_id: str, day: date, columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The tenant's ``call_facts`` of ``day`` (``columns`` of them, earliest first, at most ``limit``).

        Raises ValueError for a column ``call_facts`` does not have.
        """
        unknown = [c for c in columns if c not in CALL_FACT_COLUMNS]
        if unknown or not columns:
            raise ValueError(f"call_facts has no column {unknown[0] if unknown else '(none given)'!r}")
        return self.query(
            f"SELECT {', '.join(columns)} FROM call_facts FINAL WHERE tenant_id = {{t:String}} AND day = {{d:Date}} "
            "ORDER BY started_at LIMIT {n:UInt32}", {"t": tenant_id, "d": day, "n": limit})

    def close(self) -> None:
        with self._lock:
            self.client.close()

    # call archive (used by cleanup_expired_sessions) -----------------------------------------

    def _ensure_archive(self) -> None:
        if not getattr(self, "_archive_ready", False):
            self.command(ARCHIVE_DDL)
            self._archive_ready = True

    def archive_calls(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert archived calls: dicts with the :data:`ARCHIVE_COLUMNS` (JSON text in call/turns/analytics)."""
        self._ensure_archive()
        now = datetime.now(UTC)
        data = []
        for r in rows:
            row = {"archived_at": now, **r}
            if isinstance(row["started_at"], str):
                row["started_at"] = datetime.fromisoformat(row["started_at"])
            data.append([row[c] for c in ARCHIVE_COLUMNS])
        return self.insert("calls_archive", data, ARCHIVE_COLUMNS)

    def archived_checksums(self, tenant_id: str, call_ids: Sequence[str]) -> dict[str, str]:
        """call id -> checksum of the archived copy, for the given calls that are in the archive."""
        self._ensure_archive()
        rows = self.query(
            "SELECT call_id, checksum FROM calls_archive FINAL WHERE tenant_id = {t:String} "
            "AND call_id IN {ids:Array(String)}", {"t": tenant_id, "ids": list(call_ids)})
        return {r["call_id"]: r["checksum"] for r in rows}

    def archived_calls(self, tenant_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        self._ensure_archive()
        return self.query("SELECT * FROM calls_archive FINAL WHERE tenant_id = {t:String} ORDER BY started_at "
                          "LIMIT {n:UInt32}", {"t": tenant_id, "n": limit})

    # model audits (written by audit_models) -------------------------------------------------------

    def insert_model_audits(self, rows: Sequence[dict[str, Any]]) -> int:
        """One row per (model, metric) of an audit run; dicts with the :data:`AUDIT_COLUMNS`."""
        now = datetime.now(UTC)
        return self.insert("model_audits", [[{"run_at": now, **r}[c] for c in AUDIT_COLUMNS] for r in rows],
                           AUDIT_COLUMNS)

    def last_model_audit(self, model: str, metric: str) -> dict[str, Any] | None:
        """The most recent audit row of ``model``/``metric`` (any version), or None."""
        rows = self.query("SELECT * FROM model_audits WHERE model = {m:String} AND metric = {k:String} "
                          "ORDER BY run_at DESC LIMIT 1", {"m": model, "k": metric})
        return rows[0] if rows else None

    def model_audit_history(self, runs: int = 30) -> list[dict[str, Any]]:
        """The rows of the last ``runs`` audit runs (all models), oldest first; ``details`` left out."""
        return self.query(
            "SELECT run_id, model, version, metric, value, rtf, baseline, regression, run_at FROM model_audits "
            "WHERE run_id IN (SELECT run_id FROM model_audits GROUP BY run_id ORDER BY max(run_at) DESC "
            "LIMIT {n:UInt32}) ORDER BY run_at, model, metric", {"n": max(1, int(runs))})


# Archived calls: one row per call removed from PostgreSQL after the retention period. The row keeps the
# call, its turns and its analytics as JSON, and a checksum that cleanup reads back before it deletes.
ARCHIVE_DDL = """
    CREATE TABLE IF NOT EXISTS calls_archive (
        tenant_id    String,
        call_id      String,
        started_at   DateTime64(3, 'UTC'),
        customer_id  String,
        call         String,
        turns        String,
        analytics    String,
        checksum     String,
        archived_at  DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree(archived_at)
    ORDER BY (tenant_id, call_id)
    """
ARCHIVE_COLUMNS: tuple[str, ...] = (
    "tenant_id", "call_id", "started_at", "customer_id", "call", "turns", "analytics", "checksum", "archived_at",
)
