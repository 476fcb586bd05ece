"""Import paths for `serve build` / `serve deploy` / `serve run`, configured from the environment.

- ``raysys.serve.entry:app`` — the application built from the process environment (in a Serve config,
  the application's ``runtime_env.env_vars``): the same variables as every raysys process.
- ``raysys.serve.entry:app_builder`` — ``serve run raysys.serve.entry:app_builder POSTGRES_URL=...``:
  the arguments are environment variables that override the process environment.

This module is an edge: it is the one place, besides the CLI, that reads ``os.environ``.
"""

from __future__ import annotations

import os
from typing import Any

from raysys.config import Settings
from raysys.serve.app import build_app


def app_builder(args: dict[str, Any]):  # ray.serve.Application
    env = {**os.environ, **{str(k): str(v) for k, v in (args or {}).items()}}
    return build_app(Settings.from_env(env).resolved())


app = app_builder({})
