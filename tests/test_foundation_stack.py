"""`raysys up; raysys status; raysys down`, twice, from the real CLI: services start from what pip
installed, report healthy, stop completely, and data survives down/up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fresh_home import fresh_home_env

from raysys.stack import free_port, pid_alive, pids_in_session, pids_with_arg, ray_temp_dir


def _cli(env, *args, check=True, timeout=180):
    proc = subprocess.run([sys.executable, "-m", "raysys.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"raysys {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_up_status_down_on_a_fresh_home_creates_the_ray_token_and_leaves_nothing(tmp_path, request):
    env = fresh_home_env(tmp_path)
    request.addfinalizer(lambda: _cli(env, "down", check=False))  # a failed assertion leaves no stack running
    home = Path(env["HOME"])
    up = _cli(env, "up")
    assert "ray         started" in up.stdout
    token = home / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) == 64
    data = home / ".local" / "share" / "raysys"  # the default data directory, created on first use
    state = json.loads((data / "stack.json").read_text())
    status = _cli(env, "status", "--json")
    assert json.loads(status.stdout)["healthy"] is True
    assert "Token authentication is enabled" not in status.stderr
    # A client of the cluster (bridges, a drain, then out) finds the token with nothing set, quietly.
    worker = _cli(env, "worker", "--burst", "--queues", "reports")
    assert "bridge(s) consuming reports" in worker.stderr
    assert "Token authentication" not in worker.stderr and "Traceback" not in worker.stderr
    pids = [state["pids"]["redis"], state["pids"]["postgres"], *state["pids"]["ray"]]
    _cli(env, "down")
    assert not [p for p in pids if pid_alive(p)], "processes left behind"
    assert not pids_in_session(state["ray_session"])


@pytest.mark.slow
def test_a_failing_up_stops_what_it_started_and_says_why_in_one_sentence(tmp_path):
    env = fresh_home_env(tmp_path, RAYSYS_DATA_DIR=str(tmp_path / "data"))
    # Something already listens on the Ray port: `ray start` fails after Redis and PostgreSQL started.
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", int(env["RAYSYS_RAY_PORT"])))
    blocker.listen()
    try:
        up = _cli(env, "up", check=False)
    finally:
        blocker.close()
    assert up.returncode == 1, up.stdout + up.stderr
    assert "Traceback" not in up.stderr
    error = [line for line in up.stderr.splitlines() if line.startswith("raysys: ")]
    assert error and "ray start" in error[0] and "ray-start.log" in error[0], up.stderr
    state = json.loads((tmp_path / "data" / "stack.json").read_text())
    assert state["pids"] == {}
    assert not pids_with_arg(str(tmp_path / "data"))  # Redis and PostgreSQL stopped again
    assert not pids_with_arg(str(ray_temp_dir(str(tmp_path / "data"))))  # and whatever `ray start` began


@pytest.mark.slow
def test_up_status_down_twice_leaves_nothing_behind_and_keeps_data(tmp_path, request):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "REDIS_URL", "POSTGRES_URL", "CLICKHOUSE_URL", "RAY_ADDRESS")}
    env.update(RAYSYS_DATA_DIR=str(data), RAYSYS_REDIS_PORT=str(free_port()), RAYSYS_RAY_PORT=str(free_port()),
               RAYSYS_DASHBOARD_PORT=str(free_port()))
    request.addfinalizer(lambda: _cli(env, "down", check=False))  # a failed assertion leaves no stack running
    for round_ in (1, 2):
        up = _cli(env, "up")
        assert "redis       started" in up.stdout and "ray         started" in up.stdout
        state = json.loads((data / "stack.json").read_text())
        status = json.loads(_cli(env, "status", "--json").stdout)
        assert status["healthy"] is True, status
        by_name = {s["name"]: s for s in status["services"]}
        assert set(by_name) == {"redis", "postgres", "clickhouse", "ray"}
        assert by_name["redis"]["url"].startswith("redis://:***@127.0.0.1:")  # the password never shown
        assert by_name["postgres"]["url"].startswith("postgresql://") and "pgvector" in by_name["postgres"]["detail"]
        assert by_name["clickhouse"]["url"] == f"chdb://{data}/clickhouse"
        assert by_name["ray"]["url"].startswith("127.0.0.1:")
        if round_ == 1:
            seeded = _cli(env, "seed-data", "--tenants", "1", "--calls", "30", "--days", "2", "--no-facts")
            assert "30 calls" in seeded.stdout
        else:
            # Data written before `down` is still there after `up`.
            import asyncio

            import asyncpg

            async def count(url):
                conn = await asyncpg.connect(url)
                try:
                    return await conn.fetchval("SELECT count(*) FROM calls")
                finally:
                    await conn.close()

            assert asyncio.run(count(by_name["postgres"]["url"])) == 30
        pids = [state["pids"]["redis"], state["pids"]["postgres"], *state["pids"]["ray"]]
        _cli(env, "down")
        assert not [p for p in pids if pid_alive(p)], "processes left behind"
        assert not pids_in_session(state["ray_session"])
        assert not pids_with_arg(str(ray_temp_dir(str(data))))
        down_status = _cli(env, "status", check=False)
        assert down_status.returncode == 1 and "UNHEALTHY" in down_status.stdout
