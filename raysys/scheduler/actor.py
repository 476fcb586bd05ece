"""The SchedulerActor: one detached, named actor per cluster that ticks the :class:`Engine`.

Ray restarts it when it dies (``max_restarts=-1``); its lease token is its actor id, which survives a
restart, so a restarted scheduler picks its own lease up again at once instead of waiting for it to
lapse. Another cluster's scheduler on the same Redis stands by and takes over when the lease lapses.

State goes to Ray metrics (exported with Ray's ``ray_`` prefix on the metrics port):

- ``raysys_scheduler_is_leader``            gauge, 1 while this actor holds the lease
- ``raysys_scheduler_runs``                 counter per schedule and ``how`` (fired, recovered)
- ``raysys_scheduler_skips``                counter per schedule (slots beyond grace or not caught up)
- ``raysys_scheduler_errors``               counter per schedule
- ``raysys_scheduler_lag_seconds``          gauge per schedule: how late its last slot was sent
- ``raysys_scheduler_next_run_timestamp``   gauge per schedule: unix time of its next slot
- ``raysys_scheduler_last_tick_timestamp``  gauge: unix time of the last tick (liveness)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.util import metrics

from raysys import logs
from raysys.config import Settings
from raysys.constants import RAY_NAMESPACE, SCHEDULER_ACTOR
from raysys.scheduler.engine import Engine, TickReport, describe
from raysys.scheduler.schedules import SchedulerConfig, load_config

log = logging.getLogger(__name__)


class _Metrics:
    def __init__(self) -> None:
        tags = ("schedule",)
        self.is_leader = metrics.Gauge("raysys_scheduler_is_leader", "1 while this scheduler holds the lease")
        self.runs = metrics.Counter("raysys_scheduler_runs", "scheduled jobs enqueued", tag_keys=("schedule", "how"))
        self.skips = metrics.Counter("raysys_scheduler_skips", "slots skipped (beyond grace, catch-up policy)",
                                     tag_keys=tags)
        self.errors = metrics.Counter("raysys_scheduler_errors", "ticks that failed for a schedule", tag_keys=tags)
        self.lag = metrics.Gauge("raysys_scheduler_lag_seconds", "how late the last slot was enqueued",
                                 tag_keys=tags)
        self.next_run = metrics.Gauge("raysys_scheduler_next_run_timestamp", "unix time of the next slot",
                                      tag_keys=tags)
        self.last_tick = metrics.Gauge("raysys_scheduler_last_tick_timestamp", "unix time of the last tick")

    def record(self, report: TickReport, engine: Engine) -> None:
        self.is_leader.set(1.0 if report.leader else 0.0)
        self.last_tick.set(report.now)
        for ev in report.events:
            name = ev.get("schedule")
            if not name:
                continue
            kind = ev["event"]
            if kind in ("fired", "recovered"):
                self.runs.inc(1.0, tags={"schedule": name, "how": kind})
                if "lag" in ev:
                    self.lag.set(float(ev["lag"]), tags={"schedule": name})
            elif kind == "skipped":
                self.skips.inc(1.0, tags={"schedule": name})
            elif kind == "error":
                self.errors.inc(1.0, tags={"schedule": name})
        for name, due in engine.upcoming().items():
            self.next_run.set(due, tags={"schedule": name})


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SchedulerActor:
    """Ticks the scheduling engine every ``config.tick_seconds`` until :meth:`stop`.

    Args:
        settings: resolved settings (Redis, PostgreSQL for tenant lists, key prefix).
        config: the schedules, already loaded and validated by the caller (so the schedule file need
            not exist on the node the actor lands on).
        clock_offset: seconds added to the real clock (tests make a slot due "now" with it).
    """

    def __init__(self, settings: Settings, config: SchedulerConfig, clock_offset: float = 0.0) -> None:
        logs.setup(logging.INFO, settings.log_format)
        self.settings = settings
        self.config = config
        self.clock_offset = float(clock_offset)
        token = ray.get_runtime_context().get_actor_id() or None
        self.engine = Engine(settings, config, clock=self._clock, token=token)
        self.metrics = _Metrics()
        self.ticks = 0
        self.last_report: TickReport | None = None
        self.started = time.time()
        self._stop = asyncio.Event()
        # An async actor's event loop is running by the time __init__ returns: start ticking on it, so
        # a restart by Ray resumes the loop with no one having to call in.
        self._loop = asyncio.get_event_loop().create_task(self._run())

    def _clock(self) -> float:
        return time.time() + self.clock_offset

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                report = await asyncio.to_thread(self.engine.tick)
                self.last_report = report
                self.ticks += 1
                self.metrics.record(report, self.engine)
            except Exception:  # Redis down, say: keep ticking, the next tick may succeed
                log.exception("scheduler tick failed")
                self.metrics.is_leader.set(0.0)
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.config.tick_seconds)
            except TimeoutError:
                pass

    async def status(self) -> dict[str, Any]:
        """Leadership, the schedules with next and last runs, and the configuration's digest."""
        now = self._clock()
        schedules = await asyncio.to_thread(describe, self.config, self.engine.store, now)
        return {
            "holder": self.engine.holder, "is_leader": self.engine.is_leader, "ticks": self.ticks,
            "leader": self.engine.store.leader(), "config_digest": self.config.digest(),
            "config_source": self.config.source, "clock_offset": self.clock_offset, "now": now,
            "started": self.started, "schedules": schedules,
            "last_errors": self.last_report.errors if self.last_report else [],
        }

    async def digest(self) -> str:
        return self.config.digest()

    async def stop(self) -> bool:
        """Stop ticking and hand the lease back (a standby takes over at once)."""
        self._stop.set()
        try:
            await self._loop
        except Exception:
            log.debug("scheduler loop ended with an error", exc_info=True)
        await asyncio.to_thread(self.engine.close)
        self.metrics.is_leader.set(0.0)
        return True


def get_scheduler(name: str = SCHEDULER_ACTOR) -> ray.actor.ActorHandle | None:
    """The running SchedulerActor named ``name``, or None."""
    try:
        return ray.get_actor(name, namespace=RAY_NAMESPACE)
    except ValueError:
        return None


def ensure_scheduler(settings: Settings, config: SchedulerConfig | None = None, *, name: str = SCHEDULER_ACTOR,
                     clock_offset: float = 0.0, replace: bool = False) -> tuple[ray.actor.ActorHandle, bool]:
    """Start the cluster's scheduler, or return the one running; ``(handle, created)``. Ray must be up.

    ``replace`` stops a running one first (to apply a changed schedule file). The configuration is
    loaded and validated here, before anything starts.

    Raises:
        ConfigError: the schedules are invalid (one sentence).
    """
    config = config or load_config(settings)
    existing = get_scheduler(name)
    if existing is not None and replace:
        stop_scheduler(name)
        existing = None
    if existing is not None:
        return existing, False
    handle = SchedulerActor.options(
        name=name, namespace=RAY_NAMESPACE, lifetime="detached", get_if_exists=True,
    ).remote(settings, config, clock_offset)
    return handle, True


def stop_scheduler(name: str = SCHEDULER_ACTOR, timeout: float = 30.0) -> bool:
    """Stop the named scheduler cleanly (lease handed back) and remove it; False when none ran."""
    handle = get_scheduler(name)
    if handle is None:
        return False
    try:
        ray.get(handle.stop.remote(), timeout=timeout)
    except Exception:  # already dying: killing it is what is left
        log.debug("scheduler did not stop cleanly", exc_info=True)
    ray.kill(handle, no_restart=True)
    return True
