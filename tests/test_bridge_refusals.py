"""Bad input: every refused message gets a FAILURE (when an id is readable), a dead letter, a log line,
and the bridge keeps serving."""

from __future__ import annotations

import base64
import json
import pickle
import uuid

import pytest
from conftest import wire_message
from waiting import wait_until

pytestmark = pytest.mark.usefixtures("bridges")


def celery_message(task: str = "tests.add", args=(1, 2), kwargs=None, task_id: str | None = None) -> dict:
    """A message as a real Celery 5.7 producer wrote it (captured), with our task, id and arguments."""
    env = wire_message("message_ingest.json")
    task_id = task_id or str(uuid.uuid4())
    env["headers"].update(task=task, id=task_id, root_id=task_id)
    env["properties"]["correlation_id"] = task_id
    body = [list(args), kwargs or {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    env["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return env


def pickled(env: dict) -> dict:
    env["content-type"] = "application/x-python-serialize"
    env["body"] = base64.b64encode(pickle.dumps(((1, 2), {}, {}))).decode()
    return env


def bad_base64(env: dict) -> dict:
    env["body"] = "%%% not base64 %%%"
    return env


def bad_body(env: dict) -> dict:
    env["body"] = base64.b64encode(b"[1, 2").decode()
    return env


def oversize(env: dict) -> dict:  # the test bridges refuse messages over 64 KiB
    env["body"] = base64.b64encode(json.dumps([["x" * 100_000], {}, {}]).encode()).decode()
    return env


CASES = {
    # name: (build the raw message from a fresh Celery one, exception the client sees, words in the reason)
    "pickle": (lambda env: json.dumps(pickled(env)), "ContentDisallowed", "content type"),
    "bad-base64": (lambda env: json.dumps(bad_base64(env)), "DecodeError", "base64"),
    "malformed-body": (lambda env: json.dumps(bad_body(env)), "DecodeError", "malformed JSON body"),
    "unknown-task": (lambda env: json.dumps(celery_message("workers.tasks.nope", task_id=env["headers"]["id"])),
                     "NotRegistered", "unknown task"),
    "wrong-arguments": (lambda env: json.dumps(celery_message("tests.add", (1, 2, 3, 4), task_id=env["headers"]["id"])),
                        "TypeError", "wrong arguments"),
    "oversize": (lambda env: json.dumps(oversize(env)), "TooLarge", "exceeds the limit"),
    "native-bad-args": (lambda env: json.dumps({"task": "tests.add", "id": env["headers"]["id"], "args": "1,2"}),
                        "DecodeError", "args must be a list"),
}


def _serving(qsettings) -> None:
    from raysys.queue.client import Client

    with Client(qsettings) as client:
        assert client.send_task("raysys.ping", ["still here"], queue="ingest").get(timeout=30) == "still here"


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_message_fails_dead_letters_logs_and_bridge_keeps_serving(case, r, qsettings, bridges):
    import ray
    from queue_fixtures import actor_log

    from raysys.queue.client import Client

    build, exc_name, reason_words = CASES[case]
    env = celery_message()
    task_id = env["headers"]["id"]
    r.lpush("ingest", build(env))
    with Client(qsettings) as client, pytest.raises(Exception) as err:
        client.AsyncResult(task_id).get(timeout=30)
    assert type(err.value).__name__ == exc_name
    assert client.AsyncResult(task_id).state == "FAILURE"
    entry = json.loads(wait_until(lambda: r.lindex("ingest.dead", 0), message="a dead letter"))
    assert entry["id"] == task_id and reason_words in entry["reason"]
    assert entry["message"]  # the original text, for `raysys dead requeue`
    _serving(qsettings)
    pid = ray.get(bridges[0].pid.remote())
    wait_until(lambda: task_id in actor_log(pid) and "refused" in actor_log(pid), message="the refusal log line")


def test_malformed_json_without_id_is_dead_lettered(r, qsettings, bridges):
    import ray
    from queue_fixtures import actor_log

    r.lpush("analytics", b'{"body": "broken', b"\x80\x81 not even utf-8")
    entries = wait_until(lambda: r.llen("analytics.dead") == 2 and r.lrange("analytics.dead", 0, -1),
                       message="two dead letters")
    reasons = [json.loads(e)["reason"] for e in entries]
    assert all("malformed JSON" in reason for reason in reasons)
    assert not r.keys("celery-task-meta-*")
    _serving(qsettings)
    stats = ray.get(bridges[0].stats.remote())
    assert stats["totals"]["refused"] >= 2
    pid = stats["pid"]
    wait_until(lambda: "malformed JSON" in actor_log(pid), message="the refusal log line")


def test_dead_letters_can_be_requeued(r, qsettings):
    """A job that gave up after its retries is dead-lettered; `raysys dead requeue` runs it again."""
    from raysys.cli import main
    from raysys.queue.client import Client

    key = f"flaky-{uuid.uuid4()}"
    task_id = str(uuid.uuid4())
    # Native envelope, already at its last retry: one more failure dead-letters it.
    r.lpush("reports", json.dumps({"task": "tests.flaky", "id": task_id, "args": [key, 1], "retries": 3}))
    with Client(qsettings) as client:
        with pytest.raises(RuntimeError, match="try 3"):
            client.AsyncResult(task_id).get(timeout=30)
        entry = json.loads(wait_until(lambda: r.lindex("reports.dead", 0), message="a dead letter"))
        assert entry["id"] == task_id and "gave up after 3 retries" in entry["reason"]
        client.AsyncResult(task_id).forget()
        env = {"CELERY_BROKER_URL": qsettings.redis_url}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            assert main(["dead", "requeue", "reports", "nope"]) == 1
            assert main(["dead", "requeue", "reports", task_id]) == 0
        assert client.AsyncResult(task_id).get(timeout=30) == {"ok": True, "retries": 0}
    assert r.llen("reports.dead") == 0
