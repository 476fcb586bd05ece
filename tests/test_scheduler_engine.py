"""The scheduling engine on a real Redis, with a controlled clock: one run per slot, catch-up, DST.

Runs are counted by the Celery messages actually on the Redis queue lists (decoded as the bridge
decodes them), not by what the scheduler says it did.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
import redis
from scheduler_fixtures import FakeClock, make_config, queued, queued_ids, run, sched_settings, ts

from raysys.scheduler.engine import Engine
from raysys.scheduler.store import Store

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


class Crash(BaseException):  # stands for the process dying; not caught like an Exception
    """The scheduler process dies here."""


def crash_at(point: str, slot: str):
    def hook(where: str, job) -> None:
        if where == point and job.slot == slot:
            raise Crash(f"{point} {slot}")

    return hook


def slot_ids(ids: list[str], name: str) -> list[str]:
    return [i for i in ids if i.startswith(name + ":")]


# --- two schedulers ----------------------------------------------------------------------------------------


def test_two_schedulers_at_once_run_each_slot_once(redis_url, tmp_path):
    """Two schedulers ticking concurrently in threads over 2 hours of 5-minute slots: 24 messages, 24 ids."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"every5": {"cron": "*/5 * * * *", "task": "raysys.ping", "queue": "analytics",
                                               "args": ["{slot}"]}}, lease=90)
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 30))
    engines = [Engine(settings, config, clock=clock) for _ in range(2)]
    barrier = threading.Barrier(3)
    steps = 2 * 60 * 2  # every 30 s for two hours (a live leader renews well within its lease)

    def worker(engine: Engine) -> None:
        for _ in range(steps):
            barrier.wait()
            engine.tick()
            barrier.wait()

    threads = [threading.Thread(target=worker, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    leaders = Counter()
    for _ in range(steps):
        barrier.wait()
        barrier.wait()
        leaders.update(e.token for e in engines if e.is_leader)
        clock.advance(30)
    for t in threads:
        t.join()
    ids = queued_ids(redis_url, "analytics")
    assert len(ids) == 24 and len(set(ids)) == 24
    assert ids[0] == "every5:2025-01-01T10:05:00+00:00" and ids[-1] == "every5:2025-01-01T12:00:00+00:00"
    assert len(leaders) == 1  # one held the lease throughout; the other stood by
    # the body carries the rendered arguments
    assert [m.args for m in queued(redis_url, "analytics")][0] == ["2025-01-01T10:05:00+00:00"]


def test_split_brain_two_leaders_still_one_message_per_slot(redis_url, tmp_path, monkeypatch):
    """Even when both believe they lead (each its own lease key), SET NX on the slot id admits one."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"every5": {"cron": "*/5 * * * *", "task": "raysys.ping", "queue": "analytics"}})
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 30))
    engines = [Engine(settings, config, clock=clock) for _ in range(2)]
    engines[1].store.keys.lease += ":other"  # a second lease: both lead
    run(engines, clock, ts(2025, 1, 1, 11, 0, 30), 60)
    assert all(e.is_leader for e in engines)
    ids = queued_ids(redis_url, "analytics")
    assert len(ids) == 12 and len(set(ids)) == 12


def test_deposed_leader_cannot_claim_or_send(redis_url, tmp_path):
    """Once a standby takes the lapsed lease, the old leader's claims are refused (fencing)."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics"}},
                         lease=30)
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 10))
    a, b = Engine(settings, config, clock=clock), Engine(settings, config, clock=clock)
    a.tick()
    b.tick()
    assert a.is_leader and not b.is_leader
    clock.advance(55)  # a is silent for longer than the lease (frozen, say); the 10:01 slot is due
    b.tick()
    assert b.is_leader
    from raysys.scheduler.store import Job

    job = Job(job_id="m:late", schedule="m", slot="x", task="raysys.ping", queue="analytics")
    assert a.store.claim(a.token, clock.now, job, 60)[0] == "not-leader"
    a.tick()  # it learns it lost, and sends nothing
    assert not a.is_leader
    assert queued_ids(redis_url, "analytics") == ["m:2025-01-01T10:01:00+00:00"]  # b's, once


def test_leader_frozen_between_its_lease_check_and_its_send_pushes_nothing(redis_url, tmp_path):
    """The send is fenced in the same script as the lease check: a leader that stalls past its lease right
    before pushing (its last check passed) has its push refused, and the new leader sends the slot once."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics"}},
                         lease=30)
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 10))
    standby = Engine(settings, config, clock=clock)
    frozen = []

    def freeze(point: str, job) -> None:
        if point == "sending" and not frozen:
            frozen.append(job.job_id)
            clock.advance(55)  # stalled past the lease, after the lease check...
            standby.tick()     # ...while the standby took over and sent the slot

    leader = Engine(settings, config, clock=clock, fault=freeze)
    leader.tick()
    clock.advance(55)  # the 10:01 slot is due
    leader.tick()
    assert frozen == ["m:2025-01-01T10:01:00+00:00"] and standby.is_leader and not leader.is_leader
    ids = queued_ids(redis_url, "analytics")
    assert sorted(ids) == ["m:2025-01-01T10:01:00+00:00", "m:2025-01-01T10:02:00+00:00"]  # each once


def test_clean_stop_hands_over_at_once_without_gaps(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics"}})
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 10))
    a, b = Engine(settings, config, clock=clock), Engine(settings, config, clock=clock)
    run([a, b], clock, ts(2025, 1, 1, 10, 5, 10), 20)
    a.close()
    run([b], clock, ts(2025, 1, 1, 10, 10, 10), 20)
    assert b.is_leader
    ids = queued_ids(redis_url, "analytics")
    assert ids == [f"m:2025-01-01T10:{m:02d}:00+00:00" for m in range(1, 11)]


# --- crashes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["claimed", "sent", "marked"])
def test_crash_between_steps_gives_no_duplicate_and_loses_nothing(redis_url, tmp_path, point):
    """The process dies after claiming (before enqueue), after enqueue (before bookkeeping), or after
    bookkeeping (before the cursor moves); a restarted scheduler sends each slot exactly once."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics"}},
                         lease=30)
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 10))
    first = Engine(settings, config, clock=clock, fault=crash_at(point, "2025-01-01T10:03:00+00:00"))
    with pytest.raises(Crash):
        run([first], clock, ts(2025, 1, 1, 10, 10), 20)
    crashed_at = clock.now
    expected_before = 2 if point == "claimed" else 3
    assert len(queued_ids(redis_url, "analytics")) == expected_before
    # the restarted scheduler (a new process: a new token) waits for the dead one's lease to lapse
    second = Engine(settings, config, clock=clock)
    second.tick()
    assert not second.is_leader
    clock.advance(31)
    report = second.tick()
    assert second.is_leader and clock.now - crashed_at <= 31
    recovered = [e for e in report.events if e["event"] == "recovered"]
    if point == "marked":
        assert recovered == []  # it was finished; nothing to recover
    else:
        assert [e["job_id"] for e in recovered] == ["m:2025-01-01T10:03:00+00:00"]
        assert ("already enqueued" in recovered[0]["detail"]) == (point == "sent")
    run([second], clock, ts(2025, 1, 1, 10, 10, 10), 20)
    ids = queued_ids(redis_url, "analytics")
    assert ids == [f"m:2025-01-01T10:{m:02d}:00+00:00" for m in range(1, 11)]


def test_failed_send_is_retried_by_the_same_scheduler_without_duplicate(redis_url, tmp_path):
    """An error (not a crash) right after enqueue: the next tick finds the message and does not resend."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics"}})
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 10))
    calls = []

    def flaky(point, job):
        if point == "sent" and job.slot.endswith("10:02:00+00:00") and not calls:
            calls.append(job.job_id)
            raise ConnectionError("redis went away after the LPUSH")

    engine = Engine(settings, config, clock=clock, fault=flaky)
    run([engine], clock, ts(2025, 1, 1, 10, 5, 10), 20)
    assert calls == ["m:2025-01-01T10:02:00+00:00"]
    ids = queued_ids(redis_url, "analytics")
    assert ids == [f"m:2025-01-01T10:{m:02d}:00+00:00" for m in range(1, 6)]
    state = Store.from_url(redis_url).read_state("m")
    assert "ConnectionError" in state["last_error"] and state["runs"] == "5"


def test_claim_left_unsent_while_the_message_sits_in_flight_is_not_resent(redis_url, tmp_path):
    """A bridge already moved the message to its in-flight list: recovery finds it there."""
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics"}})
    clock = FakeClock(ts(2025, 1, 1, 10, 0, 10))
    first = Engine(settings, config, clock=clock, fault=crash_at("sent", "2025-01-01T10:01:00+00:00"))
    with pytest.raises(Crash):
        run([first], clock, ts(2025, 1, 1, 10, 3), 20)
    r = redis.Redis.from_url(redis_url)
    r.hset("raysys:consumers", "c1", clock.now)
    inflight = "raysys:inflight:c1:analytics"  # the bridge's layout: <prefix><consumer>:<list>
    assert r.lmove("analytics", inflight, "RIGHT", "LEFT")  # as the bridge's BLMOVE would
    clock.advance(60)
    second = Engine(settings, config, clock=clock)
    report = second.tick()
    (rec,) = [e for e in report.events if e["event"] == "recovered"]
    assert inflight in rec["detail"]
    assert queued_ids(redis_url, "analytics") == ["m:2025-01-01T10:02:00+00:00"]  # 10:01 stays in flight only


# --- downtime and catch-up ---------------------------------------------------------------------------------


def _daily_config(settings, **agg):
    return make_config(settings, {
        "aggregate_daily_metrics": {"enabled": True, **agg},
        "generate_daily_report": {"enabled": True, "tenants": ["t1", "t2"]},
        "cleanup_expired_sessions": {"enabled": True},
    }, defaults=True)


def test_downtime_across_midnight_runs_the_missed_slot_once_within_grace(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = _daily_config(settings)
    clock = FakeClock(ts(2025, 1, 1, 23, 0))
    before = Engine(settings, config, clock=clock)
    run([before], clock, ts(2025, 1, 1, 23, 55), 300)  # then the scheduler is down (no clean stop)
    clock.now = ts(2025, 1, 2, 0, 40)
    after = Engine(settings, config, clock=clock)
    report = after.tick()
    fired = [e["job_id"] for e in report.events if e["event"] == "fired"]
    assert fired == ["aggregate_daily_metrics:2025-01-02T00:00:00+00:00",
                     "generate_daily_report:2025-01-02T00:30:00+00:00:t1",
                     "generate_daily_report:2025-01-02T00:30:00+00:00:t2"]
    run([after], clock, ts(2025, 1, 2, 3, 0), 300)
    analytics = queued(redis_url, "analytics")
    assert [m.id for m in analytics] == ["aggregate_daily_metrics:2025-01-02T00:00:00+00:00"]
    assert analytics[0].task == "workers.tasks.aggregate_daily_metrics"
    assert analytics[0].kwargs == {"date": "2025-01-01"}
    reports = queued(redis_url, "reports")
    assert Counter(m.task for m in reports) == {"workers.tasks.generate_daily_report": 2,
                                                "workers.tasks.cleanup_expired_sessions": 1,
                                                "workers.tasks.audit_models": 1}
    assert sorted((m.kwargs["tenant_id"], m.kwargs["date"]) for m in reports if "tenant_id" in m.kwargs) == [
        ("t1", "2025-01-01"), ("t2", "2025-01-01")]


def test_downtime_beyond_grace_skips_and_logs_the_slot(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = _daily_config(settings)  # grace 1 h by default
    clock = FakeClock(ts(2025, 1, 1, 23, 0))
    run([Engine(settings, config, clock=clock)], clock, ts(2025, 1, 1, 23, 55), 300)
    clock.now = ts(2025, 1, 2, 1, 31)  # midnight is 91 min ago, the 00:30 reports 61 min
    after = Engine(settings, config, clock=clock)
    report = after.tick()
    skipped = {(e["schedule"], e["slot"]) for e in report.events if e["event"] == "skipped"}
    assert skipped == {("aggregate_daily_metrics", "2025-01-02T00:00:00+00:00"),
                       ("generate_daily_report", "2025-01-02T00:30:00+00:00")}
    run([after], clock, ts(2025, 1, 3, 0, 5), 600)  # the next midnight runs normally
    assert queued_ids(redis_url, "analytics") == ["aggregate_daily_metrics:2025-01-03T00:00:00+00:00"]
    store = Store.from_url(redis_url)
    state = store.read_state("aggregate_daily_metrics")
    assert state["skips"] == "1" and "beyond grace" in state["last_skip"] and state["runs"] == "1"
    logged = [b for _, b in store.events() if b["event"] == "skipped"]
    assert {b["schedule"] for b in logged} == {"aggregate_daily_metrics", "generate_daily_report"}
    # cleanup at 01:00 was 31 min late, within grace: it ran, once
    assert [m.id for m in queued(redis_url, "reports") if m.task.endswith("cleanup_expired_sessions")] == [
        "cleanup_expired_sessions:2025-01-02T01:00:00+00:00"]


@pytest.mark.parametrize(("policy", "expected"), [
    ("all", ["02", "03", "04"]),   # 5 h down, grace 3 h: the three slots within grace, each once
    ("latest", ["04"]),
    ("none", []),
])
def test_catchup_policy(redis_url, tmp_path, policy, expected):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"h": {"cron": "0 * * * *", "task": "raysys.ping", "queue": "analytics",
                                          "grace": "3h", "catchup": policy}})
    clock = FakeClock(ts(2025, 1, 1, 0, 30))
    run([Engine(settings, config, clock=clock)], clock, ts(2025, 1, 1, 0, 50), 600)
    clock.now = ts(2025, 1, 1, 4, 30)  # down from 00:50 to 04:30: 01..04 missed, 01 beyond grace
    after = Engine(settings, config, clock=clock)
    after.tick()
    ids = queued_ids(redis_url, "analytics")
    assert ids == [f"h:2025-01-01T{h}:00:00+00:00" for h in expected]
    clock.now = ts(2025, 1, 1, 5, 0, 1)  # and on time again afterwards
    after.tick()
    assert queued_ids(redis_url, "analytics")[-1] == "h:2025-01-01T05:00:00+00:00"
    state = Store.from_url(redis_url).read_state("h")
    assert int(state["skips"]) == 4 - len(expected)


def test_long_outage_of_a_frequent_schedule_is_skipped_in_bounded_work(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"s": {"cron": "* * * * *", "task": "raysys.ping", "queue": "analytics",
                                          "grace": "2m"}})
    clock = FakeClock(ts(2025, 1, 1, 0, 0, 30))
    engine = Engine(settings, config, clock=clock)
    engine.tick()
    clock.now = ts(2025, 1, 8, 0, 0, 30)  # a week of minutes missed
    engine.tick()
    assert queued_ids(redis_url, "analytics") == ["s:2025-01-07T23:59:00+00:00", "s:2025-01-08T00:00:00+00:00"]
    assert int(Store.from_url(redis_url).read_state("s")["skips"]) >= 2000


def test_first_start_runs_no_history(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = _daily_config(settings)
    clock = FakeClock(ts(2025, 1, 2, 0, 10))  # ten minutes after midnight, never run before
    Engine(settings, config, clock=clock).tick()
    assert queued_ids(redis_url, "analytics") == []


# --- time zones and DST -------------------------------------------------------------------------------------


def _dst_run(redis_url, tmp_path, tz, cron, start, end, step=600):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"d": {"cron": cron, "timezone": tz, "task": "raysys.ping",
                                          "queue": "analytics", "args": ["{slot}"]}})
    clock = FakeClock(start)
    run([Engine(settings, config, clock=clock)], clock, end, step)
    return queued_ids(redis_url, "analytics")


def test_london_spring_forward_skips_the_missing_time(redis_url, tmp_path):
    # 2025-03-30: 01:00 GMT jumps to 02:00 BST; 01:30 does not exist that day
    ids = _dst_run(redis_url, tmp_path, "Europe/London", "30 1 * * *", ts(2025, 3, 28, 12), ts(2025, 3, 31, 12))
    assert ids == ["d:2025-03-29T01:30:00+00:00", "d:2025-03-31T01:30:00+01:00"]


def test_london_fall_back_runs_the_repeated_time_once(redis_url, tmp_path):
    # 2025-10-26: 02:00 BST goes back to 01:00 GMT; 01:30 happens at 00:30 and 01:30 UTC
    ids = _dst_run(redis_url, tmp_path, "Europe/London", "30 1 * * *", ts(2025, 10, 25, 12), ts(2025, 10, 27, 12),
                   step=300)
    assert ids == ["d:2025-10-26T01:30:00+01:00", "d:2025-10-27T01:30:00+00:00"]


def test_london_hourly_on_both_transition_days(redis_url, tmp_path):
    spring = _dst_run(redis_url, tmp_path, "Europe/London", "15 * * * *",
                      ts(2025, 3, 30, tz=LONDON) - 1, ts(2025, 3, 31, tz=LONDON) - 1, step=900)
    assert len(spring) == 23 and not any("T01:15" in i for i in spring)
    redis.Redis.from_url(redis_url).flushall()
    autumn = _dst_run(redis_url, tmp_path, "Europe/London", "15 * * * *",
                      ts(2025, 10, 26, tz=LONDON) - 1, ts(2025, 10, 27, tz=LONDON) - 1, step=900)
    assert len(autumn) == 24 and sum("T01:15" in i for i in autumn) == 1


def test_new_york_spring_forward_skips_the_missing_time(redis_url, tmp_path):
    # 2025-03-09: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist
    ids = _dst_run(redis_url, tmp_path, "America/New_York", "30 2 * * *", ts(2025, 3, 8), ts(2025, 3, 11))
    assert ids == ["d:2025-03-08T02:30:00-05:00", "d:2025-03-10T02:30:00-04:00"]


def test_new_york_fall_back_runs_the_repeated_time_once(redis_url, tmp_path):
    # 2025-11-02: 02:00 EDT goes back to 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"d": {"cron": "30 1 * * *", "timezone": "America/New_York",
                                          "task": "raysys.ping", "queue": "analytics"}})
    clock = FakeClock(ts(2025, 11, 1, 12))
    engine = Engine(settings, config, clock=clock)
    run([engine], clock, ts(2025, 11, 2, 5, 31), 60)
    assert queued_ids(redis_url, "analytics") == ["d:2025-11-02T01:30:00-04:00"]  # the first 01:30, on time
    run([engine], clock, ts(2025, 11, 3, 12), 60)  # through the second 01:30 (06:30 UTC) and the next day
    assert queued_ids(redis_url, "analytics") == ["d:2025-11-02T01:30:00-04:00", "d:2025-11-03T01:30:00-05:00"]


def test_schedule_time_zone_defaults_to_celery_timezone(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path, timezone="Asia/Dubai")
    config = make_config(settings, {"d": {"cron": "0 0 * * *", "task": "raysys.ping", "queue": "analytics"}})
    assert config.get("d").timezone == "Asia/Dubai"
    assert config.get("aggregate_daily_metrics").timezone == "UTC"  # the seed's beat says midnight UTC
    clock = FakeClock(ts(2025, 1, 1, 19, 0))
    run([Engine(settings, config, clock=clock)], clock, ts(2025, 1, 1, 21, 0), 600)
    assert queued_ids(redis_url, "analytics") == ["d:2025-01-02T00:00:00+04:00"]  # 20:00 UTC


# --- tenants, manual runs, status ------------------------------------------------------------------------------


def test_per_tenant_reports_list_tenants_from_postgres_at_fire_time(redis_url, tmp_path, pg_url):
    import asyncio

    from raysys.storage.postgres import Database

    async def add(*tenants):
        db = await Database.open(pg_url)
        try:
            for t in tenants:
                await db.upsert_tenant(t)
        finally:
            await db.close()

    asyncio.run(add("acme"))
    settings = sched_settings(redis_url, tmp_path, postgres_url=pg_url)
    config = make_config(settings, {"generate_daily_report": {"enabled": True}}, defaults=True)
    clock = FakeClock(ts(2025, 1, 1, 12))
    engine = Engine(settings, config, clock=clock)
    engine.tick()
    asyncio.run(add("globex"))  # added after start: still gets its report
    run([engine], clock, ts(2025, 1, 2, 0, 40), 600)
    msgs = [m for m in queued(redis_url, "reports") if m.task == "workers.tasks.generate_daily_report"]
    assert [(m.id, m.kwargs) for m in msgs] == [
        ("generate_daily_report:2025-01-02T00:30:00+00:00:acme", {"tenant_id": "acme", "date": "2025-01-01"}),
        ("generate_daily_report:2025-01-02T00:30:00+00:00:globex", {"tenant_id": "globex", "date": "2025-01-01"}),
    ]


def test_run_now_enqueues_outside_the_slot_rule(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "0 0 1 1 *", "task": "raysys.ping", "queue": "analytics",
                                          "args": ["{slot_date}"]}})
    clock = FakeClock(ts(2025, 6, 1, 12))
    engine = Engine(settings, config, clock=clock)
    jobs = engine.run_now("m") + engine.run_now("m")
    msgs = queued(redis_url, "analytics")
    assert [m.id for m in msgs] == [j.job_id for j in jobs] and len(set(m.id for m in msgs)) == 2
    assert all(m.id.startswith("m:manual-20250601T120000Z-") and m.args == ["2025-06-01"] for m in msgs)
    assert Store.from_url(redis_url).read_state("m")["manual_runs"] == "2"
    with pytest.raises(KeyError, match="no schedule named 'nope'"):
        engine.run_now("nope")


def test_describe_shows_next_and_last_run(redis_url, tmp_path):
    from raysys.scheduler.engine import describe

    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"m": {"cron": "*/10 * * * *", "task": "raysys.ping", "queue": "analytics"}})
    clock = FakeClock(ts(2025, 1, 1, 9, 55))
    engine = Engine(settings, config, clock=clock)
    run([engine], clock, ts(2025, 1, 1, 10, 12), 60)
    rows = {r["name"]: r for r in describe(config, engine.store, clock.now)}
    m = rows["m"]
    assert m["next_run"] == "2025-01-01T10:20:00+00:00" and m["last_slot"] == "2025-01-01T10:10:00+00:00"
    assert m["runs"] == 2 and m["last_job_id"] == "m:2025-01-01T10:10:00+00:00"
    assert rows["aggregate_daily_metrics"]["next_run"] is None  # disabled here


def test_find_job_looks_everywhere_a_message_can_be(redis_url):
    """Recovery's evidence check: queue, priority list, delayed set, in-flight, dead letters, result."""
    from raysys.queue import keys, messages
    from raysys.scheduler.store import Job

    store = Store.from_url(redis_url)
    r = redis.Redis.from_url(redis_url)

    def job(n: int) -> Job:
        return Job(job_id=f"x:2025-01-01T00:0{n}:00+00:00", schedule="x", slot="s", task="raysys.ping",
                   queue="analytics")

    def raw(j: Job) -> str:
        return messages.encode_celery(j.task, [], {}, task_id=j.job_id, queue=j.queue)

    r.lpush("analytics", raw(job(1)))
    r.lpush(keys.list_for("analytics", 9), raw(job(2)))
    r.zadd("raysys:delayed", {f"analytics\x00{raw(job(3))}": 1.0})
    r.hset("raysys:consumers", "w9", 1.0)
    r.lpush("raysys:inflight:w9:analytics", raw(job(4)))
    r.lpush("analytics.dead", json.dumps({"reason": "boom", "id": job(5).job_id, "message": raw(job(5))}))
    r.set("celery-task-meta-" + job(6).job_id, json.dumps({"status": "SUCCESS", "task_id": job(6).job_id}))
    found = {n: store.find_job(job(n)) for n in range(1, 8)}
    assert found == {1: "analytics", 2: keys.list_for("analytics", 9), 3: "raysys:delayed",
                     4: "raysys:inflight:w9:analytics", 5: "analytics.dead",
                     6: "celery-task-meta-" + job(6).job_id, 7: None}
    # an id that merely starts like another one is not taken for it
    assert store.find_job(Job(job_id="x:2025-01-01T00:0", schedule="x", slot="s", task="t", queue="analytics")) is None


def test_expires_counts_from_the_slot_not_from_the_late_send(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"d": {"cron": "0 0 * * *", "task": "raysys.ping", "queue": "analytics",
                                          "expires": "2h"}})
    clock = FakeClock(ts(2025, 1, 1, 23, 0))
    run([Engine(settings, config, clock=clock)], clock, ts(2025, 1, 1, 23, 10), 600)
    clock.now = ts(2025, 1, 2, 0, 40)
    Engine(settings, config, clock=clock).tick()
    (msg,) = queued(redis_url, "analytics")
    assert msg.expires == pytest.approx(ts(2025, 1, 2, 2, 0))


def test_a_failing_tenant_lookup_is_retried_within_grace_and_loses_nothing(redis_url, tmp_path):
    settings = sched_settings(redis_url, tmp_path)
    config = make_config(settings, {"generate_daily_report": {"enabled": True}}, defaults=True)
    down = [True]

    def tenants():
        if down[0]:
            raise ConnectionError("postgres is restarting")
        return ["t1"]

    clock = FakeClock(ts(2025, 1, 2, 0, 20))
    engine = Engine(settings, config, clock=clock, tenants=tenants)
    run([engine], clock, ts(2025, 1, 2, 0, 50), 5)  # 20 min of failures, ticked every 5 s
    assert queued_ids(redis_url, "reports") == []
    errors = [b for _, b in engine.store.events(count=10_000) if b["event"] == "error"]
    assert 100 <= len(errors) * 10 <= 20 * 60 + 10  # retried every 10 s, not every tick
    down[0] = False
    run([engine], clock, ts(2025, 1, 2, 1, 0), 5)
    assert slot_ids(queued_ids(redis_url, "reports"), "generate_daily_report") == [
        "generate_daily_report:2025-01-02T00:30:00+00:00:t1"]
