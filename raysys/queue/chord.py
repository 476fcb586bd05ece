"""Celery chords: a group of header tasks whose results, in order, feed one body task.

Chords are kept in Redis exactly as Celery's Redis result backend keeps them
(``celery/backends/redis.py``: ``on_chord_part_return``, ``set_chord_size``), so a Celery client (which
writes the chord size when it applies a chord) and raysys agree, and a Celery worker sharing the Redis during
a migration sees the same state. Keys, for the header's group id ``<gid>`` (no key prefix: Celery's names):

- ``celery-taskset-meta-<gid>.s``  the chord size (written by the Celery client's ``set_chord_size``, or by
                                   raysys for a chord it starts itself: a chord reached as a chain step).
- ``celery-taskset-meta-<gid>.t``  Celery's size correction (``add_to_chord``); added to the size.
- ``celery-taskset-meta-<gid>.j``  sorted set of the parts' results, JSON ``[1, <id>, "SUCCESS", <value>]``
                                   scored by the part's ``group_index``: the body gets them in header order.
- ``celery-taskset-meta-<gid>.d``  set of ``<id>:<group_index>`` already recorded: a part redelivered after a
                                   crash (its result recorded, its ack lost) is not counted twice.
- ``celery-taskset-meta-<gid>.c``  ``done`` once the body was published (or a Celery worker's dispatch claim):
                                   a late copy of a part publishes nothing.

All expire with the results (``RESULT_EXPIRES``). The bridge records a part that SUCCEEDED (:func:`record_part`,
one script) *before* its ack is written, so a crash in between runs the part again and records it again, as
one member. The part that completes the chord publishes the body with :func:`publish_body` (one script:
publish, mark done, drop the chord's keys), also before its own ack: a crash after it leaves the ``done``
marker, so the body is published once. A part that fails for good (retries spent, refused, revoked) fails the
body at once with Celery's ``ChordError("Dependency <id> raised ...")`` (:func:`fail_body`, in the part's own
atomic batch), and the body's errbacks (``link_error``) are published, each called with the body's id as
Celery's backend does (``chord_error_from_stack``), in the same script and only if that FAILURE was the one
written (a second failing part neither overwrites it nor calls them again); the body is then never published,
even when the other parts succeed. Chords reached as a chain
step or a callback (a ``celery.chord`` signature) are started by :func:`expand`: each header task is published
with the body (its ``chord_size`` set) embedded, as Celery's ``chord`` task does.

Only parts that succeed cost Redis round trips (one; two for the last one); other jobs none.

Limits: fail-fast (the body fails at the first part that fails for good); ``res.get()`` on the chord raises the
failing part's own exception (Celery's client checks the header's results first), ``AsyncResult(body_id).get()``
raises ``ChordError``; a chord in a chord's header is refused.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from typing import Any

from raysys.constants import JOB_TENANT_PREFIX
from raysys.errors import UnknownTask
from raysys.queue import canvas, messages, results
from raysys.queue.keys import result_key
from raysys.tasks.registry import lookup

log = logging.getLogger("raysys.queue.bridge")

GROUP_KEY_PREFIX = "celery-taskset-meta-"  # Celery's ``group_keyprefix``

# Record one successful part. KEYS: .j .t .s .d .c. ARGV: member id ("<id>:<index>"), value, score, ttl,
# size hint ("" if none: the size the message carried, written to .s when the client wrote none).
# Returns {-1} when the chord is done already, {count, total} while incomplete (total -1: size unknown), and
# {count, total, results...} (in header order) once every part is recorded.
RECORD = """
if redis.call('EXISTS', KEYS[5]) == 1 then return {-1} end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
local ttl = tonumber(ARGV[4])
local size = redis.call('GET', KEYS[3])
if not size and ARGV[5] ~= '' then
  size = ARGV[5]
  redis.call('SET', KEYS[3], size)
end
if ttl > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
local count = redis.call('ZCARD', KEYS[1])
if not size then return {count, -1} end
local total = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
if count < total then return {count, total} end
local out = {count, total}
for _, v in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do out[#out + 1] = v end
return out
"""

# Publish the body once. KEYS: .c .j .t .s .d, the body's result key, its owner key (an HTTP job's tenant:
# never take over another job's id), then one list per message. ARGV: ttl, then the messages.
# Returns 1 if published, 0 if done before (or the body's id has a result or an owner).
PUBLISH = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[6]) == 1 or redis.call('EXISTS', KEYS[7]) == 1 then
  return 0
end
for i = 2, #ARGV do redis.call('LPUSH', KEYS[6 + i], ARGV[i]) end
redis.call('SET', KEYS[1], 'done', 'EX', math.max(tonumber(ARGV[1]), 300))
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 1
"""


def group_key(group_id: str, suffix: str) -> str:
    """Celery's key for a chord's state (``.j``, ``.t``, ``.s``, ``.d``, ``.c``)."""
    return f"{GROUP_KEY_PREFIX}{group_id}{suffix}"


def body_id(msg: messages.Message) -> str | None:
    """The id of the body a header part feeds (what the client's ``chord(...)()`` waits on)."""
    ids = messages.chord_body_id(msg.chord)
    return ids[0] if ids else None


def check_part(msg: messages.Message) -> None:
    """Refuse a header part that can never be counted (no group id, no body id): its body fails at once.

    Raises:
        raysys.errors.Refused: with the body's id in ``also_fail``.
    """
    if not msg.group or body_id(msg) is None:
        missing = "group id" if not msg.group else "body task_id"
        raise messages.refused(f"chord part without a {missing}: it cannot be counted", msg.id, msg.task,
                               error=results.ChordError(f"chord part {msg.id} has no {missing}"),
                               chord_body=msg.chord)


async def record_part(redis: Any, msg: messages.Message, value_json: str, ttl: int) -> list | None:
    """Record part ``msg``'s result (``value_json``); the header's results, in order, once all are in.

    Returns None while parts are missing (or the chord is done already). Raises RedisError/OSError (call
    again: recording is idempotent).
    """
    gid = msg.group or ""
    index = msg.group_index
    score = "+inf" if index is None else str(index)
    value = f'[1, {json.dumps(msg.id)}, "SUCCESS", {value_json}]'
    size = (msg.chord or {}).get("chord_size")
    hint = str(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else ""
    keys = [group_key(gid, s) for s in (".j", ".t", ".s", ".d", ".c")]
    out = await redis.eval(RECORD, len(keys), *keys, f"{msg.id}:{score}", value, score, ttl, hint)
    if len(out) < 2 or int(out[1]) < 0 or int(out[0]) < int(out[1]):
        return None
    return [results.loads(v)[3] for v in out[2:]]


def body_messages(msg: messages.Message, values: list, allowed_queues: frozenset[str],
                  queue_of: Any) -> list[tuple[str, str, str]]:
    """The body's messages ``(list, raw, id)`` with the header's results as its first argument (a group or
    chain body expanded as Celery does). ``queue_of(task_name)`` names the queue of a task without one.

    Raises:
        ValueError: the body's options cannot be read or name a queue that is not allowed.
    """
    body = dict(msg.chord or {})
    options = dict(body.get("options") or {})
    chain = options.pop("chain", None)
    options.pop("chord_size", None)
    body["options"] = options
    out = []
    for s, c, group, index in canvas.expand(body, chain if isinstance(chain, list) and chain else None):
        out.append(canvas.next_message(s, msg, prepend=(values,), chain=c, default_queue=queue_of(s["task"]),
                                       group=group, group_index=index, allowed_queues=allowed_queues))
    return out


async def publish_body(redis: Any, msg: messages.Message, out: list[tuple[str, str, str]], ttl: int,
                       key_prefix: str = "") -> bool:
    """Publish the body's messages ``out`` unless the chord is done (or its body's id has a result, or an owner under
    ``key_prefix``: another job's). True if published."""
    gid = msg.group or ""
    keys = [group_key(gid, s) for s in (".c", ".j", ".t", ".s", ".d")]
    keys += [result_key(body_id(msg) or ""), f"{key_prefix}{JOB_TENANT_PREFIX}{body_id(msg)}"]
    keys += [name for name, _, _ in out]
    return bool(await redis.eval(PUBLISH, len(keys), *keys, ttl, *[raw for _, raw, _ in out]))


def fail_body(plan: Any, msg: messages.Message, exc_meta: dict | None, ttl: int, targets: frozenset[str],
              reason: str | None = None) -> str | None:
    """Add to ``plan`` (a :class:`raysys.queue.settle.Plan`: the part's own batch, before its ack) the body's
    FAILURE with Celery's ``ChordError`` (``Dependency <id> raised <exc>``, or ``reason``) and its errbacks
    (:func:`body_errbacks`; ``targets``: the queues they may go to); returns the body's id.

    Only where no job owns the body's id yet (no result, no owner): a body that ran is never overwritten.
    """
    target = body_id(msg)
    if target is None:
        return None
    if reason is None:
        cause = results.exception_from_meta(exc_meta) if exc_meta else None
        reason = f"Dependency {msg.id} raised {cause!r}"
    fail_body_id(plan, target, msg.chord, reason, msg.queue, ttl, targets)
    return target


def fail_body_id(plan: Any, target: str, body: Any, reason: str, queue: str, ttl: int,
                 targets: frozenset[str]) -> None:
    """Add to ``plan`` the FAILURE (``ChordError(reason)``) of the chord body ``target`` (its signature
    ``body`` when known), with its errbacks published only if that FAILURE is written."""
    error = results.exception_meta(results.ChordError(reason))
    then, problems = body_errbacks(body, target, queue, targets)
    for problem in problems:
        plan.log(logging.WARNING, problem)
    plan.steps.append(("result_new", (target, results.failure_json(target, error), ttl, then)))


def queue_for(task: str, fallback: str) -> str:
    """The queue a published signature of ``task`` goes to when it names none: its task's, else ``fallback``
    (the publishing job's queue: for tasks registered with ``queue="*"`` and names unknown here)."""
    try:
        spec = lookup(task)
    except UnknownTask:
        return fallback
    return fallback if spec.queue == "*" else spec.queue


def body_errbacks(body: Any, target: str, queue: str, targets: frozenset[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The messages of the errbacks (``options.link_error``) of the chord body ``target`` that failed, as
    Celery's result backend sends them (``chord_error_from_stack``): each errback called with the body's id
    (before its own arguments unless immutable), the body as its parent and root; groups and chains expanded.

    Returns ``(list, raw)`` pairs, and a line per errback that cannot be published (bad options, a queue
    that is not in ``targets``); ``queue`` (the failing part's) is where an errback of an unknown task goes.
    """
    options = body.get("options") if isinstance(body, dict) and isinstance(body.get("options"), dict) else {}
    errbacks = options.get("link_error") or []
    if isinstance(errbacks, dict):
        errbacks = [errbacks]
    parent = messages.Message(id=target, task=str(body.get("task")) if isinstance(body, dict) else "?",
                              args=[], kwargs={}, queue=queue)
    out: list[tuple[str, str]] = []
    problems: list[str] = []
    for sig in errbacks if isinstance(errbacks, list) else ():
        if not (isinstance(sig, dict) and isinstance(sig.get("task"), str)):
            problems.append(f"chord body {target}: an errback is not a signature: {str(sig)[:200]}")
            continue
        try:
            for s, c, group, index in expand(sig):
                list_name, raw, _ = canvas.next_message(s, parent, prepend=(target,), chain=c,
                                                        default_queue=queue_for(s["task"], queue),
                                                        group=group, group_index=index, allowed_queues=targets)
                out.append((list_name, raw))
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"chord body {target}: errback {sig['task']!r} not published: {exc}")
    return out, problems


def fail_chords(plan: Any, sig: Any, reason: str, ttl: int) -> list[str]:
    """A callback or chain step that could not be published: add to ``plan`` a FAILURE (``ChordError``) for
    the ids a client may wait on in every ``celery.chord`` inside ``sig`` (bodies, header tasks), written only
    where nobody uses them. Returns those ids."""
    failed: list[str] = []
    error = results.exception_meta(results.ChordError(reason))

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("task") == "celery.chord":
            for task_id in canvas.chord_ids(node):
                if task_id not in failed:
                    plan.steps.append(("result_new", (task_id, results.failure_json(task_id, error), ttl)))
                    failed.append(task_id)
        kwargs = node.get("kwargs") if isinstance(node.get("kwargs"), dict) else {}
        walk(kwargs.get("tasks"))
        walk(kwargs.get("body"))

    walk(sig)
    return failed


async def complete_part(redis: Any, msg: messages.Message, value_json: str, ttl: int,
                        allowed_queues: frozenset[str], key_prefix: str = "") -> str | None:
    """Record header part ``msg``'s result and, when it completes the chord, publish the body: what the bridge
    does for a part that succeeded, before the part's own result and ack are written.

    Returns None, or the reason the body fails (``ChordError``: its options cannot be published), which the
    part's settle plan writes. Raises RedisError/OSError (call again: recording and publishing are idempotent).
    """
    parts = await record_part(redis, msg, value_json, ttl)
    if parts is None:
        return None
    try:
        out = body_messages(msg, parts, allowed_queues, lambda name: default_queue(name, msg.queue))
    except (ValueError, TypeError) as exc:
        log.error("job %s %s: cannot publish its chord's body: %s", msg.id, msg.task, exc)
        return f"Callback error: {exc!r}"
    if await publish_body(redis, msg, out, ttl, key_prefix):
        log.info("job %s %s completed chord %s: published %s", msg.id, msg.task, msg.group,
                 ", ".join(task_id for _, _, task_id in out))
    return None


def default_queue(name: str, parent_queue: str) -> str:
    """The queue of a task published without one: its registered queue (the parent's for ``*`` or unknown)."""
    try:
        spec = lookup(name)
    except UnknownTask:
        return parent_queue
    return parent_queue if spec.queue == "*" else spec.queue


def expand(sig: dict, chain: list | None = None) -> list[tuple[dict, list | None, str | None, int | None]]:
    """:func:`raysys.queue.canvas.expand`, plus ``celery.chord`` signatures: their header tasks, each
    carrying the body (with ``chord_size`` and, in ``options.chain``, the chain steps after the chord) in
    ``options.chord``, the header's group id and its index. A header member that is a chain carries the
    body on its last step.
    """
    out = []
    for s, c, group, index in canvas.expand(sig, chain):
        if s.get("task") != "celery.chord":
            out.append((s, c, group, index))
            continue
        out += _chord_header(s, c)
    return out


def _chord_header(sig: dict, chain: list | None) -> list[tuple[dict, list | None, str | None, int | None]]:
    kwargs = sig.get("kwargs") if isinstance(sig.get("kwargs"), dict) else {}
    header, body = kwargs.get("header"), kwargs.get("body")
    if isinstance(header, dict) and header.get("task") == "celery.group":
        gid = canvas.chosen_id(header)
        header = (header.get("kwargs") or {}).get("tasks")
    else:
        gid = None
    if not isinstance(header, list) or not header or not isinstance(body, dict):
        raise ValueError("a celery.chord signature needs a header of tasks and a body")
    for member in (*header, body):
        if not isinstance(member, dict) or not isinstance(member.get("task"), str) or not member["task"]:
            raise ValueError("a celery.chord signature's header and body must be signatures with a task name")
    gid = gid or canvas.chosen_id(sig) or str(uuid.uuid4())
    body = copy.deepcopy(body)
    options = body.setdefault("options", {})
    if canvas.chosen_id(body) is None:
        options["task_id"] = str(uuid.uuid4())
    if chain:
        options["chain"] = chain
    options["group_id"] = gid
    out = []
    members = [m for h in header for m in canvas.expand(h)]
    body["chord_size"] = len(members)
    for index, (s, c, _, _) in enumerate(members):
        if s.get("task") == "celery.chord":
            raise ValueError("a chord in a chord's header is not supported")
        target = c[0] if c else s  # a chain is stored last step first: its last step feeds the chord
        target = copy.deepcopy(target)
        target.setdefault("options", {}).update(chord=body, group_id=gid, group_index=index)
        if c:
            c = [target, *c[1:]]
        else:
            s = target
        out.append((s, c, gid, index))
    return out
