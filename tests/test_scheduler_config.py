"""Schedule definitions: the seed defaults, the schedule file (TOML/JSON/YAML), one-sentence errors, slots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from raysys import cli
from raysys.config import ConfigError, Settings
from raysys.scheduler.schedules import load_config, parse_duration
from raysys.scheduler.slots import next_slot, previous_slot, slot_label, slots_between


def _settings(tmp_path, **kw) -> Settings:
    return Settings.from_env({}, data_dir=str(tmp_path / "data"), broker_url="redis://127.0.0.1:1/0", **kw)


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_the_seed_services_beat():
    config = load_config(Settings.from_env({}, data_dir="/tmp/raysys-test-none"))
    rows = {s.name: (s.task, s.cron, s.timezone, s.queue, s.per_tenant) for s in config.schedules}
    assert rows == {
        "aggregate_daily_metrics": ("workers.tasks.aggregate_daily_metrics", "0 0 * * *", "UTC", "analytics", False),
        "generate_daily_report": ("workers.tasks.generate_daily_report", "30 0 * * *", "UTC", "reports", True),
        "cleanup_expired_sessions": ("workers.tasks.cleanup_expired_sessions", "0 1 * * *", "UTC", "reports", False),
        "audit_models": ("workers.tasks.audit_models", "0 2 * * *", "UTC", "reports", False),
    }
    assert all(s.enabled and s.catchup == "all" and s.grace == 3600 for s in config.schedules)
    assert config.lease_seconds == 30 and config.tick_seconds == 1


TOML = """
[scheduler]
lease_seconds = "45s"
tick_seconds = 2

[schedules.aggregate_daily_metrics]
cron = "15 0 * * *"

[schedules.audit_models]
enabled = false

[schedules.hourly_ping]
cron = "0 * * * *"
task = "raysys.ping"
args = ["{slot}"]
queue = "ingest"
timezone = "Europe/London"
grace = "10m"
catchup = "latest"
expires = "2h"
"""


def test_toml_file_overrides_defaults_and_adds_schedules(tmp_path):
    settings = _settings(tmp_path, schedule_file=_write(tmp_path, "beat.toml", TOML), timezone="Asia/Dubai")
    config = load_config(settings)
    assert (config.lease_seconds, config.tick_seconds) == (45, 2)
    agg = config.get("aggregate_daily_metrics")
    assert agg.cron == "15 0 * * *" and agg.task == "workers.tasks.aggregate_daily_metrics" and agg.timezone == "UTC"
    assert not config.get("audit_models").enabled and "audit_models" not in {s.name for s in config.enabled}
    ping = config.get("hourly_ping")
    assert (ping.task, ping.queue, ping.timezone, ping.grace, ping.catchup, ping.expires, ping.args) == (
        "raysys.ping", "ingest", "Europe/London", 600, "latest", 7200, ("{slot}",))


def test_json_and_yaml_files_say_the_same(tmp_path):
    data = {"schedules": {"p": {"cron": "*/5 * * * *", "task": "raysys.ping", "kwargs": {"value": 1}}}}
    j = load_config(_settings(tmp_path, schedule_file=_write(tmp_path, "b.json", json.dumps(data))))
    y = load_config(_settings(tmp_path, schedule_file=_write(tmp_path, "b.yaml", """
schedules:
  - name: p
    cron: "*/5 * * * *"
    task: raysys.ping
    kwargs: {value: 1}
""")))
    assert j.get("p") == y.get("p")
    assert j.get("p").queue == "ingest"  # raysys.ping runs anywhere: the first configured queue
    assert j.get("p").timezone == "UTC"  # CELERY_TIMEZONE's default


def test_env_variable_names_the_file(tmp_path):
    path = _write(tmp_path, "b.json", json.dumps({"schedules": {"audit_models": {"cron": "0 3 * * *"}}}))
    settings = Settings.from_env({"RAYSYS_SCHEDULE_FILE": path, "CELERY_BROKER_URL": "redis://x:1/0"})
    assert load_config(settings).get("audit_models").cron == "0 3 * * *"


@pytest.mark.parametrize(("text", "fragment"), [
    ('[schedules.x]\ncron = "61 * * * *"\ntask = "raysys.ping"', "schedule 'x' option 'cron' is not a valid cron"),
    ('[schedules.x]\ncron = "0 0 * * *"\ntask = "raysys.ping"\ntimezone = "Mars/Base"',
     "must be an IANA time zone"),
    ('[schedules.x]\ncron = "0 0 * * *"\ntask = "raysys.ping"\ncolour = "red"', "unknown option 'colour'"),
    ('[schedules.x]\ncron = "0 0 * * *"', "schedule 'x' must set 'task'"),
    ('[schedules.x]\ncron = "0 0 * * *"\ntask = "raysys.ping"\ncatchup = "some"', "must be one of all, latest, none"),
    ('[schedules.x]\ncron = "0 0 * * *"\ntask = "workers.tasks.nope"', "names task 'workers.tasks.nope'"),
    ('[schedules.x]\ncron = "0 0 * * *"\ntask = "raysys.ping"\ngrace = "soon"', "must be a duration"),
    ('[schedules.x]\ncron = "0 0 * * *"\ntask = "raysys.ping"\nenabled = "yes"', "must be true or false"),
    ('[scheduler]\nlease_seconds = 2\ntick_seconds = 1', "must be at least three ticks"),
    ('[schedules.x\ncron = 1', "is not valid TOML"),
    ('[other]\na = 1', "unknown section 'other'"),
])
def test_invalid_schedules_fail_at_start_with_one_sentence(tmp_path, text, fragment):
    settings = _settings(tmp_path, schedule_file=_write(tmp_path, "bad.toml", text))
    with pytest.raises(ConfigError) as err:
        load_config(settings)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and message.endswith(".")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"RAYSYS_SCHEDULE_FILE \(.*nope.toml\) does not exist\."):
        load_config(_settings(tmp_path, schedule_file=str(tmp_path / "nope.toml")))


def test_cli_prints_the_sentence_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYSYS_SCHEDULE_FILE", _write(tmp_path, "bad.toml", '[schedules.x]\ncron = "bad"\ntask = "raysys.ping"'))
    monkeypatch.setenv("RAYSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    assert cli.main(["schedule", "list"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: schedule 'x' option 'cron' is not a valid cron expression: 'bad'." in err


def test_durations():
    assert [parse_duration(v, "x") for v in (90, "30s", "15m", "2h", "1d", "250ms", "1.5h")] == [
        90, 30, 900, 7200, 86400, 0.25, 5400]


def test_slots_skip_nonexistent_and_run_repeated_times_once():
    london, ny = ZoneInfo("Europe/London"), ZoneInfo("America/New_York")

    def labels(cron, zone, a, b):
        return [slot_label(s) for s in slots_between(cron, zone, a.timestamp(), b.timestamp())]

    assert labels("30 1 * * *", london, datetime(2025, 3, 29, tzinfo=UTC), datetime(2025, 3, 31, 12, tzinfo=UTC)) == [
        "2025-03-29T01:30:00+00:00", "2025-03-31T01:30:00+01:00"]
    assert labels("30 1 * * *", ny, datetime(2025, 11, 1, 12, tzinfo=UTC), datetime(2025, 11, 3, tzinfo=UTC)) == [
        "2025-11-02T01:30:00-04:00"]
    # asked during the second 01:10 (after the first 01:30 has passed): the next is tomorrow's
    second_pass = datetime(2025, 10, 26, 1, 10, tzinfo=UTC).timestamp()
    assert slot_label(next_slot("30 1 * * *", london, second_pass)) == "2025-10-27T01:30:00+00:00"
    assert slot_label(previous_slot("30 1 * * *", london, second_pass)) == "2025-10-26T01:30:00+01:00"
