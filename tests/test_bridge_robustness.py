"""Hostile and odd input against running bridges: crafted raw messages (shaped like ../shared/celery-wire),
duplicate deliveries, floods of bad messages among good ones, and Redis connections killed mid-claim.

The rule every test checks: a message that can never run gets a clear FAILURE (when an id is readable)
and a dead letter; every good job gets exactly one result; the bridge keeps serving.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import pickle
import random
import threading
import time
import uuid

import pytest
import redis
from conftest import wire_message
from queue_fixtures import drain_publications, settled
from waiting import wait_until

from raysys.queue import keys, messages, results

pytestmark = pytest.mark.usefixtures("bridges")

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def wire(task: str = "tests.add", args=(1, 2), kwargs=None, embed=None, *, body=None, task_id: str | None = None,
         queue: str = "ingest", **headers) -> tuple[str, dict]:
    """A message as a real Celery 5.7 producer wrote it (captured), with our task, id, body and headers."""
    env = wire_message("message_ingest.json")
    task_id = task_id or str(uuid.uuid4())
    env["headers"].update(task=task, id=task_id, root_id=task_id)
    env["headers"].update(headers)
    env["properties"]["correlation_id"] = task_id
    env["properties"]["delivery_info"]["routing_key"] = queue
    if body is None:
        body = [list(args), kwargs or {}, {**EMBED, **(embed or {})}]
    env["body"] = base64.b64encode(body if isinstance(body, bytes) else json.dumps(body).encode()).decode()
    return task_id, env


def meta(r: redis.Redis, task_id: str) -> dict | None:
    raw = r.get(keys.result_key(task_id))
    return json.loads(raw) if raw else None


def wait_final(r, ids, timeout=30.0) -> dict[str, dict]:
    def ready():
        metas = {i: meta(r, i) for i in ids}
        return metas if all(m and m["status"] in ("SUCCESS", "FAILURE", "REVOKED") for m in metas.values()) else None

    return wait_until(ready, timeout=timeout, interval=0.1, message=f"{len(ids)} final results")


class Publications:
    """Every result publication (pattern-subscribed before the jobs are sent), counted per id and state."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.pubsub = r.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(**{"celery-task-meta-*": self._on})
        self.thread = self.pubsub.run_in_thread(sleep_time=0.005, daemon=True)

    def _on(self, message) -> None:
        data = json.loads(message["data"])
        self.seen[data["task_id"]][data["status"]] += 1

    def close(self) -> None:
        drain_publications(self.r, self.seen)  # every publication made so far has reached us
        self.thread.stop()
        self.thread.join(timeout=5)
        self.pubsub.close()


def test_naive_times_are_read_in_the_workers_time_zone():
    """Celery reads a naive eta/expires in the worker's ``timezone`` (CELERY_TIMEZONE), not the producer's."""
    _, env = wire(eta="2030-01-02T03:04:05", expires="2030-01-02T03:04:05+00:00")
    raw = json.dumps(env)
    utc = messages.decode(raw, "ingest", tz="UTC")
    dubai = messages.decode(raw, "ingest", tz="Asia/Dubai")
    assert utc.eta - dubai.eta == 4 * 3600 and utc.expires == dubai.expires


CASES = [
    # (name, build -> (id, raw), expected status or None for "no result: no readable id", words in reason)
    ("args-not-a-list", lambda: wire(body=[{"x": 1}, {}, EMBED]), "FAILURE", "args must be a list"),
    ("args-a-string", lambda: wire(body=["1,2", {}, EMBED]), "FAILURE", "args must be a list"),
    ("kwargs-a-list", lambda: wire(body=[[1], [2], EMBED]), "FAILURE", "kwargs must be an object"),
    ("body-null", lambda: wire(body=b"null"), "FAILURE", "body is not"),
    ("body-two-items", lambda: wire(body=[[1, 2], {}]), "SUCCESS", None),
    ("no-task-header", lambda: wire(task=None), "FAILURE", "without a task"),
    ("eta-not-a-date", lambda: wire(eta="next tuesday"), "FAILURE", "eta is not an ISO-8601 time"),
    ("eta-a-list", lambda: wire(eta=[2030, 1, 1]), "FAILURE", "eta must be a time"),
    ("eta-nan", lambda: wire(eta=float("nan")), "FAILURE", "finite"),
    ("expires-garbage", lambda: wire(expires={"in": 5}), "FAILURE", "expires must be a time"),
    ("timelimit-null", lambda: wire(timelimit=None), "SUCCESS", None),
    ("timelimit-nulls", lambda: wire(timelimit=[None, None]), "SUCCESS", None),
    ("timelimit-strings", lambda: wire(timelimit=["30", "20"]), "SUCCESS", None),
    ("timelimit-zeros", lambda: wire(timelimit=[0, 0]), "SUCCESS", None),
    ("timelimit-word", lambda: wire(timelimit="forever"), "FAILURE", "timelimit must be [hard, soft]"),
    ("timelimit-bad-string", lambda: wire(timelimit=["soon", None]), "FAILURE", "hard time limit"),
    ("timelimit-negative", lambda: wire(timelimit=[-1, None]), "FAILURE", "hard time limit"),
    ("retries-a-string", lambda: wire(retries="2"), "FAILURE", "retries must be a whole number"),
    ("numeric-id", lambda: _numeric_id(), "SUCCESS", None),
    ("kombu-marker-bomb", lambda: wire(args=[{"__type__": "uuid", "__value__": 5}]), "FAILURE", "unreadable"),
    ("kombu-bad-decimal", lambda: wire(args=[{"__type__": "decimal", "__value__": "abc"}, 1]), "FAILURE",
     "unreadable"),
    ("callbacks-not-signatures", lambda: wire(embed={"callbacks": ["tests.mul"]}), "FAILURE", "signatures"),
    ("link-args-a-string", lambda: wire(embed={"callbacks": [{"task": "tests.mul", "args": "10"}]}), "FAILURE",
     "args must be a list"),
    ("deep-json", lambda: wire(body=b"[" * 20_000 + b"]" * 20_000), "FAILURE", "malformed JSON body"),
    ("headers-not-an-object", lambda: _headers_list(), None, "headers or properties"),
    ("no-id-anywhere", lambda: _no_id(), None, "without an id"),
]


def _numeric_id():
    task_id, env = wire()
    num = random.randint(10**9, 10**10)
    env["headers"]["id"] = num
    env["properties"]["correlation_id"] = num
    return str(num), env


def _headers_list():
    _, env = wire()
    env["headers"] = ["task", "tests.add"]
    return None, env


def _no_id():
    _, env = wire()
    del env["headers"]["id"]
    del env["properties"]["correlation_id"]
    return None, env


def test_malformed_fields_fail_clearly_and_good_jobs_still_run(r):
    """Each odd message is settled on its own (FAILURE + dead letter, or SUCCESS where it is readable);
    before this fix a kombu marker that failed to decode escaped the decoder and stranded the whole batch."""
    sent = []
    pipe = r.pipeline(transaction=False)
    for name, build, status, words in CASES:
        task_id, env = build()
        raw = json.dumps(env)
        pipe.lpush("ingest", raw)
        good_id, good = wire(args=(len(sent), 1))
        pipe.lpush("ingest", json.dumps(good))  # a good job after every odd one
        sent.append((name, task_id, status, words, good_id))
    pipe.execute()
    ids = [tid for _, tid, status, _, _ in sent if status] + [g for *_, g in sent]
    metas = wait_final(r, ids)
    for i, (name, task_id, status, _, good_id) in enumerate(sent):
        assert metas[good_id]["status"] == "SUCCESS" and metas[good_id]["result"] == i + 1, name
        if status:
            assert metas[task_id]["status"] == status, (name, metas[task_id])
            if status == "SUCCESS":
                assert metas[task_id]["result"] == 3, name
    dead = [json.loads(e) for e in wait_until(lambda: r.llen("ingest.dead") == sum(1 for c in sent if c[2] != "SUCCESS")
                                            and r.lrange("ingest.dead", 0, -1), message="the dead letters")]
    for name, task_id, status, words, _ in sent:
        if status == "SUCCESS":
            continue
        entry = next(e for e in dead if (e["id"] == task_id if task_id else words in e["reason"]))
        assert words is None or words in entry["reason"], (name, entry["reason"])
        assert entry["message"]
    # a light job's SUCCESS is published before its ack (by the thread that ran it): every delivery is acked soon after
    wait_until(lambda: settled(r, "ingest"), message="every delivery acked")


def test_negative_and_huge_countdowns_in_native_envelopes(r):
    now_id, later_id = str(uuid.uuid4()), str(uuid.uuid4())
    r.lpush("analytics", json.dumps({"task": "tests.mul", "id": now_id, "args": [6, 7], "countdown": -60}))
    r.lpush("analytics", json.dumps({"task": "tests.mul", "id": later_id, "args": [6, 7], "countdown": 1e9}))
    assert wait_final(r, [now_id])[now_id]["result"] == 42
    wait_until(lambda: r.zcard("raysys:delayed") == 1, message="the far-future job parked")
    assert meta(r, later_id) is None


def test_bad_link_options_and_wrong_type_keys_do_not_wedge_the_bridge(r):
    """A callback whose options cannot be read, or whose queue names a key of another type, fails alone:
    the parent's SUCCESS is stored and later jobs run (before, a WRONGTYPE error aborted the whole batch
    script and the bridge retried it forever, storing no result again)."""
    r.set("not-a-list", "a string key")
    bad_countdown = {"task": "tests.mul", "args": [2], "kwargs": {}, "options": {"countdown": "soon"}}
    wrong_type = {"task": "tests.mul", "args": [3], "kwargs": {}, "options": {"queue": "not-a-list"}}
    a, env_a = wire(embed={"callbacks": [bad_countdown]})
    b, env_b = wire(embed={"callbacks": [wrong_type]})
    r.lpush("ingest", json.dumps(env_a), json.dumps(env_b))
    metas = wait_final(r, [a, b])
    assert metas[a]["status"] == metas[b]["status"] == "SUCCESS"
    entries = wait_until(lambda: (lambda d: d if len(d) == 2 else None)(
        [json.loads(e)["reason"] for e in r.lrange("ingest.dead", 0, -1)]), message="dead letters for both bad links")
    assert all("cannot publish 'tests.mul'" in reason for reason in entries)
    assert any("countdown" in reason for reason in entries)
    assert any("'not-a-list' is not a configured queue" in reason for reason in entries)  # never pushed onto it
    assert r.get("not-a-list") == b"a string key"
    later = [wire(args=(i, 0)) for i in range(20)]
    r.lpush("ingest", *[json.dumps(env) for _, env in later])
    metas = wait_final(r, [i for i, _ in later])
    assert [metas[i]["result"] for i, _ in later] == list(range(20))


def test_duplicate_delivery_while_running_runs_once(r):
    """The same id delivered again while its first delivery runs (identical bytes, or another body) is
    dropped: one run, one result (before, both ran and the second clobbered the first's bookkeeping)."""
    key = f"dup-{uuid.uuid4()}"
    task_id, env = wire("tests.count_sleep", (key, 1.5), queue="analytics")
    raw = json.dumps(env)
    pubs = Publications(r)
    try:
        r.lpush("analytics", raw)
        wait_until(lambda: r.hget(key, task_id), message="the first run to start")
        _, other = wire("tests.count_sleep", (key, 0.1), task_id=task_id, queue="analytics")
        r.lpush("analytics", raw, json.dumps(other))
        assert wait_final(r, [task_id])[task_id]["result"] == 1
        wait_until(lambda: settled(r, "analytics"), message="all three deliveries acked (run or dropped)")
        assert int(r.hget(key, task_id)) == 1
    finally:
        pubs.close()
    assert pubs.seen[task_id]["SUCCESS"] == 1
    assert r.llen("analytics") == 0 and not [k for k in r.keys("raysys:inflight:*") if r.llen(k)]


def test_a_job_whose_success_is_stored_is_acked_without_running(r):
    """A delivery of an id whose SUCCESS is stored (a producer's retry after the job ran, a requeue racing its
    result) is acked without running, on each claim path: an idle queue's waiter (which reads the stored
    result in its claim's own round trip), a message whose first "id" is not its own (that read misses; the
    bridge reads the right one), and the claim loop's batches."""
    key = f"stored-{uuid.uuid4()}"
    done = [str(uuid.uuid4()) for _ in range(6)]
    for task_id in done:
        r.set(keys.result_key(task_id), results.success_json(task_id, '"earlier"'))
    wait_until(lambda: settled(r, "ingest"), message="an idle queue")
    r.lpush("ingest", json.dumps(wire("tests.count", (key, 1), task_id=done[0])[1]))
    wait_until(lambda: settled(r, "ingest"), message="the waiter's delivery acked")
    r.lpush("ingest", json.dumps({"meta": {"id": "decoy"}, "task": "tests.count", "id": done[1], "args": [key, 1]}))
    wait_until(lambda: settled(r, "ingest"), message="the decoy's delivery acked")
    r.lpush("ingest", *[json.dumps(wire("tests.count", (key, 1), task_id=i)[1]) for i in done[2:]])
    control, env = wire("tests.count", (key, 7))
    r.lpush("ingest", json.dumps(env))
    assert wait_final(r, [control])[control]["result"] == 7
    wait_until(lambda: settled(r, "ingest"), message="every delivery acked")
    assert r.hgetall(key) == {control.encode(): b"1"}  # only the control job ran
    assert [meta(r, i)["result"] for i in done] == ["earlier"] * len(done)


def _bad_messages(n: int, rng: random.Random) -> list[tuple[str | None, bytes | str]]:
    out = []
    for i in range(n):
        kind = i % 7
        task_id, env = wire(args=(i, 0))
        if kind == 0:
            out.append((None, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))))
            continue
        if kind == 1:
            env["content-type"] = "application/x-python-serialize"
            env["body"] = base64.b64encode(pickle.dumps(((1, 2), {}, {}))).decode()
        elif kind == 2:
            env["headers"]["task"] = "workers.tasks.nope"
        elif kind == 3:
            env["body"] = base64.b64encode(json.dumps([[1, 2, 3, 4], {}, EMBED]).encode()).decode()
        elif kind == 4:
            env["body"] = "!!" + env["body"]
        elif kind == 5:
            env["body"] = base64.b64encode(json.dumps(["oops", {}, EMBED]).encode()).decode()
        else:
            env["headers"]["eta"] = "yesterday-ish"
        out.append((task_id, json.dumps(env)))
    return out


def test_flood_of_bad_messages_among_good_ones(r, bridges):
    import ray

    rng = random.Random(3)
    key = f"flood-{uuid.uuid4()}"
    good = [wire("tests.count", (key, i)) for i in range(400)]
    bad = _bad_messages(400, rng)
    mixed = [json.dumps(env) for _, env in good] + [raw for _, raw in bad]
    rng.shuffle(mixed)
    pubs = Publications(r)
    try:
        pipe = r.pipeline(transaction=False)
        for raw in mixed:
            pipe.lpush(rng.choice(["ingest", "ingest", "analytics", "reports", "celery"]), raw)
        pipe.execute()
        metas = wait_final(r, [i for i, _ in good] + [i for i, _ in bad if i], timeout=60)
    finally:
        pubs.close()
    assert [metas[i]["result"] for i, _ in good] == list(range(400))
    assert all(metas[i]["status"] == "FAILURE" for i, _ in bad if i)
    assert {i: dict(c) for i, c in pubs.seen.items() if i in dict(good) and c != {"SUCCESS": 1}} == {}
    runs = r.hgetall(key)
    assert len(runs) == 400 and {int(v) for v in runs.values()} == {1}
    dead = sum(r.llen(f"{q}.dead") for q in ("ingest", "analytics", "reports", "celery"))
    assert dead == 400
    wait_until(lambda: settled(r, "ingest", "analytics", "reports", "celery"), message="every delivery acked")
    assert ray.get(bridges[0].stats.remote())["totals"].get("loop_errors:claim") is None
    assert len(r.keys("raysys:applied:*")) <= 1  # each batch deletes the previous batch's token


def test_killed_redis_connections_lose_no_job(r, bridges):
    """Kill the bridge's Redis connections (CLIENT KILL) again and again while 1,500 jobs flow: replies of
    claims are lost mid-flight. Before this fix such claimed messages sat in the in-flight list of a live
    bridge forever; now they are given back and every job gets exactly one SUCCESS."""
    import ray

    name = ray.get(bridges[0].stats.remote())["bridge"]
    key = f"kill-{uuid.uuid4()}"
    jobs = [wire("tests.count", (key, i), queue="ingest") for i in range(1500)]
    stop = threading.Event()
    killed = collections.Counter()

    def killer():
        admin = redis.Redis.from_url(f"redis://{_addr(r)}/0")
        while not stop.is_set():
            for client in admin.client_list():
                if client.get("name") == f"raysys:{name}":
                    try:
                        admin.client_kill_filter(_id=client["id"])
                        killed["n"] += 1
                    except redis.ResponseError:
                        pass
            time.sleep(random.uniform(0.005, 0.04))
        admin.close()

    pubs = Publications(r)
    thread = threading.Thread(target=killer, daemon=True)
    try:
        pipe = r.pipeline(transaction=False)
        for _, env in jobs:
            pipe.lpush("ingest", json.dumps(env))
        pipe.execute()
        thread.start()
        wait_until(lambda: r.hlen(key) >= 1000 or killed["n"] >= 400, timeout=60, message="jobs under fire")
        stop.set()
        thread.join(timeout=5)
        metas = wait_final(r, [i for i, _ in jobs], timeout=60)
    finally:
        stop.set()
        pubs.close()
    assert killed["n"] > 10
    assert [metas[i]["result"] for i, _ in jobs] == list(range(1500))
    assert {i: dict(c) for i, c in pubs.seen.items() if c != {"SUCCESS": 1}} == {}
    assert {int(v) for v in r.hvals(key)} == {1}  # given back unseen, so never run twice
    assert r.llen("ingest") == 0 and r.llen("ingest.dead") == 0
    wait_until(lambda: not [k for k in r.keys("raysys:inflight:*") if r.llen(k)], message="empty in-flight lists")


def _addr(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"{kw['host']}:{kw['port']}"


class LossyProxy:
    """A TCP proxy to Redis that, once ``armed``, drops a connection right after Redis answered: the command
    ran but its reply never arrives (what a network cut does). ``drops`` counts them."""

    def __init__(self, target: tuple[str, int], p_drop: float, seed: int = 5) -> None:
        import socket

        self.target, self.p_drop, self.rng = target, p_drop, random.Random(seed)
        self.armed = threading.Event()
        self.drops = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, replies: bool) -> None:
        import socket

        try:
            while data := src.recv(65536):
                if replies and self.armed.is_set() and self.rng.random() < self.p_drop:
                    self.drops += 1
                    break  # the reply is lost; the connection goes down
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):  # shutdown wakes the sibling pump and sends FIN to both ends
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        self.closed = True
        self.server.close()


def test_lost_replies_lose_no_job_and_run_none_twice(ray_cluster, redis_server, tmp_path, r):
    """A bridge whose Redis replies are lost at random (the command ran, the connection dropped before the
    answer came back): claims whose reply was lost leave messages in the bridge's in-flight lists that it
    never saw; before this fix they stayed there for as long as the bridge lived. Now the bridge gives them
    back, re-sent batches of results are applied once, and every job gets exactly one SUCCESS."""
    from queue_fixtures import bridge_settings

    from raysys.queue.bridge import start_bridges, stop_bridges

    proxy = LossyProxy(("127.0.0.1", redis_server["port"]), p_drop=0.1)
    settings = bridge_settings(f"redis://127.0.0.1:{proxy.port}/0", tmp_path / "data", default_queue="")
    jobs = [wire("tests.nap", (i, 1), queue="lossy") for i in range(1500)]
    pubs = Publications(r)
    handles = start_bridges(settings, queues=["lossy"], concurrency=2, executors=1, batch_size=64)
    try:
        proxy.armed.set()
        pipe = r.pipeline(transaction=False)
        for _, env in jobs:
            pipe.lpush("lossy", json.dumps(env))
        pipe.execute()
        done = lambda: sum(1 for v in r.mget([keys.result_key(i) for i, _ in jobs]) if v)  # noqa: E731
        wait_until(lambda: proxy.drops >= 30 or done() == len(jobs), timeout=60, message="lost replies")
        proxy.armed.clear()
        metas = wait_final(r, [i for i, _ in jobs], timeout=90)
    finally:
        proxy.armed.clear()
        stop_bridges(handles, timeout=5)
        pubs.close()
        proxy.close()
    print(f"lost replies: {proxy.drops}")
    assert proxy.drops >= 10
    assert [metas[i]["result"] for i, _ in jobs] == list(range(1500))
    assert {i: dict(c) for i, c in pubs.seen.items() if c != {"SUCCESS": 1}} == {}
    assert r.llen("lossy") == 0 and r.llen("lossy.dead") == 0
    assert not [k for k in r.keys("raysys:inflight:*") if r.llen(k)]


def test_sys_exit_in_a_task_fails_that_job_only(r):
    """A light job calling sys.exit() fails alone (SystemExit); the jobs batched with it succeed once."""
    key = f"exit-{uuid.uuid4()}"
    bad, env = wire("tests.exit", (3,))
    good = [wire("tests.count", (key, i)) for i in range(50)]
    r.lpush("ingest", *[json.dumps(e) for _, e in good[:25]], json.dumps(env), *[json.dumps(e) for _, e in good[25:]])
    metas = wait_final(r, [bad] + [i for i, _ in good])
    assert metas[bad]["status"] == "FAILURE" and metas[bad]["result"]["exc_type"] == "SystemExit"
    assert [metas[i]["result"] for i, _ in good] == list(range(50))
    assert {int(v) for v in r.hvals(key)} == {1}
