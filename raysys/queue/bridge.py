"""The QueueBridge: an async Ray actor that takes jobs from Redis queues and runs them on Ray.

One bridge consumes a set of queues (all their Celery priority lists) as one *consumer*:

1. **Claim** (:mod:`raysys.queue.redis`): one Lua script moves as many messages as there are free
   slots from the lists, in Celery's priority order, into this consumer's in-flight lists; when
   nothing is waiting, one ``BLMOVE`` per queue blocks for the next message (only while a slot is
   free). Light jobs have ``light_capacity`` slots per bridge, heavy jobs ``concurrency`` per queue:
   the backlog stays in Redis.
2. **Admit**: decode (Celery protocol v2 or the native envelope), look the task up, check its
   arguments; refused messages get a FAILURE result (when an id is readable), a ``<queue>.dead``
   entry and a log line. Expired jobs get REVOKED, future ``eta`` goes to the delayed set, and a job
   whose SUCCESS is already stored is acked without running again.
3. **Run**: light tasks (``spec.light``) in batches on long-lived :class:`LightExecutor` actors (one
   Ray call for many jobs); heavy ones as Ray tasks with the task's ``num_cpus``/``num_gpus``,
   ``max_calls`` from ``WORKER_MAX_TASKS_PER_CHILD``, a soft time limit (``ray.cancel``) and a hard
   one (``ray.cancel(force=True)``).
4. **Finish**: result (SETEX + PUBLISH, Celery's format), link callbacks and the next chain step
   published, retry (RETRY state + delayed set with exponential backoff and jitter), or FAILURE +
   dead letter + errbacks; all in the same atomic script as the ack. Pending transitions are batched
   into one script call while the previous one runs.

A heartbeat marks the consumer alive; survivors requeue the in-flight lists of a consumer whose
heartbeat stopped, and a restarted bridge (Ray restarts it) requeues its own at once. Redis outages
are waited out: finished results stay in memory and are written when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import ray
from redis.exceptions import RedisError

from raysys.config import Settings
from raysys.constants import BRIDGE_ACTOR_PREFIX, RAY_NAMESPACE
from raysys.errors import Refused, UnknownTask
from raysys.queue import protocol
from raysys.queue.redis import Broker, Ops, dead_entry
from raysys.queue.worker import LightExecutor, prepare, run_heavy
from raysys.tasks.registry import TaskSpec, lookup, names_of

log = logging.getLogger("raysys.queue.bridge")

POLL_SECONDS = 0.1        # idle re-check of every list (priority lists, missed wake-ups)
BLOCK_SECONDS = 1.0       # BLMOVE timeout of the per-queue waiters
KILL_GRACE_SECONDS = 5.0  # after the hard limit, how long a force-cancelled task may take to go
SOFT_GRACE_SECONDS = 0.5  # after the soft limit (raised in the job), when the bridge cancels the Ray task


@dataclass
class Job:
    msg: protocol.Message
    spec: TaskSpec
    source: str               # the list it was claimed from
    inflight: str             # the in-flight list holding it
    slot: tuple[str, str]     # ("light", "") or ("heavy", queue): what its claim counted against
    claimed: float = field(default_factory=time.time)
    started: float | None = None
    light_tries: int = 0

    @property
    def id(self) -> str:
        return self.msg.id


class _Metrics:
    """Ray metrics, aggregated locally and pushed once a second (per-job calls would cost too much)."""

    def __init__(self, bridge: str) -> None:
        from ray.util import metrics  # noqa: PLC0415

        keys = ("queue", "task")
        self.counters = {
            name: metrics.Counter(f"raysys_jobs_{name}", description=f"jobs {name}", tag_keys=keys)
            for name in ("received", "succeeded", "failed", "retried", "dead_lettered", "revoked")
        }
        self.run_time = metrics.Histogram(
            "raysys_job_run_seconds", description="job run time", tag_keys=keys,
            boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800])
        self.depth = metrics.Gauge("raysys_queue_depth", description="messages waiting", tag_keys=("queue",))
        self.in_flight = metrics.Gauge("raysys_jobs_in_flight", description="jobs claimed and not acked",
                                       tag_keys=("queue", "bridge"))
        self.bridge = bridge
        self.pending: dict[tuple[str, str, str], int] = defaultdict(int)
        self.times: list[tuple[str, str, float]] = []

    def count(self, name: str, queue: str, task: str, n: int = 1) -> None:
        self.pending[(name, queue, task)] += n

    def observe(self, queue: str, task: str, seconds: float) -> None:
        if len(self.times) < 5000:
            self.times.append((queue, task, seconds))

    def push(self, depths: dict[str, int] | None, in_flight: dict[str, int]) -> None:
        pending, self.pending = self.pending, defaultdict(int)
        for (name, queue, task), n in pending.items():
            self.counters[name].inc(n, tags={"queue": queue, "task": task})
        times, self.times = self.times, []
        for queue, task, seconds in times:
            self.run_time.observe(seconds, tags={"queue": queue, "task": task})
        for queue, n in (depths or {}).items():
            self.depth.set(n, tags={"queue": queue})
        for queue, n in in_flight.items():
            self.in_flight.set(n, tags={"queue": queue, "bridge": self.bridge})


class _Executor:
    def __init__(self, settings: Settings) -> None:
        self.actor = LightExecutor.remote(settings)
        self.busy = 0
        self.done = 0


class BridgeCore:
    """The bridge's logic on the actor's event loop (separate from the actor so it reads top-down)."""

    def __init__(self, settings: Settings, name: str, queues: tuple[str, ...], concurrency: int,
                 executors: int, batch_size: int) -> None:
        self.settings = settings
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.n_executors = executors
        self.light_capacity = max(batch_size * executors * 2, 2 * len(queues))
        self.broker = Broker(settings, name, queues)
        self.metrics = _Metrics(name)
        self.n_light = 0
        self.n_heavy: dict[str, int] = dict.fromkeys(queues, 0)
        self.reserved_light = 0
        self.reserved_heavy: dict[str, int] = dict.fromkeys(queues, 0)
        self.heavy_sem = {q: asyncio.Semaphore(concurrency) for q in queues}
        self.jobs: dict[str, Job] = {}
        self.light_ready: deque[Job] = deque()
        self.executors: list[_Executor] = []
        self.buf = Ops()
        self.buf_release: list[tuple[str, str]] = []
        self.wake = asyncio.Event()
        self.flush_event = asyncio.Event()
        self.due_event = asyncio.Event()
        self.stopping = False
        self.ready = asyncio.Event()
        self.redis_ok = True
        self.tasks: list[asyncio.Task] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.started_at = time.time()
        self.settings_ref = None
        self.light_names: list[str] = []

    # --- life cycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        prepare(self.settings)
        self.light_names = sorted({n for spec in _registry().values() if spec.light for n in names_of(spec)})
        self.settings_ref = ray.put(self.settings)
        self.executors = [_Executor(self.settings) for _ in range(self.n_executors)]
        await self._until_ok(self._recover_own, "recover in-flight jobs")
        await self._until_ok(self.broker.heartbeat, "register")
        log.info("bridge %s consuming %s (concurrency %d per queue, %d light slots, %d executors) pid %d",
                 self.name, ",".join(self.queues), self.concurrency, self.light_capacity, self.n_executors,
                 os.getpid())
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(c) for c in (
            self._claim_loop(), self._flush_loop(), self._due_loop(), self._heartbeat_loop())]
        self.tasks += [loop.create_task(self._waiter(q)) for q in self.queues]
        # Everything imported so far (Ray, task modules) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.ready.set()

    async def _recover_own(self) -> None:
        raw = await self.broker.redis.hget(self.broker.consumer_queues_key, self.name)
        lists = set(self.broker.lists)
        if raw:
            lists |= set(protocol.loads(raw))
        n = await self.broker.requeue_consumer(self.name, sorted(lists))
        if n:
            log.warning("bridge %s requeued %d jobs it held before a restart", self.name, n)

    async def _until_ok(self, fn, what: str) -> Any:  # noqa: ANN001
        delay = 0.1
        while True:
            try:
                return await fn()
            except (RedisError, OSError) as exc:
                log.warning("bridge %s: cannot %s (%s); retrying in %.1f s", self.name, what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def stop(self, timeout: float) -> dict:
        """Stop claiming, let running jobs finish (up to ``timeout``), give the rest back to the queues."""
        self.stopping = True
        self.wake.set()
        deadline = time.monotonic() + timeout
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.flush_event.set()
        while (len(self.buf) or self._flushing) and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.02)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        # Jobs still running (or claimed by a waiter at the last moment) go back to the queues.
        requeued = 0
        with contextlib.suppress(RedisError, OSError):
            requeued = await self.broker.requeue_consumer(self.name, self.broker.lists)
            await self.broker.deregister()
        if requeued:
            log.warning("bridge %s stopped with %d unfinished jobs; they are back on their queues", self.name, requeued)
        for ex in self.executors:
            with contextlib.suppress(Exception):
                ray.kill(ex.actor)
        with contextlib.suppress(Exception):
            await self.broker.close()
        log.info("bridge %s stopped", self.name)
        return {"requeued": requeued}

    # --- claiming ---------------------------------------------------------------------------------------

    def _free(self) -> tuple[int, dict[str, int]]:
        light = self.light_capacity - self.n_light - self.reserved_light
        heavy = {q: self.concurrency - self.n_heavy[q] - self.reserved_heavy[q] for q in self.queues}
        return light, heavy

    async def _claim_loop(self) -> None:
        while not self.stopping:
            self.wake.clear()
            light, heavy = self._free()
            got = []
            if light > 0 or any(v > 0 for v in heavy.values()):
                try:
                    got = await self.broker.claim(light, heavy, self.light_names)
                    self._redis_back()
                except (RedisError, OSError) as exc:
                    await self._redis_down(exc)
                    continue
            if got:
                for source, light_guess, _ in got:
                    self._count_claim(source, light_guess)
                asyncio.get_running_loop().create_task(self._admit(got))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)

    async def _waiter(self, queue: str) -> None:
        """Block on the queue's main list while a slot is free, so an idle bridge reacts at once."""
        conn = self.broker.connect(socket_timeout=BLOCK_SECONDS + 5)
        try:
            while not self.stopping:
                light, heavy = self._free()
                if light < 1 or heavy[queue] < 1:
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                self.reserved_light += 1
                self.reserved_heavy[queue] += 1
                try:
                    raw = await self.broker.block_claim(queue, BLOCK_SECONDS, conn)
                except (RedisError, OSError) as exc:
                    raw = None
                    await self._redis_down(exc)
                finally:
                    self.reserved_light -= 1
                    self.reserved_heavy[queue] -= 1
                if raw is not None:
                    light_guess = _task_name(raw) in self.light_names
                    self._count_claim(queue, light_guess)
                    asyncio.get_running_loop().create_task(self._admit([(queue, light_guess, raw)]))
                    self.wake.set()  # more may be waiting: let the claim loop take a batch
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    def _count_claim(self, source: str, light: bool) -> None:
        if light:
            self.n_light += 1
        else:
            self.n_heavy[self.broker.list_queue[source]] += 1

    def _release(self, slot: tuple[str, str]) -> None:
        kind, queue = slot
        if kind == "light":
            self.n_light -= 1
        else:
            self.n_heavy[queue] -= 1
        self.wake.set()

    async def _redis_down(self, exc: Exception) -> None:
        if self.redis_ok:
            log.error("bridge %s lost Redis (%r); retrying until it is back", self.name, exc, exc_info=True)
        self.redis_ok = False
        await asyncio.sleep(0.25)

    def _redis_back(self) -> None:
        if not self.redis_ok:
            log.warning("bridge %s reconnected to Redis", self.name)
            self.redis_ok = True

    # --- admitting --------------------------------------------------------------------------------------

    async def _admit(self, items: list[tuple[str, bool, bytes]]) -> None:
        now = time.time()
        to_run: list[Job] = []
        for source, light_guess, raw in items:
            queue = self.broker.list_queue[source]
            inflight = self.broker.inflight[source]
            slot = ("light", "") if light_guess else ("heavy", queue)
            try:
                msg = protocol.decode(raw, queue, max_bytes=self.settings.max_message_bytes)
                try:
                    spec = lookup(msg.task)
                except UnknownTask:
                    raise _refusal(f"unknown task {msg.task!r}", msg, protocol.NotRegistered(msg.task)) from None
                try:
                    spec.check_arguments(msg.args, msg.kwargs)
                except TypeError as exc:
                    raise _refusal(f"wrong arguments for {msg.task}: {exc}", msg, TypeError(str(exc))) from None
            except Refused as exc:
                self._refuse(exc, queue, source, inflight, raw, slot)
                continue
            self.metrics.count("received", queue, spec.name)
            self.stats["received"] += 1
            if msg.expires is not None and msg.expires <= now:
                self.buf.result(msg.id, protocol.revoked_json(msg.id), self.settings.result_expires)
                self.buf.ack(inflight, raw)
                self.buf_release.append(slot)
                self.metrics.count("revoked", queue, spec.name)
                self.stats["revoked"] += 1
                _log_job(msg, "revoked (expired)", now - msg.expires)
                continue
            if msg.eta is not None and msg.eta > now + 0.002:
                # A native countdown is relative: park the message with its absolute eta instead.
                parked = protocol.reencode(msg) if msg.kind == "native" else raw
                self.buf.delay(self.broker.delayed_key, msg.eta, source, parked)
                self.buf.ack(inflight, raw)
                self.buf_release.append(slot)
                self.due_event.set()
                log.debug("job %s %s try=%d delayed until %s", msg.id, msg.task, msg.retries, protocol.to_iso(msg.eta))
                continue
            job = Job(msg, spec, source, inflight, slot)
            to_run.append(job)
        self.flush_event.set()
        if not to_run:
            return
        try:
            stored = await self.broker.results([j.id for j in to_run])
        except (RedisError, OSError):
            stored = [None] * len(to_run)  # the store step still refuses to overwrite a SUCCESS
        for job, meta in zip(to_run, stored, strict=True):
            if protocol.is_success(meta):
                self.buf.ack(job.inflight, job.msg.raw)
                self.buf_release.append(job.slot)
                self.stats["duplicates"] += 1
                _log_job(job.msg, "skipped: SUCCESS already stored", 0.0)
                continue
            self.jobs[job.id] = job
            if job.spec.light:
                self.light_ready.append(job)
            else:
                asyncio.get_running_loop().create_task(self._run_heavy(job))
        self.flush_event.set()
        self._kick()

    def _refuse(self, exc: Refused, queue: str, source: str, inflight: str, raw: bytes,
                slot: tuple[str, str]) -> None:
        reason = str(exc)
        task_id = getattr(exc, "task_id", None)
        task = getattr(exc, "task", None)
        if task_id:
            error = getattr(exc, "error", None) or getattr(exc, "exc_cls", protocol.DecodeError)(reason)
            self.buf.result(task_id, protocol.failure_json(task_id, protocol.exception_meta(error)),
                            self.settings.result_expires)
        self.buf.dead(queue, dead_entry(reason, queue, raw, task_id=task_id, task=task, consumer=self.name,
                                        source=source))
        self.buf.ack(inflight, raw)
        self.buf_release.append(slot)
        self.metrics.count("dead_lettered", queue, task or "?")
        self.metrics.count("failed", queue, task or "?")
        self.stats["refused"] += 1
        log.warning("job %s %s refused: %s (dead-lettered to %s.dead)", task_id or "-", task or "-", reason, queue)

    # --- running ------------------------------------------------------------------------------------------

    def _kick(self) -> None:
        """Hand ready light jobs to executors: at most two calls in flight each, so batches grow with load."""
        loop = asyncio.get_running_loop()
        while self.light_ready:
            ex = min(self.executors, key=lambda e: e.busy)
            if ex.busy >= 2:
                return
            n = min(self.batch_size, len(self.light_ready))
            batch = [self.light_ready.popleft() for _ in range(n)]
            ex.busy += 1
            loop.create_task(self._run_light(ex, batch))

    async def _run_light(self, ex: _Executor, batch: list[Job]) -> None:
        now = time.time()
        for job in batch:
            job.started = now
        payload = [(j.spec.name, j.msg.args, j.msg.kwargs, j.id, j.msg.retries, j.msg.queue, self._limits(j)[0])
                   for j in batch]
        limit = max(self._limits(j)[1] for j in batch) + KILL_GRACE_SECONDS
        outcomes = None
        try:
            outcomes = await asyncio.wait_for(_await(ex.actor.run_batch.remote(payload)), limit)
        except TimeoutError:
            log.error("bridge %s: a light batch ran past %.0f s; restarting its executor and running the "
                      "%d jobs one by one", self.name, limit, len(batch))
        except Exception as exc:  # noqa: BLE001 - the executor died; its jobs run again
            log.error("bridge %s: light executor failed (%s); running its %d jobs again", self.name, exc, len(batch))
        ex.busy -= 1
        if outcomes is None:
            self._replace_executor(ex)
            for job in batch:
                job.light_tries += 1
                asyncio.get_running_loop().create_task(self._run_heavy(job, from_light=True))
        else:
            ex.done += len(batch)
            for job, outcome in zip(batch, outcomes, strict=True):
                self._finish(job, outcome)
            self.flush_event.set()
            limit_calls = self.settings.worker_max_tasks_per_child
            if limit_calls and ex.done >= limit_calls and ex.busy == 0:
                self._replace_executor(ex)
        self._kick()

    def _replace_executor(self, ex: _Executor) -> None:
        with contextlib.suppress(Exception):
            ray.kill(ex.actor)
        fresh = _Executor(self.settings)
        self.executors[self.executors.index(ex)] = fresh

    def _limits(self, job: Job) -> tuple[float, float]:
        """(soft, hard) seconds: the message's timelimit, else the task's, else the settings'."""
        hard = job.msg.time_limit or job.spec.time_limit or self.settings.task_time_limit
        soft = job.msg.soft_time_limit or job.spec.soft_time_limit or self.settings.task_soft_time_limit
        return min(soft, hard), hard

    async def _run_heavy(self, job: Job, from_light: bool = False) -> None:
        queue = job.msg.queue
        async with self.heavy_sem[queue]:
            job.started = time.time()
            if not from_light:
                self.buf.result(job.id, protocol.started_json(job.id, {"hostname": self.name, "pid": None}),
                                self.settings.result_expires)
                self.flush_event.set()
            _log_job(job.msg, "started", job.started - job.claimed, level=logging.DEBUG)
            options: dict[str, Any] = {"num_cpus": job.spec.num_cpus, "num_gpus": job.spec.num_gpus,
                                       "name": f"{job.spec.name}:{job.id}"}
            if self.settings.worker_max_tasks_per_child:
                options["max_calls"] = self.settings.worker_max_tasks_per_child
            payload = (job.spec.name, job.msg.args, job.msg.kwargs, job.id, job.msg.retries, queue,
                       self._limits(job)[0])
            ref = run_heavy.options(**options).remote(self.settings_ref, payload)
            outcome = await self._await_limited(job, ref)
        self._finish(job, outcome)
        self.flush_event.set()

    async def _await_limited(self, job: Job, ref: ray.ObjectRef) -> tuple:
        soft, hard = self._limits(job)
        t0 = time.perf_counter()
        fut = asyncio.ensure_future(_await(ref))
        # The worker raises SoftTimeLimitExceeded in the job at ``soft`` itself; a job still running a
        # moment later is cancelled through Ray, and one still running at ``hard`` is killed.
        first = min(hard, soft + SOFT_GRACE_SECONDS)
        done, _ = await asyncio.wait({fut}, timeout=first)
        soft_hit = False
        if not done:
            soft_hit = True
            log.warning("job %s %s try=%d past its soft time limit %.1f s: cancelling", job.id, job.spec.name,
                        job.msg.retries, soft)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)
            done, _ = await asyncio.wait({fut}, timeout=max(0.0, hard - first))
            if not done:
                log.warning("job %s %s try=%d hard time limit %.1f s: killing its worker", job.id, job.spec.name,
                            job.msg.retries, hard)
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait({fut}, timeout=KILL_GRACE_SECONDS)
                return ("fail", time.perf_counter() - t0, protocol.exception_meta(protocol.TimeLimitExceeded(hard)), "")
        elapsed = time.perf_counter() - t0
        try:
            return fut.result()
        except ray.exceptions.TaskCancelledError:
            if soft_hit:
                return ("fail", elapsed, protocol.exception_meta(protocol.SoftTimeLimitExceeded()), "")
            return ("retry", elapsed, protocol.exception_meta(protocol.WorkerLostError("job was cancelled")), "",
                    None, None)
        except Exception as exc:  # noqa: BLE001 - worker died more often than Ray retries, object lost...
            return ("retry", elapsed, protocol.exception_meta(protocol.WorkerLostError(str(exc)[:500])),
                    protocol.format_traceback(exc), None, None)

    # --- finishing ------------------------------------------------------------------------------------------

    def _finish(self, job: Job, outcome: tuple) -> None:
        msg = job.msg
        kind, run_time = outcome[0], outcome[1]
        queue, task = msg.queue, job.spec.name
        self.metrics.observe(queue, task, run_time)
        elapsed = time.time() - job.claimed
        ttl = self.settings.result_expires
        buf = self.buf
        if kind == "ok":
            value_json = outcome[2]
            children = []
            if msg.callbacks or msg.chain:
                value = protocol.loads(value_json)
                for sig in msg.callbacks or ():
                    children.append(self._publish_next(sig, msg, (value,), None))
                if msg.chain:
                    children.append(self._publish_next(msg.chain[-1], msg, (value,), msg.chain[:-1]))
            buf.result(msg.id, protocol.success_json(msg.id, value_json, children=protocol.children_of(children),
                                                     parent_id=msg.parent_id), ttl)
            self.metrics.count("succeeded", queue, task)
            self.stats["succeeded"] += 1
            _log_job(msg, "succeeded", elapsed, run_time)
        else:
            exc_meta, tb = outcome[2], outcome[3]
            max_retries = self.settings.max_retries if job.spec.max_retries is None else job.spec.max_retries
            if kind == "retry" and outcome[5] is not None:
                max_retries = outcome[5]
            if kind == "retry" and msg.retries < max_retries:
                countdown = outcome[4] if outcome[4] is not None else self._backoff(job)
                due = time.time() + countdown
                buf.delay(self.broker.delayed_key, due, job.source,
                          protocol.reencode(msg, retries=msg.retries + 1, eta=due))
                buf.result(msg.id, protocol.failure_json(msg.id, exc_meta, tb, status=protocol.RETRY,
                                                         parent_id=msg.parent_id), ttl)
                self.due_event.set()
                self.metrics.count("retried", queue, task)
                self.stats["retried"] += 1
                _log_job(msg, f"retry in {countdown:.2f} s: {exc_meta.get('exc_type')}: "
                              f"{_short(exc_meta.get('exc_message'))}", elapsed, run_time, level=logging.WARNING)
            else:
                children = [self._publish_next(sig, msg, (msg.id,), None) for sig in msg.errbacks or ()]
                buf.result(msg.id, protocol.failure_json(msg.id, exc_meta, tb, parent_id=msg.parent_id,
                                                         children=protocol.children_of(children)), ttl)
                reason = f"{exc_meta.get('exc_type')}: {_short(exc_meta.get('exc_message'))}"
                if kind == "retry":
                    reason = f"gave up after {msg.retries} retries: {reason}"
                buf.dead(queue, dead_entry(reason, queue, msg.raw, task_id=msg.id, task=msg.task,
                                           retries=msg.retries, consumer=self.name, source=job.source))
                self.metrics.count("failed", queue, task)
                self.metrics.count("dead_lettered", queue, task)
                self.stats["failed"] += 1
                _log_job(msg, f"failed: {reason}", elapsed, run_time, level=logging.WARNING)
        buf.ack(job.inflight, msg.raw)
        self.buf_release.append(job.slot)
        self.jobs.pop(msg.id, None)

    def _backoff(self, job: Job) -> float:
        """Exponential backoff with jitter: base * 2**retries, capped, then between half and all of it."""
        delay = min(self.settings.retry_backoff_max, job.spec.retry_backoff * (2 ** job.msg.retries))
        return delay / 2 + random.uniform(0, delay / 2)

    def _publish_next(self, sig: dict, parent: protocol.Message, prepend: tuple, chain: list | None) -> str:
        try:
            spec = lookup(sig["task"])
            default = parent.queue if spec.queue == "*" else spec.queue
        except UnknownTask:
            default = parent.queue
        list_name, raw, task_id = protocol.next_message(sig, parent, prepend=prepend, chain=chain,
                                                        default_queue=default)
        self.buf.publish(list_name, raw)
        log.info("job %s %s published %s %s", parent.id, parent.task, sig["task"], task_id)
        return task_id

    # --- writing to Redis ---------------------------------------------------------------------------------

    _flushing = False

    async def _flush_loop(self) -> None:
        """Apply buffered transitions in one script call; whatever accumulates meanwhile goes next."""
        while True:
            await self.flush_event.wait()
            self.flush_event.clear()
            if not len(self.buf):
                continue
            ops, releases = self.buf, self.buf_release
            self.buf, self.buf_release = Ops(), []
            self._flushing = True
            try:
                while True:
                    try:
                        skipped = await self.broker.apply(ops)
                        self._redis_back()
                        break
                    except (RedisError, OSError) as exc:
                        await self._redis_down(exc)
                if skipped:
                    log.info("bridge %s: %d results not written, a SUCCESS was already stored", self.name, skipped)
            finally:
                self._flushing = False
            for slot in releases:
                self._release(slot)

    async def _due_loop(self) -> None:
        """Move delayed jobs (eta, countdown, retry backoff) back to their queues when due."""
        while True:
            self.due_event.clear()
            try:
                moved, nxt = await self.broker.move_due()
                self._redis_back()
            except (RedisError, OSError) as exc:
                await self._redis_down(exc)
                continue
            if moved:
                self.wake.set()
                continue
            wait = 0.5 if nxt is None else min(0.5, max(0.005, nxt - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.due_event.wait(), wait)

    async def _heartbeat_loop(self) -> None:
        beat = self.settings.heartbeat_seconds
        while True:
            depths = None
            try:
                await self.broker.heartbeat()
                await self._recover_dead()
                depths = await self.broker.depths()
                self._redis_back()
            except (RedisError, OSError) as exc:
                await self._redis_down(exc)
            in_flight = dict.fromkeys(self.queues, 0)
            for job in self.jobs.values():
                in_flight[job.msg.queue] = in_flight.get(job.msg.queue, 0) + 1
            with contextlib.suppress(Exception):
                self.metrics.push(depths, in_flight)
            self.last_depths = depths
            await asyncio.sleep(min(beat, 1.0))

    async def _recover_dead(self) -> None:
        for consumer, seen in await self.broker.dead_consumers(self.settings.consumer_timeout_seconds):
            n = await self.broker.requeue_consumer(consumer)
            await self.broker.forget_consumer(consumer, seen)
            log.warning("bridge %s: consumer %s stopped heart-beating; requeued its %d jobs", self.name, consumer, n)
            if n:
                self.wake.set()

    # --- inspection ----------------------------------------------------------------------------------------

    def active(self) -> list[dict]:
        now = time.time()
        return [{"id": j.id, "task": j.spec.name, "queue": j.msg.queue, "retries": j.msg.retries,
                 "args": j.msg.args, "kwargs": j.msg.kwargs, "bridge": self.name,
                 "started": protocol.to_iso(j.started), "elapsed": round(now - (j.started or j.claimed), 3),
                 "running": j.started is not None} for j in list(self.jobs.values())]

    def snapshot(self) -> dict:
        return {
            "bridge": self.name, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
            "queues": list(self.queues), "concurrency": self.concurrency, "light_capacity": self.light_capacity,
            "executors": len(self.executors), "batch_size": self.batch_size,
            "uptime": round(time.time() - self.started_at, 1), "redis_ok": self.redis_ok,
            "claimed_light": self.n_light, "claimed_heavy": dict(self.n_heavy), "active": len(self.jobs),
            "totals": dict(self.stats), "queue_depth": getattr(self, "last_depths", None),
        }


def _registry() -> dict[str, TaskSpec]:
    from raysys.tasks.registry import REGISTRY  # noqa: PLC0415

    return REGISTRY


def _refusal(reason: str, msg: protocol.Message, error: BaseException) -> Refused:
    err = Refused(reason)
    err.task_id = msg.id  # type: ignore[attr-defined]
    err.task = msg.task  # type: ignore[attr-defined]
    err.error = error  # type: ignore[attr-defined]
    return err


def _task_name(raw: bytes) -> str | None:
    i = raw.find(b'"task": "')
    if i < 0:
        return None
    j = raw.find(b'"', i + 9)
    return raw[i + 9:j].decode("utf-8", "replace") if j > 0 else None


def _short(message: Any) -> str:
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(m) for m in message)
    text = str(message)
    return text if len(text) <= 300 else text[:297] + "..."


def _log_job(msg: protocol.Message, transition: str, elapsed: float, run_time: float | None = None,
             level: int = logging.INFO) -> None:
    if log.isEnabledFor(level):
        run = f" run={run_time:.4f}s" if run_time is not None else ""
        log.log(level, "job %s %s try=%d queue=%s %s elapsed=%.4fs%s", msg.id, msg.task, msg.retries, msg.queue,
                transition, elapsed, run)


async def _await(ref: ray.ObjectRef) -> Any:
    return await ref


def _setup_logging(level: int) -> None:
    root = logging.getLogger("raysys")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=100)
class QueueBridge:
    """An async actor consuming ``queues`` as consumer ``name`` (its in-flight lists survive it).

    Ray restarts it after a crash; the new incarnation requeues what the old one held and goes on.
    """

    def __init__(self, settings: Settings, name: str, queues: tuple[str, ...], concurrency: int,
                 executors: int | None = None, batch_size: int | None = None, log_level: int = logging.INFO) -> None:
        _setup_logging(log_level)
        self.core = BridgeCore(settings, name, tuple(queues), concurrency,
                               executors or settings.bridge_executors, batch_size or settings.bridge_batch_size)
        self._run = asyncio.get_running_loop().create_task(self.core.run())

    async def ready(self) -> bool:
        """Wait until the bridge has recovered its jobs and is claiming."""
        await self.core.ready.wait()
        return True

    async def stats(self) -> dict:
        return self.core.snapshot()

    async def active(self) -> list[dict]:
        return self.core.active()

    async def registered(self) -> list[dict]:
        return [{"name": s.name, "queue": s.queue, "aliases": list(names_of(s)), "light": s.light,
                 "num_cpus": s.num_cpus, "num_gpus": s.num_gpus,
                 "max_retries": s.max_retries} for s in sorted(_registry().values(), key=lambda s: s.name)]

    async def pid(self) -> int:
        return os.getpid()

    async def executor_pids(self) -> list[int]:
        return list(await asyncio.gather(*[_await(e.actor.pid.remote()) for e in self.core.executors]))

    async def stop(self, timeout: float = 30.0) -> dict:
        await self.core.ready.wait()
        return await self.core.stop(timeout)


def default_concurrency(settings: Settings) -> int:
    """``WORKER_CONCURRENCY``, else the cluster's CPU count (Ray must be initialised)."""
    if settings.worker_concurrency:
        return settings.worker_concurrency
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def bridge_names() -> list[str]:
    """Names of the bridges running on this cluster (Ray must be initialised)."""
    from ray.util import list_named_actors  # noqa: PLC0415

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == RAY_NAMESPACE and a["name"].startswith(BRIDGE_ACTOR_PREFIX))


def bridge_handles() -> list[Any]:
    out = []
    for name in bridge_names():
        with contextlib.suppress(ValueError):
            out.append(ray.get_actor(name, namespace=RAY_NAMESPACE))
    return out


def start_bridges(settings: Settings, queues: list[str] | tuple[str, ...] | None = None,
                  concurrency: int | None = None, count: int = 1, *, detached: bool = False,
                  wait: bool = True, executors: int | None = None, batch_size: int | None = None) -> list[Any]:
    """Start ``count`` QueueBridge actors on the current Ray cluster (the caller did ``ray.init``).

    Each consumes ``queues`` (default ``settings.queues``) with ``concurrency`` heavy jobs per queue
    (default ``WORKER_CONCURRENCY`` or the cluster's CPUs). ``detached`` bridges outlive the caller.
    Returns their handles once they are consuming (``wait``).
    """
    queues = tuple(queues or settings.queues)
    concurrency = concurrency or default_concurrency(settings)
    taken = set(bridge_names())
    handles = []
    index = 0
    while len(handles) < count:
        name = f"{BRIDGE_ACTOR_PREFIX}{index}"
        index += 1
        if name in taken:
            continue
        try:
            handle = QueueBridge.options(name=name, namespace=RAY_NAMESPACE,
                                         lifetime="detached" if detached else None).remote(
                settings, name, queues, concurrency, executors, batch_size,
                logging.getLogger("raysys").getEffectiveLevel())
        except ValueError:  # the name is still held by a bridge being stopped
            continue
        handles.append(handle)
    if wait:
        ray.get([h.ready.remote() for h in handles])
    return handles


def stop_bridges(handles: list[Any], timeout: float = 30.0) -> list[dict]:
    """Stop bridges gracefully (finish or give back their jobs), then end their actors."""
    out = []
    refs = [h.stop.remote(timeout) for h in handles]
    for ref in refs:
        try:
            out.append(ray.get(ref, timeout=timeout + 15))
        except Exception as exc:  # noqa: BLE001 - a dead bridge's jobs are recovered by the next one
            out.append({"error": str(exc)})
    for h in handles:
        with contextlib.suppress(Exception):
            ray.kill(h, no_restart=True)
    return out


__all__ = ["QueueBridge", "start_bridges", "stop_bridges", "bridge_handles", "bridge_names"]
