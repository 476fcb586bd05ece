"""raysys' own producer side (no Celery): the Python client, the native envelope and the CLI."""

from __future__ import annotations

import json
import time
import uuid

import pytest


def test_readme_snippet_with_only_the_import_changed(bridges, env, monkeypatch):
    from raysys.queue import client as client_module

    monkeypatch.setattr(client_module, "tasks", client_module._Tasks())  # a fresh client from this env
    from raysys.queue.client import tasks

    result = tasks.ping.delay(value="pong")
    assert result.get() == "pong"
    add = tasks.add.apply_async((2, 3), countdown=0.2)
    assert add.get(timeout=30) == 5 and add.state == "SUCCESS" and add.ready()


def test_client_failures_chains_and_progress(bridges, qsettings, r):
    from raysys.queue.client import Client

    with Client(qsettings) as client:
        with pytest.raises(ValueError, match="bad input: z"):
            client.send_task("tests.boom", ["z"]).get(timeout=30)
        chained = client.chain(client.tasks.add.s(1, 2), client.tasks.add.s(10), client.tasks.mul.s(2)).apply_async()
        assert chained.get(timeout=30) == 26
        linked = client.send_task("tests.add", [1, 1], link=client.tasks.mul.s(5))
        assert linked.get(timeout=30) == 2
        task_id = str(uuid.uuid4())
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"celery-task-meta-{task_id}")
        assert client.send_task("tests.progress", [3], task_id=task_id).get(timeout=30) == 3
        seen = []
        deadline = time.monotonic() + 5
        while not (seen and seen[-1]["status"] == "SUCCESS") and time.monotonic() < deadline:
            if (m := pubsub.get_message(timeout=0.1)) is not None:
                seen.append(json.loads(m["data"]))
        progress = [m["result"]["progress"] for m in seen if m["status"] == "PROGRESS"]
        assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
        assert seen[-1]["status"] == "SUCCESS"


def test_native_envelope(bridges, qsettings, r):
    from raysys.queue.client import Client

    r.lpush("analytics", json.dumps({"task": "mul", "id": "native-1", "args": [6], "kwargs": {"y": 7}}))
    r.lpush("analytics", json.dumps({"task": "tests.add", "id": "native-2", "args": [1], "countdown": 0.3}))
    with Client(qsettings) as client:
        assert client.AsyncResult("native-1").get(timeout=30) == 42
        assert client.AsyncResult("native-2").get(timeout=30) == 1


def test_cli_inspect_bridges(bridges, env, capsys):
    from raysys.cli import main

    assert main(["inspect", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert any(s["queues"] == ["ingest", "analytics", "reports", "celery"] for s in stats)  # + Celery's default
    assert main(["inspect", "active", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)
    assert main(["inspect", "scheduled", "--json"]) == 0
