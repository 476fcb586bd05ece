"""Operator views and actions on the queues in Redis (no Ray needed): depths, scheduled jobs, dead letters.

Used by ``raysys inspect queues|scheduled|dead`` and ``raysys dead requeue``.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from raysys.config import Settings
from raysys.constants import (
    CONSUMER_QUEUES_KEY,
    CONSUMERS_KEY,
    DEAD_SUFFIX,
    DELAYED_KEY,
    INFLIGHT_PREFIX,
    PRIORITY_SEP,
    PRIORITY_STEPS,
)
from raysys.errors import NotFound
from raysys.queue import keys, messages
from raysys.queue.scripts import MOVE_ONE


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=10)


def queue_report(settings: Settings, client: redis.Redis | None = None) -> list[dict]:
    """Per queue: waiting messages per priority step, delayed, in flight (per consumer), dead letters."""
    r = client or connect(settings)
    p = settings.key_prefix
    queues = list(settings.queues)
    consumers = {k.decode(): float(v) for k, v in r.hgetall(p + CONSUMERS_KEY).items()}
    lists_of = {k.decode(): json.loads(v) for k, v in r.hgetall(p + CONSUMER_QUEUES_KEY).items()}
    for lists in lists_of.values():
        for name in lists:
            q = name.split(PRIORITY_SEP)[0]
            if q not in queues:
                queues.append(q)
    delayed: dict[str, int] = {}
    for member in r.zrange(p + DELAYED_KEY, 0, -1):
        target = member.split(b"\x00", 1)[0].decode(errors="replace").split(PRIORITY_SEP)[0]
        delayed[target] = delayed.get(target, 0) + 1
    out = []
    for q in queues:
        # every priority list a bridge consumes; kombu's default steps always shown, other levels when used
        sizes = {step: r.llen(keys.step_list(q, step)) for step in keys.CONSUMED_LEVELS}
        waiting = {str(step): n for step, n in sizes.items() if n or step in PRIORITY_STEPS}
        in_flight = {}
        for consumer, lists in lists_of.items():
            n = sum(r.llen(f"{p}{INFLIGHT_PREFIX}{consumer}:{name}") for name in lists
                    if name == q or name.startswith(q + PRIORITY_SEP))
            if n:
                in_flight[consumer] = n
        out.append({"queue": q, "waiting": sum(waiting.values()), "by_priority": waiting,
                    "delayed": delayed.get(q, 0), "in_flight": in_flight,
                    "dead": r.llen(f"{q}{DEAD_SUFFIX}")})
    out.append({"consumers": {c: round(hb, 3) for c, hb in consumers.items()}})
    return out


def scheduled(settings: Settings, limit: int = 100, client: redis.Redis | None = None) -> list[dict]:
    """Jobs waiting in the delayed set (eta, countdown, retry backoff), soonest first."""
    r = client or connect(settings)
    out = []
    for member, score in r.zrange(settings.key_prefix + DELAYED_KEY, 0, limit - 1, withscores=True):
        target, _, raw = member.partition(b"\x00")
        list_name = target.decode(errors="replace")
        entry: dict[str, Any] = {"list": list_name, "queue": list_name.split(PRIORITY_SEP)[0],
                                 "due": messages.to_iso(score)}
        try:
            msg = messages.decode(raw, entry["queue"])
            entry.update(id=msg.id, task=msg.task, retries=msg.retries, args=msg.args, kwargs=msg.kwargs)
        except Exception as exc:  # noqa: BLE001 - show what can be shown
            entry.update(error=str(exc))
        out.append(entry)
    return out


def dead_letters(settings: Settings, queue: str, limit: int = 100, client: redis.Redis | None = None) -> list[dict]:
    """The newest ``limit`` dead letters of ``queue`` (the message text is left out; see ``requeue_dead``)."""
    r = client or connect(settings)
    out = []
    for raw in r.lrange(f"{queue}{DEAD_SUFFIX}", 0, limit - 1):
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = {"reason": "unreadable dead-letter entry", "message": raw.decode(errors="replace")}
        entry = {k: v for k, v in entry.items() if k != "message"}
        out.append(entry)
    return out


def requeue_dead(settings: Settings, queue: str, ids: list[str] | None = None, *, all_entries: bool = False,
                 client: redis.Redis | None = None) -> list[str]:
    """Put dead letters of ``queue`` back on the list they came from, retries reset and eta cleared.

    Returns the ids (or ``"-"`` for id-less entries) requeued. Raises :class:`NotFound` when an asked-for
    id has no dead letter.
    """
    if not ids and not all_entries:
        raise ValueError("name the ids to requeue or ask for all")
    r = client or connect(settings)
    script = r.register_script(MOVE_ONE)
    dead_key = f"{queue}{DEAD_SUFFIX}"
    wanted = set(ids or ())
    done: list[str] = []
    for raw in r.lrange(dead_key, 0, -1):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not all_entries and entry.get("id") not in wanted:
            continue
        message = entry.get("message", "")
        target = entry.get("list") or queue
        if not isinstance(target, str) or target.split(PRIORITY_SEP)[0] != queue:
            target = queue  # an entry names the queue's own lists only: never another key
        try:
            msg = messages.decode(message, queue)
            message = messages.reencode(msg, retries=0, clear_eta=True)
        except Exception:  # noqa: BLE001 - refused messages go back as they were (fixed producers, new tasks)
            pass
        if script(keys=[dead_key, target], args=[raw, message, "producer"]):
            done.append(entry.get("id") or "-")
    missing = wanted - set(done)
    if missing:
        raise NotFound(f"no dead letter with id {sorted(missing)[0]!r} in {dead_key}")
    return done
