"""Drive a running Ray head through everything raysys' alert rules and dashboard watch (run by test_monitoring).

Started as a process of its own (the test process is attached to the session's Ray cluster; this one joins
the head the test started): queue bridges on the three queues run jobs that succeed, fail for good (dead
letter), retry, and expire (revoked); a scheduler fires one slot, skips stale ones and fails on a corrupt
schedule state; the embedding model actor answers a request. Prints ``DRIVEN`` and keeps every actor
alive (their metrics exported) until its stdin closes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
import uuid
from pathlib import Path

import ray
import redis

from raysys import logs
from raysys.actors.embedding import embed_texts
from raysys.config import Settings
from raysys.constants import RAY_NAMESPACE
from raysys.queue.bridge import start_bridges, stop_bridges
from raysys.queue.client import Client
from raysys.scheduler.actor import ensure_scheduler, stop_scheduler
from raysys.scheduler.schedules import build_config, default_schedules, resolve_queues
from raysys.scheduler.store import Store

TESTS = Path(__file__).resolve().parent


def scheduler_config(settings: Settings):
    schedules: dict[str, dict] = {s.name: {"enabled": False} for s in default_schedules()}
    schedules.update({
        "mon_fire": {"cron": "0 3 * * *", "task": "raysys.ping", "queue": "reports", "args": ["{slot}"]},
        "mon_skip": {"cron": "* * * * *", "task": "raysys.ping", "queue": "reports", "grace": "1s", "catchup": "none"},
        "mon_broken": {"cron": "* * * * *", "task": "raysys.ping", "queue": "reports"},
    })
    return resolve_queues(build_config({"scheduler": {"lease_seconds": 5, "tick_seconds": 0.5}, "schedules": schedules},
                                       settings), settings)


def main() -> int:
    settings = Settings.from_env()
    logs.setup(logging.INFO, settings.log_format)  # as `raysys worker` does: the bridges log at this level
    ray.init(address=os.environ["RAY_ADDRESS"], namespace=RAY_NAMESPACE, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}})
    bridges = start_bridges(settings, queues=["ingest", "analytics", "reports"], concurrency=2)
    client = Client(settings)
    ok = client.send_task("tests.add", args=[1, 2])
    failed = client.send_task("tests.boom", args=["for the dead-letter list"])
    retried = client.send_task("tests.flaky", args=[f"mon-{uuid.uuid4().hex[:6]}", 1])
    expired = client.send_task("tests.add", args=[0, 0], expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    assert ok.get(timeout=120) == 3
    assert failed.get(timeout=120, propagate=False) is not None and failed.state == "FAILURE"
    assert retried.get(timeout=120) is not None
    deadline = time.monotonic() + 120
    while expired.state != "REVOKED":
        assert time.monotonic() < deadline, f"the expired job is {expired.state}, not REVOKED"
        time.sleep(0.2)

    # The scheduler: a 03:00 slot made due on its clock (fires, late by a second); every-minute slots whose
    # cursor is ten minutes old with a grace of 1 s (skipped); a schedule whose stored state is not a hash
    # (every tick of it fails).
    store = Store.from_url(settings.broker_url)
    slot = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    store.advance("mon_fire", slot.timestamp() - 60, slot.timestamp(), time.time())
    offset = slot.timestamp() + 1 - time.time()
    store.advance("mon_skip", time.time() + offset - 600, None, time.time())
    redis.Redis.from_url(settings.broker_url).set(store.keys.state("mon_broken"), "not a hash")
    name = f"raysys-scheduler-mon-{uuid.uuid4().hex[:6]}"
    ensure_scheduler(settings, scheduler_config(settings), name=name, clock_offset=offset)
    assert client.AsyncResult(f"mon_fire:{slot.isoformat()}").get(timeout=120) == slot.isoformat()

    assert embed_texts(settings, ["my card was charged twice"]).shape[0] == 1
    print("DRIVEN", ok.id, flush=True)
    sys.stdin.read()  # until the test has scraped what it needs
    stop_scheduler(name)
    stop_bridges(bridges)
    return 0


if __name__ == "__main__":
    sys.exit(main())
