"""Where jobs run: a Ray remote function for heavy tasks, executor actors for batches of light ones.

Both call :func:`execute`, which never raises: it returns an *outcome* tuple the bridge turns into
a result, a retry or a dead letter:

- ``("ok", elapsed, value_json)``
- ``("retry", elapsed, exc_meta, traceback, countdown | None, max_retries | None)`` — may run again
- ``("fail", elapsed, exc_meta, traceback)`` — final

A job cancelled by the soft time limit (Ray raises ``KeyboardInterrupt`` in it) fails with Celery's
``SoftTimeLimitExceeded`` unless the task catches it and returns.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from typing import Any

import ray

from raysys.config import Settings
from raysys.errors import RaysysError, Retry, UnknownTask
from raysys.queue import protocol
from raysys.tasks.registry import TaskContext, load_all, lookup

log = logging.getLogger("raysys.queue.worker")

Job = tuple  # (task name, args, kwargs, task id, retries, queue, soft time limit in seconds or None)

_state: dict[str, Any] = {}


def prepare(settings: Settings) -> None:
    """Import the task modules once per process (built-in ones plus ``settings.task_modules``)."""
    if _state.get("modules") != settings.task_modules:
        load_all(settings.task_modules)
        _state["modules"] = settings.task_modules


def _redis(settings: Settings) -> Any:
    client = _state.get("redis")
    if client is None or _state.get("redis_url") != settings.backend_url:
        import redis  # noqa: PLC0415

        client = _state["redis"] = redis.Redis.from_url(settings.backend_url)
        _state["redis_url"] = settings.backend_url
    return client


def _progress(settings: Settings, task_id: str):  # noqa: ANN202
    def report(fraction: float, message: str) -> None:
        value = protocol.progress_json(task_id, fraction, message)
        key = protocol.result_key(task_id)
        try:
            pipe = _redis(settings).pipeline(transaction=False)
            pipe.setex(key, settings.result_expires, value).publish(key, value).execute()
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the job goes on
            log.warning("job %s progress not stored: %s", task_id, exc)

    return report


def _on_soft_limit(signum: int, frame: Any) -> None:
    raise protocol.SoftTimeLimitExceeded()


@contextlib.contextmanager
def soft_limit(seconds: float | None):
    """Raise Celery's ``SoftTimeLimitExceeded`` inside the job after ``seconds`` (SIGALRM, as billiard does
    with its own signal): it interrupts sleeps and blocking I/O, and the task may catch it to clean up.
    Only in the main thread (where Ray runs tasks); elsewhere the bridge's ``ray.cancel`` is the soft limit.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_soft_limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def execute(settings: Settings, job: Job) -> tuple:
    """Run one job here and now; return its outcome (see the module docstring). Never raises."""
    name, args, kwargs, task_id, retries, queue, soft = job
    t0 = time.perf_counter()
    try:
        spec = lookup(name)
    except UnknownTask as exc:
        return ("fail", 0.0, protocol.exception_meta(protocol.NotRegistered(str(exc))), "")
    ctx = TaskContext(settings=settings, task_id=task_id, task_name=spec.name, queue=queue, retries=retries,
                      progress_cb=_progress(settings, task_id))
    try:
        with soft_limit(soft):
            value = spec.fn(ctx, *args, **kwargs)
    except Retry as exc:
        inner = exc.exc if exc.exc is not None else exc
        return ("retry", time.perf_counter() - t0, protocol.exception_meta(inner), protocol.format_traceback(exc),
                exc.countdown, exc.max_retries)
    except KeyboardInterrupt as exc:  # Ray's soft cancel
        soft = protocol.SoftTimeLimitExceeded()
        soft.__traceback__ = exc.__traceback__
        return ("fail", time.perf_counter() - t0, protocol.exception_meta(soft), protocol.format_traceback(soft))
    except Exception as exc:  # noqa: BLE001 - every task error becomes a result
        elapsed = time.perf_counter() - t0
        retryable = exc.retryable if isinstance(exc, RaysysError) else not isinstance(exc, protocol.SoftTimeLimitExceeded)
        meta = protocol.exception_meta(exc)
        tb = protocol.format_traceback(exc)
        return ("retry", elapsed, meta, tb, None, None) if retryable else ("fail", elapsed, meta, tb)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails that job, not its batch or worker
        return ("fail", time.perf_counter() - t0, protocol.exception_meta(exc), protocol.format_traceback(exc))
    elapsed = time.perf_counter() - t0
    try:
        return ("ok", elapsed, protocol.dumps(value))
    except (TypeError, ValueError) as exc:
        meta = {"exc_type": "EncodeError", "exc_message": [f"result is not JSON-serialisable: {exc}"],
                "exc_module": "kombu.exceptions"}
        return ("fail", elapsed, meta, "")


@ray.remote(max_retries=3, retry_exceptions=False)
def run_heavy(settings: Settings, job: Job) -> tuple:
    """One heavy job as its own Ray task. Ray re-runs it (up to 3 times) when its worker dies."""
    prepare(settings)
    return execute(settings, job)


@ray.remote(num_cpus=0, max_concurrency=1)
class LightExecutor:
    """A long-lived actor that runs batches of light jobs one after another (no per-job Ray task)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        prepare(settings)
        gc.collect()
        gc.freeze()  # long-lived imports out of full collections (short pauses between batches)

    def run_batch(self, jobs: list[Job]) -> list[tuple]:
        return [execute(self.settings, job) for job in jobs]

    def pid(self) -> int:
        return os.getpid()
