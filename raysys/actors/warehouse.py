"""The Warehouse actor: the one process that owns the ClickHouse client (chDB allows one per directory).

Everything else reaches ClickHouse through the typed proxy :class:`Warehouse`:
``Warehouse(settings).insert_call_facts(rows)``. Each method is the same-named method of
:class:`raysys.storage.warehouse.Warehouse`, run on the actor within ``WAREHOUSE_CALL_TIMEOUT``.
The actor is named in the raysys namespace, created on first use (``get_if_exists``) and restarted on
failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import ray

from raysys.actors import deadline
from raysys.config import Settings
from raysys.constants import RAY_NAMESPACE, WAREHOUSE_ACTOR
from raysys.storage import warehouse as store


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=4)
class WarehouseActor:
    """Holds one :class:`raysys.storage.warehouse.Warehouse`; its public methods are run through :meth:`call`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.wh = store.Warehouse(dsn)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method.startswith("_") or not callable(getattr(self.wh, method, None)):
            raise AttributeError(f"Warehouse has no method {method!r}")
        return getattr(self.wh, method)(*args, **kwargs)

    def ready(self) -> str:
        return self.wh.version()


def warehouse_name(settings: Settings) -> str:
    # One actor per warehouse DSN, so clusters shared by several data directories (tests) stay apart.
    return f"{WAREHOUSE_ACTOR}-{hashlib.sha1(settings.warehouse_dsn.encode()).hexdigest()[:8]}"


def warehouse(settings: Settings) -> ray.actor.ActorHandle:
    """The cluster's Warehouse actor for ``settings.warehouse_dsn``, created if it does not exist."""
    return WarehouseActor.options(
        name=warehouse_name(settings), namespace=RAY_NAMESPACE, get_if_exists=True, lifetime="detached",
    ).remote(settings.warehouse_dsn)


class Warehouse:
    """The cluster's warehouse, method by method (Ray must be initialised).

    Every method waits on the actor and raises :class:`~raysys.errors.ServiceTimeout` when the actor
    was not up within ``ACTOR_START_TIMEOUT`` or the call took longer than ``WAREHOUSE_CALL_TIMEOUT`` (a
    hung query must not pin the caller for ever); the warehouse's own errors propagate.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # ``method`` is the storage class's own function, so a renamed method fails here, not on the actor.
        handle, name = warehouse(self.settings), warehouse_name(self.settings)
        deadline.wait_started(handle, name, {"CPU": 0.0}, self.settings.actor_start_timeout)
        return deadline.get_within(handle.call.remote(method.__name__, *args, **kwargs),
                                   self.settings.warehouse_call_timeout,
                                   f"the Warehouse actor {name} ({method.__name__})")

    # health -------------------------------------------------------------------------------------------

    def ping(self) -> bool:
        return self._call(store.Warehouse.ping)

    def version(self) -> str:
        return self._call(store.Warehouse.version)

    # call facts and daily metrics ----------------------------------------------------------------------

    def insert_call_facts(self, facts: Sequence[dict[str, Any]]) -> int:
        """Insert (or replace) one ``call_facts`` row per call; returns how many."""
        return self._call(store.Warehouse.insert_call_facts, list(facts))

    def call_fact(self, tenant_id: str, call_id: str) -> dict[str, Any] | None:
        return self._call(store.Warehouse.call_fact, tenant_id, call_id)

    def count_call_facts(self, tenant_id: str) -> int:
        return self._call(store.Warehouse.count_call_facts, tenant_id)

    def delete_tenant(self, tenant_id: str) -> None:
        self._call(store.Warehouse.delete_tenant, tenant_id)

    def daily_metrics(self, tenant_id: str, start: date, end: date) -> list[dict[str, Any]]:
        """The tenant's ``daily_metrics`` rows for ``start <= day <= end``, oldest first."""
        return self._call(store.Warehouse.daily_metrics, tenant_id, start, end)

    def day_metrics(self, day: date, tenant_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The ``daily_metrics`` rows of one day, for one tenant or all."""
        return self._call(store.Warehouse.day_metrics, day, tenant_id, limit)

    def calls_of_day(self, tenant_id: str, day: date, columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """The tenant's ``call_facts`` of ``day``, earliest first."""
        return self._call(store.Warehouse.calls_of_day, tenant_id, day, list(columns), limit)

    def aggregate_days(self, first: date, last: date, window_days: int, tenant_id: str | None = None) -> None:
        """Recompute the tenants' ``daily_metrics`` rows of days ``first``..``last``."""
        self._call(store.Warehouse.aggregate_days, first, last, window_days, tenant_id)

    def aggregate_agents(self, first: date, last: date, window_days: int, tenant_id: str | None = None) -> int:
        """Recompute the per-agent daily rows of days ``first``..``last``; the number of agent rows of ``last``."""
        return self._call(store.Warehouse.aggregate_agents, first, last, window_days, tenant_id)

    def aggregate_daily(self, first: date, last: date, window_days: int, tenant_id: str | None = None) -> int:
        """Both: the tenants' and the agents' rows of ``first``..``last``; the number of agent rows of ``last``."""
        return self._call(store.Warehouse.aggregate_daily, first, last, window_days, tenant_id)

    def agent_metrics(self, tenant_id: str, start: date, end: date, agent_id: str | None = None) -> list[dict[str, Any]]:
        """A tenant's agent scorecards of days ``start``..``end`` (one agent's with ``agent_id``)."""
        return self._call(store.Warehouse.agent_metrics, tenant_id, start, end, agent_id)

    # primitives (tools, tests and benches; the application uses the methods above) ----------------------

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run one statement; its result (the aggregation runs through :meth:`aggregate_days`)."""
        return self._call(store.Warehouse.command, sql, parameters)

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts; use ``{name:Type}`` placeholders for every value."""
        return self._call(store.Warehouse.query, sql, parameters)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> int:
        """Insert ``rows`` (values in ``columns`` order) into ``table``; returns how many."""
        return self._call(store.Warehouse.insert, table, list(rows), list(columns))

    # call archive -------------------------------------------------------------------------------------

    def archive_calls(self, rows: Sequence[dict[str, Any]]) -> int:
        return self._call(store.Warehouse.archive_calls, list(rows))

    def archived_checksums(self, tenant_id: str, call_ids: Sequence[str]) -> dict[str, str]:
        return self._call(store.Warehouse.archived_checksums, tenant_id, list(call_ids))

    def archived_calls(self, tenant_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        return self._call(store.Warehouse.archived_calls, tenant_id, limit)

    # model audits -------------------------------------------------------------------------------------

    def insert_model_audits(self, rows: Sequence[dict[str, Any]]) -> int:
        return self._call(store.Warehouse.insert_model_audits, list(rows))

    def last_model_audit(self, model: str, metric: str) -> dict[str, Any] | None:
        return self._call(store.Warehouse.last_model_audit, model, metric)

    def model_audit_history(self, runs: int = 30) -> list[dict[str, Any]]:
        return self._call(store.Warehouse.model_audit_history, runs)

