"""Fixtures for the queue/bridge tests: bridge settings, running bridges, a real Celery client, log lookup."""

from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

import pytest
import redis

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


def _wait_for(check, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def wait_for():
    """``wait_for(check, timeout=20, what=...)``: poll ``check()`` until it is truthy; returns its value."""
    return _wait_for


@pytest.fixture
def env(monkeypatch, qsettings):
    """The environment a producer process would have (the CLI and `tasks` read it at the edge)."""
    monkeypatch.setenv("CELERY_BROKER_URL", qsettings.redis_url)
    monkeypatch.setenv("RAYSYS_TASK_MODULES", ",".join(qsettings.task_modules))
    monkeypatch.setenv("RAYSYS_DATA_DIR", qsettings.data_dir)
    return qsettings
