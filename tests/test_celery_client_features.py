"""A real Celery 5.7 client, configured the many ways producers configure it, against running bridges.

Each test uses the client's own API (``apply_async`` options, canvas, ``AsyncResult``, ``control.revoke``,
app settings such as ``task_protocol``, ``task_serializer``, ``result_extended``, priority steps) and
checks what the client sees, as a producer of the Celery service would.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import random
import time
import uuid
import zlib

import pytest
from celery import Celery, chain, chord, group
from queue_fixtures import light_detached, settled
from waiting import wait_until

pytestmark = pytest.mark.usefixtures("bridges")


@contextlib.contextmanager
def make_app(redis_url: str, routes: bool = True, **conf):
    """A Celery client app on the test Redis with extra configuration (closed afterwards)."""
    from queue_fixtures import CELERY_ROUTES

    app = Celery("raysys-client-tests", broker=redis_url, backend=redis_url)
    if routes:
        app.conf.task_routes = CELERY_ROUTES
    app.conf.broker_connection_retry_on_startup = True
    app.conf.update(conf)
    try:
        yield app
    finally:
        app.close()


def sig(app, name, *args, **kwargs):
    return app.signature(name, args=args, kwargs=kwargs)


def times(r, key: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(f"{key}:at").items()}


# --- apply_async options -----------------------------------------------------------------------------


def test_countdown_eta_naive_aware_negative_and_expires(celery_app, r):
    from celery.exceptions import TaskRevokedError

    key = f"when-{uuid.uuid4()}"
    sent = time.time()
    utc_now = dt.datetime.now(dt.UTC)
    plus5 = dt.timezone(dt.timedelta(hours=5))
    jobs = {
        "naive": celery_app.send_task("tests.record", args=(key, "naive"),  # naive = the worker's zone (UTC)
                                      eta=utc_now.replace(tzinfo=None) + dt.timedelta(seconds=1.2)),
        "plus5": celery_app.send_task("tests.record", args=(key, "plus5"),
                                      eta=utc_now.astimezone(plus5) + dt.timedelta(seconds=1.0)),
        "negative": celery_app.send_task("tests.record", args=(key, "negative"), countdown=-30),
        "expires-later": celery_app.send_task("tests.record", args=(key, "expires-later"), expires=60),
        "expires-dt": celery_app.send_task("tests.record", args=(key, "expires-dt"),
                                           expires=dt.datetime.now() + dt.timedelta(minutes=5)),
    }
    expired = [
        celery_app.send_task("tests.record", args=(key, "x"), expires=utc_now.replace(tzinfo=None)
                             - dt.timedelta(seconds=5)),                      # naive datetime in the past
        celery_app.send_task("tests.record", args=(key, "y"), countdown=1, expires=0.3),  # expires first
    ]
    for name, res in jobs.items():
        assert res.get(timeout=30) == name
    at = times(r, key)
    assert at["naive"] >= sent + 1.2 and at["plus5"] >= sent + 1.0
    # Not held back: taking ``expires`` (60 s) for an ETA would hold a job a minute; a cold bridge's first
    # Ray workers may take seconds to start on a loaded machine, which is not what this checks.
    assert at["negative"] < sent + 30 and at["expires-later"] < sent + 30
    for res in expired:
        with pytest.raises(TaskRevokedError, match="expired"):
            res.get(timeout=30)
        assert res.state == "REVOKED"
    assert "x" not in at and "y" not in at


def test_explicit_queue_routing_key_and_custom_headers(celery_app, r):
    with make_app(celery_app.conf.broker_url, result_extended=True) as app:
        on_analytics = app.send_task("tests.add", args=(1, 2), queue="analytics")     # routed to ingest
        on_reports = app.send_task("tests.add", args=(2, 2), queue="reports", routing_key="reports")
        with_headers = app.send_task("tests.add", args=(3, 2), headers={"x-tenant": "acme", "trace": [1, 2]})
        by_key = app.send_task("tests.add", args=(4, 2), routing_key="reports")
        assert on_analytics.get(timeout=30) == 3 and on_analytics.queue == "analytics"
        assert on_reports.get(timeout=30) == 4 and on_reports.queue == "reports"
        assert with_headers.get(timeout=30) == 5
        assert by_key.get(timeout=30) == 6
    # Through an exchange: kombu drops the message unless a consumer bound the queue, as Celery workers do.
    # (The sends above made the producer bind ``reports`` itself: start from the bridge's binding alone.)
    r.delete("_kombu.binding.reports", "_kombu.binding_permanent.reports")
    wait_until(lambda: r.exists("_kombu.binding.reports"), message="the bridge to bind its queue")
    with make_app(celery_app.conf.broker_url, routes=False, result_extended=True) as app:
        via_exchange = app.send_task("tests.mul", args=(3, 3), exchange="reports", routing_key="reports")
        assert via_exchange.get(timeout=30) == 9 and via_exchange.queue == "reports"


def test_priority_steps_every_level_in_order(ray_cluster, redis_url, qsettings, r):
    """``priority_steps=list(range(10))`` puts priority p on ``<queue>\\x06\\x16<p>``: every level is consumed,
    lowest number first (before this fix levels 1, 2, 4, 5, 7 and 8 were never taken)."""
    from raysys.queue.bridge import start_bridges, stop_bridges

    key = f"prio10-{uuid.uuid4()}"
    levels = list(range(10))
    random.Random(7).shuffle(levels)
    with make_app(redis_url, broker_transport_options={"priority_steps": list(range(10)),
                                                       "queue_order_strategy": "priority"}) as app:
        results = [app.send_task("tests.record", args=(key, str(p)), queue="prio10", priority=p) for p in levels]
        assert r.llen("prio10\x06\x165") == 1 and r.llen("prio10") == 1
        handles = start_bridges(qsettings, queues=["prio10"], concurrency=1)
        try:
            wait_until(lambda: r.llen(key) == 10, message="ten jobs")
            assert [v.decode() for v in r.lrange(key, 0, -1)] == [str(p) for p in range(10)]
            assert [res.get(timeout=10) for res in results] == [str(p) for p in levels]
        finally:
            stop_bridges(handles, timeout=5)


def test_default_priority_setting_and_single_priority(redis_url):
    with make_app(redis_url, task_default_priority=7) as app:
        assert app.send_task("tests.add", args=(1, 1)).get(timeout=30) == 2
        assert app.send_task("tests.add", args=(1, 2), priority=5).get(timeout=30) == 3


# --- the default queue and unknown names -----------------------------------------------------------------


def test_unrouted_send_task_runs_from_the_default_queue(redis_url, r):
    """Without routes Celery puts jobs on ``celery``: bridges consume it too; known names run, unknown
    names fail clearly (celery.exceptions.NotRegistered) instead of waiting forever."""
    from celery.exceptions import NotRegistered
    from conftest import wire_message

    with make_app(redis_url, routes=False) as app:
        ok = app.send_task("tests.add", args=(20, 22))
        unknown = app.send_task("workers.tasks.unknown_thing", args=(1,))
        assert ok.get(timeout=30) == 42
        with pytest.raises(NotRegistered):
            unknown.get(timeout=30)
        wire = wire_message("message_send_task_unrouted_name.json")
        wire_id = str(uuid.uuid4())
        wire["headers"].update(id=wire_id, root_id=wire_id)
        wire["properties"]["correlation_id"] = wire_id
        r.lpush("celery", json.dumps(wire))
        with pytest.raises(NotRegistered):
            app.AsyncResult(wire_id).get(timeout=30)
    dead = [json.loads(e) for e in r.lrange("celery.dead", 0, -1)]
    assert {e["id"] for e in dead} >= {unknown.id, wire_id}


# --- canvas --------------------------------------------------------------------------------------------


def test_link_link_error_chain_si_and_groups(celery_app, r):
    app = celery_app
    linked = app.send_task("tests.add", args=(1, 2), link=sig(app, "tests.mul", 10),
                           link_error=app.signature("tests.record", args=("never", "x"), immutable=True))
    assert linked.get(timeout=30) == 3
    children = wait_until(lambda: app.AsyncResult(linked.id).children, message="the link's child")
    assert children[0].get(timeout=30) == 30

    res = chain(sig(app, "tests.add", 1, 2), app.signature("tests.add", args=(100, 1), immutable=True),
                sig(app, "tests.mul", 3))()
    assert res.get(timeout=30) == 303 and res.parent.get(timeout=30) == 101

    g = group(sig(app, "tests.add", i, i) for i in range(5))()
    assert g.get(timeout=30) == [0, 2, 4, 6, 8]

    fanned = app.send_task("tests.add", args=(1, 1), link=group(sig(app, "tests.mul", 3), sig(app, "tests.mul", 4)))
    assert fanned.get(timeout=30) == 2
    kids = wait_until(lambda: app.AsyncResult(fanned.id).children, message="the group's members")
    assert sorted(k.get(timeout=30) for k in kids) == [6, 8]

    tail = chain(sig(app, "tests.add", 2, 3), group(sig(app, "tests.mul", 2), sig(app, "tests.mul", 10)))()
    assert tail.get(timeout=30) == [10, 50]
    assert r.llen("never") == 0  # the errback of a successful job never ran


def test_chord_runs_and_a_failed_part_fails_the_body_with_chord_error(celery_app, r):
    """Chords run (tests/test_chords.py has the details); a part that fails makes the body a ChordError at
    once instead of a hang."""
    from celery.exceptions import ChordError

    app = celery_app
    res = chord([sig(app, "tests.add", 1, 2), sig(app, "tests.add", 3, 4)])(sig(app, "tests.tsum"))
    assert res.get(timeout=30) == 10
    res = chord([sig(app, "tests.add", 1, 2), sig(app, "tests.boom", "x")])(sig(app, "tests.tsum"))
    with pytest.raises(ChordError, match="Dependency"):
        app.AsyncResult(res.id).get(timeout=30)
    assert res.state == "FAILURE"
    entry = wait_until(lambda: r.lrange("analytics.dead", 0, -1), message="the failed part's dead letter")
    assert "bad input: x" in json.loads(entry[0])["reason"]
    # a group followed by a task inside a chain is a chord too (Celery builds it in the chain's embed)
    res = chain(sig(app, "tests.add", 1, 2), group(sig(app, "tests.add", 1), sig(app, "tests.add", 2)),
                sig(app, "tests.tsum"))()
    assert res.get(timeout=30) == 9
    assert res.parent.parent.get(timeout=30) == 3  # the first step ran


# --- AsyncResult -----------------------------------------------------------------------------------------


def test_async_result_api(celery_app, r):
    from celery.exceptions import TimeoutError as CeleryTimeout

    app = celery_app
    assert app.AsyncResult(str(uuid.uuid4())).state == "PENDING"
    slow = app.send_task("tests.sleep", args=(1.5,))
    with pytest.raises(CeleryTimeout):
        slow.get(timeout=0.3)
    assert not slow.ready() and slow.state in ("PENDING", "STARTED")
    assert slow.get(timeout=30) == 1.5 and slow.ready() and slow.info == 1.5 and slow.traceback is None

    bad = app.send_task("tests.boom", args=("z",))
    with pytest.raises(ValueError):
        bad.get(timeout=30)
    assert isinstance(bad.info, ValueError) and bad.info.args == ("bad input: z",)
    assert "ValueError: bad input: z" in bad.traceback
    assert bad.get(timeout=1, propagate=False).args == ("bad input: z",)

    ttl = r.ttl(f"celery-task-meta-{slow.id}")
    assert 86_000 < ttl <= 86_400  # RESULT_EXPIRES, as result_expires on a Celery worker
    slow.forget()
    assert r.exists(f"celery-task-meta-{slow.id}") == 0
    assert app.AsyncResult(slow.id).state == "PENDING"


def test_result_extended_client_sees_name_args_kwargs_queue(redis_url):
    with make_app(redis_url, result_extended=True) as app:
        res = app.send_task("tests.add", args=(2,), kwargs={"y": 5})
        assert res.get(timeout=30) == 7
        assert (res.name, res.args, res.kwargs, res.queue, res.retries) == ("tests.add", [2], {"y": 5}, "ingest", 0)
        assert res.worker.startswith("raysys-bridge-")
        bad = app.send_task("tests.boom", args=("q",))
        with pytest.raises(ValueError):
            bad.get(timeout=30)
        assert (bad.name, bad.args, bad.queue) == ("tests.boom", ["q"], "analytics")


def test_retry_states_and_ctx_retries(celery_app, r):
    key = f"flaky-{uuid.uuid4()}"
    res = celery_app.send_task("tests.flaky", args=(key, 1))
    seen = set()

    def ready_noting_states() -> bool:
        seen.add(res.state)
        return res.ready()

    wait_until(ready_noting_states, timeout=30, interval=0.01, message="the flaky job to be ready")
    assert "RETRY" in seen
    assert res.get(timeout=30) == {"ok": True, "retries": 1}  # self.request.retries on the second try


# --- serialisation, compression, protocol 1 ------------------------------------------------------------


def test_pickle_is_refused_with_a_readable_failure(redis_url, r):
    from kombu.exceptions import ContentDisallowed

    with make_app(redis_url, task_serializer="pickle", accept_content=["json", "pickle"]) as app:
        res = app.send_task("tests.add", args=(1, 2))
        with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
            res.get(timeout=30)
    entry = json.loads(r.lindex("ingest.dead", 0))
    assert entry["id"] == res.id and "content type" in entry["reason"]
    with make_app(redis_url, accept_content=["application/json"]) as app:
        assert app.send_task("tests.add", args=(1, 2)).get(timeout=30) == 3


@pytest.mark.parametrize("method", ["zlib", "gzip", "bzip2", "lzma"])
def test_compressed_messages_are_decoded(celery_app, method):
    payload = "données " * 200
    res = celery_app.send_task("tests.echo", args=(payload,), compression=method)
    assert res.get(timeout=30) == {"args": [payload], "kwargs": {}}


def test_compression_bomb_and_unknown_compression_are_refused(r, qsettings):
    from raysys.queue.client import Client

    def message(body: bytes, compression: str) -> tuple[str, str]:
        task_id = str(uuid.uuid4())
        env = {"body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
               "content-type": "application/json",
               "headers": {"task": "tests.add", "id": task_id, "compression": compression},
               "properties": {"correlation_id": task_id, "body_encoding": "base64",
                              "delivery_info": {"exchange": "", "routing_key": "ingest"}, "priority": 0}}
        return task_id, json.dumps(env)

    bomb_id, bomb = message(zlib.compress(b"[[" + b" " * 20_000_000 + b"], {}, {}]", 9), "application/x-gzip")
    odd_id, odd = message(b"\x00\x01", "application/x-brotli")
    r.lpush("ingest", bomb, odd)
    with Client(qsettings) as client:
        with pytest.raises(Exception) as err:
            client.AsyncResult(bomb_id).get(timeout=30)
        assert type(err.value).__name__ == "TooLarge"
        with pytest.raises(Exception) as err:
            client.AsyncResult(odd_id).get(timeout=30)
        assert type(err.value).__name__ == "ContentDisallowed" and "compression" in str(err.value)


def test_task_protocol_1(redis_url):
    with make_app(redis_url, task_protocol=1) as app:
        res = app.send_task("tests.add", args=(1, 2), countdown=0.3, link=sig(app, "tests.mul", 7))
        assert res.get(timeout=30) == 3
        assert app.send_task("tests.add", kwargs={"x": 4, "y": 5}).get(timeout=30) == 9


# --- payloads and exceptions ----------------------------------------------------------------------------


def test_unicode_large_and_kwargs_only_payloads(celery_app):
    text = "héllo wörld ✓ 日本語 🚀 " * 300  # about 9 KB of text, well inside the test limit of 64 KiB
    res = celery_app.send_task("tests.echo", args=(text, {"ключ": ["значение", 1.5, None, True]}),
                               kwargs={"émoji": "🙂"})
    assert res.get(timeout=30) == {"args": [text, {"ключ": ["значение", 1.5, None, True]}], "kwargs": {"émoji": "🙂"}}
    assert celery_app.send_task("tests.add", kwargs={"x": 1.5, "y": 2}).get(timeout=30) == 3.5
    assert celery_app.send_task("tests.echo").get(timeout=30) == {"args": [], "kwargs": {}}


def test_custom_exception_class_reaches_the_client(celery_app, r):
    from conftest import wire_message

    res = celery_app.send_task("tests.custom_exc", args=("custom",))
    with pytest.raises(Exception) as err:
        res.get(timeout=30)
    assert type(err.value).__name__ == "CustomError" and err.value.args == ("custom", 42)
    stored = json.loads(r.get(f"celery-task-meta-{res.id}"))
    wire = wire_message("result_failure_custom_exc.json")
    assert set(wire) <= set(stored) and set(stored["result"]) == set(wire["result"])
    assert stored["result"] == {"exc_type": "CustomError", "exc_message": ["custom", 42],
                                "exc_module": "tests.queue_tasks"}


# --- ignore_result, revoke ------------------------------------------------------------------------------


def test_ignore_result_stores_no_state(celery_app, r):
    key = f"ignored-{uuid.uuid4()}"
    ok = celery_app.send_task("tests.record", args=(key, "ran"), ignore_result=True)
    bad = celery_app.send_task("tests.boom", args=("ignored",), ignore_result=True)
    wait_until(lambda: r.llen(key) == 1, message="the job to run")
    wait_until(lambda: r.llen("analytics.dead") == 1, message="the failure's dead letter")
    wait_until(lambda: settled(r, "ingest", "analytics"), message="both deliveries acked")  # results come before acks
    assert r.exists(f"celery-task-meta-{ok.id}", f"celery-task-meta-{bad.id}") == 0  # not even STARTED


def test_revoke_queued_delayed_and_running_jobs(celery_app, r):
    from celery.exceptions import TaskRevokedError

    key = f"revoke-{uuid.uuid4()}"
    delayed = celery_app.send_task("tests.record", args=(key, "delayed"), countdown=1.5)
    celery_app.control.revoke(delayed.id)
    running = celery_app.send_task("tests.sleep", args=(30,))
    wait_until(lambda: running.state == "STARTED", message="the long job to start")
    t0 = time.monotonic()
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError, match="terminated"):
        running.get(timeout=20)
    assert time.monotonic() - t0 < 20  # interrupted: the job would sleep 30 s
    with pytest.raises(TaskRevokedError, match="revoked"):
        delayed.get(timeout=30)
    assert r.llen(key) == 0 and r.zscore("raysys:revoked", delayed.id)
    assert celery_app.send_task("tests.add", args=(1, 1)).get(timeout=30) == 2  # still serving


def test_revoke_with_terminate_interrupts_a_running_light_job(celery_app, bridges):
    """A light job runs on the bridge's thread: terminate raises in it, as SIGTERM ends a Celery child."""
    from celery.exceptions import TaskRevokedError

    before = light_detached(bridges)
    running = celery_app.send_task("tests.spin", args=(30,))
    wait_until(lambda: light_detached(bridges) > before, timeout=30, interval=0.1,
               message="the spinning job to run on a thread of its own")
    t0 = time.monotonic()
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError, match="terminated"):
        running.get(timeout=20)
    assert time.monotonic() - t0 < 20  # interrupted: the job would spin 30 s
    assert celery_app.send_task("raysys.ping", args=("still",)).get(timeout=10) == "still"


# --- celery inspect -------------------------------------------------------------------------------------


def test_celery_inspect_gets_answers_from_the_bridge(celery_app, bridges):
    """`celery -A app inspect ping|active|registered|stats|active_queues` (app.control.inspect) get a reply from
    each bridge, as from a Celery worker; an unknown command gets Celery's error reply."""
    import ray

    name = ray.get(bridges[0].stats.remote())["bridge"]
    inspect = celery_app.control.inspect(timeout=2.0)
    pings = inspect.ping()
    assert pings and len(pings) == len(bridges)
    host = next(h for h in pings if h.startswith(f"{name}@"))
    assert pings[host] == {"ok": "pong"}

    running = celery_app.send_task("tests.sleep", args=(20,))
    wait_until(lambda: running.state == "STARTED", message="the long job to start")
    try:
        active = inspect.active()[host]
        (mine,) = [a for a in active if a["id"] == running.id]
        assert mine["name"] == "tests.sleep" and mine["args"] == [20] and mine["hostname"] == host
        assert "tests.sleep" in inspect.registered()[host] and "raysys.ping" in inspect.registered()[host]
        stats = inspect.stats()[host]
        assert stats["pid"] == ray.get(bridges[0].pid.remote()) and stats["pool"]["max-concurrency"] == 2
        queues = {q["name"] for q in inspect.active_queues()[host]}
        assert {"ingest", "analytics", "reports"} <= queues
        only_other = celery_app.control.inspect(timeout=1.0, destination=["nobody@nowhere"]).ping()
        assert not only_other  # a command for another worker gets no reply from this one
        assert celery_app.control.broadcast("no_such_command", reply=True, timeout=1.0) == [
            {host: {"error": "No such control command: no_such_command"}}]
    finally:
        running.revoke(terminate=True)
