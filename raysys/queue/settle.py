"""The settle stage: a job and its outcome -> the Redis operations of its transition, as a :class:`Plan`.

Pure: nothing here touches Redis, Ray or the bridge's state (the clock and the jitter come in as
arguments), so retries, backoff, outage retries, dead letters, callbacks, chains and groups are tested on
their own (``tests/test_queue_settle.py``). The bridge applies each plan onto the batch it sends in one
script call (:func:`apply` onto :class:`raysys.queue.redis.Ops`), counts its transition once (metrics and
stats alike), logs it, and frees its slot once the batch is written.

Transitions (``Plan.transition``):

- ``succeeded``: SUCCESS (SETEX + PUBLISH, Celery's format), link callbacks and the next chain step published
  (``celery.group``/``celery.chain``/``celery.chord`` signatures expanded, :mod:`raysys.queue.chord`). A chord
  header part's success was counted in Redis before its plan is made (the bridge's ``finish``): its plan only
  fails the body when the body could not be published.
- ``retried``: RETRY state and the message again in the delayed set, ``retries + 1``, due after the task's
  countdown or exponential backoff with jitter (``retry_backoff * 2**retries``, capped, half to all of it).
- ``outage_retried``: the same on the infrastructure-outage policy (``OUTAGE_*``), not spending the task's
  retries; once those are spent the outage is an ordinary retryable failure.
- ``failed``: FAILURE, errbacks published, a ``<queue>.dead`` entry; a chord header part fails its body
  (``ChordError``, only where no job has the body's id).
- ``revoked`` (``revoked``, ``expired`` or ``terminated``; a chord part fails its body), ``refused`` (a message
  that can never run; a chord part fails its body),
  ``delayed`` (an ``eta`` in the future), ``duplicates`` (acked without running).

Every plan of a claimed message ends with its ack, so the transition and the ack are one atomic write. The
one exception: a SUCCESS its light runner published already (``Outcome.published``, nothing depending on
it) is not written again; the plan acks it (a crash between the two re-delivers a job whose SUCCESS is
stored, which is acked without running).
A plan also names the task lifecycle hook its transition calls (``Plan.hook``: success, retry, failure; only
when the task has one, :mod:`raysys.tasks.hooks`); the bridge queues it when it commits the plan.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from raysys.config import Settings
from raysys.errors import Refused
from raysys.queue import canvas, chord, messages, results
from raysys.queue.job import Job, Kind, Outcome
from raysys.queue.messages import Message
from raysys.queue.redis import Ops, dead_entry
from raysys.tasks import hooks

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
    hook: tuple = ()                   # (hooks.emit's arguments, its keywords): the task hook to call, if any

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
        return revoked(msg, job.spec.name, job.inflight, job.slot, "terminated", env, fail_chord=not job.chord_recorded)
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
        if job.chord_error is not None:  # this part completed its chord, whose body could not be published
            chord.fail_body(plan, msg, None, ttl, env.callback_targets, reason=job.chord_error)
        if store and not outcome.published:
            plan.steps.append(("result", (msg.id, results.success_json(
                msg.id, outcome.value_json, children=results.children_of(plan.children), parent_id=msg.parent_id,
                extended=extended), ttl)))
        plan.transition, plan.counts, plan.note = "succeeded", ("succeeded",), "succeeded"
        if hooks.wanted(job.spec):  # on_success(retval, task_id, args, kwargs)
            plan.hook = ((job.spec, hooks.SUCCESS, msg.id, msg.args, msg.kwargs),
                         {"retval": results.loads(outcome.value_json)})
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
        _hook(plan, job, hooks.RETRY, meta, tb)
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
        _hook(plan, job, hooks.RETRY, meta, tb)
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
    if msg.chord is not None:  # a header part failed for good: its body gets ChordError
        chord.fail_body(plan, msg, meta, ttl, env.callback_targets)
    plan.transition, plan.counts, plan.level = "failed", ("failed", "dead_lettered"), logging.WARNING
    plan.note = f"failed: {reason}"
    _hook(plan, job, hooks.FAILURE, meta, tb)
    return plan.ack(job.inflight, msg.raw, job.slot)


def _retry(plan: Plan, job: Job, due: float, again: str, meta: dict, tb: str, store: bool, extended: dict | None,
           env: Env) -> None:
    plan.steps.append(("delay", (env.delayed_key, due, job.source, again)))
    if store:
        plan.steps.append(("result", (job.id, results.failure_json(
            job.id, meta, tb, status=results.RETRY, parent_id=job.msg.parent_id, extended=extended),
            env.settings.result_expires)))
    plan.delayed = True


def _hook(plan: Plan, job: Job, event: str, meta: dict, tb: str) -> None:
    """``on_retry``/``on_failure(exc, task_id, args, kwargs, einfo)`` for the plan, if the task has a hook."""
    if hooks.wanted(job.spec):
        plan.hook = ((job.spec, event, job.id, job.msg.args, job.msg.kwargs),
                     {"exc": results.exception_from_meta(meta), "traceback": tb})


def revoked(msg: Message, task: str, inflight: str, slot: tuple[str, str], reason: str, env: Env, *,
            fail_chord: bool = True) -> Plan:
    """REVOKED (``expired``, ``revoked`` or ``terminated``, as a Celery worker writes it) and the ack; a chord
    header part's body gets ChordError (unless ``fail_chord`` is False: the part's success was counted)."""
    plan = Plan("revoked", msg.queue, task, ("revoked",), note=f"revoked ({reason})")
    ttl = env.settings.result_expires
    if not msg.ignore_result:
        plan.steps.append(("result", (msg.id, results.revoked_json(msg.id, reason, extended=env.extended(msg)), ttl)))
    if msg.chord is not None and fail_chord:  # a revoked part's body never gets all its parts
        chord.fail_body(plan, msg, results.exception_meta(results.TaskRevokedError(reason)), ttl,
                        env.callback_targets)
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
        chord.fail_body_id(plan, other, getattr(exc, "chord_body", None),
                           f"chord part {task_id or '?'} ({task or '?'}) was refused: {reason}", queue, ttl,
                           env.callback_targets)
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
        for s, c, group, index in chord.expand(sig, chain):  # celery.chord: its header parts, carrying the body
            list_name, raw, task_id = canvas.next_message(s, parent, prepend=prepend, chain=c,
                                                          default_queue=chord.queue_for(s["task"], parent.queue),
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
        chord.fail_chords(plan, sig, reason, env.settings.result_expires)  # no client waits forever on a chord
        plan.steps.append(("dead", (parent.queue, dead_entry(reason, parent.queue, results.dumps(sig),
                                                            task_id=(sig.get("options") or {}).get("task_id"),
                                                            task=sig.get("task"), consumer=env.consumer))))
    return ids


def _short(message: Any) -> str:
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(m) for m in message)
    text = str(message)
    return text if len(text) <= 300 else text[:297] + "..."
