"""The active scheduler, a real process, is killed with SIGKILL in the middle of a slot; a standby takes
over within the lease, and every slot is on the queue exactly once.

Both schedulers read one controlled clock from a Redis key that the test moves, so nothing waits for
real time to pass. This file is also the active scheduler's program (``python <this file> ...``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduler_fixtures import make_config, queued_ids, sched_settings, ts  # noqa: E402
from waiting import wait_until  # noqa: E402

from raysys.scheduler.engine import Engine  # noqa: E402

CLOCK, ACK, STUCK = "test:clock", "test:ack", "test:stuck"
LEASE = 30
STEP = 10


def _schedule(settings):
    return make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics",
                                        "grace": "10m"}}, lease=LEASE)


def active_scheduler(redis_url: str, data_dir: str, kill_point: str, kill_slot: str) -> None:
    """The subprocess: tick whenever the clock key moves; freeze forever at ``kill_point`` of ``kill_slot``."""
    r = redis.Redis.from_url(redis_url)
    settings = sched_settings(redis_url, Path(data_dir))

    def fault(point, job):
        if point == kill_point and job.slot == kill_slot:
            r.set(STUCK, job.job_id)
            time.sleep(3600)  # mid-slot; the test kills us here

    engine = Engine(settings, _schedule(settings), clock=lambda: float(r.get(CLOCK)), fault=fault)
    last = None
    while True:
        now = r.get(CLOCK)
        if now != last:
            engine.tick()
            r.set(ACK, now)
            last = now
        else:
            time.sleep(0.005)


@pytest.mark.parametrize("kill_point", ["claimed", "sent"])
def test_sigkill_mid_slot_standby_takes_over_within_the_lease(redis_url, tmp_path, kill_point):
    r = redis.Redis.from_url(redis_url)
    start, end = ts(2025, 1, 1, 10, 0, 5), ts(2025, 1, 1, 10, 10, 5)
    kill_slot = "2025-01-01T10:04:00+00:00"
    r.set(CLOCK, repr(start))
    proc = subprocess.Popen([sys.executable, __file__, redis_url, str(tmp_path), kill_point, kill_slot],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        settings = sched_settings(redis_url, tmp_path)
        standby = Engine(settings, _schedule(settings), clock=lambda: float(r.get(CLOCK)))
        now, killed_at, took_over = start, None, None
        while now <= end:
            r.set(CLOCK, repr(now))
            if killed_at is None:
                def ticked(at: float = now) -> bool:
                    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                    return r.get(ACK) == repr(at).encode() or bool(r.get(STUCK))

                wait_until(ticked, timeout=60, interval=0.005, message="the active scheduler to tick")
                if r.get(STUCK):
                    assert r.get(STUCK).decode() == f"m:{kill_slot}"
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    killed_at = now
            standby.tick()
            if killed_at is None:
                assert not standby.is_leader
            elif standby.is_leader and took_over is None:
                took_over = now
            now += STEP
        assert killed_at == ts(2025, 1, 1, 10, 4, 5) and proc.returncode == -signal.SIGKILL
        # the killed leader last renewed its lease as the stuck tick began: the standby leads one lease later
        assert took_over is not None and took_over - killed_at <= LEASE + STEP
        ids = queued_ids(redis_url, "analytics")
        assert ids == [f"m:2025-01-01T10:{m:02d}:00+00:00" for m in range(1, 11)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    active_scheduler(*sys.argv[1:5])
