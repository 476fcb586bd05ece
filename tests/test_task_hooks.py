"""Task lifecycle hooks (on_success / on_failure / on_retry, per task and global) and ``ctx.retry``.

The tasks live in an operator's own module, written here into a temporary folder that is put on the bridge's
PYTHONPATH and named in RAYSYS_TASK_MODULES, as an operator deploys one; the jobs come from a real Celery
client through a real bridge. Hooks record into Redis; the test polls with a deadline.
"""

from __future__ import annotations

import gc
import json
import os
import textwrap
import uuid
from collections import Counter

import pytest
from waiting import wait_until

from raysys.config import Settings

pytest_plugins = ("queue_fixtures",)


@pytest.fixture(autouse=True)
def _collect_results():
    """Drop this test's Celery AsyncResults while Redis is still up (their __del__ talks to it)."""
    yield
    gc.collect()

OPERATOR_MODULE = '''
"""An operator's task module: an invoice task with Celery-style hooks, and an audit middleware."""
import json

import redis

from raysys.tasks import hooks
from raysys.tasks.registry import task

URL, EVENTS, QUEUE = {url!r}, {events!r}, {queue!r}


def _log(*event):
    redis.Redis.from_url(URL).rpush(EVENTS, json.dumps(event, default=str))


class InvoiceHooks:
    def on_success(self, retval, task_id, args, kwargs):
        _log("success", task_id, retval)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _log("failure", task_id, type(exc).__name__, str(exc), "card declined" in str(einfo))

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        _log("retry", task_id, type(exc).__name__, str(exc))


@task("{name}.charge", queue=QUEUE, light=True, num_cpus=0, max_retries=2, hooks=InvoiceHooks)
def charge(ctx, key, fail_times, for_good=False):
    n = redis.Redis.from_url(URL).incr(key)
    if for_good:
        raise ValueError("card declined")
    if n <= fail_times:
        ctx.retry(exc=RuntimeError(f"gateway busy {{n}}"), countdown=0.1)
    return {{"tries": n}}


@task("{name}.double", queue=QUEUE, light=True, num_cpus=0,
      on_success=lambda retval, task_id, args, kwargs: _log("doubled", task_id, retval))
def double(ctx, x):
    return 2 * x


class Audit:
    def on_success(self, task_name, retval, task_id, args, kwargs):
        _log("global-success", task_name, task_id)

    def on_failure(self, task_name, exc, task_id, args, kwargs, einfo):
        _log("global-failure", task_name, task_id)

    def on_retry(self, task_name, exc, task_id, args, kwargs, einfo):
        _log("global-retry", task_name, task_id)


class Broken:
    def on_success(self, task_name, retval, task_id, args, kwargs):
        raise RuntimeError("a buggy hook")


hooks.add(Audit)
hooks.add(Broken)
'''


@pytest.fixture
def operator_bridge(ray_cluster, redis_url, tmp_path):
    """A bridge whose process imports an operator's module from a folder on its PYTHONPATH."""
    from raysys.constants import RAY_NAMESPACE
    from raysys.queue.bridge import QueueBridge, stop_bridges

    name = f"ops_{uuid.uuid4().hex[:8]}"
    queue, events = f"{name}-q", f"{name}:events"
    folder = tmp_path / "operator"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(OPERATOR_MODULE.format(url=redis_url, events=events,
                                                                              queue=queue, name=name)))
    env = {"RAYSYS_TASK_MODULES": name, "RAYSYS_QUEUES": queue, "RAYSYS_DEFAULT_QUEUE": ""}
    settings = Settings.from_env(env, broker_url=redis_url, data_dir=str(tmp_path / "data"), heartbeat_seconds=0.5,
                                 consumer_timeout_seconds=3.0, retry_backoff_max=1.0)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    handle = QueueBridge.options(name=f"hooks-test-{name}", namespace=RAY_NAMESPACE,
                                 runtime_env={"env_vars": {"PYTHONPATH": path}}).remote(
        settings, f"hooks-test-{name}", (queue,), 2, 0, None)
    import ray

    ray.get(handle.ready.remote(), timeout=120)
    yield name, queue, events
    stop_bridges([handle], timeout=5)


def test_hooks_run_once_per_event_for_an_operators_task(operator_bridge, celery_app, r):
    name, queue, events = operator_bridge
    app = celery_app
    key = f"{name}:tries"
    retried = app.send_task(f"{name}.charge", args=[f"{key}:a", 2], queue=queue)   # retry, retry, success
    failed = app.send_task(f"{name}.charge", args=[f"{key}:b", 0, True], queue=queue)  # retry x2, then failure
    doubled = app.send_task(f"{name}.double", args=[21], queue=queue)
    assert retried.get(timeout=60) == {"tries": 3}  # ctx.retry(countdown=...) ran it again; the buggy hook changed nothing
    with pytest.raises(ValueError, match="card declined"):
        failed.get(timeout=60)
    assert doubled.get(timeout=60) == 42
    # Hooks run in order on one thread: once the last job's hook ran, every earlier one did.
    last = app.send_task(f"{name}.double", args=[0], queue=queue)
    assert last.get(timeout=60) == 0
    wait_until(lambda: any(json.loads(e)[0] == "global-success" and json.loads(e)[2] == last.id
                         for e in r.lrange(events, 0, -1)), message="the last job's hooks")
    log = [json.loads(e) for e in r.lrange(events, 0, -1)]
    own = Counter((e[0], e[1]) for e in log if not e[0].startswith("global"))
    assert own == Counter({("retry", retried.id): 2, ("success", retried.id): 1, ("retry", failed.id): 2,
                           ("failure", failed.id): 1, ("doubled", doubled.id): 1, ("doubled", last.id): 1})
    assert [e[2:] for e in log if e[:2] == ["retry", retried.id]] == [
        ["RuntimeError", "gateway busy 1"], ["RuntimeError", "gateway busy 2"]]
    assert [e[2:] for e in log if e[:2] == ["failure", failed.id]] == [["ValueError", "card declined", True]]
    assert [e[2] for e in log if e[:2] == ["success", retried.id]] == [{"tries": 3}]
    # the global middleware saw every task, once per event, with its name
    seen = Counter((e[0], e[1], e[2]) for e in log if e[0].startswith("global"))
    assert seen == Counter({("global-retry", f"{name}.charge", retried.id): 2,
                            ("global-success", f"{name}.charge", retried.id): 1,
                            ("global-retry", f"{name}.charge", failed.id): 2,
                            ("global-failure", f"{name}.charge", failed.id): 1,
                            ("global-success", f"{name}.double", doubled.id): 1,
                            ("global-success", f"{name}.double", last.id): 1})


def test_task_hook_options_are_checked_at_registration():
    from raysys.tasks.hooks import TaskHooks
    from raysys.tasks.registry import task

    with pytest.raises(TypeError, match="callable"):
        task("tests.bad_hook", queue="ingest", on_success="not a function")
    with pytest.raises(TypeError, match="none of"):
        task("tests.bad_hooks", queue="ingest", hooks=object())
    assert TaskHooks.build() is None
    spec_hooks = TaskHooks.build(on_retry=print)
    assert spec_hooks.on_retry is print and spec_hooks.on_success is None


def test_ctx_retry_raises_retry_with_its_countdown():
    from raysys.errors import Retry
    from raysys.tasks.registry import TaskContext

    ctx = TaskContext(settings=Settings.from_env({}))
    cause = RuntimeError("later")
    with pytest.raises(Retry) as info:
        ctx.retry(exc=cause, countdown=2.5, max_retries=7)
    assert (info.value.exc, info.value.countdown, info.value.max_retries) == (cause, 2.5, 7)
