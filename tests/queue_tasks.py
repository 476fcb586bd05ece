"""Test-only tasks for the queue/bridge tests (imported by bridges via RAYSYS_TASK_MODULES=tests.queue_tasks).

They talk to Redis through ``ctx.settings`` to leave traces the tests read (run counts, order, pids).
"""

from __future__ import annotations

import json
import os
import threading
import time

import redis

from raysys.errors import InvalidInput, Retry
from raysys.tasks.registry import TaskContext, task


def _r(ctx: TaskContext) -> redis.Redis:
    return redis.Redis.from_url(ctx.settings.redis_url)


@task("tests.add", queue="ingest", light=True, num_cpus=0)
def add(ctx: TaskContext, x: float, y: float = 0) -> float:
    return x + y


@task("tests.mul", queue="analytics", num_cpus=0.1)
def mul(ctx: TaskContext, x: float, y: float) -> float:
    return x * y


@task("tests.boom", queue="analytics", max_retries=0, num_cpus=0.1)
def boom(ctx: TaskContext, msg: str) -> None:
    raise ValueError(f"bad input: {msg}")


@task("tests.invalid", queue="reports", light=True, num_cpus=0)
def invalid(ctx: TaskContext) -> None:
    raise InvalidInput("no such call")


@task("tests.flaky", queue="reports", retry_backoff=0.1, num_cpus=0.1)
def flaky(ctx: TaskContext, key: str, failures: int) -> dict:
    """Fails ``failures`` times (plain exception: retried with backoff), then succeeds."""
    n = _r(ctx).incr(key)
    if n <= failures:
        raise RuntimeError(f"try {ctx.retries}")
    return {"ok": True, "retries": ctx.retries}


@task("tests.explicit_retry", queue="reports", num_cpus=0.1)
def explicit_retry(ctx: TaskContext, key: str) -> int:
    """Raises Retry(countdown=0.2) once, like Celery's ``self.retry(countdown=...)``."""
    if _r(ctx).incr(key) == 1:
        raise Retry(RuntimeError("not yet"), countdown=0.2)
    return ctx.retries


@task("tests.record", queue="ingest", num_cpus=0.1)
def record(ctx: TaskContext, key: str, value: str) -> str:
    """Appends ``value`` to the Redis list ``key`` (execution order) and records the run time."""
    r = _r(ctx)
    r.rpush(key, value)
    r.hset(f"{key}:at", value, repr(time.time()))
    return value


@task("tests.count", queue="ingest", light=True, num_cpus=0)
def count(ctx: TaskContext, key: str, value: int) -> int:
    """Counts runs per job id (so tests can prove a job ran once)."""
    _r(ctx).hincrby(key, ctx.task_id, 1)
    return value


@task("tests.sleep", queue="analytics", num_cpus=0.1)
def sleep(ctx: TaskContext, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task("tests.stubborn", queue="analytics", num_cpus=0.1)
def stubborn(ctx: TaskContext, seconds: float) -> float:
    """Ignores the soft time limit (swallows the interrupt), so only the hard limit stops it."""
    end = time.time() + seconds
    while time.time() < end:
        try:
            time.sleep(0.05)
        except (KeyboardInterrupt, Exception):  # noqa: BLE001 - that is the point of this task
            pass
    return seconds


@task("tests.crash_once", queue="analytics", num_cpus=0.1)
def crash_once(ctx: TaskContext, key: str) -> dict:
    """First run: publishes its pid in ``key`` and waits to be killed; later runs succeed."""
    r = _r(ctx)
    if r.set(key, os.getpid(), nx=True):
        time.sleep(60)
        return {"killed": False}
    return {"killed": True, "pid": os.getpid(), "first_pid": int(r.get(key))}


@task("tests.progress", queue="reports", num_cpus=0.1)
def progress(ctx: TaskContext, steps: int) -> int:
    for i in range(steps):
        ctx.progress((i + 1) / steps, f"step {i + 1}")
        time.sleep(0.05)
    return steps


@task("tests.slow_count", queue="ingest", light=True, num_cpus=0)
def slow_count(ctx: TaskContext, key: str, ms: float) -> str:
    """Counts runs per job id in the hash ``key``, then takes ``ms`` milliseconds."""
    _r(ctx).hincrby(key, ctx.task_id, 1)
    time.sleep(ms / 1000)
    return ctx.task_id


@task("tests.nap", queue="ingest", light=True, num_cpus=0)
def nap(ctx: TaskContext, value: int, ms: float) -> int:
    """Takes ``ms`` milliseconds and returns ``value`` (no Redis: runs through a Redis outage)."""
    time.sleep(ms / 1000)
    return value


@task("tests.swallow", queue="ingest", light=True, num_cpus=0)
def swallow(ctx: TaskContext, seconds: float) -> str:
    """Swallows whatever is raised in it (even a terminate) and returns; else returns after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except BaseException:  # noqa: BLE001 - the point of this task
            return "swallowed"
    return "slept"


class CustomError(Exception):
    """A task's own exception class (the client sees its name, module and arguments)."""


@task("tests.custom_exc", queue="analytics", max_retries=0, num_cpus=0.1)
def custom_exc(ctx: TaskContext, msg: str) -> None:
    raise CustomError(msg, 42)


@task("tests.echo", queue="ingest", light=True, num_cpus=0)
def echo(ctx: TaskContext, *args, **kwargs) -> dict:
    """Returns what it was given (unicode, large and kwargs-only payloads round-trip)."""
    return {"args": list(args), "kwargs": kwargs}


@task("tests.tsum", queue="ingest", light=True, num_cpus=0)
def tsum(ctx: TaskContext, values: list) -> float:
    return sum(values)


@task("tests.count_sleep", queue="analytics", num_cpus=0.1)
def count_sleep(ctx: TaskContext, key: str, seconds: float) -> int:
    """Counts runs per job id in the hash ``key``, then sleeps (a heavy job that is still running)."""
    n = _r(ctx).hincrby(key, ctx.task_id, 1)
    time.sleep(seconds)
    return n


@task("tests.exit", queue="ingest", light=True, num_cpus=0)
def exit_(ctx: TaskContext, code: int) -> None:
    """Calls sys.exit in the middle of a batch of light jobs."""
    raise SystemExit(code)


@task("tests.spin", queue="ingest", light=True, num_cpus=0)
def spin(ctx: TaskContext, seconds: float) -> str:
    """Busy Python code for ``seconds``: a light job that overruns (a soft limit reaches it at once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "spun"


@task("tests.block", queue="ingest", light=True, num_cpus=0)
def block(ctx: TaskContext, seconds: float) -> str:
    """Blocks in one C call for ``seconds``: a light job nothing can interrupt (only its hard limit ends it)."""
    threading.Event().wait(seconds)
    return "unblocked"


@task("tests.suicide", queue="analytics", num_cpus=0.1)
def suicide(ctx: TaskContext, key: str) -> None:
    """Counts its runs in the hash ``key`` (by job id), then SIGKILLs its own worker process, every time."""
    import signal

    _r(ctx).hincrby(key, ctx.task_id, 1)
    os.kill(os.getpid(), signal.SIGKILL)


@task("tests.pg_touch", queue="analytics", num_cpus=0.1)
def pg_touch(ctx: TaskContext, key: str) -> int:
    """Needs PostgreSQL: one query on ``ctx.settings.postgres_url`` (a connection error while it is down is
    an infrastructure outage); counts its runs in the hash ``key``."""
    import asyncio

    from raysys.storage.postgres import connect

    _r(ctx).hincrby(key, ctx.task_id, 1)

    async def query() -> int:
        conn = await connect(ctx.settings.postgres_url)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()

    return asyncio.run(query())


@task("tests.collect", queue="ingest", light=True, num_cpus=0)
def collect(ctx: TaskContext, values: list, key: str) -> list:
    """A chord body: appends the header's results (JSON) to the Redis list ``key`` and returns them."""
    _r(ctx).rpush(key, json.dumps(values))
    return values
