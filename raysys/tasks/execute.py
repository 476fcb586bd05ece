"""Running a registered task: the one place queue, serve and jobs go through.

- :func:`resolve` and :func:`check`: the task behind a name (aliases accepted) and whether arguments fit it.
- :func:`run_inline`: run it here and now with a :class:`TaskContext` (the bridge's light thread, its
  executor actors and its heavy Ray tasks all end here; the queue turns what it returns or raises into a
  Celery result).
- :func:`ray_options` and :func:`submit`: run it as a Ray task with its registered resources
  (``num_cpus``/``num_gpus``), so a task lands where the bridge would have put it; the HTTP layer's "wait for
  the result" mode and the batch jobs (:func:`run_many`) use this, outside the queues.

Errors from a Ray task arrive wrapped; :func:`raysys.errors.unwrap` gives the task's own exception back.
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
from raysys.errors import unwrap
from raysys.tasks.registry import TaskContext, TaskSpec, load_all, lookup

log = logging.getLogger(__name__)


def resolve(name: str) -> TaskSpec:
    """The registered task ``name`` (aliases accepted). Raises :class:`raysys.errors.UnknownTask`."""
    load_all()
    return lookup(name)


def check(spec: TaskSpec, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise TypeError when ``args``/``kwargs`` do not fit ``spec``'s signature."""
    spec.check_arguments(list(args), kwargs)


def run_inline(settings: Settings, spec: TaskSpec, args: Sequence[Any], kwargs: dict[str, Any], *,
               task_id: str, queue: str | None = None, retries: int = 0,
               progress: Callable[[float, str], None] | None = None) -> Any:
    """Run ``spec`` in this process and return its value; whatever the task raises propagates."""
    ctx = TaskContext(settings=settings, task_id=task_id, task_name=spec.name,
                      queue=spec.queue if queue is None else queue, retries=retries, progress_cb=progress)
    return spec.fn(ctx, *args, **kwargs)


def ray_options(spec: TaskSpec, task_id: str | None = None) -> dict[str, Any]:
    """Ray options of one run of ``spec``: its registered resources, named after the task (and job)."""
    name = f"{spec.name}:{task_id}" if task_id else spec.name
    return {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "name": name}


@ray.remote(max_retries=0)
def _run_task(settings: Settings, name: str, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    spec = resolve(name)
    started = time.perf_counter()
    try:
        return run_inline(settings, spec, args, kwargs, task_id=task_id)
    finally:
        log.info("direct task %s %s finished in %.3f s", spec.name, task_id, time.perf_counter() - started)


def submit(settings: Settings, name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
           *, task_id: str | None = None) -> ray.ObjectRef:
    """Start task ``name`` on the cluster (Ray must be initialised); return its ObjectRef.

    Raises:
        UnknownTask: no task is registered under ``name``.
        TypeError: ``args``/``kwargs`` do not fit the task's signature.
    """
    spec = resolve(name)
    kwargs = dict(kwargs or {})
    check(spec, args, kwargs)
    task_id = task_id or str(uuid.uuid4())
    return _run_task.options(**ray_options(spec)).remote(settings, spec.name, task_id, list(args), kwargs)


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
