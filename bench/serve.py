"""HTTP API latency and throughput: a job-status read and on-demand analytics of a 1-minute call.

Prints p50/p99 latency and requests/s for:

- ``GET /v1/jobs/{id}`` (API key lookup in PostgreSQL, tenant check and result read in Redis), one
  client at a time and 16 at once, beside the floor a Celery client pays for the same read with no
  HTTP and no auth (``celery.result.AsyncResult(id).state`` against the same Redis);
- ``POST /v1/calls/{id}/analytics?wait=true`` for a 60-second recording (built from
  ``../shared/data/diarization``: ``sample.wav`` + ``trn00.wav``), beside the same task sent through
  the queue (producer -> Redis -> bridge -> Ray -> result backend), the path a Celery producer uses.

Starts its own Redis, PostgreSQL, chDB and local Ray in a temporary directory and removes them after.

    ./dev bench serve [--reads 2000] [--concurrency 16] [--calls 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def line(label: str, lat_s: list[float], wall: float | None = None) -> str:
    rate = len(lat_s) / wall if wall else 1.0 / statistics.mean(lat_s)
    return (f"  {label:<44} p50 {pct(lat_s, 50) * 1000:8.2f} ms   p99 {pct(lat_s, 99) * 1000:8.2f} ms   "
            f"{rate:8.1f} req/s   (n={len(lat_s)})")


def one_minute_call(dest: Path) -> Path:
    import numpy as np
    import soundfile as sf

    parts = []
    for name in ("sample.wav", "trn00.wav"):
        path = SHARED_DATA / "diarization" / name
        if not path.exists():
            sys.exit(f"bench/serve.py needs {path} (the shared data set)")
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        assert sr == 16000, sr
        parts.append(audio[: 30 * sr])
    audio = np.concatenate(parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dest), audio, 16000, subtype="PCM_16")
    return dest


async def seed(settings, audio: Path) -> tuple[str, str, str]:
    from raysys.storage.postgres import Call, Database, Turn

    tenant = "bench_tenant"
    db = await Database.open(settings.postgres_url, max_size=2)
    try:
        _, secret = await db.create_api_key(tenant, name="bench")
        start = datetime.now(UTC) - timedelta(minutes=2)
        call = Call(id=f"call_{uuid.uuid4().hex[:10]}", tenant_id=tenant, customer_id="cust_1", agent_id="agent_1",
                    started_at=start, answered_at=start, ended_at=start + timedelta(seconds=60),
                    audio_path=str(audio), audio_layout="mono", resolved=True)
        await db.upsert_calls([call])
        lines = [("agent", "Thank you for calling, how can I help you today?"),
                 ("customer", "I lost my card yesterday and I need to block it."),
                 ("agent", "Let me look into that for you. I can see the card on your account."),
                 ("customer", "Please block it and send me a new one."),
                 ("agent", "I've taken care of that for you now. Is there anything else?"),
                 ("customer", "No, thanks, that's great.")]
        await db.replace_turns(tenant, call.id, [Turn(i, role, i * 10.0, i * 10.0 + 9.0, text)
                                                for i, (role, text) in enumerate(lines)])
        return tenant, secret, call.id
    finally:
        await db.close()


async def reads(url: str, headers: dict, job_id: str, n: int, concurrency: int,
                path: str | None = None) -> tuple[list[float], float]:
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    path = path or f"/v1/jobs/{job_id}"
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        await client.get(path)
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                r = await client.get(path)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"status read failed: {r.status_code} {r.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def celery_reads(redis_url: str, job_id: str, n: int) -> list[float]:
    from celery import Celery

    app = Celery("bench", broker=redis_url, backend=redis_url)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        app.AsyncResult(job_id).state  # noqa: B018
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--calls", type=int, default=5, help="on-demand analytics requests (after a warm-up)")
    parser.add_argument("--skip-analytics", action="store_true", help="only the job-status read")
    parser.add_argument("--timeout", type=float, default=300.0, help="per analytics request, seconds")
    args = parser.parse_args()

    import httpx
    import ray
    from ray import serve

    from raysys.config import Settings
    from raysys.constants import RAY_NAMESPACE
    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.queue.client import Client
    from raysys.serve import deploy
    from raysys.stack import free_port, start_postgres, start_redis, stop_postgres, terminate
    from raysys.storage.postgres import migrate

    tmp = Path(tempfile.mkdtemp(prefix="raysys-bench-serve-"))
    redis_pid, redis_url = start_redis(tmp / "redis", free_port())
    pg_pid, pg_url = start_postgres(tmp / "pg")
    bridges = []
    try:
        asyncio.run(migrate(pg_url))
        # The per-key rate limit stays on (its Redis script runs on every request, as in production) but
        # high enough that one key's thousands of reads are measured, not refused.
        settings = Settings.from_env({}, data_dir=str(tmp / "data"), broker_url=redis_url, postgres_url=pg_url,
                                     clickhouse_url=f"chdb://{tmp / 'chdb'}", serve_port=free_port(),
                                     api_rate_limit=1_000_000.0, api_rate_burst=1_000_000)
        audio = one_minute_call(Path(settings.data_dir) / "uploads" / "bench" / "call-60s.wav")
        tenant, secret, call_id = asyncio.run(seed(settings, audio))
        ray.init(num_cpus=max(4, os.cpu_count() or 2), namespace=RAY_NAMESPACE, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        bridges = start_bridges(settings, concurrency=2)
        url = deploy(settings)
        headers = {"Authorization": f"Bearer {secret}"}
        http = httpx.Client(base_url=url, headers=headers, timeout=600)
        while http.get("/healthz").status_code != 200:
            time.sleep(0.2)
        print(f"raysys HTTP API bench ({os.cpu_count()} CPUs, Ray {ray.__version__}, one API replica)")

        # --- job-status read ---------------------------------------------------------------------------
        job = http.post("/v1/tasks/raysys.ping", json={"args": ["pong"]}).json()["job_id"]
        Client(settings).AsyncResult(job).get(timeout=60)
        print("\njob-status read (GET /v1/jobs/{id}, a finished job)")
        lat, wall = asyncio.run(reads(url, headers, job, min(args.reads, 500), 1))
        print(line("raysys HTTP, 1 client", lat, wall))
        lat, wall = asyncio.run(reads(url, headers, job, args.reads, args.concurrency))
        print(line(f"raysys HTTP, {args.concurrency} clients", lat, wall))
        lat, wall = asyncio.run(reads(url, headers, job, min(args.reads, 500), 1, path="/healthz"))
        print(line("Serve floor: GET /healthz (no auth, no I/O)", lat, wall))
        floor = celery_reads(redis_url, job, 500)
        print(line("peer: Celery AsyncResult.state, no HTTP/auth", floor, sum(floor)))

        if args.skip_analytics:
            return 0
        # --- on-demand analytics of a 1-minute call ----------------------------------------------------
        print(f"\non-demand analytics of a 60 s call ({call_id})")
        t0 = time.perf_counter()
        first = http.post(f"/v1/calls/{call_id}/analytics", params={"wait": "true", "timeout": args.timeout})
        if first.status_code != 200:
            print(f"  on-demand analytics failed: {first.status_code} {first.text}")
            return 1
        print(f"  warm-up (models load on first use)           {time.perf_counter() - t0:8.2f} s")
        lat = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            r = http.post(f"/v1/calls/{call_id}/analytics", params={"wait": "true", "timeout": args.timeout})
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                print(f"  on-demand analytics failed: {r.status_code} {r.text}")
                print(f"  available {ray.available_resources()} of {ray.cluster_resources()}")
                return 1
        print(line("raysys HTTP wait=true, 1 client", lat))
        timings = r.json()["result"].get("timings", {})
        if timings:
            print("  task timings (last run): " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()
                                                            if isinstance(v, int | float)))
        client = Client(settings)
        queued = []
        for _ in range(max(2, args.calls // 2)):
            t0 = time.perf_counter()
            client.send_task("workers.tasks.process_call_analytics", args=[call_id]).get(timeout=600)
            queued.append(time.perf_counter() - t0)
        print(line("peer: queue path (send_task -> bridge -> get)", queued))
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, headers=headers, timeout=600) as c2:
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda _: c2.post(f"/v1/calls/{call_id}/analytics").status_code, range(8)))
        wall = time.perf_counter() - t0
        print(f"  raysys HTTP wait=true, 4 clients, 8 calls    {8 / wall:8.2f} calls/s ({wall:.1f} s; "
              f"statuses {sorted(set(codes))})")
        return 0
    finally:
        try:
            serve.shutdown()
            if bridges:
                stop_bridges(bridges)
        except Exception:  # noqa: BLE001 - any failure of a probe request counts as not ready yet
            pass
        ray.shutdown()
        stop_postgres(pg_pid)
        terminate([redis_pid])


if __name__ == "__main__":
    sys.exit(main())
