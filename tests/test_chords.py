"""Celery chords from a real Celery 5 client: the body runs once, on the header's results in order.

Chord state lives where Celery's Redis result backend keeps it (``celery-taskset-meta-<gid>.j/.s/.d/.c``),
see :mod:`raysys.queue.chord`.
"""

from __future__ import annotations

import gc
import json
import uuid

import pytest
from celery import chain, chord, group
from queue_fixtures import settled
from waiting import wait_until

from raysys.queue import canvas, messages, results
from raysys.queue.keys import result_key

pytest_plugins = ("queue_fixtures",)


@pytest.fixture(autouse=True)
def _collect_results():
    """Drop this test's Celery AsyncResults while Redis is still up (their __del__ talks to it)."""
    yield
    gc.collect()

pytestmark = pytest.mark.usefixtures("bridges")


def sig(app, name, *args, **kwargs):
    return app.signature(name, args=args, kwargs=kwargs)


def test_a_chord_of_ten_runs_its_body_once_on_the_results_in_order(celery_app, r):
    app = celery_app
    key = f"chord-{uuid.uuid4()}"
    # tests.record appends to a list and returns its value: the body (itself tests.record) gets the list.
    header = [sig(app, "tests.record", key, f"v{i}") for i in range(10)]
    res = chord(header)(sig(app, "tests.collect", f"{key}:body"))
    assert res.get(timeout=60) == [f"v{i}" for i in range(10)]  # header order, whatever order they ran in
    assert [json.loads(v) for v in r.lrange(f"{key}:body", 0, -1)] == [[f"v{i}" for i in range(10)]]  # once
    assert sorted(r.lrange(key, 0, -1)) == sorted(f"v{i}".encode() for i in range(10))
    # numbers through a light task and a heavy one
    res = chord([sig(app, "tests.add", i, i) for i in range(10)])(sig(app, "tests.tsum"))
    assert res.get(timeout=60) == sum(2 * i for i in range(10))
    res = chord([sig(app, "tests.mul", i, 10) for i in range(4)])(sig(app, "tests.collect", f"{key}:mul"))
    assert res.get(timeout=60) == [0, 10, 20, 30]
    # the chord's state is cleaned up and marked done, as Celery's backend does
    gid = res.parent.id
    assert r.get(f"celery-taskset-meta-{gid}.c") == b"done"
    assert not r.exists(f"celery-taskset-meta-{gid}.j")


def test_a_failing_header_task_fails_the_body_with_chord_error(celery_app, r):
    from celery.exceptions import ChordError

    app = celery_app
    key = f"never-{uuid.uuid4()}"
    res = chord([sig(app, "tests.add", 1, 2), sig(app, "tests.boom", "part"), sig(app, "tests.add", 3, 4)])(
        sig(app, "tests.collect", key))
    # The body's stored result is Celery's ChordError (what a client holding only the body's id gets) ...
    with pytest.raises(ChordError, match="Dependency .* raised ValueError"):
        app.AsyncResult(res.id).get(timeout=60)
    assert res.state == "FAILURE"
    # ... and the chord's own result, which checks its header first (Celery's client), raises the part's error.
    with pytest.raises((ValueError, ChordError)):
        res.get(timeout=60)
    parts = res.parent.results
    wait_until(lambda: all(p.state in ("SUCCESS", "FAILURE") for p in parts), message="every part settled")
    assert [p.state for p in parts] == ["SUCCESS", "FAILURE", "SUCCESS"]
    assert r.llen(key) == 0  # the body never ran
    # an unknown task in the header is refused: the body fails too
    res = chord([sig(app, "tests.add", 1, 2), sig(app, "tests.no_such_task")])(sig(app, "tests.tsum"))
    with pytest.raises(ChordError):
        app.AsyncResult(res.id).get(timeout=60)


def test_a_failed_chords_body_errbacks_run_once_with_the_bodys_id(celery_app, r):
    """``body.on_error(errback)``: when header tasks fail, Celery's backend calls the body's errbacks with the
    body's id (``chord_error_from_stack``). Two failing parts: the errback still runs once."""
    from celery.exceptions import ChordError

    app = celery_app
    key = f"errback-{uuid.uuid4()}"
    body = sig(app, "tests.collect", f"{key}:body")
    body.link_error(sig(app, "tests.record", key))  # runs as tests.record(<body id>, key)
    res = chord([sig(app, "tests.boom", "a"), sig(app, "tests.add", 1, 2), sig(app, "tests.boom", "b")])(body)
    with pytest.raises(ChordError):
        app.AsyncResult(res.id).get(timeout=60)
    assert wait_until(lambda: r.lrange(res.id, 0, -1), message="the body's errback to run") == [key.encode()]
    parts = res.parent.results
    wait_until(lambda: all(p.state in ("SUCCESS", "FAILURE") for p in parts), message="every part settled")
    wait_until(lambda: settled(r, "ingest", "analytics"), message="every job acked")
    assert r.lrange(res.id, 0, -1) == [key.encode()] and r.llen(f"{key}:body") == 0


def test_a_chord_as_a_chain_step_runs_and_the_chain_goes_on(celery_app):
    app = celery_app
    # add(1, 2) = 3 -> header add(3, 1), add(3, 2) -> tsum([4, 5]) = 9 -> add(9, 100)
    res = chain(sig(app, "tests.add", 1, 2), chord([sig(app, "tests.add", 1), sig(app, "tests.add", 2)],
                                                    sig(app, "tests.tsum")), sig(app, "tests.add", 100))()
    assert res.get(timeout=60) == 109
    # a group followed by a task in a chain is a chord too (Celery builds it in the chain's embed)
    res = chain(sig(app, "tests.add", 1, 2), group(sig(app, "tests.add", 10), sig(app, "tests.add", 20)),
                sig(app, "tests.tsum"))()
    assert res.get(timeout=60) == 13 + 23
    # a chord as a link callback: its header gets the parent's result
    callback = chord([sig(app, "tests.add", 1), sig(app, "tests.mul", 10)], sig(app, "tests.tsum"))
    body = callback.freeze()
    parent = sig(app, "tests.add", 2, 3).apply_async(link=callback)
    assert parent.get(timeout=60) == 5
    assert app.AsyncResult(body.id).get(timeout=60) == 6 + 50


def test_a_chord_step_that_cannot_start_fails_its_body_instead_of_a_hang(r):
    body_id = str(uuid.uuid4())
    step = {"task": "celery.chord", "args": [], "kwargs": {"header": "not a group",
                                                           "body": canvas.signature("tests.tsum", task_id=body_id)},
            "options": {}, "subtask_type": "chord", "immutable": False}
    parent = str(uuid.uuid4())
    r.lpush("ingest", messages.encode_native("tests.add", [1, 2], task_id=parent, chain=[step]))
    meta = wait_until(lambda: (m := r.get(result_key(body_id))) and json.loads(m), message="the body's result")
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "ChordError"
    assert json.loads(r.get(result_key(parent)))["status"] == "SUCCESS"  # the parent's own result stands
    entry = wait_until(lambda: r.lrange("ingest.dead", 0, -1), message="the step's dead letter")
    assert "celery.chord" in json.loads(entry[0])["reason"]


def test_a_redelivered_part_is_counted_once(r):
    """A part whose result was recorded but whose result and ack were lost (its bridge died in between) runs
    again: it is not counted twice, the chord still waits for the missing parts, and the body runs once."""
    from raysys.queue import chord as chords

    gid, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    key = f"redelivered-{uuid.uuid4()}"
    body = canvas.signature("tests.collect", [key], task_id=body_id)
    r.set(f"celery-taskset-meta-{gid}.s", 3)  # what the Celery client's set_chord_size writes
    ids = [str(uuid.uuid4()) for _ in range(3)]

    def part(i: int, value: str) -> str:
        return messages.encode_celery("tests.record", [f"{key}:parts", value], task_id=ids[i], queue="ingest",
                                      group=gid, group_index=i, chord=body)

    def redeliver(i: int, value: str) -> None:
        r.delete(result_key(ids[i]))  # the crashed run's result was never written
        r.lpush("ingest", part(i, value))

    # part 0's first run was recorded by a bridge that died before writing its result and ack
    keys = [chords.group_key(gid, s) for s in (".j", ".t", ".s", ".d", ".c")]
    r.eval(chords.RECORD, 5, *keys, f"{ids[0]}:0", f'[1, "{ids[0]}", "SUCCESS", "a"]', 0, 3600, "")
    redeliver(0, "a-again")
    wait_until(lambda: r.lrange(f"{key}:parts", 0, -1) == [b"a-again"], message="part 0 ran again")
    wait_until(lambda: (results.loads(r.get(result_key(ids[0])) or b"{}") or {}).get("status") == "SUCCESS",
             message="part 0's result")
    assert r.zcard(f"celery-taskset-meta-{gid}.j") == 1  # counted once
    assert not r.exists(result_key(body_id))
    r.lpush("ingest", part(2, "c"))
    r.lpush("ingest", part(1, "b"))
    meta = wait_until(lambda: (m := r.get(result_key(body_id))) and json.loads(m)["status"] == "SUCCESS"
                    and json.loads(m), message="the body's SUCCESS")
    assert meta["result"] == ["a", "b", "c"]  # header order; the first recorded value of part 0, as Celery
    redeliver(1, "b-late")  # a copy after the chord is done publishes nothing
    wait_until(lambda: (results.loads(r.get(result_key(ids[1])) or b"{}") or {}).get("status") == "SUCCESS",
             message="the late copy's result")
    assert r.lrange(f"{key}:parts", 0, -1)[-1] == b"b-late"
    assert r.llen(key) == 1  # the body ran once


def test_a_chord_step_expands_to_its_header_parts_carrying_the_body():
    from raysys.queue import chord as chords

    s = canvas.signature
    header = {"task": "celery.group", "args": [], "kwargs": {"tasks": [
        s("tests.add", [1], task_id="h0"),
        {"task": "celery.chain", "args": [], "kwargs": {"tasks": [s("tests.add", [2], task_id="h1a"),
                                                                  s("tests.mul", [3], task_id="h1b")]},
         "options": {}, "immutable": False}]}, "options": {"task_id": "gid"}, "immutable": False}
    step = {"task": "celery.chord", "args": [], "kwargs": {"header": header, "body": s("tests.tsum", task_id="b")},
            "options": {"task_id": "gid"}, "immutable": False}
    after = [s("tests.add", [100], task_id="next")]
    out = chords.expand(step, after)
    assert [(x["task"], group, index) for x, _, group, index in out] == [("tests.add", "gid", 0), ("tests.add", "gid", 1)]
    first, (second, second_chain) = out[0][0], out[1][:2]
    body = first["options"]["chord"]
    assert body["options"]["task_id"] == "b" and body["chord_size"] == 2 and body["options"]["chain"] == after
    assert "chord" not in second["options"]  # a chain member: its last step feeds the chord
    assert second_chain[0]["task"] == "tests.mul" and second_chain[0]["options"]["chord"] == body
    assert second_chain[0]["options"]["group_index"] == 1
    with pytest.raises(ValueError, match="header"):
        chords.expand({**step, "kwargs": {"header": [42], "body": s("tests.tsum")}})


def test_a_revoked_part_fails_the_body(celery_app, r):
    gid, body_id, part_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    celery_app.control.revoke(part_id)
    wait_until(lambda: r.zscore("raysys:revoked", part_id) is not None, message="the bridge heard the revoke")
    body = canvas.signature("tests.tsum", task_id=body_id)
    r.set(f"celery-taskset-meta-{gid}.s", 2)
    r.lpush("ingest", messages.encode_celery("tests.add", [1, 1], task_id=part_id, queue="ingest", group=gid,
                                             group_index=0, chord=body))
    meta = wait_until(lambda: (m := r.get(result_key(body_id))) and json.loads(m), message="the body's result")
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "ChordError"
    assert "TaskRevokedError" in meta["result"]["exc_message"][0]
    assert json.loads(r.get(result_key(part_id)))["status"] == "REVOKED"
