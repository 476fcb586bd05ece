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
3. **Run**: light tasks (``spec.light``: quick, well-behaved ones such as ``raysys.ping``) in batches on
   a thread of the bridge's own process (no Ray hop between claim and run: the lowest latency), or with
   ``BRIDGE_EXECUTORS`` > 0 on that many long-lived :class:`LightExecutor` actors (a process of their own,
   one Ray call for many jobs); heavy ones as Ray tasks with the task's ``num_cpus``/``num_gpus``,
   ``max_calls`` from ``WORKER_MAX_TASKS_PER_CHILD``, a soft time limit (``ray.cancel``) and a hard
   one (``ray.cancel(force=True)``).
4. **Finish**: result (SETEX + PUBLISH, Celery's format), link callbacks and the next chain step
   published, retry (RETRY state + delayed set with exponential backoff and jitter), or FAILURE +
   dead letter + errbacks; all in the same atomic script as the ack. Pending transitions are batched
   into one script call while the previous one runs.

A heartbeat marks the consumer alive; survivors requeue the in-flight lists of a consumer whose
heartbeat stopped, and a restarted bridge (Ray restarts it) requeues its own at once. Redis outages
are waited out: finished results stay in memory and are written when Redis is back. A claim whose reply
a dropped connection lost leaves messages in our in-flight lists that we never saw: after any claim error
the bridge pauses claiming and gives back whatever its lists hold beyond what it knows it holds
(:meth:`BridgeCore._reconcile`); a batch of transitions re-sent after a lost reply is a no-op (its token).

Celery compatibility beyond running jobs:

- Every bridge also consumes Celery's default queue (``celery``, ``RAYSYS_DEFAULT_QUEUE``), where a
  producer's unrouted ``send_task`` lands: known names run, unknown ones fail with NotRegistered.
- ``revoke`` (Celery's pidbox broadcast on ``/<db>.celery.pidbox``): revoked ids are remembered for three
  hours (in memory and in ``raysys:revoked`` for bridges started later); a revoked job that is queued,
  delayed or retrying gets REVOKED (``revoked``) instead of running. ``terminate=True`` also cancels a
  heavy job that is running and interrupts a light one on the bridge's thread (REVOKED ``terminated``; a
  light job blocked in a C call ends at its hard limit); a running light job on an executor actor finishes.
- ``inspect`` (``app.control.inspect()``, ``celery -A app inspect ...``): each bridge answers on the same
  broadcast like a Celery worker (:mod:`raysys.queue.control`).
- ``ignore_result``: no state is stored at all (not even STARTED or FAILURE), as Celery does.
- The same id delivered again while it runs on this bridge is dropped (one run, one result).
- Chords run as Celery's Redis result backend runs them (:mod:`raysys.queue.chord`): the body once, after
  every header part succeeded, with their results in order; a part that fails for good (or is refused or
  revoked) fails the body with ``celery.exceptions.ChordError``. Groups and chains run (a group's members are
  published individually; ``celery.group``/``celery.chain``/``celery.chord`` signatures in links and chain
  steps are expanded).
- Task lifecycle hooks (``on_success``, ``on_failure``, ``on_retry``; per task and global, see
  :mod:`raysys.tasks.hooks`) are called when a job's transition is settled here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import socket
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import ray
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError

from raysys.config import Settings
from raysys.constants import BRIDGE_ACTOR_PREFIX, RAY_NAMESPACE
from raysys.errors import Refused, UnknownTask
from raysys.queue import chord, control, protocol
from raysys.queue.metrics import BridgeMetrics
from raysys.queue.redis import Broker, NotApplied, Ops, dead_entry
from raysys.queue.worker import LightExecutor, ThreadRunner, prepare, run_heavy
from raysys.tasks import hooks
from raysys.tasks.registry import TaskSpec, lookup, names_of

log = logging.getLogger("raysys.queue.bridge")

POLL_SECONDS = 0.1        # idle re-check of every list (priority lists, missed wake-ups)
BLOCK_SECONDS = 1.0       # BLMOVE timeout of the per-queue waiters
KILL_GRACE_SECONDS = 5.0  # after the hard limit, how long a force-cancelled task may take to go
SOFT_GRACE_SECONDS = 0.5  # after the soft limit (raised in the job), when the bridge cancels the Ray task
LIGHT_DETACH_SECONDS = 0.5  # a light job running this long finishes alone; the jobs behind it go on a fresh thread
MAX_DETACHED = 16           # light jobs finishing alone at once, at most (beyond: the next ones wait in line)
REVOKE_KEEP_SECONDS = 3 * 3600.0  # how long a revoke is remembered (Celery's REVOKE_EXPIRES)


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
    ref: Any = None           # the heavy job's Ray ObjectRef while it runs (revoke with terminate cancels it)
    runner: Any = None        # the ThreadRunner running this light job's batch, and its place in it
    index: int = 0
    terminated: bool = False  # revoked with terminate=True while running
    chord_recorded: bool = False  # chord: this header part's result is counted in Redis (its ack may follow)

    @property
    def id(self) -> str:
        return self.msg.id


class _Executor:
    """Where a bridge runs batches of light jobs: a thread of its own process, or a LightExecutor actor."""

    def __init__(self, settings: Settings, in_process: bool) -> None:
        self.runner = ThreadRunner(settings) if in_process else None
        self.actor = None if in_process else LightExecutor.remote(settings)
        # Calls in flight at once: an actor gets a second batch while the first one's reply travels back;
        # the thread runs one batch at a time (a batch queued behind a stuck one could not be moved).
        self.max_busy = 1 if in_process else 2
        self.busy = 0
        self.done = 0

    def close(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()
        else:
            with contextlib.suppress(Exception):
                ray.kill(self.actor)


class BridgeCore:
    """The bridge's logic on the actor's event loop (separate from the actor so it reads top-down)."""

    def __init__(self, settings: Settings, name: str, queues: tuple[str, ...], concurrency: int,
                 executors: int, batch_size: int) -> None:
        self.settings = settings
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.n_executors = executors  # 0: light jobs on a thread of this process
        self.light_capacity = max(batch_size * max(executors, 1) * 2, 2 * len(queues))
        self.broker = Broker(settings, name, queues)
        self.worker_name = f"{name}@{socket.gethostname()}"
        self.metrics = BridgeMetrics(name)
        self.n_light = 0
        self.n_heavy: dict[str, int] = dict.fromkeys(queues, 0)
        self.heavy_sem = {q: asyncio.Semaphore(concurrency) for q in queues}
        self.jobs: dict[str, Job] = {}
        self.light_ready: deque[Job] = deque()
        self.n_detached = 0  # light jobs finishing alone on a thread of their own
        self.executors: list[_Executor] = []
        self.buf = self._new_ops()
        self.buf_release: list[tuple[str, str]] = []
        # (in-flight list, raw) -> copies this bridge claimed and has not seen acked in Redis yet; whatever
        # else sits in its in-flight lists was claimed by a call whose reply a dropped connection lost.
        self.held: Counter[tuple[str, bytes]] = Counter()
        self.claims_active = 0      # BLMOVEs in progress (the reconciliation waits for them)
        # Set when the last claim script found nothing; clear until the first claim has run and while claims
        # find messages (more may be waiting), so the waiters block only on queues the claim loop found empty
        # (it takes a backlog, in order).
        self.claims_idle = asyncio.Event()
        self.need_reconcile = False
        self.reconciling = False
        self.revoked: dict[str, float] = {}  # job id -> when it was revoked (Celery's revoke broadcast)
        self.wake = asyncio.Event()
        self.flush_event = asyncio.Event()
        self.due_event = asyncio.Event()
        self.stopping = False
        self.ready = asyncio.Event()
        self.redis_ok = True
        self.memory_full = False  # Redis refused a claim's first write (maxmemory)
        self.tasks: list[asyncio.Task] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.by_task: Counter[str] = Counter()  # runs per task name (Celery's ``inspect stats`` "total")
        self.started_at = time.time()
        self.settings_ref = None
        self.light_names: list[str] = []
        # Queues callbacks may go to: the configured ones and this bridge's own (with their priority lists).
        self.callback_targets = settings.callback_targets | frozenset(queues)

    def _new_ops(self) -> Ops:
        return Ops(self.settings.key_prefix, self.settings.dead_letter_max)

    # --- life cycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        prepare(self.settings)
        if self.settings.bridge_niceness is not None:
            _renice(self.settings.bridge_niceness)
        self.light_names = sorted({n for spec in _registry().values() if spec.light for n in names_of(spec)})
        self.settings_ref = ray.put(self.settings)
        self.executors = [_Executor(self.settings, in_process=self.n_executors == 0)
                          for _ in range(max(self.n_executors, 1))]
        await self._until_ok(self._recover_own, "recover in-flight jobs")
        await self._until_ok(self.broker.heartbeat, "register")
        self.revoked.update(await self._until_ok(
            lambda: self.broker.revoked_since(time.time() - REVOKE_KEEP_SECONDS), "read revoked ids"))
        log.info("bridge %s consuming %s (concurrency %d per queue, %d light slots, light jobs %s) pid %d",
                 self.name, ",".join(self.queues), self.concurrency, self.light_capacity,
                 f"on {self.n_executors} executor actors" if self.n_executors else "in process", os.getpid())
        loop = asyncio.get_running_loop()
        loops = {"claim": self._claim_loop, "flush": self._flush_loop, "due": self._due_loop,
                 "heartbeat": self._heartbeat_loop, "control": self._control_loop}
        loops.update({f"waiter:{q}": (lambda q=q: self._waiter(q)) for q in self.queues})
        self.tasks = [loop.create_task(self._supervise(name, fn)) for name, fn in loops.items()]
        # Everything imported so far (Ray, task modules) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.ready.set()

    async def _supervise(self, name: str, loop_fn) -> None:  # noqa: ANN001
        """Run one of the bridge's loops; a bug that escapes it is logged and the loop restarted, so the
        bridge never silently stops claiming, flushing or heart-beating."""
        while not self.stopping or name == "flush":
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats[f"loop_errors:{name}"] += 1
                log.exception("bridge %s: the %s loop failed; restarting it", self.name, name)
                await asyncio.sleep(0.5)

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
        await asyncio.to_thread(hooks.drain, 5.0)  # hooks: the settled jobs' hooks run before the bridge goes
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
            ex.close()
        with contextlib.suppress(Exception):
            await self.broker.close()
        log.info("bridge %s stopped", self.name)
        return {"requeued": requeued}

    # --- claiming ---------------------------------------------------------------------------------------

    def _free(self) -> tuple[int, dict[str, int]]:
        light = self.light_capacity - self.n_light
        heavy = {q: self.concurrency - self.n_heavy[q] for q in self.queues}
        return light, heavy

    async def _claim_loop(self) -> None:
        while not self.stopping:
            self.wake.clear()
            if self.need_reconcile:
                await self._reconcile()
                continue
            light, heavy = self._free()
            got = []
            if light > 0 or any(v > 0 for v in heavy.values()):
                try:
                    got = await self.broker.claim(light, heavy, self.light_names)
                    self._writes_back()
                    if got:
                        self.claims_idle.clear()
                    else:
                        self.claims_idle.set()
                except (RedisError, OSError) as exc:
                    if _write_refused(exc):  # the script's first LMOVE was refused: it moved nothing
                        await self._memory_full(exc)
                        continue
                    self.need_reconcile = True  # the script may have run and its reply been lost
                    await self._redis_down(exc)
                    continue
            if got:
                for source, light_guess, raw in got:
                    self._count_claim(source, light_guess, raw)
                asyncio.get_running_loop().create_task(self._admit(got))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)

    async def _waiter(self, queue: str) -> None:
        """Block on the queue's main list while a slot is free, so an idle bridge reacts at once.

        A blocked waiter reserves no slot: the claim loop may fill every free slot meanwhile (the priority
        lists must not starve while a waiter sits on the main list), so a bridge holds at most one message
        per waiter above its slots; the heavy semaphore still caps what runs at once.
        """
        conn = self.broker.connect(socket_timeout=BLOCK_SECONDS + 5)
        try:
            while not self.stopping:
                light, heavy = self._free()
                if not self.claims_idle.is_set():  # the claim loop takes a backlog (in order): block once it is through
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.claims_idle.wait(), POLL_SECONDS)
                    continue
                if light < 1 or heavy[queue] < 1 or self.need_reconcile or self.reconciling:
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                self.claims_active += 1
                try:
                    raw = await self.broker.block_claim(queue, BLOCK_SECONDS, conn)
                except (RedisError, OSError) as exc:
                    raw = None
                    if _write_refused(exc):  # refused before it moved anything
                        await self._memory_full(exc)
                    else:
                        self.need_reconcile = True  # BLMOVE may have moved a message whose reply was lost
                        await self._redis_down(exc)
                finally:
                    self.claims_active -= 1
                if raw is not None:
                    light_guess = _task_name(raw) in self.light_names
                    self._count_claim(queue, light_guess, raw)
                    asyncio.get_running_loop().create_task(self._admit([(queue, light_guess, raw)]))
                    if self.n_light + sum(self.n_heavy.values()) > 1:
                        self.wake.set()  # busy: more may be waiting, let the claim loop take a batch
                    else:
                        await asyncio.sleep(0)  # idle: admit it (up to its first Redis call) before blocking again
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    def _count_claim(self, source: str, light: bool, raw: bytes) -> None:
        self.held[(self.broker.inflight[source], raw)] += 1
        if light:
            self.n_light += 1
        else:
            self.n_heavy[self.broker.list_queue[source]] += 1

    async def _reconcile(self) -> None:
        """After a claim whose reply was lost: give back what sits in our in-flight lists unknown to us.

        Claims pause meanwhile (the claim loop runs this; waiters wait), so every message this bridge took
        and knows of is counted in ``held`` until the ack that removes it from Redis has been applied.
        """
        self.reconciling = True
        try:
            while self.claims_active:
                await asyncio.sleep(0.02)
            contents = await self.broker.inflight_contents()
            moved = 0
            for source, raws in contents.items():
                inflight = self.broker.inflight[source]
                for raw, n in Counter(raws).items():
                    for _ in range(n - self.held.get((inflight, raw), 0)):
                        moved += await self.broker.requeue_one(source, raw)
            self.need_reconcile = False
            self._redis_back()
            if moved:
                log.warning("bridge %s: %d claimed messages lost their claim's reply; they are back on their "
                            "queues", self.name, moved)
                self.wake.set()
        except (RedisError, OSError) as exc:
            await self._redis_down(exc)
        finally:
            self.reconciling = False

    def _release(self, slot: tuple[str, str]) -> None:
        """Free a slot; wake the claim loop only where it has something to do: the last claim found messages
        (a backlog) or every slot of this kind was taken (the waiters stand aside then). An idle bridge's
        waiters already block on the main lists (the claim loop still polls every list each POLL_SECONDS),
        and a claim script per finished job only competed with the next job for Redis and the loop."""
        kind, queue = slot
        if kind == "light":
            full = self.n_light >= self.light_capacity
            self.n_light -= 1
        else:
            full = self.n_heavy[queue] >= self.concurrency
            self.n_heavy[queue] -= 1
        if full or not self.claims_idle.is_set():
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

    def _writes_back(self) -> None:
        self._redis_back()
        if self.memory_full:
            log.warning("bridge %s: Redis takes writes again", self.name)
            self.memory_full = False

    async def _memory_full(self, exc: Exception) -> None:
        """Redis refuses writes (``maxmemory`` reached, or read-only): claim nothing until it takes them again;
        the jobs running finish and wait in memory, in flight in Redis (see the flush loop)."""
        if not self.memory_full:
            log.error("bridge %s: Redis refuses writes (%s); claiming nothing until it takes them again", self.name,
                      str(exc)[:200])
        self.memory_full = True
        self.stats["claims_refused"] += 1
        await asyncio.sleep(0.25)

    # --- admitting --------------------------------------------------------------------------------------

    async def _admit(self, items: list[tuple[str, bool, bytes]]) -> None:
        now = time.time()
        to_run: list[Job] = []
        for source, light_guess, raw in items:
            queue = self.broker.list_queue[source]
            inflight = self.broker.inflight[source]
            slot = ("light", "") if light_guess else ("heavy", queue)
            try:
                job = self._admit_one(raw, queue, source, inflight, slot, now)
            except Refused as exc:
                self._refuse(exc, queue, source, inflight, raw, slot)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug here must not strand the message in flight
                log.exception("bridge %s: cannot admit a message from %s", self.name, source)
                err = protocol.refused(f"internal error admitting the message: {type(exc).__name__}: {exc}",
                                       protocol.sniff_id(raw), exc_cls=protocol.DecodeError)
                self._refuse(err, queue, source, inflight, raw, slot)
                continue
            if job is not None:
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
                self._drop(job, "skipped: SUCCESS already stored")
                continue
            if job.id in self.jobs:
                # The same id delivered again while it runs here (a producer's retry, a duplicated push):
                # one run decides the one result.
                self._drop(job, "skipped: a job with this id is already running here", level=logging.WARNING)
                continue
            self.jobs[job.id] = job
            if job.spec.light:
                self.light_ready.append(job)
            else:
                asyncio.get_running_loop().create_task(self._run_heavy(job))
        self.flush_event.set()
        self._kick()

    def _admit_one(self, raw: bytes, queue: str, source: str, inflight: str, slot: tuple[str, str],
                   now: float) -> Job | None:
        """Decode and check one message; settle it at once (revoked, expired, delayed) or return its Job.

        Raises:
            Refused: the message can never run (its FAILURE and dead letter are the caller's).
        """
        msg = protocol.decode(raw, queue, max_bytes=self.settings.max_message_bytes, tz=self.settings.timezone)
        if msg.chord is not None:  # chord: a header part that can never be counted fails its body
            chord.check_part(msg)
        body = protocol.chord_body_id(msg.chord)  # chord: a refused part fails its body
        try:
            spec = lookup(msg.task)
        except UnknownTask:
            raise protocol.refused(f"unknown task {msg.task!r}", msg.id, msg.task,
                                   error=protocol.NotRegistered(msg.task), also_fail=body) from None
        try:
            spec.check_arguments(msg.args, msg.kwargs)
        except TypeError as exc:
            raise protocol.refused(f"wrong arguments for {msg.task}: {exc}", msg.id, msg.task,
                                   error=TypeError(str(exc)), also_fail=body) from None
        self.metrics.count("received", queue, spec.name)
        self.stats["received"] += 1
        if msg.id in self.revoked:
            self._settle_revoked(msg, spec, inflight, raw, slot, "revoked")
            return None
        if msg.expires is not None and msg.expires <= now:
            self._settle_revoked(msg, spec, inflight, raw, slot, "expired")
            return None
        if msg.eta is not None and msg.eta > now + 0.002:
            # A native countdown is relative: park the message with its absolute eta instead.
            parked = protocol.reencode(msg) if msg.kind == "native" else raw
            self.buf.delay(self.broker.delayed_key, msg.eta, source, parked)
            self.buf.ack(inflight, raw)
            self.buf_release.append(slot)
            self.due_event.set()
            log.debug("job %s %s try=%d delayed until %s", msg.id, msg.task, msg.retries, protocol.to_iso(msg.eta))
            return None
        return Job(msg, spec, source, inflight, slot)

    def _settle_revoked(self, msg: protocol.Message, spec: TaskSpec, inflight: str, raw: bytes,
                        slot: tuple[str, str], reason: str) -> None:
        """REVOKED (``expired`` or ``revoked``, as a Celery worker writes it), ack, free the slot."""
        if not msg.ignore_result:
            self.buf.result(msg.id, protocol.revoked_json(msg.id, reason, extended=self._extended(msg)),
                            self.settings.result_expires)
        if msg.chord is not None:  # chord: a revoked part's body never gets all its parts
            chord.fail_body(self.buf, msg, protocol.exception_meta(protocol.TaskRevokedError(reason)),
                            self.settings.result_expires)
        self.buf.ack(inflight, raw)
        self.buf_release.append(slot)
        self.metrics.count("revoked", msg.queue, spec.name)
        self.stats["revoked"] += 1
        _log_job(msg, f"revoked ({reason})", 0.0)

    def _drop(self, job: Job, why: str, level: int = logging.INFO) -> None:
        """Ack a job that must not run (its result is or will be someone else's)."""
        self.buf.ack(job.inflight, job.msg.raw)
        self.buf_release.append(job.slot)
        self.stats["duplicates"] += 1
        _log_job(job.msg, why, 0.0, level=level)

    def _extended(self, msg: protocol.Message) -> dict | None:
        return protocol.extended_fields(msg, self.worker_name) if self.settings.result_extended else None

    def _refuse(self, exc: Refused, queue: str, source: str, inflight: str, raw: bytes,
                slot: tuple[str, str]) -> None:
        reason = str(exc)
        task_id = getattr(exc, "task_id", None)
        task = getattr(exc, "task", None)
        ttl = self.settings.result_expires
        if task_id:
            error = getattr(exc, "error", None) or getattr(exc, "exc_cls", protocol.DecodeError)(reason)
            self.buf.result(task_id, protocol.failure_json(task_id, protocol.exception_meta(error)), ttl)
        for other in getattr(exc, "also_fail", ()):  # a refused chord part: its body will never run
            # Another job's id, named by this message: failed only if no job has it yet (no result, no owner).
            error = protocol.ChordError(f"chord part {task_id or '?'} ({task or '?'}) was refused: {reason}")
            self.buf.result_new(other, protocol.failure_json(other, protocol.exception_meta(error)), ttl)
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
        """Hand ready light jobs to executors (at most ``max_busy`` calls in flight each, so batches grow
        with load)."""
        loop = asyncio.get_running_loop()
        while self.light_ready:
            ex = min(self.executors, key=lambda e: e.busy - e.max_busy)
            if ex.busy >= ex.max_busy:
                return
            batch: list[Job] = []
            while self.light_ready and len(batch) < self.batch_size:
                job = self.light_ready.popleft()
                if job.id in self.revoked:  # revoked while it waited for an executor
                    self._finish_revoked(job, "revoked")
                else:
                    batch.append(job)
            if not batch:
                self.flush_event.set()
                continue
            ex.busy += 1
            loop.create_task(self._run_light(ex, batch))

    async def _run_light(self, ex: _Executor, batch: list[Job]) -> None:
        now = time.time()
        for job in batch:
            job.started = now
        limits = [self._limits(j) for j in batch]
        payload = [(j.spec.name, j.msg.args, j.msg.kwargs, j.id, j.msg.retries, j.msg.queue, soft)
                   for j, (soft, _) in zip(batch, limits, strict=True)]
        if ex.runner is not None:
            await self._run_in_thread(ex, batch, payload, limits)
            return
        outcomes = await self._run_on_actor(ex, batch, payload, limits)
        ex.busy -= 1
        if outcomes is None:  # the executor actor died or overran: its jobs run again, one Ray task each
            self._replace_executor(ex)
            for job in batch:
                job.light_tries += 1
                asyncio.get_running_loop().create_task(self._run_heavy(job, from_light=True))
        else:
            ex.done += len(batch)
            self._settle_light(batch, outcomes)
            limit_calls = self.settings.worker_max_tasks_per_child
            if limit_calls and ex.done >= limit_calls and ex.busy == 0:
                self._replace_executor(ex)
        self._kick()

    def _settle_light(self, jobs: list[Job], outcomes: list[tuple]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            self._finish(job, outcome)
        self.flush_event.set()

    def _requeue_light(self, jobs: list[Job]) -> None:
        """Light jobs that never started go back to the front of the line."""
        for job in jobs:
            job.started = None
        self.light_ready.extendleft(reversed(jobs))

    async def _run_on_actor(self, ex: _Executor, batch: list[Job], payload: list, limits: list) -> list | None:
        limit = max(hard for _, hard in limits) + KILL_GRACE_SECONDS
        try:
            return await asyncio.wait_for(_await(ex.actor.run_batch.remote(payload)), limit)
        except TimeoutError:
            log.error("bridge %s: a light batch ran past %.0f s; restarting its executor and running the "
                      "%d jobs one by one", self.name, limit, len(batch))
        except Exception as exc:  # noqa: BLE001 - the executor died; its jobs run again
            log.error("bridge %s: light executor failed (%s); running its %d jobs again", self.name, exc, len(batch))
        return None

    async def _run_in_thread(self, ex: _Executor, batch: list[Job], payload: list, limits: list) -> None:
        """Run the batch on the bridge's light thread, watching the running job.

        A job still running after ``LIGHT_DETACH_SECONDS`` finishes alone on this thread: the batch's
        finished jobs are settled, the ones behind it go back in line, and the executor gets a fresh thread.
        Past its soft limit the job gets ``SoftTimeLimitExceeded`` raised in it; past its hard limit it fails
        with ``TimeLimitExceeded`` and its thread is left behind.
        """
        runner = ex.runner
        for i, job in enumerate(batch):
            job.runner, job.index = runner, i
        fut = asyncio.wrap_future(runner.submit(payload))
        settled, end = 0, len(batch)  # the jobs still this watcher's: batch[settled:end]
        owned = True                  # the executor is still waiting for this runner
        try:
            while True:
                current = runner.current
                if current is None:  # not picked up yet, or between two jobs
                    timeout = 0.05
                else:
                    index, started = current
                    soft, hard = limits[index]
                    due = started + (soft if runner.sent != current and soft < hard else hard)
                    if owned:  # time to let it finish alone, or (no room for that yet) to look again
                        detach_at = started + LIGHT_DETACH_SECONDS
                        due = min(due, max(detach_at, time.monotonic() + 0.25)
                                  if self.n_detached >= MAX_DETACHED else detach_at)
                    timeout = max(0.0, due - time.monotonic())
                done, _ = await asyncio.wait({fut}, timeout=timeout)
                if done:
                    try:
                        outcomes = fut.result()[:end]
                    except BaseException as exc:  # noqa: BLE001 - a bug in the runner must not strand the batch
                        log.exception("bridge %s: the light thread failed", self.name)
                        meta, tb = protocol.exception_meta(exc), protocol.format_traceback(exc)
                        outcomes = [("fail", 0.0, meta, tb)] * end
                    self._settle_light(batch[settled:len(outcomes)], outcomes[settled:])
                    self._requeue_light(batch[max(settled, len(outcomes)):end])  # a detached runner stops early
                    if runner.detached:  # it ran its last job
                        if ex.runner is runner:
                            ex.runner = ThreadRunner(self.settings)
                        runner.shutdown()
                    return
                if current is None or runner.current != current:
                    continue
                job, elapsed = batch[index], time.monotonic() - started
                if elapsed >= hard:
                    finished = runner.abandon(index, started)
                    if finished is None:
                        continue  # it finished meanwhile
                    self._abandon_light(ex, fut, batch[:end], settled, owned, finished, index, elapsed, hard)
                    return
                if elapsed >= soft and runner.soft_limit(index, started):
                    log.warning("job %s %s try=%d past its soft time limit %.1f s: raising SoftTimeLimitExceeded "
                                "in it", job.id, job.spec.name, job.msg.retries, soft)
                if owned and elapsed >= LIGHT_DETACH_SECONDS and self.n_detached < MAX_DETACHED:
                    finished, running = runner.detach()
                    if running != index or finished != index:
                        continue  # it finished meanwhile
                    self._settle_light(batch[settled:finished], runner.done[settled:finished])
                    self._requeue_light(batch[index + 1:end])
                    settled, end, owned = index, index + 1, False
                    self.n_detached += 1
                    self.stats["light_detached"] += 1
                    ex.runner = ThreadRunner(self.settings)
                    ex.busy -= 1
                    self._kick()
        finally:
            if owned:
                ex.busy -= 1
            else:
                self.n_detached -= 1
            self._kick()

    def _abandon_light(self, ex: _Executor, fut: asyncio.Future, batch: list[Job], settled: int, owned: bool,
                       finished: list[tuple], index: int, elapsed: float, hard: float) -> None:
        """Job ``index`` overran its hard limit on a thread now left behind: it fails, the jobs before it
        are settled, the ones after it go back in line."""
        job = batch[index]
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits for it any more
        self._settle_light(batch[settled:index], finished[settled:index])
        self._settle_light([job], [("fail", elapsed, protocol.exception_meta(protocol.TimeLimitExceeded(hard)), "")])
        self._requeue_light(batch[index + 1:])
        if owned:
            ex.runner = ThreadRunner(self.settings)
        self.stats["light_threads_abandoned"] += 1
        log.error("job %s %s try=%d light job past its hard time limit %.1f s: TimeLimitExceeded; its thread is "
                  "left behind (a thread cannot be killed). %d threads left behind so far: mark the task heavy if "
                  "it can block", job.id, job.spec.name, job.msg.retries, hard, self.stats["light_threads_abandoned"])

    def _replace_executor(self, ex: _Executor) -> None:
        ex.close()
        self.executors[self.executors.index(ex)] = _Executor(self.settings, in_process=False)

    def _limits(self, job: Job) -> tuple[float, float]:
        """(soft, hard) seconds: the message's timelimit (capped at MAX_MESSAGE_TIME_LIMIT), else the task's,
        else the settings'."""
        cap = self.settings.max_message_time_limit
        hard = min(job.msg.time_limit, cap) if job.msg.time_limit else (job.spec.time_limit
                                                                         or self.settings.task_time_limit)
        soft = min(job.msg.soft_time_limit, cap) if job.msg.soft_time_limit else (
            job.spec.soft_time_limit or self.settings.task_soft_time_limit)
        return min(soft, hard), hard

    async def _run_heavy(self, job: Job, from_light: bool = False) -> None:
        queue = job.msg.queue
        async with self.heavy_sem[queue]:
            if job.id in self.revoked:  # revoked while it waited for a slot
                self._finish_revoked(job, "revoked")
                self.flush_event.set()
                return
            job.started = time.time()
            if not from_light and not job.msg.ignore_result:
                self.buf.result(job.id, protocol.started_json(job.id, {"hostname": self.worker_name, "pid": None}),
                                self.settings.result_expires)
                self.flush_event.set()
            _log_job(job.msg, "started", job.started - job.claimed, level=logging.DEBUG)
            options: dict[str, Any] = {"num_cpus": job.spec.num_cpus, "num_gpus": job.spec.num_gpus,
                                       "name": f"{job.spec.name}:{job.id}"}
            if self.settings.worker_max_tasks_per_child:
                options["max_calls"] = self.settings.worker_max_tasks_per_child
            payload = (job.spec.name, job.msg.args, job.msg.kwargs, job.id, job.msg.retries, queue,
                       self._limits(job)[0])
            ref = job.ref = run_heavy.options(**options).remote(self.settings_ref, payload)
            outcome = await self._await_limited(job, ref)
            job.ref = None
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

    def _finish_revoked(self, job: Job, reason: str) -> None:
        self.jobs.pop(job.id, None)
        self._settle_revoked(job.msg, job.spec, job.inflight, job.msg.raw, job.slot, reason)

    def _finish(self, job: Job, outcome: tuple) -> None:
        msg = job.msg
        kind, run_time = outcome[0], outcome[1]
        if kind == "ok" and msg.chord is not None and not job.chord_recorded and not job.terminated:
            # chord: count the header part (and publish the body) before its result and ack are written
            asyncio.get_running_loop().create_task(self._chord_part(job, outcome))
            return
        queue, task = msg.queue, job.spec.name
        self.metrics.observe(queue, task, run_time)
        self.by_task[task] += 1
        if job.terminated:  # revoked with terminate=True: its worker was killed on purpose
            self._finish_revoked(job, "terminated")
            return
        elapsed = time.time() - job.claimed
        ttl = self.settings.result_expires
        buf = self.buf
        store = not msg.ignore_result  # Celery stores no state at all for ignore_result jobs
        extended = self._extended(msg) if store else None
        if kind == "ok":
            value_json = outcome[2]
            children: list[str] = []
            if msg.callbacks or msg.chain:
                value = protocol.loads(value_json)
                for sig in msg.callbacks or ():
                    children += self._publish_next(sig, msg, (value,), None)
                if msg.chain:
                    children += self._publish_next(msg.chain[-1], msg, (value,), msg.chain[:-1])
            if store:
                buf.result(msg.id, protocol.success_json(msg.id, value_json, children=protocol.children_of(children),
                                                         parent_id=msg.parent_id, extended=extended), ttl)
            self.metrics.count("succeeded", queue, task)
            self.stats["succeeded"] += 1
            _log_job(msg, "succeeded", elapsed, run_time)
            if hooks.wanted(job.spec):  # hooks: on_success(retval, task_id, args, kwargs)
                hooks.emit(job.spec, hooks.SUCCESS, msg.id, msg.args, msg.kwargs, retval=protocol.loads(value_json))
        elif kind == "outage" and msg.outages < self.settings.outage_max_retries:
            # A service the job needs is down (PostgreSQL restarting, ...): wait it out on the outage policy,
            # without spending the task's own retries, so an outage of minutes dead-letters nothing.
            exc_meta, tb = outcome[2], outcome[3]
            base, cap = self.settings.outage_retry_backoff, self.settings.outage_retry_backoff_max
            delay = min(cap, base * (2 ** min(msg.outages, 60)))
            countdown = delay / 2 + random.uniform(0, delay / 2)
            due = time.time() + countdown
            buf.delay(self.broker.delayed_key, due, job.source, protocol.reencode(msg, outages=msg.outages + 1, eta=due))
            if store:
                buf.result(msg.id, protocol.failure_json(msg.id, exc_meta, tb, status=protocol.RETRY,
                                                         parent_id=msg.parent_id, extended=extended), ttl)
            self.due_event.set()
            if hooks.wanted(job.spec):  # hooks: on_retry(exc, task_id, args, kwargs, einfo)
                hooks.emit(job.spec, hooks.RETRY, msg.id, msg.args, msg.kwargs,
                           exc=protocol.exception_from_meta(exc_meta), traceback=tb)
            self.metrics.count("retried", queue, task)
            self.stats["outage_retried"] += 1
            _log_job(msg, f"service unavailable, outage retry {msg.outages + 1}/{self.settings.outage_max_retries} "
                          f"in {countdown:.1f} s: {exc_meta.get('exc_type')}: {_short(exc_meta.get('exc_message'))}",
                     elapsed, run_time, level=logging.WARNING)
        else:
            exc_meta, tb = outcome[2], outcome[3]
            if kind == "outage":  # outage retries spent: from here on an ordinary failure, on the task's retries
                kind = "retry"
                outcome = ("retry", run_time, exc_meta, tb, None, None)
            max_retries = self.settings.max_retries if job.spec.max_retries is None else job.spec.max_retries
            if kind == "retry" and outcome[5] is not None:
                max_retries = outcome[5]
            if kind == "retry" and msg.retries < max_retries:
                countdown = outcome[4] if outcome[4] is not None else self._backoff(job)
                if not (isinstance(countdown, (int, float)) and math.isfinite(countdown)):
                    countdown = self._backoff(job)
                countdown = max(0.0, float(countdown))
                due = time.time() + countdown
                buf.delay(self.broker.delayed_key, due, job.source,
                          protocol.reencode(msg, retries=msg.retries + 1, eta=due))
                if store:
                    buf.result(msg.id, protocol.failure_json(msg.id, exc_meta, tb, status=protocol.RETRY,
                                                             parent_id=msg.parent_id, extended=extended), ttl)
                self.due_event.set()
                if hooks.wanted(job.spec):  # hooks: on_retry(exc, task_id, args, kwargs, einfo)
                    hooks.emit(job.spec, hooks.RETRY, msg.id, msg.args, msg.kwargs,
                               exc=protocol.exception_from_meta(exc_meta), traceback=tb)
                self.metrics.count("retried", queue, task)
                self.stats["retried"] += 1
                _log_job(msg, f"retry in {countdown:.2f} s: {exc_meta.get('exc_type')}: "
                              f"{_short(exc_meta.get('exc_message'))}", elapsed, run_time, level=logging.WARNING)
            else:
                children = []
                for sig in msg.errbacks or ():
                    children += self._publish_next(sig, msg, (msg.id,), None)
                if store:
                    buf.result(msg.id, protocol.failure_json(msg.id, exc_meta, tb, parent_id=msg.parent_id,
                                                             children=protocol.children_of(children),
                                                             extended=extended), ttl)
                reason = f"{exc_meta.get('exc_type')}: {_short(exc_meta.get('exc_message'))}"
                if kind == "retry":
                    reason = f"gave up after {msg.retries} retries: {reason}"
                buf.dead(queue, dead_entry(reason, queue, msg.raw, task_id=msg.id, task=msg.task,
                                           retries=msg.retries, consumer=self.name, source=job.source))
                if msg.chord is not None:  # chord: a part failed for good, its body gets ChordError
                    chord.fail_body(buf, msg, exc_meta, ttl)
                if hooks.wanted(job.spec):  # hooks: on_failure(exc, task_id, args, kwargs, einfo)
                    hooks.emit(job.spec, hooks.FAILURE, msg.id, msg.args, msg.kwargs,
                               exc=protocol.exception_from_meta(exc_meta), traceback=tb)
                self.metrics.count("failed", queue, task)
                self.metrics.count("dead_lettered", queue, task)
                self.stats["failed"] += 1
                _log_job(msg, f"failed: {reason}", elapsed, run_time, level=logging.WARNING)
        buf.ack(job.inflight, msg.raw)
        self.buf_release.append(job.slot)
        self.jobs.pop(msg.id, None)

    async def _chord_part(self, job: Job, outcome: tuple) -> None:
        """chord: record a succeeded header part in Redis and, when it completes the chord, publish the body;
        then settle the part as usual (its result and ack). Redis outages are waited out (recording is
        idempotent); a body that cannot be published (bad options) gets ChordError."""
        msg, ttl = job.msg, self.settings.result_expires
        while True:
            try:
                results = await chord.record_part(self.broker.redis, msg, outcome[2], ttl)
                if results is not None:
                    try:
                        messages = chord.body_messages(msg, results, self.callback_targets, self._default_queue(msg))
                    except (ValueError, TypeError) as exc:
                        log.error("job %s %s: cannot publish its chord's body: %s", msg.id, msg.task, exc)
                        chord.fail_body(self.buf, msg, None, ttl, reason=f"Callback error: {exc!r}")
                    else:
                        if await chord.publish_body(self.broker.redis, msg, messages, ttl, self.settings.key_prefix):
                            log.info("job %s %s completed chord %s: published %s", msg.id, msg.task, msg.group,
                                     ", ".join(f"{m[2]}" for m in messages))
                self._redis_back()
                break
            except (RedisError, OSError) as exc:
                await self._redis_down(exc)
        job.chord_recorded = True
        self._finish(job, outcome)
        self.flush_event.set()

    def _default_queue(self, parent: protocol.Message) -> Any:
        """chord: the queue a published task goes to when its signature names none (its registered queue)."""
        def queue_of(name: str) -> str:
            try:
                spec = lookup(name)
            except UnknownTask:
                return parent.queue
            return parent.queue if spec.queue == "*" else spec.queue
        return queue_of

    def _backoff(self, job: Job) -> float:
        """Exponential backoff with jitter: base * 2**retries, capped, then between half and all of it."""
        delay = min(self.settings.retry_backoff_max, job.spec.retry_backoff * (2 ** min(job.msg.retries, 60)))
        return delay / 2 + random.uniform(0, delay / 2)

    def _publish_next(self, sig: dict, parent: protocol.Message, prepend: tuple, chain: list | None) -> list[str]:
        """Publish a callback, errback or chain step (groups and chains expanded); returns the new job ids.

        A signature that cannot be published (bad options) is logged and dead-lettered; the parent's own
        result stands.
        """
        ids = []
        try:
            for s, c, group, index in chord.expand(sig, chain):  # chord: celery.chord steps publish their header
                try:
                    spec = lookup(s["task"])
                    default = parent.queue if spec.queue == "*" else spec.queue
                except UnknownTask:
                    default = parent.queue
                list_name, raw, task_id = protocol.next_message(s, parent, prepend=prepend, chain=c,
                                                                default_queue=default, group=group,
                                                                group_index=index, allowed_queues=self.callback_targets)
                if protocol.chosen_id(s) is None:
                    self.buf.publish(list_name, raw)
                else:
                    # An id the producer chose: published only if no job has it (no result stored, no owner
                    # recorded), checked in the same script, so a callback never takes over another job's id.
                    reason = (f"callback {s['task']!r} of {parent.task} {parent.id} not published: task_id "
                              f"{task_id!r} belongs to another job")
                    entry = dead_entry(reason, parent.queue, raw, task_id=task_id, task=s["task"],
                                       consumer=self.name, source=list_name)
                    if not self.buf.publish_new(task_id, list_name, raw, parent.queue, entry):
                        raise ValueError(f"task_id {task_id!r} is used twice by the callbacks of {parent.id}")
                ids.append(task_id)
                log.info("job %s %s published %s %s", parent.id, parent.task, s["task"], task_id)
        except (ValueError, TypeError) as exc:
            reason = f"cannot publish {sig.get('task')!r} after {parent.task} {parent.id}: {exc}"
            log.error("bridge %s: %s", self.name, reason)
            chord.fail_chords(self.buf, sig, reason, self.settings.result_expires)  # chord: none waits forever
            self.buf.dead(parent.queue, dead_entry(reason, parent.queue, protocol.dumps(sig),
                                                   task_id=(sig.get("options") or {}).get("task_id"),
                                                   task=sig.get("task"), consumer=self.name))
        return ids

    # --- writing to Redis ---------------------------------------------------------------------------------

    _flushing = False
    last_token: str | None = None  # the previous applied batch's token, deleted by the next batch

    async def _flush_loop(self) -> None:
        """Apply buffered transitions in one script call; whatever accumulates meanwhile goes next."""
        while True:
            await self.flush_event.wait()
            self.flush_event.clear()
            if not len(self.buf):
                continue
            ops, releases = self.buf, self.buf_release
            self.buf, self.buf_release = self._new_ops(), []
            self._flushing = True
            if self.last_token:
                ops.forget(self.last_token)
            try:
                refusals = 0
                while True:
                    try:
                        done = await self.broker.apply(ops)
                        self._writes_back()
                        self.last_token = ops.token
                        break
                    except NotApplied as exc:
                        # Nothing was written (Redis at maxmemory, or read-only): the jobs stay in flight and
                        # keep their slots, so the bridge claims nothing more; the same batch goes again later.
                        refusals += 1
                        self.stats["batches_refused"] += 1
                        level = logging.ERROR if refusals == 1 else logging.DEBUG
                        log.log(level, "bridge %s: Redis refused a batch of %d transitions (%s); nothing was "
                                "written, its jobs stay in flight; retrying", self.name, len(ops), exc)
                        await asyncio.sleep(min(0.05 * 2 ** min(refusals, 6), 2.0))
                    except (RedisError, OSError) as exc:  # retried: the batch's token makes a re-run a no-op
                        await self._redis_down(exc)
                if refusals:
                    log.warning("bridge %s: Redis took the batch after %d refusals", self.name, refusals)
                if done.skipped:
                    log.info("bridge %s: %d results not written, a SUCCESS was already stored", self.name,
                             done.skipped)
                if done.trimmed:
                    self.stats["dead_letters_trimmed"] += done.trimmed
                    log.warning("bridge %s: dead-letter lists full (DEAD_LETTER_MAX %d): the %d oldest entries "
                                "were dropped (%d so far)", self.name, self.settings.dead_letter_max, done.trimmed,
                                self.stats["dead_letters_trimmed"])
                if done.refused:
                    self.stats["ids_refused"] += len(done.refused)
                    log.warning("bridge %s: not written over jobs that exist already (their ids have a result or "
                                "an owner): %s", self.name, ", ".join(done.refused[:20]))
                if done.errors:
                    log.error("bridge %s: %d Redis operations failed (the rest of the batch was applied): %s",
                              self.name, len(done.errors), "; ".join(sorted(set(done.errors)))[:1000])
                held = self.held
                for key in ops.acks:
                    n = held.get(key, 0) - 1
                    if n > 0:
                        held[key] = n
                    else:
                        held.pop(key, None)
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
                await (self._memory_full(exc) if _write_refused(exc) else self._redis_down(exc))
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
                if not await self.broker.heartbeat():
                    self.stats["liveness_lapsed"] += 1
                    log.error("bridge %s: its liveness key expired before this heartbeat (it stalled for more "
                              "than CONSUMER_TIMEOUT_SECONDS=%g s); survivors may have requeued the jobs it holds",
                              self.name, self.settings.consumer_timeout_seconds)
                await self._recover_dead()
                depths = await self.broker.depths()
                self._redis_back()
            except (RedisError, OSError) as exc:
                await (self._memory_full(exc) if _write_refused(exc) else self._redis_down(exc))
            in_flight = dict.fromkeys(self.queues, 0)
            for job in self.jobs.values():
                in_flight[job.msg.queue] = in_flight.get(job.msg.queue, 0) + 1
            with contextlib.suppress(Exception):
                self.metrics.push(depths, in_flight)
            self.last_depths = depths
            horizon = time.time() - REVOKE_KEEP_SECONDS
            if self.revoked and min(self.revoked.values()) < horizon:
                self.revoked = {k: v for k, v in self.revoked.items() if v >= horizon}
            await asyncio.sleep(min(beat, 1.0))

    # --- remote control (Celery's revoke) -------------------------------------------------------------------

    async def _control_loop(self) -> None:
        """Listen to Celery's control broadcasts (kombu's fanout exchange ``celery.pidbox`` is a Redis
        pub/sub channel ``/<db>.celery.pidbox``): honour ``revoke`` and answer ``inspect`` (:mod:`.control`)."""
        db = self.broker.redis.connection_pool.connection_kwargs.get("db", 0)
        while not self.stopping:
            conn = self.broker.connect()
            pubsub = conn.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe("*.pidbox")
                while not self.stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    channel = message.get("channel") or b""
                    if channel.startswith(b"/") and not channel.startswith(f"/{db}.".encode()):
                        continue  # another database's broadcast
                    command = control.parse(message.get("data"))
                    if command is not None and command.for_worker(self.worker_name):
                        await self._on_command(command)
            except (RedisError, OSError) as exc:
                await self._redis_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await conn.aclose()

    async def _on_command(self, command: control.Command) -> None:
        if command.method == "revoke":
            ids = command.revoked_ids()
            if ids:
                await self._on_revoke(ids, bool(command.arguments.get("terminate")))
            reply: Any = {"ok": f"tasks {', '.join(ids)} flagged as revoked"}
        else:
            reply = self._inspect(command.method)
        if not command.wants_reply:
            return
        redis = self.broker.redis
        bindings = await redis.smembers(control.binding_key(command.reply_exchange))
        message = control.reply_message(self.worker_name, reply, command)
        for queue in control.reply_queues(bindings, command.reply_key, command.reply_exchange):
            await redis.lpush(queue, message)

    def _inspect(self, method: str) -> Any:
        """This bridge's answer to ``celery inspect <method>``, shaped as a Celery worker's."""
        jobs = list(self.jobs.values())
        if method == "ping":
            return {"ok": "pong"}
        if method in ("active", "reserved"):
            return [self._request_info(j) for j in jobs if (j.started is not None) == (method == "active")]
        if method == "scheduled":
            return []  # eta and countdown jobs wait in Redis' delayed set, not in a worker: raysys inspect scheduled
        if method == "registered":
            return sorted({spec.name for spec in _registry().values()})
        if method == "active_queues":
            return [control.queue_info(q) for q in self.queues]
        if method == "revoked":
            return sorted(self.revoked)
        if method == "stats":
            soft, hard = self.settings.task_soft_time_limit, self.settings.task_time_limit
            return {"pid": os.getpid(), "uptime": int(time.time() - self.started_at), "clock": "0",
                    "broker": {"transport": "redis", "hostname": socket.gethostname()},
                    "pool": {"implementation": "raysys.queue.bridge:QueueBridge", "max-concurrency": self.concurrency,
                             "processes": [os.getpid()], "timeouts": [soft, hard],
                             "max-tasks-per-child": self.settings.worker_max_tasks_per_child or "N/A"},
                    "prefetch_count": self.light_capacity + self.concurrency * len(self.queues),
                    "total": dict(self.by_task), "raysys": self.snapshot()}
        return {"error": f"No such control command: {method}"}

    def _request_info(self, job: Job) -> dict:
        return {"id": job.id, "name": job.spec.name, "type": job.spec.name, "args": job.msg.args,
                "kwargs": job.msg.kwargs, "hostname": self.worker_name, "time_start": job.started,
                "acknowledged": True, "worker_pid": os.getpid(),
                "delivery_info": {"exchange": "", "routing_key": job.msg.queue, "priority": 0, "redelivered": False}}

    async def _on_revoke(self, ids: list[str], terminate: bool) -> None:
        """Remember the ids (queued, delayed and retrying jobs get REVOKED when they come up); with
        ``terminate``, cancel those running here as heavy Ray tasks (REVOKED ``terminated``)."""
        now = time.time()
        for task_id in ids:
            self.revoked[task_id] = now
        log.info("bridge %s: revoked %s%s", self.name, ", ".join(ids[:20]), " (terminate)" if terminate else "")
        if terminate:
            for task_id in ids:
                job = self.jobs.get(task_id)
                if job is None or job.terminated or job.started is None:
                    continue
                if job.ref is not None:
                    job.terminated = True
                    log.warning("job %s %s revoked with terminate: cancelling its Ray task", job.id, job.spec.name)
                    with contextlib.suppress(Exception):
                        ray.cancel(job.ref, force=True)
                elif job.runner is not None and job.runner.terminate(job.index):
                    job.terminated = True
                    log.warning("job %s %s revoked with terminate: interrupting it", job.id, job.spec.name)
        with contextlib.suppress(RedisError, OSError):
            await self.broker.revoke(ids, now, REVOKE_KEEP_SECONDS)

    async def _recover_dead(self) -> None:
        for consumer, n in await self.broker.recover_dead():
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
            "executors": self.n_executors, "batch_size": self.batch_size,
            "uptime": round(time.time() - self.started_at, 1), "redis_ok": self.redis_ok,
            "claimed_light": self.n_light, "claimed_heavy": dict(self.n_heavy), "active": len(self.jobs),
            "totals": dict(self.stats), "queue_depth": getattr(self, "last_depths", None),
        }


def _renice(niceness: int) -> None:
    """Give every thread of this process (and so the light thread started later) ``niceness``.

    Ray starts its workers at nice 15 (``RAY_worker_niceness``) so that compute never starves the node's
    daemons; a bridge at 15 waits behind everything else on a busy node, and each wait lands on a job's
    enqueue -> result latency. Linux keeps a nice value per thread, hence the loop over the tasks. Going
    below the current value needs CAP_SYS_NICE (root has it); without it the bridge keeps Ray's value.
    """
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:  # that thread has ended
            continue
        except (OSError, AttributeError) as exc:
            log.info("bridge keeps nice %d (cannot set %d: %s)", os.getpriority(os.PRIO_PROCESS, 0), niceness, exc)
            return


def _registry() -> dict[str, TaskSpec]:
    from raysys.tasks.registry import REGISTRY  # noqa: PLC0415

    return REGISTRY


def _write_refused(exc: BaseException) -> bool:
    """Whether Redis refused a command or script at its first write (out of memory under ``maxmemory``, a
    read-only replica): such a call changed nothing, so there is nothing to reconcile."""
    text = str(exc)
    return isinstance(exc, (OutOfMemoryError, ReadOnlyError)) or "OOM command not allowed" in text or (
        "READONLY" in text)


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


async def _own_pid() -> int:
    return os.getpid()


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
                               settings.bridge_executors if executors is None else executors,
                               batch_size or settings.bridge_batch_size)
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
        """The processes light jobs run in: this one, or the executor actors'."""
        return list(await asyncio.gather(*[_await(e.actor.pid.remote()) if e.actor is not None else _own_pid()
                                           for e in self.core.executors]))

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
    (default ``WORKER_CONCURRENCY`` or the cluster's CPUs), plus Celery's default queue
    ``settings.default_queue`` (``celery``; ``RAYSYS_DEFAULT_QUEUE=""`` turns it off), where a Celery
    producer puts tasks its routes do not name: they run there by task name, like any other job, and
    unknown names get a NotRegistered FAILURE instead of waiting forever. ``detached`` bridges outlive
    the caller. Returns their handles once they are consuming (``wait``).
    """
    queues = tuple(queues or settings.queues)
    if settings.default_queue and settings.default_queue not in queues:
        queues += (settings.default_queue,)
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
