"""raysys' queue bridge against a real Celery prefork worker, side by side on the same Redis.

Both consume the queue ``bench`` and run the same no-op job (``raysys.ping``, result stored in the
Redis result backend). Measured, one system at a time (the other one stopped), each on a fresh
redis-server of the same build and configuration (the embedded stack's: append-only), after the previous
run's files were deleted and the disk synced, so neither pays for the other's writes:

- **drain**: 10,000 jobs pushed at once (one pipeline); jobs/s from the first push to the last result.
- **latency**: jobs offered at 200/s; enqueue -> result received over pub/sub, p50 to p99. The first
  second of offered jobs warms both systems up after the drain (pools, connections, caches) and is not
  counted; the next ``--latency-jobs`` are.

Usage: ``./dev bench bridge [--jobs 10000] [--rate 200] [--latency-jobs 3000]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

from raysys.config import Settings
from raysys.queue import keys, messages
from raysys.stack import free_port, start_redis, terminate

QUEUE = "bench"

CELERY_APP = '''
from celery import Celery
app = Celery("bench", broker="{url}", backend="{url}")
app.conf.task_default_queue = "{queue}"
app.conf.worker_hijack_root_logger = False

@app.task(name="raysys.ping")
def ping(value="pong"):
    return value
'''


def push(r: redis.Redis, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    msgs = [messages.encode_celery("raysys.ping", [i], task_id=task_id, queue=QUEUE) for i, task_id in enumerate(ids)]
    pipe = r.pipeline(transaction=False)
    for m in msgs:
        pipe.lpush(QUEUE, m)
    pipe.execute()
    return ids


def wait_all(r: redis.Redis, ids: list[str], timeout: float) -> float:
    names = [keys.result_key(i) for i in ids]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sum(r.exists(*names[i:i + 5000]) for i in range(0, len(names), 5000))
        if done == len(names):
            return time.perf_counter()
        time.sleep(0.02)
    raise SystemExit(f"timed out: {done}/{len(keys)} results after {timeout} s")


def drain(r: redis.Redis, n: int) -> float:
    t0 = time.perf_counter()
    ids = push(r, n)
    t1 = wait_all(r, ids, timeout=600)
    return n / (t1 - t0)


def latency(url: str, rate: float, n: int, warmup: float = 1.0) -> dict[str, float]:
    """Offer ``warmup`` seconds of jobs, then ``n`` more, at ``rate``/s; percentiles of the ``n`` in ms
    (enqueue -> result received)."""
    r = redis.Redis.from_url(url)
    received: dict[str, float] = {}
    listener_conn = redis.Redis.from_url(url)
    pubsub = listener_conn.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("celery-task-meta-*")
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            m = pubsub.get_message(timeout=0.05)
            if m and m["type"] == "pmessage":
                meta = json.loads(m["data"])
                if meta.get("status") == "SUCCESS":
                    received.setdefault(meta["task_id"], time.perf_counter())

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.2)
    skip = int(warmup * rate)
    sent: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(skip + n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        task_id = str(uuid.uuid4())
        raw = messages.encode_celery("raysys.ping", [i], task_id=task_id, queue=QUEUE)
        if i >= skip:
            sent[task_id] = time.perf_counter()
        r.lpush(QUEUE, raw)
    deadline = time.monotonic() + 60
    while not all(k in received for k in sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    pubsub.close()
    lat = sorted((received[k] - sent[k]) * 1000 for k in sent if k in received)
    if len(lat) < n:
        print(f"warning: {n - len(lat)} results missing", file=sys.stderr)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))]

    return {"p50": statistics.median(lat), "p90": pct(0.90), "p99": pct(0.99), "max": lat[-1]}


def run_celery(url: str, workdir: Path, args: argparse.Namespace) -> dict:
    (workdir / "bench_celery_app.py").write_text(CELERY_APP.format(url=url, queue=QUEUE))
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker", "-Q", QUEUE, "--pool", "prefork",
         "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "celery.log", "wb"),
        start_new_session=True)
    try:
        r = redis.Redis.from_url(url)
        wait_all(r, push(r, 200), timeout=60)  # warm: the worker is up and its children forked
        out = {"drain": drain(r, args.jobs)}
        time.sleep(1.0)  # let the backlog's aftermath (AOF, result writes) settle before timing latency
        out.update(latency(url, args.rate, args.latency_jobs))
        return out
    finally:
        terminate([proc.pid], timeout=15)


def run_raysys(url: str, workdir: Path, args: argparse.Namespace) -> dict:
    import ray

    from raysys.constants import RAY_NAMESPACE
    from raysys.queue.bridge import start_bridges, stop_bridges

    settings = Settings.from_env({}, broker_url=url, data_dir=str(workdir / "data"))
    ray.init(num_cpus=2, namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        handles = start_bridges(settings, queues=[QUEUE], concurrency=2)
        r = redis.Redis.from_url(url)
        wait_all(r, push(r, 200), timeout=60)
        out = {"drain": drain(r, args.jobs)}
        time.sleep(1.0)  # let the backlog's aftermath (AOF, result writes) settle before timing latency
        out.update(latency(url, args.rate, args.latency_jobs))
        out["stats"] = ray.get(handles[0].stats.remote())
        stop_bridges(handles, timeout=10)
        return out
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5,
                        help="each round runs both systems afresh; the table shows the median of the rounds")
    parser.add_argument("--only", choices=("celery", "raysys"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rounds: dict[str, list[dict]] = {"celery": [], "raysys": []}
    with tempfile.TemporaryDirectory(prefix="raysys-bench-") as tmp:
        workdir = Path(tmp)
        for i in range(args.rounds):
            for name, runner in (("celery", run_celery), ("raysys", run_raysys)):
                if args.only and args.only != name:
                    continue
                print(f"round {i + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                # The previous run's append-only log is deleted and the disk synced first: its write-back
                # would otherwise stall this run's Redis (one system would pay for the other's writes).
                os.sync()
                data = workdir / f"redis-{name}-{i}"
                pid, url = start_redis(data, free_port())
                try:
                    rounds[name].append(runner(url, workdir, args))
                finally:
                    terminate([pid])
                    shutil.rmtree(data, ignore_errors=True)
    c, s = (_median(rounds["celery"]), _median(rounds["raysys"]))
    print(f"\nqueue bridge benchmark: no-op jobs with results stored, same Redis, {os.cpu_count()} CPUs, "
          f"median of {args.rounds} rounds")
    print(f"{'':34}{'celery prefork c=2':>20}{'raysys 1 bridge':>18}{'raysys/celery':>15}")

    def row(label: str, key: str, fmt: str, better_low: bool) -> None:
        cv = c[key] if c else None
        sv = s[key] if s else None
        ratio = ""
        if cv and sv:
            ratio = f"{(cv / sv if better_low else sv / cv):.2f}x" + (" better" if (sv < cv if better_low else sv > cv)
                                                                         else " worse")
        print(f"{label:34}{(format(cv, fmt) if cv is not None else '-'):>20}"
              f"{(format(sv, fmt) if sv is not None else '-'):>18}{ratio:>15}")

    row(f"drain {args.jobs:,} queued (jobs/s)", "drain", ",.0f", False)
    for key in ("p50", "p90", "p99", "max"):
        row(f"latency {key} @{args.rate:.0f}/s (ms)", key, ".2f", True)
    for name, runs in rounds.items():
        if runs:
            print(f"{name} per round: drain " + ", ".join(f"{r['drain']:,.0f}" for r in runs)
                  + " jobs/s; p99 " + ", ".join(f"{r['p99']:.2f}" for r in runs) + " ms")
    if s:
        print(f"raysys bridge totals, last round: {rounds['raysys'][-1]['stats']['totals']}")


def _median(runs: list[dict]) -> dict | None:
    if not runs:
        return None
    return {key: statistics.median(r[key] for r in runs) for key in ("drain", "p50", "p90", "p99", "max")}


if __name__ == "__main__":
    main()
