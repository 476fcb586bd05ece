"""The environment of a new user's machine, for the tests of the README's commands."""

from __future__ import annotations

import os

from raysys.stack import free_port


def fresh_home_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a user on a machine where raysys never ran: an empty HOME (no ~/.ray token,
    no data directory, no caches, no ~/.config), no service URL and no Ray token variables."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "REDIS_URL", "POSTGRES_URL", "CLICKHOUSE_URL", "RAY_ADDRESS",
                        "RAYSYS_DATA_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME")
           and not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), RAYSYS_REDIS_PORT=str(free_port()), RAYSYS_RAY_PORT=str(free_port()),
               RAYSYS_DASHBOARD_PORT=str(free_port()), **extra)
    return env
