"""Secrets stay secret: the embedded Redis has a password, and no credential from any configured URL or
token reaches the output of the CLI, the settings' repr or the logs of a whole run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from raysys.config import Settings, redact_text, redact_url
from raysys.stack import free_port, ray_temp_dir, start_redis, terminate

SECRETS = {
    "redis": "redisPw-7f3a9c", "postgres": "pgPw-5d1e88", "rag": "ragPw-0b4c2d", "smtp": "smtpPw-91aa7e",
    "llm_url": "llmPw-3c5f0a", "llm_key": "sk-llmKey-6e2b71", "hf": "hf_tokenValue-8d4c1f",
}


def test_redaction_hides_url_passwords_and_secret_fields():
    url = f"redis://:{SECRETS['redis']}@127.0.0.1:6379/0"
    assert redact_url(url) == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("chdb:///var/lib/raysys/clickhouse") == "chdb:///var/lib/raysys/clickhouse"
    assert SECRETS["postgres"] not in redact_url(f"postgresql://u@h/db?password={SECRETS['postgres']}")
    assert redact_text(f"cannot reach {url} ({SECRETS['redis']})", url).count("***") == 2
    settings = Settings.from_env({"CELERY_BROKER_URL": url, "HF_TOKEN": SECRETS["hf"],
                                  "SUMMARY_LLM_API_KEY": SECRETS["llm_key"]})
    assert not [s for s in SECRETS.values() if s in repr(settings)]
    assert settings.broker_url == url  # the value itself is intact for the code that connects


def test_a_bad_url_in_the_environment_is_refused_without_echoing_its_password():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_"))}
    env["CELERY_BROKER_URL"] = f"http://user:{SECRETS['redis']}@example"
    proc = subprocess.run([sys.executable, "-m", "raysys.cli", "status"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "CELERY_BROKER_URL" in proc.stderr
    assert SECRETS["redis"] not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_embedded_redis_needs_its_generated_password(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "REDIS_", "POSTGRES", "CLICKHOUSE", "RAY_ADDRESS", "RAYSYS_"))}
    data = tmp_path / "data"
    env.update(RAYSYS_DATA_DIR=str(data), RAYSYS_REDIS_PORT=str(free_port()), RAYSYS_RAY_PORT=str(free_port()),
               RAYSYS_DASHBOARD_PORT=str(free_port()))
    # The stack's Redis alone: PostgreSQL and Ray configured elsewhere (not reachable, not needed here).
    env.update(POSTGRES_URL="postgresql://u@127.0.0.1:1/db", RAY_ADDRESS="127.0.0.1:1")
    up = subprocess.run([sys.executable, "-m", "raysys.cli", "up"], env=env, capture_output=True, text=True,
                        timeout=120)
    state = json.loads((data / "stack.json").read_text())
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        password_file = data / "redis" / "password"
        password = password_file.read_text().strip()
        assert password_file.stat().st_mode & 0o777 == 0o600 and len(password) >= 32
        assert (data / "stack.json").stat().st_mode & 0o777 == 0o600
        assert password not in up.stdout + up.stderr
        url = state["urls"]["redis"]
        anonymous = redis.Redis(host="127.0.0.1", port=int(env["RAYSYS_REDIS_PORT"]), socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        assert redis.Redis.from_url(url, socket_timeout=5).ping()
        assert password not in Path(f"/proc/{state['pids']['redis']}/cmdline").read_text()
    finally:
        subprocess.run([sys.executable, "-m", "raysys.cli", "down"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_no_secret_in_the_output_or_the_logs_of_a_run_with_credentials_in_every_url(tmp_path, pg_server):
    redis_pid, redis_url = start_redis(tmp_path / "redis", free_port(), password=SECRETS["redis"])
    # PostgreSQL accepts local socket connections without a password; the URL carries one anyway.
    pg_url = pg_server.replace("postgresql://postgres:@", f"postgresql://postgres:{SECRETS['postgres']}@", 1)
    assert SECRETS["postgres"] in pg_url
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "REDIS_", "POSTGRES", "CLICKHOUSE", "RAY_ADDRESS", "RAYSYS_"))}
    env.update(
        RAYSYS_DATA_DIR=str(data), RAYSYS_RAY_PORT=str(free_port()), RAYSYS_DASHBOARD_PORT=str(free_port()),
        CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url, POSTGRES_URL=pg_url,
        RAG_SERVICE_URL=f"http://rag:{SECRETS['rag']}@127.0.0.1:9/",
        SMTP_URL=f"smtp://mail:{SECRETS['smtp']}@127.0.0.1:9",
        SUMMARY_LLM_URL=f"http://llm:{SECRETS['llm_url']}@127.0.0.1:9/v1",
        SUMMARY_LLM_API_KEY=SECRETS["llm_key"], HF_TOKEN=SECRETS["hf"],
    )

    def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raysys.cli", "-v", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)

    outputs = []
    try:
        for args in (("up",), ("status", "--json"), ("status",), ("submit", "raysys.ping", "--args", '["hello"]', "--queue", "reports"),
                     ("worker", "--burst", "--queues", "reports"), ("inspect", "queues")):
            proc = cli(*args)
            outputs.append((args, proc.returncode, proc.stdout, proc.stderr))
        assert all(rc == 0 for _, rc, _, _ in outputs), [(a, rc, out[-1500:], err[-1500:])
                                                         for a, rc, out, err in outputs if rc]
        status = json.loads(outputs[1][2])
        assert status["healthy"] is True
        assert {s["name"]: s["url"] for s in status["services"]}["redis"] == redact_url(redis_url)
    finally:
        down = cli("down")
        outputs.append((("down",), down.returncode, down.stdout, down.stderr))
        terminate([redis_pid])
    leaks = [(args, secret) for args, _, out, err in outputs for secret in SECRETS.values() if secret in out + err]
    # Every log file of the run: the data directory's and the Ray session's (GCS, raylet, workers, jobs).
    logs = [p for root in (data, ray_temp_dir(str(data))) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and p.suffix in (".log", ".out", ".err", ".txt")]
    assert any(p.suffix == ".out" and "worker" in p.name for p in logs)  # the workers' logs were read
    for path in logs:
        text = path.read_text(errors="replace")
        leaks += [(str(path), secret) for secret in SECRETS.values() if secret in text]
    assert not leaks, leaks
