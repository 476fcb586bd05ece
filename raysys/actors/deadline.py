"""Deadlines on waiting for actors: their creation and every call.

A task that waits on an actor without a deadline hangs for ever when the actor cannot be placed (the
cluster lacks what it asks for) or stops answering (a hung query, a wedged model). Every wait of the
model pools and the Warehouse goes through :func:`wait_started` (once per actor per process: placed
and loaded) and :func:`get_within` (each call), which raise :class:`~raysys.errors.ServiceTimeout`
with a message naming the actor, what it asked the cluster for, and the cluster's pending demand.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from raysys.errors import ServiceTimeout

log = logging.getLogger(__name__)

_started: set[tuple[str, str]] = set()  # (cluster, actor name) seen alive by this process
_lock = threading.Lock()


def _cluster() -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - not connected: one key for all
        return ""


def wait_started(handle: Any, name: str, needs: dict[str, float], timeout: float,
                 probe: str = "ready") -> Any:
    """Wait until actor ``name`` answers ``probe`` (it is placed and its ``__init__`` ran).

    Returns the probe's reply, or None when this process has already seen the actor alive. Raises
    :class:`ServiceTimeout` after ``timeout`` seconds, saying what the actor asked the cluster for
    (``needs``) and what the cluster is short of; the probe's own errors propagate unchanged.
    """
    key = (_cluster(), name)
    if key in _started:
        return None
    try:
        reply = ray.get(getattr(handle, probe).remote(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise ServiceTimeout(
            f"actor {name} did not start within {timeout:.0f} s: {placement_report(name, needs)}") from None
    with _lock:
        _started.add(key)
    return reply


def forget(name: str) -> None:
    """Wait for ``name`` again next time (it was killed or replaced)."""
    with _lock:
        _started.discard((_cluster(), name))


def get_within(ref: Any, timeout: float | None, what: str) -> Any:
    """``ray.get(ref)`` with a deadline; :class:`ServiceTimeout` naming ``what`` when it passes."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise ServiceTimeout(f"{what} did not answer within {timeout:.0f} s") from None


def placement_report(name: str, needs: dict[str, float]) -> str:
    """One sentence on why actor ``name`` may not be running: its state, its needs, the cluster's
    free resources and pending demand (best effort: each part is left out when Ray cannot say)."""
    wanted = {k: v for k, v in needs.items() if v} or {"CPU": 0}
    parts = [f"it needs {_fmt(wanted)}"]
    try:
        states = [a.get("State") for a in ray._private.state.actors().values() if a.get("Name") == name]
        if states:
            parts.insert(0, f"state {states[-1]}")
    except Exception:  # noqa: BLE001 - a report, never a second failure
        pass
    try:
        free = ray.available_resources()
        parts.append(f"the cluster has {_fmt({k: free.get(k, 0.0) for k in wanted})} free")
    except Exception:  # noqa: BLE001 - the report is best effort: it is built while a job is already failing
        pass
    demand = pending_demand()
    if demand:
        parts.append(f"pending demand {demand}")
    return "; ".join(parts)


def pending_demand() -> str:
    """The cluster's unmet task/actor resource demand as Ray's autoscaler sees it, e.g. ``[1 {'GPU': 1.0}]``."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status  # noqa: PLC0415 - Ray's autoscaler SDK, only when a deadline has passed

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        demands = status.resource_demands.ray_task_actor_demand + status.resource_demands.placement_group_demand
        return ", ".join(str(b) for d in demands for b in d.bundles_by_count)
    except Exception:  # noqa: BLE001 - a report, never a second failure
        return ""


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"
