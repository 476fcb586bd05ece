"""Fixtures for the queue/bridge tests: bridge settings, running bridges, a real Celery client, log lookup."""

from __future__ import annotations

import glob
import json
import os
import sys
import uuid
from pathlib import Path

import pytest
import redis
from waiting import wait_until

from raysys.config import Settings

TASK_MODULES = ("tests.queue_tasks",)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # Ray workers get the project root from the driver's cwd; the driver too
    sys.path.insert(0, str(ROOT))

# Routes a Celery producer of this platform would configure: test tasks spread over the three queues.
CELERY_ROUTES = {
    "tests.add": {"queue": "ingest"},
    "tests.count": {"queue": "ingest"},
    "tests.nap": {"queue": "ingest"},
    "tests.spin": {"queue": "ingest"},
    "tests.block": {"queue": "ingest"},
    "tests.record": {"queue": "ingest"},
    "tests.mul": {"queue": "analytics"},
    "tests.boom": {"queue": "analytics"},
    "tests.sleep": {"queue": "analytics"},
    "tests.stubborn": {"queue": "analytics"},
    "tests.flaky": {"queue": "reports"},
    "tests.explicit_retry": {"queue": "reports"},
    "raysys.ping": {"queue": "reports"},
    "workers.tasks.*": {"queue": "ingest"},
}


def bridge_settings(url: str, data_dir: Path, **overrides) -> Settings:
    """Settings for bridges under test: the test task module, quick heartbeats and short backoffs."""
    values = dict(broker_url=url, data_dir=str(data_dir), task_modules=TASK_MODULES, heartbeat_seconds=0.5,
                  consumer_timeout_seconds=3.0, retry_backoff_max=1.0, max_message_bytes=64 * 1024,
                  task_soft_time_limit=60.0, task_time_limit=90.0)
    values.update(overrides)
    return Settings.from_env({}, **values)


@pytest.fixture(scope="module")
def qsettings(redis_server, tmp_path_factory) -> Settings:
    return bridge_settings(redis_server["url"], tmp_path_factory.mktemp("queue") / "data")


@pytest.fixture(scope="module")
def bridges(ray_cluster, qsettings):
    """One bridge on ingest, analytics and reports for the whole module (2 heavy slots per queue)."""
    from raysys.queue.bridge import start_bridges, stop_bridges

    handles = start_bridges(qsettings, concurrency=2)
    yield handles
    stop_bridges(handles, timeout=5)


@pytest.fixture
def r(redis_url) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def celery_app(redis_url):
    """A real Celery 5 producer on the same Redis (broker and result backend), routed to the three queues."""
    from celery import Celery

    app = Celery("raysys-tests", broker=redis_url, backend=redis_url)
    app.conf.task_routes = CELERY_ROUTES
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


def actor_log(pid: int) -> str:
    """Everything the Ray worker process ``pid`` wrote to its log files so far."""
    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    text = ""
    for path in glob.glob(os.path.join(logs, f"*-{pid}.*")):
        text += Path(path).read_text(errors="replace")
    return text


def settled(r: redis.Redis, *queues: str) -> bool:
    """Every delivery settled: none waiting on ``queues``, none held in any bridge's in-flight list.

    A bridge acks a message only after it stored the job's result (or dropped it as a duplicate), so once
    this holds every run of those messages has started and every result write has happened.
    """
    return not any(r.llen(q) for q in queues) and not any(r.llen(k) for k in r.keys("raysys:inflight:*"))


def drain_publications(r: redis.Redis, seen) -> None:
    """Wait until a pattern listener on ``celery-task-meta-*`` has received every publication made so far.

    Publishes a marker result and waits until ``seen`` (a mapping keyed by task id, filled by the listener)
    holds it: Redis sends a subscriber its messages in the order it ran the PUBLISH commands, so every
    earlier publication arrived first. The marker is then removed from ``seen``.
    """
    marker = f"drain-marker-{uuid.uuid4()}"
    r.publish(f"celery-task-meta-{marker}", json.dumps({"task_id": marker, "status": "MARKER"}))
    wait_until(lambda: marker in seen, timeout=20, interval=0.01, message="the listener to receive a marker publication")
    seen.pop(marker, None)


def parked(r: redis.Redis, *task_ids: str) -> bool:
    """Whether every one of ``task_ids`` waits in the delayed set (a bridge took it and parked it until due)."""
    members = r.zrange("raysys:delayed", 0, -1)
    return all(any(task_id.encode() in m for m in members) for task_id in task_ids)


def light_detached(bridges) -> int:
    """How many light jobs the ``bridges`` moved to a thread of their own so far (they overran 0.5 s)."""
    import ray

    return sum(s["totals"].get("light_detached", 0) for s in ray.get([b.stats.remote() for b in bridges]))


def running_on(bridges, task_id: str) -> bool:
    """Whether one of ``bridges`` reports the job ``task_id`` as running."""
    import ray

    return any(a["id"] == task_id and a["running"] for act in ray.get([b.active.remote() for b in bridges])
               for a in act)


@pytest.fixture
def env(monkeypatch, qsettings):
    """The environment a producer process would have (the CLI and `tasks` read it at the edge)."""
    monkeypatch.setenv("CELERY_BROKER_URL", qsettings.redis_url)
    monkeypatch.setenv("RAYSYS_TASK_MODULES", ",".join(qsettings.task_modules))
    monkeypatch.setenv("RAYSYS_DATA_DIR", qsettings.data_dir)
    return qsettings
