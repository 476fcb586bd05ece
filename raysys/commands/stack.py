"""CLI: the embedded local stack (`up`, `status`, `down`) and synthetic data (`seed-data`)."""

from __future__ import annotations

import asyncio
import json
from datetime import date

from raysys import synthetic
from raysys.config import Settings
from raysys.runtime import init_ray
from raysys.stack import LocalStack, status_dicts
from raysys.storage.postgres import database_url, open_db


def register(sub) -> None:
    p = sub.add_parser("up", help="start the embedded Redis, PostgreSQL, chDB and Ray head that are not configured")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("status", help="report each service as healthy or not")
    p.add_argument("--json", action="store_true", help="machine-readable, with each service's URL")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("down", help="stop exactly what `raysys up` started")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("seed-data", help="insert realistic synthetic calls (deterministic with --seed)")
    p.add_argument("--tenants", type=int, default=2)
    p.add_argument("--calls", type=int, default=200, help="calls per tenant")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--end", type=date.fromisoformat, default=None, help="last day (YYYY-MM-DD), default today UTC")
    p.add_argument("--no-facts", action="store_true", help="do not write ClickHouse call facts")
    p.set_defaults(func=cmd_seed_data)


def cmd_up(args, settings: Settings) -> int:
    LocalStack(settings).up()
    print(f"data        {settings.data_dir}")
    return 0


def cmd_status(args, settings: Settings) -> int:
    statuses = LocalStack(settings).status()
    if args.json:
        print(json.dumps({"healthy": all(s.healthy for s in statuses), "services": status_dicts(statuses)}, indent=2))
    else:
        for s in statuses:
            mark = "healthy  " if s.healthy else "UNHEALTHY"
            origin = "embedded" if s.managed else "external"
            print(f"{s.name:<11} {mark} {origin:<9} {s.url or '-'}  {s.detail}")
    return 0 if all(s.healthy for s in statuses) else 1


def cmd_down(args, settings: Settings) -> int:
    stopped = LocalStack(settings).down()
    if not stopped:
        print("nothing to stop")
    return 0


def cmd_seed_data(args, settings: Settings) -> int:

    settings = settings.resolved()
    database_url(settings)  # ConfigError (exit code 2) before generating anything
    ds = synthetic.generate(args.tenants, args.calls, args.days, args.seed, args.end)

    async def write() -> None:
        async with open_db(settings, max_size=10) as db:
            for t in ds.tenants:
                await db.upsert_tenant(t, report_recipients=[f"ops@{t.replace('_', '-')}.example"])
            await db.upsert_calls([sc.call for sc in ds.calls])
            for sc in ds.calls:
                await db.replace_turns(sc.call.tenant_id, sc.call.id, sc.turns)

    asyncio.run(write())
    facts = 0
    if not args.no_facts:
        from raysys.actors.warehouse import Warehouse  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        init_ray(settings)
        facts = Warehouse(settings).insert_call_facts([synthetic.call_fact(sc) for sc in ds.calls])
    print(f"seeded {len(ds.tenants)} tenants, {len(ds.calls)} calls, {facts} call facts "
          f"({args.days} days, seed {args.seed})")
    return 0
