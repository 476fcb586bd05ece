"""The `raysys` queue commands with no bridge running yet: submit, inspect, worker --burst."""

from __future__ import annotations

import json


def test_cli_submit_inspect_and_burst_worker(ray_cluster, env, capsys, r):
    """`raysys submit` queues jobs, `inspect` shows them, `worker --burst` drains them and exits."""
    from raysys.cli import main

    assert main(["submit", "tests.add", "--args", "[20, 22]", "--id", "cli-1"]) == 0
    assert main(["submit", "ping", "--kwargs", '{"value": "later"}', "--countdown", "0.5", "--id", "cli-2"]) == 0
    assert main(["submit", "tests.add", "--args", "not json"]) == 2
    assert main(["submit", "no_such_task"]) == 2
    capsys.readouterr()
    assert main(["inspect", "queues", "--json"]) == 0
    queues = {q["queue"]: q for q in json.loads(capsys.readouterr().out) if "queue" in q}
    assert queues["ingest"]["waiting"] == 2 and queues["analytics"]["waiting"] == 0
    assert main(["inspect", "registered", "--json"]) == 0
    assert "tests.add" in {t["name"] for t in json.loads(capsys.readouterr().out)}
    assert main(["worker", "-Q", "ingest", "--concurrency", "1", "--burst"]) == 0
    assert r.llen("ingest") == 0
    capsys.readouterr()
    assert main(["submit", "tests.add", "--args", "[1, 2]", "--id", "cli-1", "--wait", "--timeout", "5"]) == 0
    out = capsys.readouterr().out.split()
    assert out == ["cli-1", "42"]  # cli-1 ran once already (SUCCESS stored): not run again
    assert main(["inspect", "dead", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
