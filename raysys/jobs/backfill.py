"""Re-run call analytics over a date range for one tenant — a `ray job submit` entrypoint.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m raysys.jobs.backfill --tenant acme --start 2026-01-01 --end 2026-01-31

Every call of the tenant that started on a day in ``[start, end]`` (UTC) goes through
``workers.tasks.process_call_analytics`` as a Ray task with the task's registered resources (so the
model work lands on the model actors, GPUs included). ``--via-queue`` sends the jobs through the
``analytics`` queue instead (the bridges must be running) and waits for their results.
Progress goes to the job log (a progress bar and a line every ``--log-every`` calls); the job ends
with a JSON summary and exits 1 when any call failed. Re-running is safe: analytics are upserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from tqdm import tqdm

from raysys.config import Settings
from raysys.jobs import job_settings
from raysys.queue.client import Client
from raysys.runtime import init_ray
from raysys.storage.postgres import open_db
from raysys.tasks import execute

log = logging.getLogger("raysys.jobs.backfill")
TASK = "workers.tasks.process_call_analytics"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raysys.jobs.backfill", description=__doc__.splitlines()[0])
    p.add_argument("--tenant", required=True)
    p.add_argument("--start", required=True, type=date.fromisoformat, help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--end", required=True, type=date.fromisoformat, help="last day, YYYY-MM-DD (UTC, inclusive)")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight at once (default 8)")
    p.add_argument("--via-queue", action="store_true", help="enqueue on the analytics queue and wait for results")
    p.add_argument("--log-every", type=int, default=25, help="a progress line every N calls")
    p.add_argument("--dry-run", action="store_true", help="list the calls, run nothing")
    args = p.parse_args(argv)
    if args.end < args.start:
        p.error("--end must not be before --start")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    return args


def call_ids(settings: Settings, tenant: str, start: date, end: date) -> list[str]:

    async def fetch() -> list[str]:
        async with open_db(settings, max_size=1) as db:
            lo = datetime.combine(start, dtime.min, tzinfo=UTC)
            hi = datetime.combine(end + timedelta(days=1), dtime.min, tzinfo=UTC)
            return await db.list_call_ids(tenant, lo, hi)

    return asyncio.run(fetch())


class Progress:
    """A plain log line every ``every`` items (job logs are not terminals), and a tqdm bar on stderr
    when it is a terminal (a bar redrawn into a log file floods it)."""

    def __init__(self, total: int, every: int, what: str, unit: str = "call") -> None:
        self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, mininterval=2.0,
                        disable=not sys.stderr.isatty())
        self.total, self.every, self.done, self.failed = total, max(1, every), 0, 0
        self.started = time.perf_counter()

    def __call__(self, key: str, ok: bool, value) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.bar.update(1)
        if not ok:
            reason = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
            log.warning("failed %s: %s", key, reason.splitlines()[0] if reason else "")
        if self.done % self.every == 0 or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            log.info("progress %d/%d (%.0f%%) failed=%d rate=%.2f/s", self.done, self.total,
                     100.0 * self.done / max(self.total, 1), self.failed, rate)

    def close(self) -> None:
        self.bar.close()


def run_via_queue(settings: Settings, ids: list[str], progress: Progress) -> dict:
    client = Client(settings)
    started = time.perf_counter()
    results = {cid: client.send_task(TASK, args=[cid], task_id=f"backfill:{cid}:{int(started)}") for cid in ids}
    failures: dict[str, str] = {}
    for cid, res in results.items():
        try:
            res.get(timeout=settings.task_time_limit)
            progress(cid, True, None)
        except Exception as exc:  # noqa: BLE001 - one bad call must not stop the backfill
            failures[cid] = f"{type(exc).__name__}: {exc}"
            progress(cid, False, exc)
    elapsed = time.perf_counter() - started
    return {"total": len(ids), "succeeded": len(ids) - len(failures), "failed": len(failures),
            "elapsed_s": round(elapsed, 2), "per_second": round(len(ids) / elapsed, 2) if elapsed else 0.0,
            "failures": failures}


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    args = parse_args(argv)
    settings = job_settings("backfill", settings)
    if settings is None:
        return 2
    ids = call_ids(settings, args.tenant, args.start, args.end)
    log.info("backfill tenant=%s %s..%s: %d calls", args.tenant, args.start, args.end, len(ids))
    summary: dict
    if args.dry_run or not ids:
        summary = {"total": len(ids), "succeeded": 0, "failed": 0, "elapsed_s": 0.0, "per_second": 0.0,
                   "failures": {}, "dry_run": args.dry_run}
    else:
        init_ray(settings)
        progress = Progress(len(ids), args.log_every, f"backfill {args.tenant}")
        try:
            if args.via_queue:
                summary = run_via_queue(settings, ids, progress)
            else:
                summary = execute.run_many(settings, TASK, ((cid, [cid], {}) for cid in ids),
                                          max_in_flight=args.concurrency, on_done=progress).as_dict()
        finally:
            progress.close()
    summary.update({"tenant": args.tenant, "start": str(args.start), "end": str(args.end)})
    log.info("backfill done: %d ok, %d failed of %d in %.1f s", summary["succeeded"], summary["failed"],
             summary["total"], summary["elapsed_s"])
    print("SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
