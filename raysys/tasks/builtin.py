"""Built-in tasks: ``raysys.ping`` for health checks, canaries and benchmarks."""

from __future__ import annotations

from typing import Any

from raysys.tasks.registry import TaskContext, task


@task("raysys.ping", queue="*", light=True, num_cpus=0)
def ping(ctx: TaskContext, value: Any = "pong") -> Any:
    """Return ``value`` unchanged. Runs on every queue (``queue="*"``)."""
    return value
