"""Run registered tasks directly as Ray tasks, outside the queues.

The queue path (producer -> Redis -> bridge -> Ray) is for work that must survive restarts and be
seen by Celery clients. Two callers want the same task code without the round trip through Redis:
the HTTP layer's "wait for the result" mode and the batch jobs, which already hold the whole list of
work. Both go through :func:`submit`, which runs the task with its registered Ray resources
(``num_cpus``/``num_gpus``), so a task lands where the bridge would have put it and the model work
still goes through the shared model actors.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from raysys.config import Settings
from raysys.tasks.registry import TaskContext, TaskSpec, load_all, lookup

log = logging.getLogger(__name__)


@ray.remote(max_retries=0)
def _run_task(settings: Settings, name: str, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    load_all()
    spec = lookup(name)
    ctx = TaskContext(settings=settings, task_id=task_id, task_name=spec.name, queue=spec.queue)
    started = time.perf_counter()
    try:
        return spec.fn(ctx, *args, **kwargs)
    finally:
        log.info("direct task %s %s finished in %.3f s", spec.name, task_id, time.perf_counter() - started)


def resolve(name: str) -> TaskSpec:
    """The registered task ``name`` (aliases accepted). Raises :class:`raysys.errors.UnknownTask`."""
    load_all()
    return lookup(name)


def submit(settings: Settings, name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
           *, task_id: str | None = None) -> ray.ObjectRef:
    """Start task ``name`` on the cluster (Ray must be initialised); return its ObjectRef.

    Raises:
        UnknownTask: no task is registered under ``name``.
        TypeError: ``args``/``kwargs`` do not fit the task's signature.
    """
    spec = resolve(name)
    kwargs = dict(kwargs or {})
    spec.check_arguments(list(args), kwargs)
    return _run_task.options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, name=spec.name).remote(
        settings, spec.name, task_id or str(uuid.uuid4()), list(args), kwargs)


def unwrap(exc: BaseException) -> BaseException:
    """The task's own exception behind Ray's wrapper (``RayTaskError`` carries the traceback in its text)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@dataclass
class BatchSummary:
    """What :func:`run_many` did: counts, failures by item, elapsed seconds."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    elapsed: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        rate = self.total / self.elapsed if self.elapsed else 0.0
        return {"total": self.total, "succeeded": self.succeeded, "failed": self.failed,
                "elapsed_s": round(self.elapsed, 2), "per_second": round(rate, 2), "failures": self.failures}


def run_many(settings: Settings, name: str, items: Iterable[tuple[str, Sequence[Any], dict[str, Any]]], *,
             max_in_flight: int = 8, on_done: Callable[[str, bool, Any], None] | None = None,
             keep_results: bool = False) -> BatchSummary:
    """Run ``name`` once per ``(key, args, kwargs)`` with at most ``max_in_flight`` running at a time.

    A failing item is recorded (``failures[key]`` = ``"ExcType: message"``) and the rest go on;
    ``on_done(key, ok, result_or_error)`` is called as each finishes (progress bars, log lines).
    """
    summary = BatchSummary()
    started = time.perf_counter()
    pending: dict[ray.ObjectRef, str] = {}

    def finish(ref: ray.ObjectRef) -> None:
        key = pending.pop(ref)
        try:
            value = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - one bad item must not stop the batch
            err = unwrap(exc)
            summary.failed += 1
            summary.failures[key] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if on_done:
                on_done(key, False, err)
            return
        summary.succeeded += 1
        if keep_results:
            summary.results[key] = value
        if on_done:
            on_done(key, True, value)

    for key, args, kwargs in items:
        summary.total += 1
        while len(pending) >= max_in_flight:
            done, _ = ray.wait(list(pending), num_returns=1)
            finish(done[0])
        try:
            pending[submit(settings, name, args, kwargs, task_id=f"{name}:{key}")] = key
        except (TypeError, LookupError) as exc:
            summary.failed += 1
            summary.failures[key] = f"{type(exc).__name__}: {exc}"
            if on_done:
                on_done(key, False, exc)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        finish(done[0])
    summary.elapsed = time.perf_counter() - started
    return summary
