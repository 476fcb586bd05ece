"""Helpers for the scheduler tests: a controlled clock, configurations, and reading the real queues."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from raysys.config import Settings
from raysys.queue import messages
from raysys.scheduler.engine import Engine
from raysys.scheduler.schedules import SchedulerConfig, build_config, default_schedules, resolve_queues


def ts(*parts: int, tz: Any = UTC) -> float:
    """Unix seconds of a wall-clock time (UTC unless ``tz``)."""
    return datetime(*parts, tzinfo=tz).timestamp()


class FakeClock:
    """A clock the test moves by hand: no test waits for real time to pass."""

    def __init__(self, start: float) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def sched_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings on the test's Redis only (no PostgreSQL: per-tenant schedules list their tenants)."""
    return Settings.from_env({}, data_dir=str(tmp_path / "data"), broker_url=redis_url, **overrides)


def make_config(settings: Settings, schedules: dict[str, dict], *, defaults: bool = False,
                lease: float = 30, tick: float = 1) -> SchedulerConfig:
    """A configuration of ``schedules`` (the seed defaults disabled unless ``defaults``)."""
    data: dict[str, dict] = {} if defaults else {s.name: {"enabled": False} for s in default_schedules()}
    data.update(schedules)
    return resolve_queues(build_config({"scheduler": {"lease_seconds": lease, "tick_seconds": tick},
                                        "schedules": data}, settings), settings)


def queued(redis_url: str, queue: str) -> list[messages.Message]:
    """The messages on ``queue`` now, oldest first, decoded as the bridge decodes them."""
    client = redis.Redis.from_url(redis_url)
    try:
        raws = client.lrange(queue, 0, -1)
    finally:
        client.close()
    return [messages.decode(raw, queue) for raw in reversed(raws)]


def queued_ids(redis_url: str, queue: str) -> list[str]:
    return [m.id for m in queued(redis_url, queue)]


def run(engines: list[Engine], clock: FakeClock, until: float, step: float) -> None:
    """Tick every engine at each step of the clock up to ``until`` (inclusive)."""
    while clock.now <= until:
        for e in engines:
            e.tick()
        clock.advance(step)
