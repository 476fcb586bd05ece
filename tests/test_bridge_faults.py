"""Faults with real processes: SIGKILL of the bridge, SIGKILL of a worker running a job, a Redis restart."""

from __future__ import annotations

import collections
import json
import os
import signal
import time
import uuid

import pytest
import redis
from queue_fixtures import drain_publications
from waiting import wait_until

from raysys.queue import keys, messages


def enqueue(r: redis.Redis, queue: str, task: str, args_for, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    pipe = r.pipeline(transaction=False)
    for i, task_id in enumerate(ids):
        pipe.lpush(queue, messages.encode_celery(task, args_for(i, task_id), task_id=task_id, queue=queue))
    pipe.execute()
    return ids


def states(r: redis.Redis, ids: list[str]) -> collections.Counter:
    values = r.mget([keys.result_key(i) for i in ids])
    return collections.Counter(json.loads(v)["status"] if v else "PENDING" for v in values)


def test_bridge_sigkill_with_2000_jobs_loses_nothing(ray_cluster, qsettings, r):
    """Kill -9 the bridge mid-run: Ray restarts it, it requeues what it held, every job gets one SUCCESS."""
    import ray

    from raysys.queue.bridge import start_bridges, stop_bridges

    queue, key = "faults", f"runs-{uuid.uuid4()}"
    published: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def on_result(message):
        meta = json.loads(message["data"])
        published[meta["task_id"]][meta["status"]] += 1

    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(**{"celery-task-meta-*": on_result})
    listener = pubsub.run_in_thread(sleep_time=0.005, daemon=True)
    try:
        ids = enqueue(r, queue, "tests.slow_count", lambda i, _: [key, 2], 2000)
        handles = start_bridges(qsettings, queues=[queue], concurrency=2)
        try:
            bridge = handles[0]
            pid = ray.get(bridge.pid.remote())
            wait_until(lambda: r.hlen(key) >= 300, message="300 jobs run")
            os.kill(pid, signal.SIGKILL)
            held = sum(r.llen(k) for k in r.keys("raysys:inflight:*"))
            assert held > 0 and r.llen(queue) > 0  # jobs were both in flight and queued when it died
            wait_until(lambda: states(r, ids)["SUCCESS"] == 2000, timeout=90, interval=0.25, message="2000 SUCCESS")
            assert ray.get(bridge.pid.remote()) != pid
        finally:
            stop_bridges(handles, timeout=5)
        drain_publications(r, published)  # every publication made so far has reached the listener
    finally:
        listener.stop()
        listener.join(timeout=5)
        pubsub.close()
    assert r.llen(queue) == 0 and r.llen(f"{queue}.dead") == 0
    assert not [k for k in r.keys("raysys:inflight:*") if r.llen(k)]
    assert {task_id: dict(c) for task_id, c in published.items() if c["SUCCESS"] != 1} == {}
    assert set(published) == set(ids)
    runs = [int(v) for v in r.hvals(key)]
    assert len(runs) == 2000 and min(runs) >= 1  # at least once; jobs caught mid-batch may have run twice


def test_worker_sigkill_reruns_the_job(qsettings, bridges, r):
    """Kill -9 the Ray worker running a job: the job runs again and succeeds."""
    from raysys.queue.client import Client

    key = f"crash-{uuid.uuid4()}"
    with Client(qsettings) as client:
        res = client.send_task("tests.crash_once", [key])
        pid = int(wait_until(lambda: r.get(key), message="the job to start"))
        os.kill(pid, signal.SIGKILL)
        value = res.get(timeout=60)
    assert value["killed"] is True and value["first_pid"] == pid and value["pid"] != pid


def test_a_job_revoked_with_terminate_is_settled_even_if_its_ray_task_outlives_the_kill(ray_cluster, monkeypatch):
    """Terminate kills a heavy job's Ray task (``ray.cancel(force=True)``). Should the kill not take, the run
    stage still ends the job, as terminated, after two graces, instead of waiting for the task's own end.

    The run stage runs here in the test process on a real Ray ref; a stand-in (SimpleNamespace) holds only what
    it reads of the bridge (the job's time limits). The ref is an actor task, which Ray refuses to force-cancel:
    that is the kill that does not take."""
    import asyncio
    from types import SimpleNamespace

    import ray

    from raysys.queue import run
    from raysys.queue.job import Kind

    @ray.remote(num_cpus=0)
    class Stuck:
        def wait(self, seconds: float) -> str:
            time.sleep(seconds)
            return "ended on its own"

    monkeypatch.setattr(run, "KILL_GRACE_SECONDS", 0.5)
    stuck = Stuck.remote()
    job = SimpleNamespace(id="t-1", spec=SimpleNamespace(name="tests.stuck"), msg=SimpleNamespace(retries=0),
                          stop=asyncio.Event(), terminated=False)
    stage = SimpleNamespace(limits=lambda job: (60.0, 90.0))

    async def terminate_soon():
        await asyncio.sleep(0.3)
        job.terminated = True
        job.stop.set()

    ref = stuck.wait.remote(30)

    async def main():
        outcome, _ = await asyncio.gather(run.RunStage._await_limited(stage, job, ref), terminate_soon())
        return outcome

    try:
        outcome = asyncio.run(main())
        ready, _ = ray.wait([ref], timeout=0)
    finally:
        ray.kill(stuck)
    assert outcome.kind is Kind.FAIL and outcome.exc_meta["exc_type"] == "WorkerLostError"  # settled as terminated
    assert not ready  # ... while the task still ran


def test_redis_restart_mid_run(ray_cluster, tmp_path):
    """Stop and restart redis-server (same port and data dir) mid-run: the bridge reconnects and finishes."""
    from queue_fixtures import bridge_settings

    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.stack import free_port, start_redis, terminate

    port, directory = free_port(), tmp_path / "redis"
    pid, url = start_redis(directory, port)
    try:
        settings = bridge_settings(url, tmp_path / "data")
        r = redis.Redis.from_url(url)
        ids = enqueue(r, "ingest", "tests.nap", lambda i, _: [i, 4], 800)
        handles = start_bridges(settings, queues=["ingest"], concurrency=2, executors=1, batch_size=32)
        try:
            wait_until(lambda: states(r, ids)["SUCCESS"] >= 100, message="100 jobs done")
            terminate([pid])                      # SIGTERM: Redis writes its append-only file and exits
            time.sleep(1.0)
            pid, _ = start_redis(directory, port)  # same port, same data
            r = redis.Redis.from_url(url)
            wait_until(lambda: states(r, ids)["SUCCESS"] == 800, timeout=60, interval=0.25, message="800 SUCCESS")
            values = [json.loads(v)["result"] for v in r.mget([keys.result_key(i) for i in ids])]
            assert values == list(range(800))
            assert r.llen("ingest") == 0 and r.llen("ingest.dead") == 0
        finally:
            stop_bridges(handles, timeout=5)
    finally:
        terminate([pid])


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
