"""The QueueBridge: an async Ray actor that takes jobs from Redis queues and runs them on Ray.

One bridge consumes a set of queues (all their Celery priority lists) as one *consumer*. Its work is four
stages around a claimed :class:`~raysys.queue.job.Job` and the :class:`~raysys.queue.job.Outcome` of its run;
:class:`BridgeCore` only wires them together on the actor's event loop:

1. **claim** (:mod:`raysys.queue.claim`): claim as slots free up, admit (decode, look up, check; refuse,
   revoke, delay or drop at once), keep count of what is held, reconcile after a lost reply.
2. **run** (:mod:`raysys.queue.run`, :mod:`raysys.queue.run_worker`): light jobs in batches on the bridge's
   thread or executor actors under a watchdog, heavy ones as Ray tasks under their soft and hard time limits.
3. **settle** (:mod:`raysys.queue.settle`): a pure function from job + outcome to a plan of Redis operations
   (result, retry with backoff, outage retry, dead letter, callbacks, chains, groups, revoke), appended to the
   batch the writer (:mod:`raysys.queue.writer`) applies in one atomic script call, with the job's ack. (A
   light job's plain SUCCESS is stored and published by the thread that ran it, before that batch: the client
   sees it one hop earlier, and the plan only acks it.)
   :meth:`BridgeCore.commit` is where every plan goes: the one place a transition is counted (metrics and
   stats alike), logged, and its task hook queued (:mod:`raysys.tasks.hooks`). A chord header part that
   succeeded is first counted in Redis, and the chord's body published when it completes the chord
   (:meth:`BridgeCore.finish`, :func:`raysys.queue.chord.complete_part`), before its own plan is made.
4. **control** (:mod:`raysys.queue.control`): Celery's ``revoke`` and ``inspect`` broadcasts.

A heartbeat marks the consumer alive; survivors requeue the in-flight lists of a consumer whose heartbeat
stopped, and a restarted bridge (Ray restarts it) requeues its own at once. Redis outages are waited out:
finished results stay in memory and are written when Redis is back.

Celery compatibility beyond running jobs:

- Every bridge also consumes Celery's default queue (``celery``, ``RAYSYS_DEFAULT_QUEUE``), where a
  producer's unrouted ``send_task`` lands: known names run, unknown ones fail with NotRegistered.
- ``revoke`` (Celery's pidbox broadcast on ``/<db>.celery.pidbox``): revoked ids are remembered for three
  hours (in memory and in ``raysys:revoked`` for bridges started later); a revoked job that is queued,
  delayed or retrying gets REVOKED (``revoked``) instead of running. ``terminate=True`` also kills a
  heavy job that is running (its Ray task is force-cancelled, again after a grace; the job is settled as
  terminated even if Ray never reports the task gone) and interrupts a light one on the bridge's thread
  (REVOKED ``terminated``; a light job blocked in a C call ends at its hard limit); a running light job on
  an executor actor finishes.
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
  :mod:`raysys.tasks.hooks`) are called when a job's transition is settled here, once per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections import Counter
from typing import Any

import ray
from ray.util import list_named_actors
from redis.exceptions import RedisError

from raysys import logs
from raysys.config import Settings
from raysys.constants import BRIDGE_ACTOR_PREFIX, RAY_NAMESPACE
from raysys.queue import chord, messages, settle
from raysys.queue.claim import ClaimStage, write_refused
from raysys.queue.control import REVOKE_KEEP_SECONDS, ControlStage
from raysys.queue.job import Job, Kind, Outcome, log_job
from raysys.queue.metrics import BridgeMetrics
from raysys.queue.redis import Broker
from raysys.queue.run import RunStage
from raysys.queue.run_worker import prepare
from raysys.queue.writer import Writer
from raysys.tasks import hooks
from raysys.tasks.registry import REGISTRY, names_of

log = logging.getLogger("raysys.queue.bridge")


class BridgeCore:
    """The bridge's stages wired on the actor's event loop (separate from the actor so it reads top-down)."""

    def __init__(self, settings: Settings, name: str, queues: tuple[str, ...], concurrency: int,
                 executors: int, batch_size: int) -> None:
        self.settings = settings
        self.name = name
        self.queues = queues
        self.concurrency = concurrency
        self.broker = Broker(settings, name, queues)
        self.worker_name = f"{name}@{socket.gethostname()}"
        self.metrics = BridgeMetrics(name)
        # Queues callbacks may go to: the configured ones and this bridge's own (with their priority lists).
        self.env = settle.Env(settings, name, self.worker_name, self.broker.delayed_key,
                              settings.callback_targets | frozenset(queues))
        self.jobs: dict[str, Job] = {}       # admitted and not settled, by id
        self.revoked: dict[str, float] = {}  # job id -> when it was revoked (Celery's revoke broadcast)
        self.by_task: Counter[str] = Counter()  # runs per task name (Celery's ``inspect stats`` "total")
        self.wake = asyncio.Event()          # a slot freed or messages are due: claim now
        self.flush_event = asyncio.Event()   # transitions are pending: write them
        self.due_event = asyncio.Event()     # something went to the delayed set
        self.ready = asyncio.Event()
        self.stopping = False
        self.redis_ok = True
        self.memory_full = False  # Redis refused a claim's first write (maxmemory)
        self.tasks: list[asyncio.Task] = []
        self.started_at = time.time()
        self.last_depths: dict[str, int] | None = None
        self.claim = ClaimStage(self, max(batch_size * max(executors, 1) * 2, 2 * len(queues)))
        self.run = RunStage(self, settings, executors, batch_size)
        self.writer = Writer(self)
        self.control = ControlStage(self)

    # --- life cycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        prepare(self.settings)
        if self.settings.bridge_niceness is not None:
            _renice(self.settings.bridge_niceness)
        self.claim.light_names = sorted({n for spec in REGISTRY.values() if spec.light for n in names_of(spec)})
        self.run.start()
        await self._until_ok(self._recover_own, "recover in-flight jobs")
        await self._until_ok(self.broker.heartbeat, "register")
        self.revoked.update(await self._until_ok(
            lambda: self.broker.revoked_since(time.time() - REVOKE_KEEP_SECONDS), "read revoked ids"))
        log.info("bridge %s consuming %s (concurrency %d per queue, %d light slots, light jobs %s) pid %d",
                 self.name, ",".join(self.queues), self.concurrency, self.claim.light_capacity,
                 f"on {self.run.n_executors} executor actors" if self.run.n_executors else "in process", os.getpid())
        loop = asyncio.get_running_loop()
        loops = {"claim": self.claim.claim_loop, "flush": self.writer.flush_loop, "due": self.writer.due_loop,
                 "heartbeat": self._heartbeat_loop, "control": self.control.listen}
        loops.update({f"waiter:{q}": (lambda q=q: self.claim.waiter(q)) for q in self.queues})
        self.tasks = [loop.create_task(self._supervise(name, fn)) for name, fn in loops.items()]
        # Everything imported so far (Ray, task modules) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise pause the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.ready.set()

    async def _supervise(self, name: str, loop_fn) -> None:
        """Run one of the bridge's loops; a bug that escapes it is logged and the loop restarted, so the
        bridge never silently stops claiming, flushing or heart-beating."""
        while not self.stopping or name == "flush":
            try:
                await loop_fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.note(f"loop_errors:{name}")
                log.exception("bridge %s: the %s loop failed; restarting it", self.name, name)
                await asyncio.sleep(0.5)

    async def _recover_own(self) -> None:
        raw = await self.broker.redis.hget(self.broker.consumer_queues_key, self.name)
        lists = set(self.broker.lists)
        if raw:
            lists |= set(messages.loads(raw))
        n = await self.broker.requeue_consumer(self.name, sorted(lists))
        if n:
            log.warning("bridge %s requeued %d jobs it held before a restart", self.name, n)

    async def _until_ok(self, fn, what: str) -> Any:
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
        while self.writer.pending() and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(hooks.drain, 5.0)  # the settled jobs' hooks run before the bridge goes
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
        self.run.close()
        with contextlib.suppress(Exception):
            await self.broker.close()
        log.info("bridge %s stopped", self.name)
        return {"requeued": requeued}

    # --- settling ---------------------------------------------------------------------------------------

    def finish(self, job: Job, outcome: Outcome) -> None:
        """The run stage's report: ``job`` ended with ``outcome``."""
        if outcome.kind is Kind.OK and job.msg.chord is not None and not (job.chord_recorded or job.terminated):
            # a chord header part: counted (and the body published) before its result and ack are written
            asyncio.get_running_loop().create_task(self._chord_part(job, outcome))
            return
        queue, task = job.msg.queue, job.spec.name
        self.metrics.observe(queue, task, outcome.run_time)
        self.by_task[task] += 1
        self.jobs.pop(job.id, None)
        now = time.time()
        self.commit(settle.settle(job, outcome, self.env, now), job.msg, now - job.claimed, outcome.run_time)

    async def _chord_part(self, job: Job, outcome: Outcome) -> None:
        """Count a succeeded chord header part in Redis (publishing the body if it completes the chord), then
        settle it. Redis outages are waited out: recording and publishing are idempotent."""
        while True:
            try:
                job.chord_error = await chord.complete_part(self.broker.redis, job.msg, outcome.value_json,
                                                            self.settings.result_expires, self.env.callback_targets,
                                                            self.settings.key_prefix)
                self.redis_back()
                break
            except (RedisError, OSError) as exc:
                await self.redis_down(exc)
        job.chord_recorded = True
        self.finish(job, outcome)
        self.flush_event.set()

    def finish_revoked(self, job: Job, reason: str) -> None:
        """``job`` was revoked before it ran."""
        self.jobs.pop(job.id, None)
        self.commit(settle.revoked(job.msg, job.spec.name, job.inflight, job.slot, reason, self.env), job.msg)

    def commit(self, plan: settle.Plan, msg: messages.Message | None = None, elapsed: float = 0.0,
               run_time: float | None = None) -> None:
        """Every transition comes here: its operations join the pending batch (the writer applies them with
        the job's ack), it is counted once, logged, and its task hook (if any) queued."""
        self.writer.add(plan)
        self.metrics.transition(plan.transition, plan.counts, plan.queue, plan.task)
        if plan.hook:  # the task's lifecycle hook (only when it has one), on the hook thread
            hooks.emit(*plan.hook[0], **plan.hook[1])
        if plan.delayed:
            self.due_event.set()
        for level, text in plan.logs:
            log.log(level, "%s", text)
        if msg is None:  # a refused message: no job to name
            log.log(plan.level, "%s", plan.note)
        else:
            log_job(msg, plan.note, elapsed, run_time, plan.level)

    # --- Redis' state ---------------------------------------------------------------------------------------

    async def redis_down(self, exc: Exception) -> None:
        if self.redis_ok:
            log.error("bridge %s lost Redis (%r); retrying until it is back", self.name, exc, exc_info=True)
        self.redis_ok = False
        await asyncio.sleep(0.25)

    def redis_back(self) -> None:
        if not self.redis_ok:
            log.warning("bridge %s reconnected to Redis", self.name)
            self.redis_ok = True

    def writes_back(self) -> None:
        self.redis_back()
        if self.memory_full:
            log.warning("bridge %s: Redis takes writes again", self.name)
            self.memory_full = False

    async def memory_full_wait(self, exc: Exception) -> None:
        """Redis refuses writes (``maxmemory`` reached, or read-only): claim nothing until it takes them again;
        the jobs running finish and wait in memory, in flight in Redis (see the writer)."""
        if not self.memory_full:
            log.error("bridge %s: Redis refuses writes (%s); claiming nothing until it takes them again", self.name,
                      str(exc)[:200])
        self.memory_full = True
        self.metrics.note("claims_refused")
        await asyncio.sleep(0.25)

    async def _heartbeat_loop(self) -> None:
        beat = self.settings.heartbeat_seconds
        while True:
            depths = None
            try:
                if not await self.broker.heartbeat():
                    self.metrics.note("liveness_lapsed")
                    log.error("bridge %s: its liveness key expired before this heartbeat (it stalled for more "
                              "than CONSUMER_TIMEOUT_SECONDS=%g s); survivors may have requeued the jobs it holds",
                              self.name, self.settings.consumer_timeout_seconds)
                for consumer, n in await self.broker.recover_dead():
                    log.warning("bridge %s: consumer %s stopped heart-beating; requeued its %d jobs", self.name,
                                consumer, n)
                    if n:
                        self.wake.set()
                depths = await self.broker.depths()
                self.redis_back()
            except (RedisError, OSError) as exc:
                await (self.memory_full_wait(exc) if write_refused(exc) else self.redis_down(exc))
            in_flight = dict.fromkeys(self.queues, 0)
            for job in self.jobs.values():
                in_flight[job.msg.queue] = in_flight.get(job.msg.queue, 0) + 1
            try:  # in slices between which the event loop goes on with the jobs (see export_steps)
                for _ in self.metrics.export_steps(self.metrics.take(), depths, in_flight):
                    await asyncio.sleep(0)
            except Exception:  # noqa: BLE001 - metrics are never worth a stalled heartbeat
                log.debug("bridge %s: metrics export failed", self.name, exc_info=True)
            self.last_depths = depths
            horizon = time.time() - REVOKE_KEEP_SECONDS
            if self.revoked and min(self.revoked.values()) < horizon:
                self.revoked = {k: v for k, v in self.revoked.items() if v >= horizon}
            await asyncio.sleep(min(beat, 1.0))

    # --- inspection ----------------------------------------------------------------------------------------

    def active(self) -> list[dict]:
        return self.control.active()

    def snapshot(self) -> dict:
        return {
            "bridge": self.name, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
            "queues": list(self.queues), "concurrency": self.concurrency, "light_capacity": self.claim.light_capacity,
            "executors": self.run.n_executors, "batch_size": self.run.batch_size,
            "uptime": round(time.time() - self.started_at, 1), "redis_ok": self.redis_ok,
            "claimed_light": self.claim.n_light, "claimed_heavy": dict(self.claim.n_heavy), "active": len(self.jobs),
            "totals": dict(self.metrics.totals), "queue_depth": self.last_depths,
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


async def _await(ref: ray.ObjectRef) -> Any:
    return await ref


async def _own_pid() -> int:
    return os.getpid()


def _setup_logging(level: int, fmt: str) -> None:
    logs.setup(level, fmt, logger="raysys")


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=100)
class QueueBridge:
    """An async actor consuming ``queues`` as consumer ``name`` (its in-flight lists survive it).

    Ray restarts it after a crash; the new incarnation requeues what the old one held and goes on.
    """

    def __init__(self, settings: Settings, name: str, queues: tuple[str, ...], concurrency: int,
                 executors: int | None = None, batch_size: int | None = None, log_level: int = logging.INFO) -> None:
        _setup_logging(log_level, settings.log_format)
        self.core = BridgeCore(settings, name, tuple(queues), concurrency,
                               settings.bridge_executors if executors is None else executors,
                               batch_size or settings.bridge_batch_size)
        self._run = asyncio.get_running_loop().create_task(self.core.start())

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
                 "max_retries": s.max_retries} for s in sorted(REGISTRY.values(), key=lambda s: s.name)]

    async def pid(self) -> int:
        return os.getpid()

    async def executor_pids(self) -> list[int]:
        """The processes light jobs run in: this one, or the executor actors'."""
        return list(await asyncio.gather(*[_await(e.actor.pid.remote()) if e.actor is not None else _own_pid()
                                           for e in self.core.run.executors]))

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
