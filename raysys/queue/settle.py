"""The settle stage: a job and its outcome -> the Redis operations of its transition, as a :class:`Plan`.

Pure: nothing here touches Redis, Ray or the bridge's state (the clock and the jitter come in as
arguments), so retries, backoff, outage retries, dead letters, callbacks, chains and groups are tested on
their own (``tests/test_queue_settle.py``). The bridge applies each plan onto the batch it sends in one
script call (:func:`apply` onto :class:`raysys.queue.redis.Ops`), counts its transition once (metrics and
stats alike), logs it, and frees its slot once the batch is written.

Transitions (``Plan.transition``):

- ``succeeded``: SUCCESS (SETEX + PUBLISH, Celery's format), link callbacks and the next chain step published
  (``celery.group``/``celery.chain`` signatures expanded; a chord reached that way is refused).
- ``retried``: RETRY state and the message again in the delayed set, ``retries + 1``, due after the task's
  countdown or exponential backoff with jitter (``retry_backoff * 2**retries``, capped, half to all of it).
- ``outage_retried``: the same on the infrastructure-outage policy (``OUTAGE_*``), not spending the task's
  retries; once those are spent the outage is an ordinary retryable failure.
- ``failed``: FAILURE, errbacks published, a ``<queue>.dead`` entry.
- ``revoked`` (``revoked``, ``expired`` or ``terminated``), ``refused`` (a message that can never run),
  ``delayed`` (an ``eta`` in the future), ``duplicates`` (acked without running).

Every plan of a claimed message ends with its ack, so the transition and the ack are one atomic write.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from raysys.config import Settings
from raysys.errors import Refused, UnknownTask
from raysys.queue import canvas, messages, results
from raysys.queue.job import Job, Kind, Outcome
from raysys.queue.messages import Message
from raysys.queue.redis import Ops, dead_entry
from raysys.tasks.registry import lookup

log = logging.getLogger("raysys.queue.bridge")


@dataclass(frozen=True)
class Env:
    """What settling needs to know of the bridge: its settings and names."""

    settings: Settings
    consumer: str                      # the bridge's name (dead letters name it)
    worker_name: str                   # ``name@host``, the ``worker`` of extended results
    delayed_key: str                   # the delayed set (retries, etas)
    callback_targets: frozenset[str]   # queues a callback may name

    def extended(self, msg: Message) -> dict | None:
        return results.extended_fields(msg, self.worker_name) if self.settings.result_extended else None


@dataclass(slots=True)
class Plan:
    """One job's transition: Redis operations in order (``steps``: ``(Ops method, arguments)``, applied by
    :func:`apply`), the metrics counters it increments (``counts``, once each), its log line, and the slot to
    free once written."""

    transition: str
    queue: str
    task: str
    counts: tuple[str, ...] = ()
    steps: list[tuple] = field(default_factory=list)
    slot: tuple[str, str] | None = None
    note: str = ""                     # the job's log line (after "job <id> <task> try=<n> queue=<q>")
    level: int = logging.INFO
    logs: list[tuple[int, str]] | tuple = ()  # other lines (callbacks published or not)
    delayed: bool = False              # something went to the delayed set: wake the due loop
    children: list[str] | tuple = ()   # ids of the jobs it published

    def log(self, level: int, text: str) -> None:
        if not self.logs:
            self.logs = []
        self.logs.append((level, text))

    def ack(self, inflight: str, raw: bytes, slot: tuple[str, str]) -> Plan:
        self.steps.append(("ack", (inflight, raw)))
        self.slot = slot
        return self


def apply(plan: Plan, ops: Ops) -> None:
    """Append ``plan``'s operations to the batch ``ops`` (written by the next flush, in one script call)."""
    for op, args in plan.steps:
        if op == "publish_new":
            task_id, list_name, raw, dead_queue, entry, twice = args
            if not ops.publish_new(task_id, list_name, raw, dead_queue, entry):
                ops.dead(dead_queue, twice)  # another job of the same batch publishes that id
        else:
            getattr(ops, op)(*args)


def backoff(retries: int, base: float, cap: float, rng: random.Random | Any = random) -> float:
    """Exponential backoff with jitter: ``base * 2**retries``, capped, then between half and all of it."""
    delay = min(cap, base * (2 ** min(retries, 60)))
    return delay / 2 + rng.uniform(0, delay / 2)


def settle(job: Job, outcome: Outcome, env: Env, now: float, rng: random.Random | Any = random) -> Plan:
    """The plan of ``job`` that ended with ``outcome`` at ``now`` (unix seconds)."""
    msg, s = job.msg, env.settings
    if job.terminated:  # revoked with terminate=True: its worker was killed on purpose
        return revoked(msg, job.spec.name, job.inflight, job.slot, "terminated", env)
    plan = Plan("", msg.queue, job.spec.name)
    store = not msg.ignore_result  # Celery stores no state at all for ignore_result jobs
    extended = env.extended(msg) if store else None
    ttl = s.result_expires
    kind = outcome.kind
    if kind is Kind.OK:
        if msg.callbacks or msg.chain:
            value = results.loads(outcome.value_json)
            chosen: set[str] = set()
            children: list[str] = []
            for sig in msg.callbacks or ():
                children += _publish_next(sig, msg, (value,), None, env, plan, chosen)
            if msg.chain:
                children += _publish_next(msg.chain[-1], msg, (value,), msg.chain[:-1], env, plan, chosen)
            plan.children = children
        if store:
            plan.steps.append(("result", (msg.id, results.success_json(
                msg.id, outcome.value_json, children=results.children_of(plan.children), parent_id=msg.parent_id,
                extended=extended), ttl)))
        plan.transition, plan.counts, plan.note = "succeeded", ("succeeded",), "succeeded"
        return plan.ack(job.inflight, msg.raw, job.slot)
    meta, tb = outcome.exc_meta or {}, outcome.traceback
    error = f"{meta.get('exc_type')}: {_short(meta.get('exc_message'))}"
    if kind is Kind.OUTAGE and msg.outages < s.outage_max_retries:
        # A service the job needs is down (PostgreSQL restarting, ...): wait it out on the outage policy,
        # without spending the task's own retries, so an outage of minutes dead-letters nothing.
        countdown = backoff(msg.outages, s.outage_retry_backoff, s.outage_retry_backoff_max, rng)
        _retry(plan, job, now + countdown, messages.reencode(msg, outages=msg.outages + 1, eta=now + countdown),
               meta, tb, store, extended, env)
        plan.transition, plan.counts, plan.level = "outage_retried", ("retried",), logging.WARNING
        plan.note = (f"service unavailable, outage retry {msg.outages + 1}/{s.outage_max_retries} in "
                     f"{countdown:.1f} s: {error}")
        return plan.ack(job.inflight, msg.raw, job.slot)
    retry = kind in (Kind.RETRY, Kind.OUTAGE)  # outage retries spent: an ordinary failure, on the task's retries
    max_retries = s.max_retries if job.spec.max_retries is None else job.spec.max_retries
    if kind is Kind.RETRY and outcome.max_retries is not None:
        max_retries = outcome.max_retries
    if retry and msg.retries < max_retries:
        countdown = outcome.countdown if kind is Kind.RETRY else None
        if not (isinstance(countdown, (int, float)) and math.isfinite(countdown)):
            countdown = backoff(msg.retries, job.spec.retry_backoff, s.retry_backoff_max, rng)
        countdown = max(0.0, float(countdown))
        _retry(plan, job, now + countdown, messages.reencode(msg, retries=msg.retries + 1, eta=now + countdown),
               meta, tb, store, extended, env)
        plan.transition, plan.counts, plan.level = "retried", ("retried",), logging.WARNING
        plan.note = f"retry in {countdown:.2f} s: {error}"
        return plan.ack(job.inflight, msg.raw, job.slot)
    if msg.errbacks:
        chosen = set()
        plan.children = [i for sig in msg.errbacks for i in _publish_next(sig, msg, (msg.id,), None, env, plan, chosen)]
    if store:
        plan.steps.append(("result", (msg.id, results.failure_json(
            msg.id, meta, tb, parent_id=msg.parent_id, children=results.children_of(plan.children),
            extended=extended), ttl)))
    reason = f"gave up after {msg.retries} retries: {error}" if retry else error
    plan.steps.append(("dead", (msg.queue, dead_entry(reason, msg.queue, msg.raw, task_id=msg.id, task=msg.task,
                                                     retries=msg.retries, consumer=env.consumer, source=job.source))))
    plan.transition, plan.counts, plan.level = "failed", ("failed", "dead_lettered"), logging.WARNING
    plan.note = f"failed: {reason}"
    return plan.ack(job.inflight, msg.raw, job.slot)


def _retry(plan: Plan, job: Job, due: float, again: str, meta: dict, tb: str, store: bool, extended: dict | None,
           env: Env) -> None:
    plan.steps.append(("delay", (env.delayed_key, due, job.source, again)))
    if store:
        plan.steps.append(("result", (job.id, results.failure_json(
            job.id, meta, tb, status=results.RETRY, parent_id=job.msg.parent_id, extended=extended),
            env.settings.result_expires)))
    plan.delayed = True


def revoked(msg: Message, task: str, inflight: str, slot: tuple[str, str], reason: str, env: Env) -> Plan:
    """REVOKED (``expired``, ``revoked`` or ``terminated``, as a Celery worker writes it) and the ack."""
    plan = Plan("revoked", msg.queue, task, ("revoked",), note=f"revoked ({reason})")
    if not msg.ignore_result:
        plan.steps.append(("result", (msg.id, results.revoked_json(msg.id, reason, extended=env.extended(msg)),
                           env.settings.result_expires)))
    return plan.ack(inflight, msg.raw, slot)


def delayed(msg: Message, source: str, inflight: str, raw: bytes, slot: tuple[str, str], env: Env) -> Plan:
    """A message whose ``eta`` is ahead: parked in the delayed set until then."""
    parked = messages.reencode(msg) if msg.kind == "native" else raw  # a native countdown is relative
    plan = Plan("delayed", msg.queue, msg.task, level=logging.DEBUG, delayed=True,
                note=f"delayed until {messages.to_iso(msg.eta)}")
    plan.steps.append(("delay", (env.delayed_key, msg.eta, source, parked)))
    return plan.ack(inflight, raw, slot)


def dropped(job: Job, why: str, level: int = logging.INFO) -> Plan:
    """Ack a job that must not run (its result is or will be someone else's)."""
    return Plan("duplicates", job.msg.queue, job.spec.name, note=why, level=level).ack(job.inflight, job.msg.raw,
                                                                                       job.slot)


def refused(exc: Refused, queue: str, source: str, inflight: str, raw: bytes, slot: tuple[str, str],
            env: Env) -> Plan:
    """A message that can never run: FAILURE (when an id was readable), a dead letter, the ack."""
    reason = str(exc)
    task_id, task = getattr(exc, "task_id", None), getattr(exc, "task", None)
    ttl = env.settings.result_expires
    plan = Plan("refused", queue, task or "?", ("dead_lettered", "failed"), level=logging.WARNING)
    if task_id:
        error = getattr(exc, "error", None) or getattr(exc, "exc_cls", results.DecodeError)(reason)
        plan.steps.append(("result", (task_id, results.failure_json(task_id, results.exception_meta(error)), ttl)))
    for other in getattr(exc, "also_fail", ()):  # a refused chord part: its body will never run
        # Another job's id, named by this message: failed only if no job has it yet (no result, no owner).
        error = results.ChordError(f"chord part {task_id or '?'} ({task or '?'}) was refused: {reason}")
        plan.steps.append(("result_new", (other, results.failure_json(other, results.exception_meta(error)), ttl)))
    plan.steps.append(("dead", (queue, dead_entry(reason, queue, raw, task_id=task_id, task=task,
                                                 consumer=env.consumer, source=source))))
    plan.note = f"job {task_id or '-'} {task or '-'} refused: {reason} (dead-lettered to {queue}.dead)"
    return plan.ack(inflight, raw, slot)


def _publish_next(sig: dict, parent: Message, prepend: tuple, chain: list | None, env: Env, plan: Plan,
                  chosen: set[str]) -> list[str]:
    """Publish a callback, errback or chain step (groups and chains expanded); returns the new job ids.

    A signature that cannot be published (bad options, an id chosen twice) is logged and dead-lettered;
    the parent's own result stands.
    """
    ids = []
    try:
        for s, c, group, index in canvas.expand(sig, chain):
            if s["task"] == "celery.chord":  # a chain step Celery turned into a chord (group, then a task)
                _refuse_chord(s, parent, env, plan)
                continue
            try:
                spec = lookup(s["task"])
                default = parent.queue if spec.queue == "*" else spec.queue
            except UnknownTask:
                default = parent.queue
            list_name, raw, task_id = canvas.next_message(s, parent, prepend=prepend, chain=c, default_queue=default,
                                                          group=group, group_index=index,
                                                          allowed_queues=env.callback_targets)
            if canvas.chosen_id(s) is None:
                plan.steps.append(("publish", (list_name, raw)))
            else:
                # An id the producer chose: published only if no job has it (no result stored, no owner
                # recorded), checked in the same script, so a callback never takes over another job's id.
                if task_id in chosen:
                    raise ValueError(f"task_id {task_id!r} is used twice by the callbacks of {parent.id}")
                chosen.add(task_id)
                taken = (f"callback {s['task']!r} of {parent.task} {parent.id} not published: task_id "
                         f"{task_id!r} belongs to another job")
                twice = f"cannot publish {s['task']!r} after {parent.task} {parent.id}: task_id {task_id!r} is " \
                        "published twice in one batch"
                plan.steps.append(("publish_new", (task_id, list_name, raw, parent.queue,
                                   dead_entry(taken, parent.queue, raw, task_id=task_id, task=s["task"],
                                              consumer=env.consumer, source=list_name),
                                   dead_entry(twice, parent.queue, raw, task_id=task_id, task=s["task"],
                                              consumer=env.consumer, source=list_name))))
            ids.append(task_id)
            plan.log(logging.INFO, f"job {parent.id} {parent.task} published {s['task']} {task_id}")
    except (ValueError, TypeError) as exc:
        reason = f"cannot publish {sig.get('task')!r} after {parent.task} {parent.id}: {exc}"
        plan.log(logging.ERROR, f"bridge {env.consumer}: {reason}")
        plan.steps.append(("dead", (parent.queue, dead_entry(reason, parent.queue, results.dumps(sig),
                                                            task_id=(sig.get("options") or {}).get("task_id"),
                                                            task=sig.get("task"), consumer=env.consumer))))
    return ids


def _refuse_chord(sig: dict, parent: Message, env: Env, plan: Plan) -> None:
    """A chord reached as a callback or chain step: FAILURE (ChordError) for every id a client may wait
    on, and a dead letter, instead of a chord that would never complete."""
    ids = canvas.chord_ids(sig)
    reason = f"chords are not supported by raysys (a chord after {parent.task} {parent.id})"
    error = results.exception_meta(results.ChordError(reason))
    for task_id in ids:  # ids the message named: failed only where no job has them (no result, no owner)
        plan.steps.append(("result_new", (task_id, results.failure_json(task_id, error), env.settings.result_expires)))
    plan.steps.append(("dead", (parent.queue, dead_entry(reason, parent.queue, results.dumps(sig),
                                                        task_id=ids[0] if ids else None, task="celery.chord",
                                                        consumer=env.consumer))))
    plan.log(logging.WARNING, f"job {parent.id} {parent.task}: {reason}; failed {', '.join(ids)}")


def _short(message: Any) -> str:
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(m) for m in message)
    text = str(message)
    return text if len(text) <= 300 else text[:297] + "..."
