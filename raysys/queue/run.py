"""The run stage: light jobs in batches with a watchdog, heavy jobs as Ray tasks under their time limits.

Light tasks (``spec.light``: quick, well-behaved ones such as ``raysys.ping``) run in batches on a thread of
the bridge's own process (no Ray hop between claim and run: the lowest latency), or with
``BRIDGE_EXECUTORS`` > 0 on that many long-lived :class:`~raysys.queue.run_worker.LightExecutor` actors (a
process of their own, one Ray call for many jobs). The watchdog lets a light job that runs long finish alone
on its thread while a fresh thread takes the jobs behind it, raises ``SoftTimeLimitExceeded`` in it at its
soft limit, and fails it with ``TimeLimitExceeded`` at its hard one (its thread is left behind).

Heavy tasks run as Ray tasks with the task's ``num_cpus``/``num_gpus``, ``max_calls`` from
``WORKER_MAX_TASKS_PER_CHILD``, a soft time limit (raised in the job, then ``ray.cancel``) and a hard one
(``ray.cancel(force=True)``).

Every run ends in an :class:`~raysys.queue.job.Outcome` handed to the bridge (``core.finish``), which
settles it. The process side (what runs the task's code) is :mod:`raysys.queue.run_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import ray

from raysys.config import Settings
from raysys.queue import results, settle
from raysys.queue.job import Job, Outcome, log_job
from raysys.queue.run_worker import LightExecutor, Publish, ThreadRunner, Work
from raysys.queue.run_worker import run_heavy as run_heavy_task
from raysys.tasks.execute import ray_options

log = logging.getLogger("raysys.queue.bridge")

KILL_GRACE_SECONDS = 5.0  # after a kill (hard limit, terminate), how long a force-cancelled task may take to go
KILL_TRIES = 2            # force-cancels of a task that has not ended, a grace apart (then it is settled without it)
SOFT_GRACE_SECONDS = 0.5  # after the soft limit (raised in the job), when the bridge cancels the Ray task
LIGHT_DETACH_SECONDS = 0.5  # a light job running this long finishes alone; the jobs behind it go on a fresh thread
MAX_DETACHED = 16           # light jobs finishing alone at once, at most (beyond: the next ones wait in line)


class Executor:
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


def limits(job: Job, settings: Settings) -> tuple[float, float]:
    """(soft, hard) seconds: the message's timelimit (capped at MAX_MESSAGE_TIME_LIMIT), else the task's,
    else the settings'."""
    cap = settings.max_message_time_limit
    hard = min(job.msg.time_limit, cap) if job.msg.time_limit else (job.spec.time_limit
                                                                     or settings.task_time_limit)
    soft = min(job.msg.soft_time_limit, cap) if job.msg.soft_time_limit else (
        job.spec.soft_time_limit or settings.task_soft_time_limit)
    return min(soft, hard), hard


class RunStage:
    """Runs admitted jobs for one bridge (``core``: its :class:`~raysys.queue.bridge.BridgeCore`)."""

    def __init__(self, core: Any, settings: Settings, executors: int, batch_size: int) -> None:
        self.core = core
        self.settings = settings
        self.n_executors = executors  # 0: light jobs on a thread of this process
        self.batch_size = batch_size
        self.heavy_sem = {q: asyncio.Semaphore(core.concurrency) for q in core.queues}
        self.ready: deque[Job] = deque()  # light jobs waiting for an executor
        self.n_detached = 0  # light jobs finishing alone on a thread of their own
        self.executors: list[Executor] = []
        self.settings_ref = None

    def start(self) -> None:
        self.settings_ref = ray.put(self.settings)
        self.executors = [Executor(self.settings, in_process=self.n_executors == 0)
                          for _ in range(max(self.n_executors, 1))]

    def close(self) -> None:
        for ex in self.executors:
            ex.close()

    def submit(self, job: Job) -> None:
        """Run an admitted job (light ones wait for :meth:`kick`)."""
        if job.spec.light:
            self.ready.append(job)
        else:
            asyncio.get_running_loop().create_task(self.run_heavy(job))

    def kick(self) -> None:
        """Hand ready light jobs to executors (at most ``max_busy`` calls in flight each, so batches grow
        with load)."""
        loop = asyncio.get_running_loop()
        while self.ready:
            ex = min(self.executors, key=lambda e: e.busy - e.max_busy)
            if ex.busy >= ex.max_busy:
                return
            batch: list[Job] = []
            while self.ready and len(batch) < self.batch_size:
                job = self.ready.popleft()
                if job.id in self.core.revoked:  # revoked while it waited for an executor
                    self.core.finish_revoked(job, "revoked")
                else:
                    batch.append(job)
            if not batch:
                self.core.flush_event.set()
                continue
            ex.busy += 1
            loop.create_task(self._run_light(ex, batch))

    async def _run_light(self, ex: Executor, batch: list[Job]) -> None:
        now = time.time()
        for job in batch:
            job.started = now
            self.core.metrics.observe_wait(job.msg.queue, job.spec.name, now - max(job.claimed, job.msg.eta or 0.0))
        limits = [self.limits(j) for j in batch]
        payload = [Work(j.spec.name, j.msg.args, j.msg.kwargs, j.id, j.msg.retries, j.msg.queue, soft, self.publish(j))
                   for j, (soft, _) in zip(batch, limits, strict=True)]
        if ex.runner is not None:
            await self._run_in_thread(ex, batch, payload, limits)
            return
        outcomes = await self._run_on_actor(ex, batch, payload, limits)
        ex.busy -= 1
        if outcomes is None:  # the executor actor died or overran: its jobs run again, one Ray task each
            self._replace_executor(ex)
            asyncio.get_running_loop().create_task(self._run_again(batch))
        else:
            ex.done += len(batch)
            self._settle(batch, outcomes)
            limit_calls = self.settings.worker_max_tasks_per_child
            if limit_calls and ex.done >= limit_calls and ex.busy == 0:
                self._replace_executor(ex)
        self.kick()

    async def _run_again(self, batch: list[Job]) -> None:
        """Run a lost light batch's jobs again as heavy ones, but those whose SUCCESS is stored (the executor
        published it before it was lost): they are acked, as a redelivered finished job is."""
        stored = await self.core.broker.results([job.id for job in batch])
        for job, meta in zip(batch, stored, strict=True):
            if results.is_success(meta):
                self.core.jobs.pop(job.id, None)
                self.core.commit(settle.dropped(job, "skipped: its executor stored its SUCCESS before it was lost"))
                self.core.flush_event.set()
                continue
            job.light_tries += 1
            asyncio.get_running_loop().create_task(self.run_heavy(job, from_light=True))

    def _settle(self, jobs: list[Job], outcomes: list[Outcome]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            self.core.finish(job, outcome)
        self.core.flush_event.set()

    def _requeue_light(self, jobs: list[Job]) -> None:
        """Light jobs that never started go back to the front of the line."""
        for job in jobs:
            job.started = None
        self.ready.extendleft(reversed(jobs))

    async def _run_on_actor(self, ex: Executor, batch: list[Job], payload: list, limits: list) -> list | None:
        limit = max(hard for _, hard in limits) + KILL_GRACE_SECONDS
        try:
            return await asyncio.wait_for(_await(ex.actor.run_batch.remote(payload)), limit)
        except TimeoutError:
            log.error("bridge %s: a light batch ran past %.0f s; restarting its executor and running the "
                      "%d jobs one by one", self.core.name, limit, len(batch))
        except Exception as exc:  # noqa: BLE001 - the executor died; its jobs run again
            log.error("bridge %s: light executor failed (%s); running its %d jobs again", self.core.name, exc, len(batch))
        return None

    async def _run_in_thread(self, ex: Executor, batch: list[Job], payload: list, limits: list) -> None:
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
                        log.exception("bridge %s: the light thread failed", self.core.name)
                        outcomes = [Outcome.fail(0.0, exc, results.format_traceback(exc))] * end
                    self._settle(batch[settled:len(outcomes)], outcomes[settled:])
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
                    self._settle(batch[settled:finished], runner.done[settled:finished])
                    self._requeue_light(batch[index + 1:end])
                    settled, end, owned = index, index + 1, False
                    self.n_detached += 1
                    self.core.metrics.note("light_detached")
                    ex.runner = ThreadRunner(self.settings)
                    ex.busy -= 1
                    self.kick()
        finally:
            if owned:
                ex.busy -= 1
            else:
                self.n_detached -= 1
            self.kick()

    def _abandon_light(self, ex: Executor, fut: asyncio.Future, batch: list[Job], settled: int, owned: bool,
                       finished: list[Outcome], index: int, elapsed: float, hard: float) -> None:
        """Job ``index`` overran its hard limit on a thread now left behind: it fails, the jobs before it
        are settled, the ones after it go back in line."""
        job = batch[index]
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits for it any more
        self._settle(batch[settled:index], finished[settled:index])
        self._settle([job], [Outcome.fail(elapsed, results.TimeLimitExceeded(hard))])
        self._requeue_light(batch[index + 1:])
        if owned:
            ex.runner = ThreadRunner(self.settings)
        self.core.metrics.note("light_threads_abandoned")
        log.error("job %s %s try=%d light job past its hard time limit %.1f s: TimeLimitExceeded; its thread is "
                  "left behind (a thread cannot be killed). %d threads left behind so far: mark the task heavy if "
                  "it can block", job.id, job.spec.name, job.msg.retries, hard, self.core.metrics.totals["light_threads_abandoned"])

    def _replace_executor(self, ex: Executor) -> None:
        ex.close()
        self.executors[self.executors.index(ex)] = Executor(self.settings, in_process=False)

    def limits(self, job: Job) -> tuple[float, float]:
        return limits(job, self.settings)

    def publish(self, job: Job) -> Publish | None:
        """How the runner may publish ``job``'s SUCCESS itself, if it may: a result is stored, and nothing is
        decided when it is written (no callback, chain step or chord part: the settle stage publishes those
        with the result, in one batch)."""
        msg = job.msg
        if msg.ignore_result or msg.callbacks or msg.chain or msg.chord is not None:
            return None
        return Publish(self.settings.result_expires, msg.parent_id, self.core.env.extended(msg))

    async def run_heavy(self, job: Job, from_light: bool = False) -> None:
        queue = job.msg.queue
        async with self.heavy_sem[queue]:
            if job.id in self.core.revoked:  # revoked while it waited for a slot
                self.core.finish_revoked(job, "revoked")
                self.core.flush_event.set()
                return
            job.started = time.time()
            self.core.metrics.observe_wait(queue, job.spec.name, job.started - max(job.claimed, job.msg.eta or 0.0))
            if not from_light and not job.msg.ignore_result:
                started = results.started_json(job.id, {"hostname": self.core.worker_name, "pid": None})
                self.core.writer.ops.result(job.id, started, self.settings.result_expires)
                self.core.flush_event.set()
            log_job(job.msg, "started", job.started - job.claimed, level=logging.DEBUG)
            options = ray_options(job.spec, job.id)
            if self.settings.worker_max_tasks_per_child:
                options["max_calls"] = self.settings.worker_max_tasks_per_child
            payload = Work(job.spec.name, job.msg.args, job.msg.kwargs, job.id, job.msg.retries, queue,
                           self.limits(job)[0])
            job.stop = asyncio.Event()
            ref = run_heavy_task.options(**options).remote(self.settings_ref, payload)
            outcome = await self._await_limited(job, ref)
            job.stop = None
        self.core.finish(job, outcome)
        self.core.flush_event.set()

    async def _await_limited(self, job: Job, ref: ray.ObjectRef) -> Outcome:
        """``job``'s Outcome from its Ray task ``ref``, within its time limits.

        The worker raises SoftTimeLimitExceeded in the job at ``soft`` itself; a job still running a moment
        later is cancelled through Ray, and one still running at ``hard`` is killed. A job revoked with
        terminate (``job.stop``) is killed at once; it is settled as terminated even if Ray never reports
        its task gone (a kill that does not take is logged, and its result would be ignored)."""
        soft, hard = self.limits(job)
        t0 = time.perf_counter()
        fut = asyncio.ensure_future(_await(ref))
        first = min(hard, soft + SOFT_GRACE_SECONDS)
        soft_hit = False
        if not await _until(fut, job.stop, first) and not job.terminated:
            soft_hit = True
            log.warning("job %s %s try=%d past its soft time limit %.1f s: cancelling", job.id, job.spec.name,
                        job.msg.retries, soft)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)
            await _until(fut, job.stop, max(0.0, hard - (time.perf_counter() - t0)))
        if not fut.done():
            if job.terminated:
                log.warning("job %s %s try=%d revoked with terminate: killing its worker", job.id, job.spec.name,
                            job.msg.retries)
            else:
                log.warning("job %s %s try=%d hard time limit %.1f s: killing its worker", job.id, job.spec.name,
                            job.msg.retries, hard)
            if not await _kill(ref, fut):
                log.error("job %s %s: its Ray task did not end %.0f s after it was killed; settled without it",
                          job.id, job.spec.name, KILL_TRIES * KILL_GRACE_SECONDS)
                fut.cancel()
            else:
                fut.exception()  # the kill's error, expected: retrieved so asyncio does not log it as lost
            if job.terminated:  # settled as REVOKED terminated, whatever the outcome
                return Outcome.fail(time.perf_counter() - t0, results.WorkerLostError("job was terminated"))
            return Outcome.fail(time.perf_counter() - t0, results.TimeLimitExceeded(hard))
        elapsed = time.perf_counter() - t0
        try:
            return fut.result()
        except ray.exceptions.TaskCancelledError:
            if soft_hit:
                return Outcome.fail(elapsed, results.SoftTimeLimitExceeded())
            return Outcome.retry(elapsed, results.WorkerLostError("job was cancelled"))
        except Exception as exc:  # noqa: BLE001 - worker died more often than Ray retries, object lost...
            return Outcome.retry(elapsed, results.WorkerLostError(str(exc)[:500]), results.format_traceback(exc))


async def _until(fut: asyncio.Future, stop: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``fut``, or until ``stop`` is set; whether ``fut`` is done."""
    if not stop.is_set():
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({fut, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
    return fut.done()


async def _kill(ref: ray.ObjectRef, fut: asyncio.Future) -> bool:
    """Force-cancel the Ray task ``ref`` (its worker process is killed) and wait for ``fut`` to end, up to
    ``KILL_TRIES`` times a grace (a cancel can be lost in a race inside Ray). Whether it ended."""
    for _ in range(KILL_TRIES):
        try:
            ray.cancel(ref, force=True)
        except Exception as exc:  # noqa: BLE001 - Ray refused the cancel: wait, and try again
            log.warning("ray.cancel failed: %s", exc)
        await asyncio.wait({fut}, timeout=KILL_GRACE_SECONDS)
        if fut.done():
            return True
    return False


async def _await(ref: ray.ObjectRef) -> Any:
    return await ref
