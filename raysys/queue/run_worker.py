"""The run stage's process side: where a job's code runs and how its end becomes an :class:`Outcome`.

Heavy jobs run as a Ray remote function (:func:`run_heavy`); light ones in batches, either on a thread of the
bridge's own process (:class:`ThreadRunner`, the default) or on executor actors (:class:`LightExecutor`).
All call :func:`execute`, which runs the task through :func:`raysys.tasks.execute.run_inline` and never
raises: it returns the :class:`~raysys.queue.job.Outcome` the settle stage turns into a result, a retry
or a dead letter. The bridge's side of the stage (batches, watchdog, time limits) is :mod:`raysys.queue.run`.

A job cancelled by the soft time limit (Ray raises ``KeyboardInterrupt`` in it) fails with Celery's
``SoftTimeLimitExceeded`` unless the task catches it and returns.

A light batch's SUCCESS results are published where the batch ran, the moment it ends (:func:`publish_early`:
one script call, as a Celery worker's child stores its result itself), when the bridge marked them
publishable (``Work.publish``: a result is stored and no callback, chain step or chord depends on it). The
client sees the result one hop earlier; the bridge's batch then only acks the job (``Outcome.published``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import replace
from typing import Any, NamedTuple

import ray
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from raysys.config import Settings
from raysys.errors import RaysysError, Retry, UnknownTask, is_outage
from raysys.queue import keys, results, scripts
from raysys.queue.job import Kind, Outcome
from raysys.tasks.execute import run_inline
from raysys.tasks.registry import load_all, lookup

log = logging.getLogger("raysys.queue.run_worker")


class Publish(NamedTuple):
    """How to store a job's SUCCESS where it ran (the fields of :func:`raysys.queue.results.success_json`)."""

    ttl: int
    parent_id: str | None = None
    extended: dict | None = None


class Work(NamedTuple):
    """One job as a runner gets it (picklable: it travels to Ray tasks and executor actors)."""

    name: str
    args: list
    kwargs: dict
    task_id: str
    retries: int
    queue: str
    soft: float | None                 # soft time limit in seconds
    publish: Publish | None = None     # a light job whose SUCCESS its runner publishes (see publish_early)


PUBLISH_TIMEOUT = 2.0  # seconds a runner waits for Redis to take early results (else the bridge's batch writes them)

_state: dict[str, Any] = {}


def prepare(settings: Settings) -> None:
    """Import the task modules once per process (built-in ones plus ``settings.task_modules``)."""
    if _state.get("modules") != settings.task_modules:
        load_all(settings.task_modules)
        _state["modules"] = settings.task_modules


def _redis(settings: Settings) -> Any:
    client = _state.get("redis")
    if client is None or _state.get("redis_url") != settings.backend_url:
        client = _state["redis"] = redis.Redis.from_url(settings.backend_url)
        _state["redis_url"] = settings.backend_url
    return client


def _publisher(settings: Settings) -> Any:
    """The publication script on this process' client of the Redis the bridge writes results to: one
    attempt per call (no redis-py retries) and short timeouts, so a runner never waits long on it."""
    url = settings.redis_url
    if _state.get("publisher_url") != url:
        client = redis.Redis.from_url(url, socket_timeout=PUBLISH_TIMEOUT, socket_connect_timeout=PUBLISH_TIMEOUT,
                                      retry=RedisRetry(NoBackoff(), 0), socket_keepalive=True,
                                      health_check_interval=10)
        _state["publisher"] = client.register_script(scripts.PUBLISH_RESULTS)
        _state["publisher_url"] = url
    return _state["publisher"]


def publish_early(settings: Settings, jobs: list[Work], outcomes: list[Outcome], start: int = 0,
                  skip: Collection[int] = ()) -> list[Outcome]:
    """Store and publish the SUCCESS of every job from ``start`` on (but those in ``skip``) that asks for it
    (``Work.publish``), in one script call, into the Redis the bridge writes results to; those outcomes come
    back ``published``. The script skips a job whose SUCCESS is stored already (as the bridge's batch would).
    On any error nothing is marked, and the bridge's batch writes those results as it always did."""
    todo = [i for i in range(start, len(outcomes)) if i not in skip
            and jobs[i].publish is not None and outcomes[i].kind is Kind.OK]
    if not todo:
        return outcomes
    keys_, argv = [], []
    for i in todo:
        job, pub = jobs[i], jobs[i].publish
        keys_.append(keys.result_key(job.task_id))
        argv += [results.success_json(job.task_id, outcomes[i].value_json, parent_id=pub.parent_id,
                                      extended=pub.extended), pub.ttl]
    try:
        _publisher(settings)(keys=keys_, args=argv)
    except Exception as exc:  # noqa: BLE001 - the batch writes them instead; never worth failing a job
        log.debug("early publication of %d results failed (%s); the bridge's batch writes them", len(todo), exc)
        return outcomes
    out = list(outcomes)
    for i in todo:
        out[i] = replace(out[i], published=True)
    return out


def _progress(settings: Settings, task_id: str):
    def report(fraction: float, message: str) -> None:
        value = results.progress_json(task_id, fraction, message)
        key = keys.result_key(task_id)
        try:
            pipe = _redis(settings).pipeline(transaction=False)
            pipe.setex(key, settings.result_expires, value).publish(key, value).execute()
        except Exception as exc:  # noqa: BLE001 - progress is best effort; the job goes on
            log.warning("job %s progress not stored: %s", task_id, exc)

    return report


def _on_soft_limit(signum: int, frame: Any) -> None:
    raise results.SoftTimeLimitExceeded()


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


def execute(settings: Settings, work: Work) -> Outcome:
    """Run one job here and now; return its outcome. Never raises."""
    t0 = time.perf_counter()
    try:
        spec = lookup(work.name)
    except UnknownTask as exc:
        return Outcome.fail(0.0, results.NotRegistered(str(exc)))
    try:
        with soft_limit(work.soft):
            value = run_inline(settings, spec, work.args, work.kwargs, task_id=work.task_id, queue=work.queue,
                               retries=work.retries, progress=_progress(settings, work.task_id))
    except Retry as exc:
        inner = exc.exc if exc.exc is not None else exc
        return Outcome.retry(time.perf_counter() - t0, inner, results.format_traceback(exc), exc.countdown,
                             exc.max_retries)
    except KeyboardInterrupt as exc:  # Ray's soft cancel
        soft_exc = results.SoftTimeLimitExceeded()
        soft_exc.__traceback__ = exc.__traceback__
        return Outcome.fail(time.perf_counter() - t0, soft_exc, results.format_traceback(soft_exc))
    except Exception as exc:  # noqa: BLE001 - every task error becomes a result
        elapsed = time.perf_counter() - t0
        retryable = exc.retryable if isinstance(exc, RaysysError) else not isinstance(exc, results.SoftTimeLimitExceeded)
        tb = results.format_traceback(exc)
        if retryable and is_outage(exc):
            return Outcome(Kind.OUTAGE, elapsed, exc_meta=results.exception_meta(exc), traceback=tb)
        return Outcome.retry(elapsed, exc, tb) if retryable else Outcome.fail(elapsed, exc, tb)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a task fails that job, not its batch or worker
        return Outcome.fail(time.perf_counter() - t0, exc, results.format_traceback(exc))
    elapsed = time.perf_counter() - t0
    try:
        return Outcome.ok(elapsed, results.dumps(value))
    except (TypeError, ValueError) as exc:
        meta = {"exc_type": "EncodeError", "exc_message": [f"result is not JSON-serialisable: {exc}"],
                "exc_module": "kombu.exceptions"}
        return Outcome(Kind.FAIL, elapsed, exc_meta=meta)


@ray.remote(max_retries=0, retry_exceptions=False)
def run_heavy(settings: Settings, work: Work) -> Outcome:
    """One heavy job as its own Ray task. Ray never re-runs it: the bridge is the one retry owner (a worker
    that dies is one of the job's ``max_retries``, with backoff), so a job that kills its worker runs at
    most ``max_retries + 1`` times, not that many times Ray's own retries."""
    prepare(settings)
    return execute(settings, work)


class Terminated(BaseException):  # reads as what happened to the job
    """Raised in a light job on the bridge's thread when it is revoked with ``terminate=True``: a
    BaseException, so the task's ``except Exception`` does not swallow it (its ``finally`` still runs)."""


class ThreadRunner:
    """Runs batches of light jobs one after another on one thread of the bridge's own process.

    No Ray call and no other process sits between claiming a light job and running it, which is what
    keeps the enqueue -> result latency of small jobs low. The price is isolation: a light job shares the
    bridge's process, so tasks are marked light only when they are quick and well behaved.

    The bridge's event loop watches the running job: one that takes longer than a moment is left to
    finish alone on this thread (:meth:`detach`) while a fresh runner takes the batches behind it, so a slow
    job does not hold up the quick ones. Time limits: the soft one raises ``SoftTimeLimitExceeded`` in the
    job's thread (:meth:`soft_limit`; Python code sees it at once, a blocking C call when it returns); at the
    hard one the bridge gives the job ``TimeLimitExceeded`` and leaves the thread behind (:meth:`abandon`:
    a thread cannot be killed; its outcome is ignored).

    The state the event loop reads (``current``, ``done``) changes only under ``lock``, so an exception is
    never delivered to a job other than the one meant, and at most one is delivered per job. The hazard
    every asynchronous interruption has (a signal handler's too, as with Celery's soft limit) remains: one
    landing between a lock's acquire and the ``try`` that releases it leaks that lock.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.current: tuple[int, float] | None = None  # (index in the batch, time.monotonic() it started)
        self.done: list[Outcome] = []                   # outcomes of the running batch so far
        self.abandoned = False
        self.detached = False  # finish the running job, then stop
        self.sent: tuple[int, float] | None = None  # the job an exception was raised in (one per job)
        # jobs of the batch revoked with terminate: never started if they had not, and never published here
        # (one that swallows the exception and returns still ends REVOKED, as the bridge settles it)
        self.cancelled: set[int] = set()
        self.handed = 0  # outcomes of the batch the bridge took before it ended (detach): not published here
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        # A daemon thread (not a ThreadPoolExecutor's, which the interpreter joins at exit): one left behind
        # in a job that never returns must not keep the bridge's process from exiting.
        self.thread = threading.Thread(target=self._serve, name="raysys-light", daemon=True)
        self.thread.start()

    def submit(self, jobs: list[Work]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.done, self.cancelled, self.handed = [], set(), 0
        self.inbox.put((jobs, fut))
        return fut

    def _serve(self) -> None:
        while (item := self.inbox.get()) is not None:
            jobs, fut = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(self._run(jobs))
                except BaseException as exc:  # noqa: BLE001 - handed to the bridge, which waits on it
                    fut.set_exception(exc)
                finally:
                    with self.lock:
                        self.current = None

    def _run(self, jobs: list[Work]) -> list[Outcome]:
        for i, job in enumerate(jobs):
            with self.lock:
                if self.abandoned or self.detached:
                    break
                if i in self.cancelled:
                    self.done.append(Outcome.fail(0.0, Terminated()))
                    continue
                self.current = (i, time.monotonic())
            outcome = None
            try:
                outcome = execute(self.settings, job)
                self._leave(i, outcome)
            except (results.SoftTimeLimitExceeded, Terminated) as exc:  # delivered just outside the task's code
                self._leave(i, outcome or Outcome.fail(0.0, exc))
        with self.lock:  # the outcomes the bridge has not taken already (see detach) are published here
            if self.abandoned:
                return self.done
            start, done, skip = self.handed, list(self.done), set(self.cancelled)
        published = publish_early(self.settings, jobs, done, start, skip)
        with self.lock:
            self.done[start:len(published)] = published[start:]
        return self.done

    def _leave(self, index: int, outcome: Outcome) -> None:
        """Record job ``index``'s outcome; safe to call again if a soft limit interrupted the first call."""
        with self.lock:
            if self.abandoned:
                return
            if len(self.done) == index:
                self.done.append(outcome)
            self.current = None

    def soft_limit(self, index: int, started: float) -> bool:
        """Raise SoftTimeLimitExceeded in job ``index`` of the running batch if it is still running."""
        with self.lock:
            if self.current != (index, started) or self.sent == self.current:
                return False
            self.sent = self.current
            self._raise(results.SoftTimeLimitExceeded)
            return True

    def terminate(self, index: int) -> bool:
        """End job ``index`` of the running batch: raise :class:`Terminated` in it if it runs (unless an
        exception was raised in it already: it is ending), or never start it. False if it has finished."""
        with self.lock:
            if self.abandoned or len(self.done) > index:
                return False
            self.cancelled.add(index)
            if self.current is None or self.current[0] != index:
                return True
            if self.sent != self.current:
                self.sent = self.current
                self._raise(Terminated)
            return True

    def _raise(self, exc_type: type[BaseException]) -> None:
        """Have the job thread raise ``exc_type`` at its next Python instruction (the caller holds ``lock``,
        so the job cannot end meanwhile)."""
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident), ctypes.py_object(exc_type))

    def detach(self) -> tuple[int, int | None]:
        """Finish the running job, start no other: (jobs finished so far, index of the job still running).
        When that job is the next one (the bridge settles the ones before it itself), only its outcome is
        left for this runner to publish."""
        with self.lock:
            self.detached = True
            running = self.current[0] if self.current is not None else None
            if running == len(self.done):
                self.handed = running
            return len(self.done), running

    def abandon(self, index: int, started: float) -> list[Outcome] | None:
        """Leave this runner behind while job ``index`` (started at ``started``) still runs: the outcomes of
        the batch's jobs before it. None (nothing changes) if that job has finished meanwhile."""
        with self.lock:
            if self.current != (index, started):
                return None
            self.abandoned = True
            done, self.current = list(self.done), None
        self.inbox.put(None)
        return done

    def shutdown(self) -> None:
        with self.lock:
            self.abandoned = True
        self.inbox.put(None)


@ray.remote(num_cpus=0, max_concurrency=1)
class LightExecutor:
    """A long-lived actor that runs batches of light jobs one after another (no per-job Ray task)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        prepare(settings)
        gc.collect()
        gc.freeze()  # long-lived imports out of full collections (short pauses between batches)

    def run_batch(self, jobs: list[Work]) -> list[Outcome]:
        return publish_early(self.settings, jobs, [execute(self.settings, job) for job in jobs])

    def pid(self) -> int:
        return os.getpid()
