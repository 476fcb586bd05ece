"""The settle stage against a real Redis, without Ray: job + outcome -> plan -> batch -> Redis state.

Also the pieces around it that need no cluster: retry backoff, time limits, and the bridge's metrics
counting each transition once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
import uuid
from types import SimpleNamespace

import pytest
import redis

from raysys.constants import DEAD_SUFFIX
from raysys.queue import canvas, keys, messages, results, settle
from raysys.queue.job import LIGHT, Job, Kind, Outcome
from raysys.queue.metrics import BridgeMetrics
from raysys.queue.redis import Broker, Ops
from raysys.queue.run import RunStage, limits
from raysys.queue.run_worker import Publish, ThreadRunner, Work, publish_early
from raysys.stack import free_port
from raysys.tasks import hooks
from raysys.tasks.registry import load_all, lookup
from tests.queue_fixtures import TASK_MODULES, bridge_settings
from tests.waiting import wait_until

QUEUES = ("ingest", "analytics", "reports")
NOW = 1_800_000_000.0


class Top:
    """Jitter that always picks the top of the range (so a due time is exact)."""

    def uniform(self, low: float, high: float) -> float:
        return high


@pytest.fixture
def qs(redis_url, tmp_path):
    load_all(TASK_MODULES)
    return bridge_settings(redis_url, tmp_path / "data", outage_max_retries=2, outage_retry_backoff=5.0,
                           outage_retry_backoff_max=300.0, max_retries=3, retry_backoff_max=600.0)


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def claimed(r: redis.Redis, qs, task: str, args=(), **options) -> tuple[Job, settle.Env]:
    """A message of ``task`` as the claim stage leaves it: in this consumer's in-flight list, admitted."""
    spec = lookup(task)
    queue = spec.queue
    broker = Broker(qs, "settle-test", QUEUES)
    raw = messages.encode_celery(task, list(args), queue=queue, **options).encode()
    inflight = broker.inflight[queue]
    r.lpush(inflight, raw)
    msg = messages.decode(raw, queue)
    env = settle.Env(qs, "settle-test", "settle-test@host", broker.delayed_key,
                     qs.callback_targets | frozenset(QUEUES))
    return Job(msg, spec, queue, inflight, LIGHT if spec.light else ("heavy", queue)), env


def write(qs, *plans: settle.Plan):
    async def go():
        broker = Broker(qs, "settle-test", QUEUES)
        ops = Ops(qs.key_prefix, qs.dead_letter_max)
        for plan in plans:
            settle.apply(plan, ops)
        try:
            return await broker.apply(ops)
        finally:
            await broker.close()

    return asyncio.run(go())


def stored(r: redis.Redis, task_id: str) -> dict:
    return json.loads(r.get(keys.result_key(task_id)))


def dead(r: redis.Redis, queue: str) -> list[dict]:
    return [json.loads(e) for e in r.lrange(f"{queue}{DEAD_SUFFIX}", 0, -1)]


def delayed(r: redis.Redis, qs) -> list[tuple[str, messages.Message, float]]:
    out = []
    for member, score in r.zrange(f"{qs.key_prefix}raysys:delayed", 0, -1, withscores=True):
        list_name, raw = member.split(b"\x00", 1)
        out.append((list_name.decode(), messages.decode(raw, list_name.decode()), score))
    return out


def test_success_stores_the_value_publishes_callbacks_and_acks_in_one_batch(r, qs):
    job, env = claimed(r, qs, "tests.add", [2, 3], callbacks=[canvas.signature("tests.mul", [10])])
    plan = settle.settle(job, Outcome.ok(0.01, "5"), env, NOW)
    assert (plan.transition, plan.counts, plan.slot) == ("succeeded", ("succeeded",), LIGHT)
    assert r.llen(job.inflight) == 1  # the plan is only a plan until the batch is applied
    write(qs, plan)
    meta = stored(r, job.id)
    assert meta["status"] == "SUCCESS" and meta["result"] == 5
    [child] = plan.children
    assert meta["children"] == [[[child, None], None]]
    [published] = r.lrange("analytics", 0, -1)
    callback = messages.decode(published, "analytics")
    assert (callback.id, callback.task, callback.args, callback.parent_id) == (child, "tests.mul", [5, 10], job.id)
    assert r.llen(job.inflight) == 0


def test_a_failure_retries_with_exponential_backoff_until_max_retries_then_dead_letters(r, qs):
    job, env = claimed(r, qs, "tests.flaky", ["k", 9], retries=2)
    plan = settle.settle(job, Outcome.retry(0.1, ValueError("flaky")), env, NOW, Top())
    assert (plan.transition, plan.counts) == ("retried", ("retried",))
    write(qs, plan)
    [(list_name, again, due)] = delayed(r, qs)
    # retry_backoff 0.1 s doubled per try: 0.1 * 2**2, the top of the jitter range
    assert list_name == "reports" and again.id == job.id and again.retries == 3
    assert math.isclose(due, NOW + 0.4) and math.isclose(again.eta, due)
    assert stored(r, job.id)["status"] == "RETRY"
    assert r.llen(job.inflight) == 0

    r.delete(f"{qs.key_prefix}raysys:delayed")
    job, env = claimed(r, qs, "tests.flaky", ["k", 9], retries=3, errbacks=[canvas.signature("tests.add", [1])])
    plan = settle.settle(job, Outcome.retry(0.1, ValueError("flaky")), env, NOW)
    assert (plan.transition, plan.counts) == ("failed", ("failed", "dead_lettered"))
    write(qs, plan)
    assert delayed(r, qs) == []
    meta = stored(r, job.id)
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "ValueError"
    [entry] = dead(r, "reports")
    assert entry["id"] == job.id and entry["reason"].startswith("gave up after 3 retries: ValueError")
    [errback] = r.lrange("ingest", 0, -1)
    assert messages.decode(errback, "ingest").args == [job.id, 1]


def test_the_task_chooses_its_countdown_and_max_retries(r, qs):
    job, env = claimed(r, qs, "tests.explicit_retry", ["k"], retries=5)
    plan = settle.settle(job, Outcome.retry(0.0, KeyError("x"), countdown=7.5, max_retries=10), env, NOW)
    write(qs, plan)
    [(_, again, due)] = delayed(r, qs)
    assert plan.transition == "retried" and again.retries == 6 and math.isclose(due, NOW + 7.5)
    # A countdown that is no number falls back to the backoff: never an unusable due time.
    job, env = claimed(r, qs, "tests.explicit_retry", ["k"])
    plan = settle.settle(job, Outcome.retry(0.0, KeyError("x"), countdown=math.inf), env, NOW, Top())
    op, (_, due, _, _) = plan.steps[0]
    assert op == "delay" and math.isclose(due, NOW + 1.0)  # retry_backoff 1.0 * 2**0


def test_outages_retry_on_their_own_policy_without_spending_the_tasks_retries(r, qs):
    job, env = claimed(r, qs, "tests.mul", [1, 2], retries=1)
    outage = Outcome(Kind.OUTAGE, 0.2, exc_meta=results.exception_meta(ConnectionError("pg down")))
    plan = settle.settle(job, outage, env, NOW, Top())
    assert (plan.transition, plan.counts) == ("outage_retried", ("retried",))
    write(qs, plan)
    [(_, again, due)] = delayed(r, qs)
    assert (again.retries, again.outages) == (1, 1) and math.isclose(due, NOW + 5.0)
    # Outage retries spent: an ordinary retryable failure, on the task's retries.
    r.delete(f"{qs.key_prefix}raysys:delayed")
    job, env = claimed(r, qs, "tests.mul", [1, 2], retries=3)
    job.msg.outages = 2
    plan = settle.settle(job, outage, env, NOW)
    assert plan.transition == "failed" and plan.note.startswith("failed: gave up after 3 retries")


def test_final_failures_ignore_result_terminated_and_refused(r, qs):
    job, env = claimed(r, qs, "tests.boom", ["no"], ignore_result=True)
    write(qs, settle.settle(job, Outcome.fail(0.0, RuntimeError("no")), env, NOW))
    assert r.get(keys.result_key(job.id)) is None  # Celery stores no state at all
    assert [e["id"] for e in dead(r, "analytics")] == [job.id] and r.llen(job.inflight) == 0

    job, env = claimed(r, qs, "tests.sleep", [60])
    job.terminated = True
    plan = settle.settle(job, Outcome.retry(1.0, results.WorkerLostError("cancelled")), env, NOW)
    write(qs, plan)
    assert plan.transition == "revoked" and stored(r, job.id)["result"]["exc_message"] == ["terminated"]

    raw = b'{"task": "tests.nope", "id": "refused-1"}'
    r.lpush(job.inflight, raw)
    exc = messages.refused("unknown task 'tests.nope'", "refused-1", "tests.nope",
                           error=results.NotRegistered("tests.nope"))
    plan = settle.refused(exc, "analytics", "analytics", job.inflight, raw, ("heavy", "analytics"), env)
    write(qs, plan)
    assert (plan.transition, plan.counts) == ("refused", ("dead_lettered", "failed"))
    assert stored(r, "refused-1")["result"]["exc_type"] == "NotRegistered"
    assert dead(r, "analytics")[0]["id"] == "refused-1" and r.llen(job.inflight) == 0


def test_a_callback_id_chosen_twice_is_dead_lettered_and_the_parent_still_succeeds(r, qs):
    twice = [canvas.signature("tests.add", [1], task_id="cb-1"), canvas.signature("tests.add", [2], task_id="cb-1")]
    job, env = claimed(r, qs, "tests.add", [1, 1], callbacks=twice)
    plan = settle.settle(job, Outcome.ok(0.0, "2"), env, NOW)
    write(qs, plan)
    assert stored(r, job.id)["status"] == "SUCCESS" and list(plan.children) == ["cb-1"]
    assert len(r.lrange("ingest", 0, -1)) == 1
    assert "used twice" in dead(r, "ingest")[0]["reason"]


def test_backoff_doubles_is_capped_and_jittered_between_half_and_all():
    assert settle.backoff(0, 1.0, 100.0, Top()) == 1.0
    assert settle.backoff(3, 1.0, 100.0, Top()) == 8.0
    assert settle.backoff(30, 1.0, 100.0, Top()) == 100.0
    assert settle.backoff(10_000, 1.0, 100.0, Top()) == 100.0  # no overflow for absurd retry counts
    import random

    rng = random.Random(7)
    values = [settle.backoff(4, 1.0, 100.0, rng) for _ in range(200)]
    assert all(8.0 <= v <= 16.0 for v in values) and max(values) - min(values) > 4.0


def test_time_limits_come_from_the_message_capped_else_the_task_else_the_settings(redis_url, tmp_path):
    load_all(TASK_MODULES)
    qs = bridge_settings(redis_url, tmp_path / "data", max_message_time_limit=100.0, task_time_limit=90.0,
                         task_soft_time_limit=60.0)
    spec = lookup("tests.add")

    def job(**options) -> Job:
        return Job(messages.decode(messages.encode_celery("tests.add", [1], **options), "ingest"), spec, "ingest",
                   "x", LIGHT)

    assert limits(job(), qs) == (60.0, 90.0)
    assert limits(job(time_limit=10.0, soft_time_limit=5.0), qs) == (5.0, 10.0)
    assert limits(job(time_limit=10_000.0, soft_time_limit=9_000.0), qs) == (100.0, 100.0)  # capped
    assert limits(job(time_limit=3.0), qs) == (3.0, 3.0)  # soft never past hard


def test_each_transition_is_counted_once_for_the_stats_and_the_ray_counters():
    m = BridgeMetrics("settle-test")
    m.count("received", "ingest", "tests.add")
    m.transition("failed", ("failed", "dead_lettered"), "ingest", "tests.add")
    m.transition("refused", ("dead_lettered", "failed"), "ingest", "?")
    m.note("light_detached")
    assert m.totals == {"received": 1, "failed": 1, "refused": 1, "light_detached": 1}
    assert m.pending == {("received", "ingest", "tests.add"): 1, ("failed", "ingest", "tests.add"): 1,
                         ("dead_lettered", "ingest", "tests.add"): 1, ("dead_lettered", "ingest", "?"): 1,
                         ("failed", "ingest", "?"): 1}


# --- chords and task hooks in the plan ------------------------------------------------------------------------


def chord_part(r, qs, body_id: str, **options) -> tuple[Job, settle.Env]:
    body = canvas.signature("tests.tsum", task_id=body_id)
    return claimed(r, qs, "tests.add", (1, 2), group="g-" + body_id, group_index=0, chord=body, **options)


def test_a_chord_part_that_fails_revoked_or_whose_body_cannot_publish_fails_the_body_in_its_own_batch(r, qs):
    body_id = str(uuid.uuid4())
    job, env = chord_part(r, qs, body_id)
    plan = settle.settle(job, Outcome.fail(0.1, ValueError("boom")), env, NOW)
    ops = [op for op, _ in plan.steps]
    assert ops.index("result_new") < ops.index("ack") and plan.hook == ()  # before the ack; no hook registered
    write(qs, plan)
    meta = stored(r, body_id)
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "ChordError"
    assert f"Dependency {job.id} raised ValueError" in meta["result"]["exc_message"][0]
    # revoked before it ran: the body fails too (TaskRevokedError); after its success was counted: it does not
    body_id = str(uuid.uuid4())
    job, env = chord_part(r, qs, body_id)
    write(qs, settle.revoked(job.msg, job.spec.name, job.inflight, job.slot, "revoked", env))
    assert "TaskRevokedError" in stored(r, body_id)["result"]["exc_message"][0]
    job, env = chord_part(r, qs, str(uuid.uuid4()))
    job.terminated = job.chord_recorded = True
    assert "result_new" not in [op for op, _ in settle.settle(job, Outcome.ok(0.1, "3"), env, NOW).steps]
    # the part completed its chord but the body's options could not be published
    body_id = str(uuid.uuid4())
    job, env = chord_part(r, qs, body_id)
    job.chord_recorded, job.chord_error = True, "Callback error: ValueError('bad countdown')"
    write(qs, settle.settle(job, Outcome.ok(0.1, "3"), env, NOW))
    assert stored(r, job.id)["status"] == "SUCCESS"
    assert "Callback error" in stored(r, body_id)["result"]["exc_message"][0]


def test_a_failed_chord_body_calls_its_errbacks_once_with_its_id(r, qs):
    """Celery's backend (``chord_error_from_stack``) calls the body's ``link_error`` errbacks with the body's
    id: in the batch that writes the body's ChordError, and only then (a second failing part, or a refused
    one, leaves both the FAILURE and the errbacks as the first part wrote them)."""
    body_id = str(uuid.uuid4())
    errbacks = [canvas.signature("tests.record", ["failed"]),
                canvas.signature("tests.mul", [2, 3], immutable=True, queue="analytics"),
                canvas.signature("tests.record", ["nowhere"], queue="not-a-queue")]
    body = canvas.signature("tests.tsum", task_id=body_id, link_error=errbacks)

    def part(index: int) -> Job:
        return claimed(r, qs, "tests.add", (1, 2), group="g-" + body_id, group_index=index, chord=body)

    job, env = part(0)
    first = settle.settle(job, Outcome.fail(0.1, ValueError("boom")), env, NOW)
    assert any("'not-a-queue' is not a configured queue" in text for _, text in first.logs)
    write(qs, first)
    assert stored(r, body_id)["result"]["exc_type"] == "ChordError"
    published = [messages.decode(raw, "ingest") for raw in r.lrange("ingest", 0, -1)]
    assert [(m.task, m.args, m.parent_id, m.root_id) for m in published] == [
        ("tests.record", [body_id, "failed"], body_id, body_id)]
    assert [(m.task, m.args) for m in map(lambda raw: messages.decode(raw, "analytics"),
                                          r.lrange("analytics", 0, -1))] == [("tests.mul", [2, 3])]
    # another part fails for good, in a batch of its own: nothing more is published, the FAILURE stands
    job, env = part(1)
    write(qs, settle.settle(job, Outcome.fail(0.1, KeyError("late")), env, NOW))
    # and a refused part (unknown task) too
    raw = messages.encode_celery("tests.no_such_task", [], queue="ingest", group="g-" + body_id, group_index=2,
                                 chord=body).encode()
    refusal = messages.refused("unknown task", messages.sniff_id(raw), "tests.no_such_task",
                               chord_body=body)
    write(qs, settle.refused(refusal, "ingest", "ingest", "raysys:inflight:settle-test:ingest", raw, LIGHT, env))
    assert r.llen("ingest") == 1 and r.llen("analytics") == 1
    assert "Dependency" in stored(r, body_id)["result"]["exc_message"][0]
    # a body with no result yet, failed by a refused part: its errbacks go out with that FAILURE
    other = str(uuid.uuid4())
    body = canvas.signature("tests.tsum", task_id=other, link_error=errbacks[:1])
    refusal = messages.refused("unknown task", None, "tests.no_such_task", chord_body=body)
    write(qs, settle.refused(refusal, "ingest", "ingest", "raysys:inflight:settle-test:ingest", raw, LIGHT, env))
    assert "was refused" in stored(r, other)["result"]["exc_message"][0]
    assert messages.decode(r.lindex("ingest", 0), "ingest").args == [other, "failed"]


def test_a_chord_chain_step_publishes_its_header_and_a_bad_one_fails_its_body(r, qs):
    body_id = str(uuid.uuid4())
    header = {"task": "celery.group", "args": [], "kwargs": {"tasks": [canvas.signature("tests.add", [1]),
                                                                       canvas.signature("tests.add", [2])]},
              "options": {"task_id": "gid-" + body_id}, "immutable": False}
    step = {"task": "celery.chord", "args": [], "options": {}, "immutable": False,
            "kwargs": {"header": header, "body": canvas.signature("tests.tsum", task_id=body_id)}}
    job, env = claimed(r, qs, "tests.add", (1, 2), chain=[step])
    plan = settle.settle(job, Outcome.ok(0.1, "3"), env, NOW)
    parts = [messages.decode(args[1], "ingest") for op, args in plan.steps if op == "publish"]
    assert [(m.args, m.group, m.group_index, m.chord["options"]["task_id"]) for m in parts] == [
        ([3, 1], "gid-" + body_id, 0, body_id), ([3, 2], "gid-" + body_id, 1, body_id)]
    bad = {**step, "kwargs": {"header": "not a group", "body": step["kwargs"]["body"]}}
    job, env = claimed(r, qs, "tests.add", (1, 2), chain=[bad])
    write(qs, settle.settle(job, Outcome.ok(0.1, "3"), env, NOW))
    assert stored(r, job.id)["status"] == "SUCCESS" and stored(r, body_id)["result"]["exc_type"] == "ChordError"


def test_a_plan_names_the_tasks_hook_once_per_event(r, qs):
    own = hooks.TaskHooks(on_success=print, on_failure=print, on_retry=print)
    job, env = claimed(r, qs, "tests.add", (1, 2))
    job.spec = dataclasses.replace(job.spec, hooks=own)
    plan = settle.settle(job, Outcome.ok(0.1, '{"a": [1]}'), env, NOW)
    assert plan.hook[0][1:3] == (hooks.SUCCESS, job.id) and plan.hook[1] == {"retval": {"a": [1]}}
    plan = settle.settle(job, Outcome.retry(0.1, RuntimeError("again")), env, NOW, Top())
    (_, event, *_), extra = plan.hook
    assert event == hooks.RETRY and isinstance(extra["exc"], RuntimeError) and str(extra["exc"]) == "again"
    plan = settle.settle(job, Outcome.fail(0.1, ValueError("no")), env, NOW)
    assert plan.hook[0][1] == hooks.FAILURE and isinstance(plan.hook[1]["exc"], ValueError)
    job.terminated = True  # a revoked job calls no hook
    assert settle.settle(job, Outcome.ok(0.1, "1"), env, NOW).hook == ()


def publications(sub, deadline: float = 20.0) -> list[str]:
    """The channels ``sub`` received messages on until now: a PING is answered after every earlier
    publication was delivered, so its PONG ends the list."""
    sub.ping()
    got, end = [], time.monotonic() + deadline
    while time.monotonic() < end:
        m = sub.get_message(timeout=1.0)
        if m is None:
            continue
        if m["type"] == "pong":
            return got
        if m["type"] == "message":
            got.append(m["channel"].decode())
    raise AssertionError("no PONG from Redis")


def test_a_light_batch_publishes_its_results_where_it_ran_and_their_plans_only_ack(r, qs):
    """Early publication: the light thread stores and publishes each SUCCESS the bridge marked publishable
    (one script call per batch, before the bridge's batch acks); a result that a callback, chain or chord
    depends on, or none at all (ignore_result), is left to the settle stage's batch; a stored SUCCESS stays."""
    plain, env = claimed(r, qs, "tests.add", [2, 3])
    linked, _ = claimed(r, qs, "tests.add", [1, 1], callbacks=[canvas.signature("tests.mul", [10])])
    ignored, _ = claimed(r, qs, "tests.add", [4, 4], ignore_result=True)
    again, _ = claimed(r, qs, "tests.add", [5, 5])  # a re-run of a job whose SUCCESS is stored
    r.set(keys.result_key(again.id), results.success_json(again.id, "99"))
    jobs = [plain, linked, ignored, again]
    stage = RunStage(SimpleNamespace(env=env, queues=QUEUES, concurrency=1), qs, 0, 8)
    work = [Work(j.spec.name, j.msg.args, j.msg.kwargs, j.id, j.msg.retries, j.msg.queue, None, stage.publish(j))
            for j in jobs]
    assert [w.publish is not None for w in work] == [True, False, False, True]
    sub = r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(*[keys.result_key(j.id) for j in jobs])
    runner = ThreadRunner(qs)
    try:
        outcomes = runner.submit(work).result(timeout=30)
    finally:
        runner.shutdown()
    assert [(o.kind, o.published) for o in outcomes] == [(Kind.OK, True), (Kind.OK, False), (Kind.OK, False),
                                                         (Kind.OK, True)]
    assert publications(sub) == [keys.result_key(plain.id)]
    assert stored(r, plain.id)["status"] == "SUCCESS" and stored(r, plain.id)["result"] == 5
    assert stored(r, again.id)["result"] == 99
    assert r.get(keys.result_key(linked.id)) is None and r.llen(plain.inflight) == 4  # nothing acked yet

    plans = [settle.settle(j, o, env, NOW) for j, o in zip(jobs, outcomes, strict=True)]
    assert [[op for op, _ in p.steps] for p in plans] == [["ack"], ["publish", "result", "ack"], ["ack"], ["ack"]]
    write(qs, *plans)
    assert r.llen(plain.inflight) == 0
    assert stored(r, linked.id)["result"] == 2 and stored(r, plain.id)["result"] == 5
    assert publications(sub) == [keys.result_key(linked.id)]  # each result published once
    sub.close()


def test_early_publication_leaves_the_results_to_the_batch_when_redis_cannot_take_them(qs):
    unreachable = dataclasses.replace(qs, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    work = [Work("tests.add", [1, 2], {}, str(uuid.uuid4()), 0, "analytics", None, Publish(60))]
    [outcome] = publish_early(unreachable, work, [Outcome.ok(0.0, "3")])
    assert outcome.kind is Kind.OK and not outcome.published  # so its plan stores it (see the test above)


def test_a_terminated_light_job_that_swallows_it_and_returns_is_not_published(r, qs):
    """Revoked with terminate while it runs: even if the task catches the exception and returns, its thread
    publishes no SUCCESS (the bridge settles it as REVOKED ``terminated``)."""
    task_id = str(uuid.uuid4())
    runner = ThreadRunner(qs)
    try:
        fut = runner.submit([Work("tests.swallow", [30.0], {}, task_id, 0, "ingest", None, Publish(60))])
        wait_until(lambda: runner.current is not None, message="the job to start")
        assert runner.terminate(0)
        [outcome] = fut.result(timeout=30)
    finally:
        runner.shutdown()
    assert (outcome.kind, outcome.value_json, outcome.published) == (Kind.OK, '"swallowed"', False)
    assert r.get(keys.result_key(task_id)) is None
