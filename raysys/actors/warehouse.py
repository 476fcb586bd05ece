"""The Warehouse actor: the one process that owns the ClickHouse client (chDB allows one per directory).

Everything else reaches ClickHouse through it: ``warehouse(settings).query.remote(...)``. It is a
named actor in the raysys namespace, created on first use (``get_if_exists``) and restarted on failure.
"""

from __future__ import annotations

import hashlib
from typing import Any

import ray

from raysys.actors import deadline
from raysys.config import Settings
from raysys.constants import RAY_NAMESPACE, WAREHOUSE_ACTOR
from raysys.storage.warehouse import Warehouse


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=4)
class WarehouseActor:
    """Holds one :class:`Warehouse`; every public method of it is exposed through :meth:`call`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.wh = Warehouse(dsn)

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


def wh_call(settings: Settings, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a Warehouse method on the cluster's actor and wait for the result.

    Raises:
        ServiceTimeout: the actor was not up within ``ACTOR_START_TIMEOUT`` or the call took longer
            than ``WAREHOUSE_CALL_TIMEOUT`` (a hung query must not pin the caller for ever).
    """
    handle, name = warehouse(settings), warehouse_name(settings)
    deadline.wait_started(handle, name, {"CPU": 0.0}, settings.actor_start_timeout)
    return deadline.get_within(handle.call.remote(method, *args, **kwargs), settings.warehouse_call_timeout,
                               f"the Warehouse actor {name} ({method})")
