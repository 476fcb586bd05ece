"""Fan-out on a cold cluster: no raysys actor alive, a fresh Ray head with 2 CPUs (issue 18).

Each entry point that fans work out over tasks which then wait on actors (the model pools, the
Warehouse) must finish on such a cluster with its default concurrency: the waiting tasks must never
hold the CPUs that the actors they wait on need to be placed. Each test runs the real entry point in
its own process against a Ray head started for that test, as `raysys up` starts one, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from raysys.config import Settings
from raysys.stack import free_port, ray_pids, start_ray_head, terminate

DEADLINE_S = int(os.environ.get("COLD_DEADLINE", 420))  # each entry point takes well under a minute here once it can make progress


@pytest.fixture
def cold_head(tmp_path):
    """A fresh Ray head (2 CPUs, token auth, dashboard for `ray job submit`), stopped after the test."""
    temp = Path(f"/tmp/raysys-cold-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    address, sid = start_ray_head(temp, free_port(), free_port(), num_cpus=2)
    try:
        yield address
    finally:
        terminate(ray_pids(temp, sid), timeout=15)
        shutil.rmtree(temp, ignore_errors=True)


def cold_env(tmp_path: Path, address: str, redis_url: str, pg_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYSYS_", "CELERY_", "POSTGRES", "CLICKHOUSE"))}
    env.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token", CELERY_BROKER_URL=redis_url, POSTGRES_URL=pg_url,
               CLICKHOUSE_URL=f"chdb://{tmp_path / 'chdb'}", RAYSYS_DATA_DIR=str(tmp_path / "data"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]))
    return env


def seed_calls(settings: Settings, tenant: str, n: int, with_audio: int) -> str:
    """``n`` synthetic calls of ``tenant`` that started an hour ago, the first ``with_audio`` of them with a real
    recording; the (UTC) day they started on (yesterday's, in the first hour of a day)."""
    from raysys import synthetic
    from raysys.storage.postgres import Database

    uploads = Path(settings.data_dir) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    audio = uploads / "call.wav"
    with resources.as_file(resources.files("raysys") / "assets" / "demo_call.wav") as src:
        shutil.copyfile(src, audio)
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    day = started.date()
    ds = synthetic.generate(tenants=1, calls=n, days=1, seed=7, end=day, tenant_prefix="c")
    for i, sc in enumerate(ds.calls):
        sc.call.tenant_id = tenant
        sc.call.started_at = started
        sc.call.answered_at = sc.call.started_at + timedelta(seconds=3)
        sc.call.ended_at = sc.call.started_at + timedelta(seconds=40)
        if i < with_audio:
            sc.call.audio_path = str(audio)

    async def write() -> None:
        db = await Database.open(settings.postgres_url)
        try:
            await db.upsert_tenant(tenant)
            await db.upsert_calls([sc.call for sc in ds.calls])
            for sc in ds.calls:
                await db.replace_turns(tenant, sc.call.id, sc.turns)
        finally:
            await db.close()

    asyncio.run(write())
    return str(day)


def run_entrypoint(env: dict[str, str], *argv: str) -> tuple[int, str]:
    try:
        proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"{' '.join(argv)} made no progress within {DEADLINE_S} s:\n{out[-2000:]}\n{err[-3000:]}")
    return proc.returncode, proc.stdout + proc.stderr


def summary_of(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("SUMMARY "))
    return json.loads(line.removeprefix("SUMMARY "))


@pytest.mark.slow
def test_backfill_with_default_concurrency_finishes_on_a_cold_two_cpu_cluster(tmp_path, cold_head, redis_url,
                                                                               pg_url):
    env = cold_env(tmp_path, cold_head, redis_url, pg_url)
    settings = Settings.from_env(env)
    day = seed_calls(settings, "tenant_cold", n=12, with_audio=0)
    rc, out = run_entrypoint(env, "-m", "raysys.jobs.backfill", "--tenant", "tenant_cold", "--start", day, "--end", day)
    summary = summary_of(out)
    assert rc == 0 and summary["total"] == 12 and summary["succeeded"] == 12, out[-3000:]


@pytest.mark.slow
def test_ingest_dir_over_many_document_groups_finishes_on_a_cold_two_cpu_cluster(tmp_path, cold_head, redis_url,
                                                                                 pg_url):
    env = cold_env(tmp_path, cold_head, redis_url, pg_url)
    folder = tmp_path / "data" / "documents" / "tenant_cold"
    folder.mkdir(parents=True)
    # 12 documents of ~30 KB: more than one Ray task's group (256 KB), so the default concurrency (the
    # cluster's 2 CPUs) runs two ingest tasks that both wait on the embedding actor.
    for i in range(12):
        lines = [f"Policy {i} section {j}: customers who report a lost card get a replacement within "
                 f"{j % 5 + 2} working days, and disputed payments are refunded after review." for j in range(220)]
        (folder / f"policy_{i:02d}.md").write_text(f"# Policy {i}\n\n" + "\n\n".join(lines))
    rc, out = run_entrypoint(env, "-m", "raysys.jobs.ingest_dir", str(folder), "--tenant", "tenant_cold")
    summary = summary_of(out)
    assert rc == 0 and summary["total"] == 12 and summary["succeeded"] == 12, out[-3000:]
    assert summary["chunks"] >= 12


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [None, 8], ids=["default-concurrency", "WORKER_CONCURRENCY=8"])
def test_twenty_call_analytics_jobs_through_a_bridge_finish_on_a_cold_two_cpu_cluster(
        tmp_path, cold_head, redis_url, pg_url, concurrency):
    from raysys.queue.client import Client

    env = cold_env(tmp_path, cold_head, redis_url, pg_url)
    if concurrency:
        env["WORKER_CONCURRENCY"] = str(concurrency)
    settings = Settings.from_env(env)
    seed_calls(settings, "tenant_cold", n=20, with_audio=0 if concurrency else 2)
    worker = subprocess.Popen([sys.executable, "-m", "raysys.cli", "worker", "--queues", "analytics"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from raysys.storage.postgres import Database

        async def ids() -> list[str]:
            db = await Database.open(settings.postgres_url)
            try:
                return await db.list_call_ids("tenant_cold", datetime(2000, 1, 1, tzinfo=UTC),
                                              datetime.now(UTC) + timedelta(days=1))
            finally:
                await db.close()

        call_ids = asyncio.run(ids())
        assert len(call_ids) == 20
        client = Client(settings)
        results = [client.send_task("workers.tasks.process_call_analytics", args=[cid]) for cid in call_ids]
        deadline = time.monotonic() + DEADLINE_S
        done = []
        for res in results:
            done.append(res.get(timeout=max(1.0, deadline - time.monotonic())))
        assert [d["call_id"] for d in done] == call_ids
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
