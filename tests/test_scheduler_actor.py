"""End to end: the real SchedulerActor on the session's Ray cluster and Redis enqueues a due job, a real
QueueBridge runs it to SUCCESS, and the producer client reads the result. Also `raysys beat`/`schedule`."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import redis
from scheduler_fixtures import make_config, queued_ids, sched_settings
from waiting import wait_until

from raysys import cli
from raysys.queue.client import Client
from raysys.scheduler.actor import ensure_scheduler, get_scheduler, stop_scheduler
from raysys.scheduler.store import Store


def test_actor_enqueues_a_due_job_that_the_bridge_runs_to_success(ray_cluster, redis_url, tmp_path):
    from raysys.queue.bridge import start_bridges, stop_bridges

    ray = ray_cluster
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"e2e_ping": {"cron": "0 3 * * *", "task": "raysys.ping", "queue": "analytics",
                                                 "args": ["{slot}"]}}, lease=5, tick=0.2)
    # The next 03:00 UTC slot, made "just passed" on the actor's clock; the schedule has run before
    # (its cursor a minute before the slot), so the actor owes that slot once, whenever it starts.
    slot = (datetime.now(UTC) + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    Store.from_url(redis_url).advance("e2e_ping", slot.timestamp() - 60, slot.timestamp(), time.time())
    offset = slot.timestamp() + 1 - time.time()
    name = f"raysys-scheduler-test-{uuid.uuid4().hex[:6]}"
    handle, created = ensure_scheduler(settings, config, name=name, clock_offset=offset)
    bridges = start_bridges(settings, queues=["analytics"], concurrency=1)
    try:
        assert created
        job_id = f"e2e_ping:{slot.isoformat()}"
        result = Client(settings).AsyncResult(job_id)
        assert result.get(timeout=120) == slot.isoformat()
        assert result.state == "SUCCESS"
        status = ray.get(handle.status.remote())
        assert status["is_leader"] and status["config_digest"] == config.digest()
        (row,) = [s for s in status["schedules"] if s["name"] == "e2e_ping"]
        assert row["runs"] == 1 and row["last_job_id"] == job_id
        assert row["next_run"] == (slot + timedelta(days=1)).isoformat()

        # Ray restarts a killed scheduler; it keeps its lease (its token is its actor id) and the
        # slot is not run again.
        ray.kill(handle, no_restart=False)
        # A new incarnation has a new start time (its tick count says nothing: it may catch up at once).
        wait_until(lambda: _status(ray, handle, "started", status["started"]) != status["started"], 120, 0.2,
                   message="the scheduler to restart")
        wait_until(lambda: _status(ray, handle, "is_leader", False), 60, 0.2, message="the restarted scheduler to lead")
        ticks = _status(ray, handle, "ticks", 0)
        assert json.loads(redis.Redis.from_url(redis_url).get(Store.from_url(redis_url).keys.lease))["token"] == \
            status["leader"]["token"]
        wait_until(lambda: _status(ray, handle, "ticks", 0) >= ticks + 5, 60, 0.2,
                   message="five more ticks of the restarted actor")
        assert Store.from_url(redis_url).read_state("e2e_ping")["runs"] == "1"
        assert Client(settings).AsyncResult(job_id).state == "SUCCESS"
        assert queued_ids(redis_url, "analytics") == []  # nothing re-sent, nothing left waiting
    finally:
        stop_bridges(bridges)
        stop_scheduler(name)
    wait_until(lambda: get_scheduler(name) is None, 30, 0.2, message="the scheduler actor to go away")
    assert Store.from_url(redis_url).leader() is None  # a clean stop hands the lease back


def _status(ray, handle, key, default):
    try:
        return ray.get(handle.status.remote(), timeout=5)[key]
    except Exception:  # noqa: BLE001 - restarting: any error means not yet
        return default


def test_cli_beat_detach_list_run_and_stop(ray_cluster, redis_url, tmp_path, monkeypatch, capsys):
    ray = ray_cluster
    monkeypatch.setenv("CELERY_BROKER_URL", redis_url)
    monkeypatch.setenv("RAYSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    schedule_file = tmp_path / "beat.toml"
    schedule_file.write_text('[schedules.often]\ncron = "*/10 * * * *"\ntask = "raysys.ping"\n'
                             'queue = "reports"\nargs = ["{slot}"]\n')
    monkeypatch.setenv("RAYSYS_SCHEDULE_FILE", str(schedule_file))
    try:
        assert cli.main(["beat", "--detach"]) == 0
        out = capsys.readouterr().out
        assert "scheduler started on the cluster (5 schedules enabled" in out and "often" in out
        assert get_scheduler() is not None
        assert cli.main(["beat", "--detach"]) == 0  # idempotent: the one scheduler per cluster
        assert "already running" in capsys.readouterr().out

        assert cli.main(["schedule", "run", "often"]) == 0
        job_line = capsys.readouterr().out.strip()
        assert job_line.startswith("often:manual-") and job_line.endswith("raysys.ping on reports")
        assert queued_ids(redis_url, "reports") == [job_line.split()[0]]

        assert cli.main(["schedule", "list"]) == 0
        listing = capsys.readouterr().out
        assert "leader: " in listing and "none (no scheduler running)" not in listing
        assert any(line.startswith("often ") and "*/10 * * * *" in line for line in listing.splitlines())
        assert cli.main(["schedule", "list", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["schedules"]}
        assert rows["often"]["manual_runs"] == 1 and rows["often"]["next_run"]
        assert cli.main(["schedule", "run", "nope"]) == 2
        assert "no schedule named 'nope'" in capsys.readouterr().err
    finally:
        assert cli.main(["beat", "--stop"]) == 0
    assert "scheduler stopped" in capsys.readouterr().out
    wait_until(lambda: get_scheduler() is None, 30, 0.2, message="the scheduler actor to go away")


def test_cli_beat_detach_without_a_cluster_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAYSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    assert cli.main(["beat", "--detach"]) == 2
    assert "needs a running cluster" in capsys.readouterr().err
