"""Settings: every seed variable honoured, bad values refused with one sentence naming the variable."""

from __future__ import annotations

import pytest

from raysys.config import ConfigError, Settings

SEED_ENV = {
    "CELERY_BROKER_URL": "redis://redis:6379/1",
    "CELERY_RESULT_BACKEND": "redis://redis:6379/2",
    "CELERY_TIMEZONE": "Asia/Dubai",
    "WORKER_CONCURRENCY": "4",
    "WORKER_MAX_TASKS_PER_CHILD": "100",
    "TASK_TIME_LIMIT": "3600",
    "TASK_SOFT_TIME_LIMIT": "3300",
    "RAG_SERVICE_URL": "http://rag-service:8080",
    "POSTGRES_URL": "postgresql://voiceai:voiceai@postgres:5432/voiceai",
    "CLICKHOUSE_URL": "http://clickhouse:8123",
}


def test_every_seed_variable_is_honoured():
    s = Settings.from_env(SEED_ENV)
    assert s.broker_url == "redis://redis:6379/1"
    assert s.result_backend == "redis://redis:6379/2"
    assert s.backend_url == "redis://redis:6379/2"
    assert s.timezone == "Asia/Dubai"
    assert s.worker_concurrency == 4
    assert s.worker_max_tasks_per_child == 100
    assert s.task_time_limit == 3600 and s.task_soft_time_limit == 3300
    assert s.rag_service_url == "http://rag-service:8080"
    assert s.postgres_url.endswith("/voiceai")
    assert s.warehouse_dsn == "http://clickhouse:8123"


def test_defaults_use_the_embedded_stack(tmp_path):
    s = Settings.from_env({"RAYSYS_DATA_DIR": str(tmp_path)})
    assert s.broker_url is None and s.postgres_url is None
    assert s.warehouse_dsn == f"chdb://{tmp_path}/clickhouse"
    assert s.timezone == "UTC"
    assert s.queues == ("ingest", "analytics", "reports")
    assert str(tmp_path / "uploads") in s.allowed_roots


def test_round_trips_through_the_environment(tmp_path):
    s = Settings.from_env({**SEED_ENV, "RAYSYS_DATA_DIR": str(tmp_path), "RAYSYS_QUEUES": "ingest,extra"})
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WORKER_CONCURRENCY": "four"}, "WORKER_CONCURRENCY"),
        ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
        ({"WORKER_MAX_TASKS_PER_CHILD": "-3"}, "WORKER_MAX_TASKS_PER_CHILD"),
        ({"TASK_TIME_LIMIT": "soon"}, "TASK_TIME_LIMIT"),
        ({"TASK_TIME_LIMIT": "60", "TASK_SOFT_TIME_LIMIT": "120"}, "TASK_SOFT_TIME_LIMIT"),
        ({"CELERY_TIMEZONE": "Mars/Olympus_Mons"}, "CELERY_TIMEZONE"),
        ({"CELERY_BROKER_URL": "amqp://guest@rabbit//"}, "CELERY_BROKER_URL"),
        ({"CELERY_RESULT_BACKEND": "redis://"}, "CELERY_RESULT_BACKEND"),
        ({"POSTGRES_URL": "mysql://x@y/z"}, "POSTGRES_URL"),
        ({"CLICKHOUSE_URL": "ftp://clickhouse"}, "CLICKHOUSE_URL"),
        ({"RAG_SERVICE_URL": "rag-service:8080"}, "RAG_SERVICE_URL"),
        ({"RAYSYS_QUEUES": " , "}, "RAYSYS_QUEUES"),
        ({"DIARIZATION_BACKEND": "whisper"}, "DIARIZATION_BACKEND"),
        ({"EMOTION_NUM_GPUS": "lots"}, "EMOTION_NUM_GPUS"),
    ],
)
def test_bad_values_fail_with_one_sentence_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    message = str(err.value)
    assert variable in message
    assert message.endswith(".") and "\n" not in message


def test_cli_reports_a_configuration_error_and_exits_2(monkeypatch, capsys):
    from raysys.cli import main

    monkeypatch.setenv("WORKER_CONCURRENCY", "many")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert "WORKER_CONCURRENCY" in err and "configuration error" in err
