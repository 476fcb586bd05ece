"""CLI: the HTTP API (`raysys serve`) and its API keys (`raysys apikey create|revoke`)."""

from __future__ import annotations

import asyncio
import sys
import time

from raysys.config import Settings
from raysys.serve import deploy
from raysys.storage.postgres import open_db


def register(sub) -> None:
    p = sub.add_parser("serve", help="deploy the HTTP API (Ray Serve) on the cluster at RAY_ADDRESS")
    p.add_argument("--host", default=None, help="bind address (default SERVE_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default SERVE_PORT, 8000)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true",
                      help="return once deployed (the API keeps running on the cluster); needs RAY_ADDRESS")
    mode.add_argument("--block", action="store_true", help="serve until interrupted, then remove the app")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("apikey", help="create or revoke a tenant's API keys")
    keys = p.add_subparsers(dest="apikey_command", metavar="ACTION", required=True)
    c = keys.add_parser("create", help="create a key for a tenant and print its secret (shown once)")
    c.add_argument("--tenant", required=True)
    c.add_argument("--name", default="", help="a label to recognise the key by")
    c.set_defaults(func=cmd_apikey_create)
    r = keys.add_parser("revoke", help="revoke a key by its id, prefix or secret")
    r.add_argument("--tenant", required=True)
    r.add_argument("key", help="key id, its 10-character prefix, or the secret")
    r.set_defaults(func=cmd_apikey_revoke)


def cmd_serve(args, settings: Settings) -> int:
    changes = {k: v for k, v in (("serve_host", args.host), ("serve_port", args.port)) if v is not None}
    settings = settings.replace(**changes).resolved()
    # Without a cluster address the API lives in this process's private Ray: leaving would stop it.
    block = args.block or (not args.detach and not settings.ray_address)
    if args.detach and not settings.ray_address:
        print("raysys: --detach needs a cluster (RAY_ADDRESS or `raysys up`); "
              "without one the API would stop with this command.", file=sys.stderr)
        return 2
    url = deploy(settings)
    print(f"raysys API  {url}")
    print(f"docs        {url}/docs")
    if not block:
        print("deployed; it keeps running on the cluster (remove it with `serve shutdown` or `raysys down`)")
        return 0
    print("serving; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        serve.delete("raysys")
    return 0


def cmd_apikey_create(args, settings: Settings) -> int:

    async def create() -> tuple[str, str]:
        async with open_db(settings, max_size=1) as db:
            return await db.create_api_key(args.tenant, args.name)

    key_id, secret = asyncio.run(create())
    print(f"tenant   {args.tenant}", file=sys.stderr)
    print(f"key id   {key_id}", file=sys.stderr)
    print("secret (shown once; send it as 'Authorization: Bearer <secret>'):", file=sys.stderr)
    print(secret)
    return 0


def cmd_apikey_revoke(args, settings: Settings) -> int:

    async def revoke() -> bool:
        async with open_db(settings, max_size=1) as db:
            return await db.revoke_api_key(args.tenant, args.key)

    if asyncio.run(revoke()):
        print(f"revoked the key of tenant {args.tenant}")
        return 0
    print(f"raysys: no live key {args.key!r} for tenant {args.tenant}", file=sys.stderr)
    return 1
