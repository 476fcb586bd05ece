"""CLI: the scheduler (`beat`) and its schedules (`schedule list`, `schedule run NAME`)."""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import UTC, datetime

from raysys.config import Settings
from raysys.runtime import init_ray
from raysys.scheduler.engine import Engine, describe
from raysys.scheduler.schedules import load_config
from raysys.scheduler.store import Store


def register(sub) -> None:
    p = sub.add_parser("beat", help="start the scheduler on the cluster (RAY_ADDRESS) and show the jobs it fires")
    p.add_argument("--detach", action="store_true", help="return once it runs (needs RAY_ADDRESS or `raysys up`)")
    p.add_argument("--replace", action="store_true", help="restart a running scheduler with this configuration")
    p.add_argument("--stop", action="store_true", help="stop the cluster's scheduler (hands its lease back)")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("schedule", help="list the schedules with their next and last runs, or run one now")
    ssub = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    q = ssub.add_parser("list", help="each schedule with its next and last run")
    q.add_argument("--json", action="store_true", help="machine-readable")
    q.set_defaults(func=cmd_schedule_list)
    q = ssub.add_parser("run", help="enqueue a schedule's job now, outside the slot rule")
    q.add_argument("name", help="schedule name (see `raysys schedule list`)")
    q.add_argument("--tenant", action="append", default=None,
                   help="per-tenant schedules: only this tenant (repeatable); default every tenant")
    q.set_defaults(func=cmd_schedule_run)


def _fmt_event(body: dict) -> str:
    at = datetime.fromtimestamp(float(body.get("at", 0)), UTC).strftime("%Y-%m-%d %H:%M:%S")
    kind = body.get("event", "?")
    if kind in ("fired", "recovered", "manual"):
        line = f"{at} {kind:<9} {body.get('schedule')} slot {body.get('slot')} -> {body.get('task')} " \
               f"on {body.get('queue')} id={body.get('job_id')}"
        if body.get("lag"):
            line += f" ({float(body['lag']):.1f} s late)"
    elif kind == "leader":
        line = f"{at} {kind:<9} {body.get('holder')} holds the lease"
    else:
        line = f"{at} {kind:<9} {body.get('schedule', '')} {body.get('slot', '')}"
    if body.get("detail"):
        line += f" [{body['detail']}]"
    return line


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_beat(args, settings: Settings) -> int:
    import ray  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    from raysys.scheduler.actor import ensure_scheduler, stop_scheduler  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    settings = settings.resolved()
    if args.detach and not settings.ray_address:
        print("raysys: `beat --detach` needs a running cluster: set RAY_ADDRESS or run `raysys up` first.",
              file=sys.stderr)
        return 2
    config = None if args.stop else load_config(settings)  # invalid schedules: ConfigError, one sentence
    init_ray(settings)
    if args.stop:
        print("scheduler stopped" if stop_scheduler() else "no scheduler is running")
        return 0
    handle, created = ensure_scheduler(settings, config, replace=args.replace)
    status = ray.get(handle.status.remote(), timeout=120)
    if not created and status["config_digest"] != config.digest():
        print("raysys: warning: the running scheduler has a different schedule configuration; "
              "`raysys beat --replace` restarts it with this one.", file=sys.stderr)
    leader = status.get("leader") or {}
    print(f"scheduler {'started' if created else 'already running'} on the cluster "
          f"({len(config.enabled)} schedules enabled; lease held by {leader.get('holder', 'nobody yet')})")
    for s in status["schedules"]:
        if s["enabled"]:
            print(f"  {s['name']:<28} {s['cron']:<14} {s['timezone']:<16} next {s['next_run']}")
    if args.detach:
        return 0
    store = Store.from_url(settings.redis_url, settings.key_prefix)
    last = store.last_event_id()
    print("showing the jobs it fires (Ctrl-C to leave)", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `docker stop` / systemd: leave as Ctrl-C does
    try:
        while True:
            for event_id, body in store.events(last, block_ms=1000):
                print(_fmt_event(body), flush=True)
                last = event_id
    except KeyboardInterrupt:
        if settings.ray_address:
            print("\nthe scheduler keeps running on the cluster; `raysys beat --stop` stops it")
        else:
            stop_scheduler()  # our private cluster goes away with us: hand the lease back first
            print("\nscheduler stopped")
    return 0


def cmd_schedule_list(args, settings: Settings) -> int:
    settings = settings.resolved()
    config = load_config(settings)
    store = Store.from_url(settings.redis_url, settings.key_prefix)
    rows = describe(config, store, time.time())
    leader = store.leader()
    if args.json:
        print(json.dumps({"leader": leader, "source": config.source, "schedules": rows}, indent=2))
        return 0
    held = leader and float(leader["expires"]) > time.time()
    print(f"schedules from {config.source}; leader: {leader['holder'] if held else 'none (no scheduler running)'}")
    print(f"{'NAME':<26} {'CRON':<13} {'TZ':<15} {'TASK':<40} {'QUEUE':<10} {'NEXT RUN':<26} "
          f"{'LAST SLOT':<26} {'RUNS':>5} {'SKIPS':>5}")
    for r in rows:
        nxt = r["next_run"] or "disabled"
        print(f"{r['name']:<26} {r['cron']:<13} {r['timezone']:<15} {r['task']:<40} {r['queue'] or '-':<10} "
              f"{nxt:<26} {r['last_slot'] or '-':<26} {r['runs']:>5} {r['skips']:>5}")
        if r.get("last_error"):
            print(f"  last error: {r['last_error']}")
    return 0


def cmd_schedule_run(args, settings: Settings) -> int:
    settings = settings.resolved()
    config = load_config(settings)
    try:
        config.get(args.name)
    except KeyError as exc:
        print(f"raysys: {exc.args[0]}", file=sys.stderr)
        return 2
    jobs = Engine(settings, config).run_now(args.name, args.tenant)
    if not jobs:
        print(f"{args.name}: no jobs to send (a per-tenant schedule with no tenants)")
    for job in jobs:
        print(f"{job.job_id}  {job.task} on {job.queue}")
    return 0
