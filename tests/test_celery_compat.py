"""An unchanged Celery 5 client (real `celery` package, same Redis) against running raysys bridges."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid

import pytest
from queue_fixtures import parked, running_on
from waiting import wait_until

pytestmark = pytest.mark.usefixtures("bridges")


@pytest.fixture
def ctasks(celery_app):
    """Client-side stand-ins for the tasks (Celery needs task objects for .delay; they never run here)."""

    def stub(name):
        def never(*args, **kwargs):
            raise AssertionError("runs on raysys, not in the test process")

        return celery_app.task(name=name, shared=False)(never)  # not in Celery's process-wide registry

    return {name: stub(name) for name in ("tests.add", "tests.mul", "tests.boom", "tests.record", "tests.sleep",
                                           "tests.stubborn", "tests.flaky")}


def statuses(r, task_id: str):
    """Subscribe to a job's result channel (before sending it); return a function that lists what came."""
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"celery-task-meta-{task_id}")
    seen = []

    def read():
        while (m := pubsub.get_message(timeout=0.01)) is not None:
            seen.append(json.loads(m["data"])["status"])
        return seen

    return read


def test_send_task_and_delay_reach_the_three_queues(celery_app, ctasks):
    a = celery_app.send_task("tests.add", args=(2, 3))                     # ingest
    m = celery_app.send_task("tests.mul", args=(4, 5))                     # analytics
    p = celery_app.send_task("raysys.ping", args=("pong-1",))              # reports
    d = ctasks["tests.add"].delay(10, y=5)
    assert a.get(timeout=30) == 5
    assert m.get(timeout=30) == 20
    assert p.get(timeout=30) == "pong-1"
    assert d.get(timeout=30) == 15
    assert d.state == "SUCCESS" and d.successful()
    assert isinstance(d.date_done, dt.datetime)


def test_seed_task_names_and_wire_messages_are_accepted(celery_app, r):
    """A message captured from a real Celery 5.7 producer runs unchanged (here: ping under a Celery name)."""
    res = celery_app.send_task("workers.tasks.unknown_but_routed", args=(1,))
    with pytest.raises(KeyError) as err:  # celery.exceptions.NotRegistered is a KeyError
        res.get(timeout=30)
    assert type(err.value).__name__ == "NotRegistered"
    entry = json.loads(r.lindex("ingest.dead", 0))
    assert entry["id"] == res.id and "unknown task" in entry["reason"]


def test_failure_raises_the_same_exception_class_and_message(celery_app):
    res = celery_app.send_task("tests.boom", args=("x",))
    with pytest.raises(ValueError, match="^bad input: x$"):
        res.get(timeout=30)
    assert res.state == "FAILURE"
    assert type(res.result) is ValueError
    assert "bad input: x" in res.traceback


def test_retries_show_retry_state_then_succeed(celery_app, r):
    task_id = str(uuid.uuid4())
    seen = statuses(r, task_id)
    res = celery_app.send_task("tests.flaky", args=(f"flaky-{task_id}", 2), task_id=task_id)
    assert res.get(timeout=30) == {"ok": True, "retries": 2}
    wait_until(lambda: "SUCCESS" in seen(), message="the SUCCESS publication")
    assert seen() == ["STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]
    assert int(r.get(f"flaky-{task_id}")) == 3


def test_countdown_and_eta_run_late_enough(celery_app, r):
    key = f"order-{uuid.uuid4()}"
    sent = time.time()
    c = celery_app.send_task("tests.record", args=(key, "countdown"), countdown=1.5)
    e = celery_app.send_task("tests.record", args=(key, "eta"),
                             eta=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.0))
    wait_until(lambda: parked(r, c.id, e.id), message="both jobs parked until they are due")
    assert c.state == "PENDING" and e.state == "PENDING"
    assert c.get(timeout=30) == "countdown" and e.get(timeout=30) == "eta"
    at = {k.decode(): float(v) for k, v in r.hgetall(f"{key}:at").items()}
    assert at["countdown"] >= sent + 1.5
    assert at["eta"] >= sent + 1.0
    # Not held far past its time (a countdown read as minutes would be 90 s late); a cold bridge's first Ray
    # workers may take seconds to start on a loaded machine, which is not what this checks.
    assert at["countdown"] < sent + 60


def test_expired_jobs_are_revoked(celery_app):
    from celery.exceptions import TaskRevokedError

    past = celery_app.send_task("tests.add", args=(1, 1), expires=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    late = celery_app.send_task("tests.add", args=(1, 2), countdown=1.0, expires=0.5)
    for res in (past, late):
        with pytest.raises(TaskRevokedError):
            res.get(timeout=30)
        assert res.state == "REVOKED"


def test_priorities_are_honoured(ray_cluster, celery_app, qsettings, r):
    """Messages queued before a bridge starts run in Celery's priority order (lower number first)."""
    from raysys.queue.bridge import start_bridges, stop_bridges

    key = f"prio-{uuid.uuid4()}"
    for value, priority in (("a9", 9), ("b0", 0), ("c6", 6), ("d3", 3), ("e0", 0), ("f5", 5)):
        celery_app.send_task("tests.record", args=(key, value), queue="prio", priority=priority)
    assert r.llen("prio") == 2 and r.llen("prio\x06\x169") == 1
    handles = start_bridges(qsettings, queues=["prio"], concurrency=1)
    try:
        wait_until(lambda: r.llen(key) == 6, message="six jobs")
        assert [v.decode() for v in r.lrange(key, 0, -1)] == ["b0", "e0", "d3", "f5", "c6", "a9"]
    finally:
        stop_bridges(handles, timeout=5)


def test_link_callback_and_errback_run(celery_app, ctasks, r):
    res = ctasks["tests.add"].apply_async((2, 3), link=ctasks["tests.mul"].s(10))
    assert res.get(timeout=30) == 5
    children = wait_until(lambda: celery_app.AsyncResult(res.id).children, message="children in the result")
    assert children[0].get(timeout=30) == 50
    key = f"errback-{uuid.uuid4()}"
    bad = ctasks["tests.boom"].apply_async(("y",), link_error=ctasks["tests.record"].si(key, "errback ran"))
    with pytest.raises(ValueError):
        bad.get(timeout=30)
    wait_until(lambda: r.llen(key) == 1, message="the errback")


def test_three_step_chain(celery_app, ctasks):
    from celery import chain

    res = chain(ctasks["tests.add"].s(1, 2), ctasks["tests.add"].s(3), ctasks["tests.mul"].s(10))()
    assert res.get(timeout=30) == 60
    assert res.parent.get(timeout=30) == 6
    assert res.parent.parent.get(timeout=30) == 3


@pytest.mark.parametrize(("task", "soft", "hard"), [
    ("tests.sleep", 1, 10),   # heavy: a Ray task, the soft limit raised by its worker's signal
    ("tests.spin", 0.5, 15),  # light: on the bridge's thread, the soft limit raised in that thread
])
def test_soft_time_limit_gives_soft_time_limit_exceeded(celery_app, task, soft, hard):
    from celery.exceptions import SoftTimeLimitExceeded

    t0 = time.monotonic()
    res = celery_app.send_task(task, args=(20,), soft_time_limit=soft, time_limit=hard)
    with pytest.raises(SoftTimeLimitExceeded):
        res.get(timeout=30)
    assert time.monotonic() - t0 < 15  # stopped at its soft limit: the job would run 20 s
    assert celery_app.send_task("raysys.ping", args=("after",)).get(timeout=10) == "after"


def test_slow_light_job_finishes_alone_while_quick_ones_pass_it(celery_app, bridges):
    import ray

    before = ray.get(bridges[0].stats.remote())["totals"].get("light_detached", 0)
    slow = celery_app.send_task("tests.nap", args=(7, 3000))
    wait_until(lambda: running_on(bridges, slow.id), message="the slow job to run")
    quick = [celery_app.send_task("tests.add", args=(i, 1)) for i in range(20)]
    assert [q.get(timeout=10) for q in quick] == [i + 1 for i in range(20)]
    assert not slow.ready()  # the quick ones did not wait for it
    assert slow.get(timeout=30) == 7
    assert ray.get(bridges[0].stats.remote())["totals"].get("light_detached", 0) > before


def test_light_job_blocked_past_its_hard_limit_fails_and_the_bridge_goes_on(celery_app, bridges):
    """A light job stuck in a C call gets TimeLimitExceeded at its hard limit; its thread is left behind."""
    import ray
    from celery.exceptions import TimeLimitExceeded

    t0 = time.monotonic()
    stuck = celery_app.send_task("tests.block", args=(60,), soft_time_limit=0.3, time_limit=1.5)
    pings = [celery_app.send_task("raysys.ping", args=(f"p{i}",)) for i in range(10)]
    assert [p.get(timeout=10) for p in pings] == [f"p{i}" for i in range(10)]
    with pytest.raises(TimeLimitExceeded):
        stuck.get(timeout=30)
    assert 1.5 <= time.monotonic() - t0 < 30  # stopped at its hard limit: the job would block 60 s
    assert ray.get(bridges[0].stats.remote())["totals"].get("light_threads_abandoned", 0) >= 1
    assert celery_app.send_task("tests.add", args=(40, 2)).get(timeout=10) == 42


def test_hard_time_limit_gives_time_limit_exceeded(celery_app):
    from celery.exceptions import TimeLimitExceeded

    t0 = time.monotonic()
    res = celery_app.send_task("tests.stubborn", args=(20,), soft_time_limit=0.5, time_limit=1.5)
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=30)
    assert 1.5 <= time.monotonic() - t0 < 15  # stopped at its hard limit: the job would run 20 s


def test_bridge_threads_take_the_configured_niceness(ray_cluster, qsettings, tmp_path):
    """Ray starts workers at nice 15; a bridge gives every one of its threads BRIDGE_NICENESS (19 here:
    raising needs no privilege, so this holds for any user; the default 0 needs CAP_SYS_NICE)."""
    import dataclasses

    from raysys.queue.bridge import start_bridges, stop_bridges

    settings = dataclasses.replace(qsettings, bridge_niceness=19)
    (handle,) = start_bridges(settings, queues=["nice"], concurrency=1)
    try:
        pid = ray_cluster.get(handle.pid.remote())
        threads = os.listdir(f"/proc/{pid}/task")
        assert len(threads) > 3  # Ray's threads, the event loop, the light thread
        assert {os.getpriority(os.PRIO_PROCESS, int(t)) for t in threads} == {19}
        assert ray_cluster.get(handle.stats.remote())["redis_ok"]
    finally:
        stop_bridges([handle], timeout=5)
