"""Cost of the bridge's APPLY script (store a result + ack, per job) against the same script at a git revision.

Batches of 64 jobs, as the bridge sends them under load; server-side time from Redis' ``INFO commandstats``
(what the script costs Redis, less sensitive to a busy client machine than wall time) and client wall time,
per job, median and best of the rounds; the two scripts alternate round by round.

Usage: ``python bench/apply_script.py [--baseline a9f7320] [--rounds 30]``
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from raysys.queue import messages, results
from raysys.queue import redis as current
from raysys.stack import free_port, start_redis, terminate

BATCH, BATCHES = 64, 20


def load_baseline(rev: str):  # a module loaded from git
    source = subprocess.run(["git", "show", f"{rev}:raysys/queue/redis.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_redis.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_redis", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="a9f7320", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    modules = {"baseline": load_baseline(args.baseline), "current": current}
    pid, url = start_redis(Path(tempfile.mkdtemp()), free_port())
    r = redis.Redis.from_url(url)
    try:
        scripts = {k: r.register_script(m.APPLY) for k, m in modules.items()}
        template = messages.encode_celery("raysys.ping", [], task_id="ID")

        def batch(kind: str):
            ops = modules[kind].Ops()
            inflight = "raysys:inflight:bench:bench"
            raws = [template.replace('"ID"', f'"{uuid.uuid4()}"') for _ in range(BATCH)]
            r.lpush(inflight, *raws)
            for raw in raws:
                task_id = str(uuid.uuid4())
                ops.result(task_id, results.success_json(task_id, "null"), 3600)
                ops.ack(inflight, raw.encode())
            return ops

        server: dict[str, list[float]] = {k: [] for k in modules}
        wall: dict[str, list[float]] = {k: [] for k in modules}
        for rnd in range(args.rounds):
            for kind in (("baseline", "current") if rnd % 2 else ("current", "baseline")):
                batches = [batch(kind) for _ in range(BATCHES)]
                r.config_resetstat()
                t0 = time.perf_counter()
                for ops in batches:
                    scripts[kind](keys=ops.keys, args=ops.argv)
                wall[kind].append((time.perf_counter() - t0) / (BATCHES * BATCH) * 1e6)
                server[kind].append(r.info("commandstats")["cmdstat_evalsha"]["usec"] / (BATCHES * BATCH))
            r.flushall()
        print(f"{'APPLY, per job (us)':<34}{'baseline ' + args.baseline:>20}{'current':>12}")
        for name, series in (("Redis server time, median", server), ("Redis server time, best", server),
                             ("client wall time, median", wall), ("client wall time, best", wall)):
            pick = statistics.median if "median" in name else min
            print(f"{name:<34}{pick(series['baseline']):>20.2f}{pick(series['current']):>12.2f}")
    finally:
        r.close()
        terminate([pid])


if __name__ == "__main__":
    sys.exit(main())
