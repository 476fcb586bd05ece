"""Queue commands: ``worker``, ``submit``, ``inspect``, ``dead``.

- ``raysys worker -Q ingest,analytics,reports [--concurrency N] [--count K] [--detach | --burst | --stop]``
- ``raysys submit TASK [--args JSON] [--kwargs JSON] [--queue Q] [--countdown S] [--wait]``
- ``raysys inspect active|registered|stats|queues|scheduled|dead [--json]``
- ``raysys dead list QUEUE`` · ``raysys dead requeue QUEUE (--all | ID...)``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from raysys.config import Settings
from raysys.errors import NotFound
from raysys.queue import admin
from raysys.queue.client import Client
from raysys.runtime import init_ray
from raysys.tasks.registry import load_all


def register(sub) -> None:
    """Add this family's sub-commands to the `raysys` parser."""
    p = sub.add_parser("worker", help="run queue bridges on the Ray cluster (RAY_ADDRESS) until Ctrl-C",
                       description="Start QueueBridge actors consuming the queues; stay in the foreground "
                                   "until Ctrl-C unless --detach.")
    p.add_argument("-Q", "--queues", help="comma-separated queues (default RAYSYS_QUEUES)")
    p.add_argument("-c", "--concurrency", type=int, help="heavy jobs at once per queue per bridge "
                   "(default WORKER_CONCURRENCY or the cluster's CPUs)")
    p.add_argument("--count", type=int, default=1, help="bridges to start (default 1)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="start detached bridges that outlive this command")
    mode.add_argument("--burst", action="store_true", help="drain the queues, then stop and exit")
    mode.add_argument("--stop", action="store_true", help="stop every bridge running on the cluster")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="enqueue a job (Celery protocol v2, as a Celery producer would)")
    p.add_argument("task", help="task name, e.g. workers.tasks.ingest_document or ingest_document")
    p.add_argument("--args", default="[]", help="JSON list of positional arguments")
    p.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p.add_argument("--queue", help="queue (default: the task's)")
    p.add_argument("--countdown", type=float, help="run no earlier than this many seconds from now")
    p.add_argument("--eta", help="run no earlier than this ISO-8601 time")
    p.add_argument("--expires", type=float, help="revoke when not started within this many seconds")
    p.add_argument("--priority", type=int, choices=range(10), metavar="0-9", help="Celery priority (0 first)")
    p.add_argument("--id", help="job id (default: a new UUID)")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("inspect", help="look at bridges and queues")
    p.add_argument("what", choices=("active", "registered", "stats", "queues", "scheduled", "dead"))
    p.add_argument("--queue", help="for dead: one queue (default: every configured queue)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("dead", help="dead letters: list or requeue")
    dsub = p.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    d = dsub.add_parser("list", help="show a queue's dead letters")
    d.add_argument("queue")
    d.add_argument("--limit", type=int, default=100)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_dead_list)
    d = dsub.add_parser("requeue", help="put dead letters back on their queue (retries reset)")
    d.add_argument("queue")
    d.add_argument("ids", nargs="*", metavar="ID")
    d.add_argument("--all", action="store_true", help="every dead letter of the queue")
    d.set_defaults(func=cmd_dead_requeue)


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    if isinstance(data, list):
        if not data:
            print("(none)")
        for item in data:
            print("  ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict) else item)
    else:
        print(data)


def _ray(settings: Settings) -> None:
    init_ray(settings)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from raysys.queue.bridge import bridge_handles, start_bridges, stop_bridges  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    settings = settings.resolved()
    _ray(settings)
    if args.stop:
        handles = bridge_handles()
        stop_bridges(handles)
        print(f"stopped {len(handles)} bridge(s)")
        return 0
    queues = tuple(q.strip() for q in (args.queues or "").split(",") if q.strip()) or settings.queues
    handles = start_bridges(settings, queues, args.concurrency, args.count, detached=args.detach)
    if settings.default_queue and settings.default_queue not in queues:
        queues += (settings.default_queue,)  # every bridge takes Celery's default queue too (see start_bridges)
    print(f"raysys worker: {len(handles)} bridge(s) consuming {','.join(queues)}", file=sys.stderr)
    if args.detach:
        return 0
    try:
        if args.burst:
            client = admin.connect(settings)
            idle_since = None
            while True:
                time.sleep(0.2)
                report = [q for q in admin.queue_report(settings, client) if "queue" in q and q["queue"] in queues]
                busy = any(q["waiting"] or q["delayed"] or q["in_flight"] for q in report)
                idle_since = None if busy else (idle_since or time.monotonic())
                if idle_since and time.monotonic() - idle_since > 0.5:
                    break
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("raysys worker: stopping (running jobs finish or go back to their queues)", file=sys.stderr)
    stop_bridges(handles)
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        call_args = json.loads(args.args)
        call_kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        print(f"raysys submit: --args/--kwargs must be JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(call_args, list) or not isinstance(call_kwargs, dict):
        print("raysys submit: --args must be a JSON list and --kwargs a JSON object", file=sys.stderr)
        return 2
    client = Client(settings.resolved())
    try:
        res = client.send_task(args.task, call_args, call_kwargs, queue=args.queue, task_id=args.id,
                               countdown=args.countdown, eta=args.eta, expires=args.expires, priority=args.priority)
    except (KeyError, ValueError) as exc:
        print(f"raysys submit: {exc}", file=sys.stderr)
        return 2
    print(res.id)
    if not args.wait:
        return 0
    try:
        value = res.get(timeout=args.timeout)
    except TimeoutError as exc:
        print(f"raysys submit: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - the job's own error, re-created from its result
        print(f"{res.state}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(value, default=str))
    return 0


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.resolved()
    if args.what == "queues":
        _print(admin.queue_report(settings), args.json)
    elif args.what == "scheduled":
        _print(admin.scheduled(settings, args.limit), args.json)
    elif args.what == "dead":
        queues = [args.queue] if args.queue else list(settings.queues)
        _print([{"queue": q, **e} for q in queues for e in admin.dead_letters(settings, q, args.limit)], args.json)
    else:
        import ray  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        from raysys.queue.bridge import bridge_handles  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        _ray(settings)
        handles = bridge_handles()
        if args.what == "registered" and not handles:
            specs = load_all(settings.task_modules).values()
            _print([{"name": s.name, "queue": s.queue, "light": s.light} for s in specs], args.json)
            return 0
        if not handles:
            print("no bridges are running (start them with `raysys worker`)", file=sys.stderr)
            return 1
        method = {"active": "active", "registered": "registered", "stats": "stats"}[args.what]
        results = ray.get([getattr(h, method).remote() for h in handles], timeout=30)
        if args.what == "stats":
            _print(results, args.json)
        elif args.what == "registered":
            _print(results[0], args.json)
        else:
            _print([job for per_bridge in results for job in per_bridge], args.json)
    return 0


def cmd_dead_list(args: argparse.Namespace, settings: Settings) -> int:
    _print(admin.dead_letters(settings.resolved(), args.queue, args.limit), args.json)
    return 0


def cmd_dead_requeue(args: argparse.Namespace, settings: Settings) -> int:
    if not args.all and not args.ids:
        print("raysys dead requeue: give job ids or --all", file=sys.stderr)
        return 2
    try:
        done = admin.requeue_dead(settings.resolved(), args.queue, args.ids, all_entries=args.all)
    except NotFound as exc:
        print(f"raysys dead requeue: {exc}", file=sys.stderr)
        return 1
    print(f"requeued {len(done)} job(s) onto {args.queue}")
    return 0
