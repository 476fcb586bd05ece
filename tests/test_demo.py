"""The README's main job, `raysys demo`, from the real CLI on its own embedded stack (free ports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fresh_home import fresh_home_env

from raysys.stack import free_port, pids_with_arg, ray_temp_dir, tcp_open


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_the_whole_story_on_a_fresh_home_and_down_leaves_nothing(tmp_path):
    # A new user's machine: an empty HOME (no Ray token, data directory, caches or ~/.config) and no
    # service URL or Ray token in the environment; the data directory is the default one under HOME.
    env = fresh_home_env(tmp_path, SERVE_PORT=str(free_port()))
    data = Path(env["HOME"]) / ".local" / "share" / "raysys"
    proc = subprocess.run([sys.executable, "-m", "raysys.cli", "demo", "--calls", "30", "--down"], env=env,
                          capture_output=True, text=True, timeout=840)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    # Each step of the story printed its result.
    assert '"document_id": "policy_cards"' in out and "-> [" in out, out[-6000:]  # ingested, then found
    # Analytics of the recording: transcribed from its own audio (no platform turns), a known intent, the
    # derived transcript printed next to the reference words.
    assert '"num_speakers": 2' in out and "transcribed: True, turn source: asr" in out
    intent = next(line.rsplit("intent:", 1)[1].strip() for line in out.splitlines() if "turn source:" in line)
    assert intent not in ("", "unknown", "None")
    heard = " ".join(line.split("heard:", 1)[1] for line in out.splitlines() if "heard:" in line).split()
    assert {"money", "bank", "imprisonment"} <= set(heard)
    assert "/v1/transcribe -> 200" in out
    assert "stored 'Sure, the card is [CARD] and my mobile is [PHONE].'" in out  # PII redacted (issue 17)
    assert "aggregate_daily_metrics" in out and '"total_calls"' in out
    assert "scorecard of the busiest of" in out and "= talk" in out and "top intents:" in out  # one agent's day
    assert "/v1/diarize -> 200" in out
    assert "Ray dashboard:  http://127.0.0.1:" in out
    report = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("report:"))
    html = open(report).read()
    assert "<img" in html and "demo" in html and '<table class="agents">' in html
    assert "Token authentication is enabled" not in proc.stderr and "Traceback" not in proc.stderr
    # --down stopped everything the stack started: nothing listens on its ports, no process is left.
    state = json.loads((data / "stack.json").read_text())
    assert state["pids"] == {}
    for port in (env["RAYSYS_REDIS_PORT"], env["RAYSYS_RAY_PORT"], env["RAYSYS_DASHBOARD_PORT"], env["SERVE_PORT"]):
        assert not tcp_open(f"127.0.0.1:{port}"), f"port {port} still open"
    assert not pids_with_arg(str(ray_temp_dir(str(data))))
