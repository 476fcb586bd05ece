"""Celery's canvas as the bridge meets it: signatures, links, chains and groups, chord ids.

A finished job publishes its callbacks (``link``), errbacks (``link_error``) and the next step of its
chain as new messages (:func:`next_message`); ``celery.group`` and ``celery.chain`` signatures are
expanded first (:func:`expand`; ``celery.chord`` by :func:`raysys.queue.chord.expand`), and
:func:`chord_ids` names every id a client may wait on in a chord that cannot start, so each gets a FAILURE.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from raysys.queue.keys import list_for
from raysys.queue.messages import (
    Message,
    _limit,
    _opt_str,
    _priority,
    _seconds,
    _sig,
    _sig_list,
    _str_id,
    encode_celery,
    to_timestamp,
)


def signature(task: str, args: list | tuple = (), kwargs: dict | None = None, *, immutable: bool = False,
              **options: Any) -> dict:
    """A Celery signature dict (what ``embed.callbacks``/``chain`` hold)."""
    return {"task": task, "args": list(args), "kwargs": dict(kwargs or {}), "options": options,
            "subtask_type": None, "immutable": immutable}


def chosen_id(sig: dict) -> str | None:
    """The ``task_id`` a signature's producer chose for it (``options.task_id``), if any."""
    options = sig.get("options")
    return _str_id(options.get("task_id")) if isinstance(options, dict) else None


def next_message(sig: dict, parent: Message, value: Any = None, *, prepend: tuple = (),
                 chain: list | None = None, default_queue: str, group: str | None = None,
                 group_index: int | None = None, allowed_queues: frozenset[str] | None = None) -> tuple[str, str, str]:
    """Celery's way of publishing a signature after ``parent`` ran: ``(list, raw, task_id)``.

    ``prepend`` (the parent's return value for callbacks and chain steps, its id for errbacks) goes
    before the signature's own args unless the signature is immutable. A queue the signature names
    (``options.queue``) must be one of ``allowed_queues`` (when given); the list is that queue's, or its
    Celery priority list, never another key.

    Raises:
        ValueError: the signature's options cannot be read (a bad countdown, eta, ...) or name a queue
            that is not allowed.
    """
    options = sig.get("options") if isinstance(sig.get("options"), dict) else {}
    args = list(sig.get("args") or [])
    if not sig.get("immutable"):
        args = [*prepend, *args]
    task_id = _str_id(options.get("task_id")) or str(uuid.uuid4())
    named = options.get("queue") if isinstance(options.get("queue"), str) else None
    if named and allowed_queues is not None and named not in allowed_queues:
        raise ValueError(f"queue {named[:100]!r} is not a configured queue (allowed: {', '.join(sorted(allowed_queues))};"
                         " RAYSYS_CALLBACK_QUEUES adds more)")
    queue = named or default_queue
    countdown = _seconds(options.get("countdown"), "countdown")
    eta = to_timestamp(options.get("eta"), "eta") if options.get("eta") else (
        time.time() + countdown if countdown else None)
    expires = options.get("expires")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        expires = time.time() + _seconds(expires, "expires")
    else:
        expires = to_timestamp(expires, "expires")
    priority = _priority(options.get("priority", parent.priority))
    raw = encode_celery(
        sig["task"], args, sig.get("kwargs") or {}, task_id=task_id, queue=queue, eta=eta, expires=expires,
        time_limit=_limit(options.get("time_limit"), "time_limit"),
        soft_time_limit=_limit(options.get("soft_time_limit"), "soft_time_limit"),
        root_id=parent.root_id or parent.id, parent_id=parent.id, priority=priority,
        callbacks=_sig_list(options.get("link"), "link"), errbacks=_sig_list(options.get("link_error"), "link_error"),
        chain=chain, reply_to=options.get("reply_to") if isinstance(options.get("reply_to"), str) else None,
        group=group or _opt_str(options.get("group_id"), "group_id"),
        group_index=group_index if group_index is not None else options.get("group_index"),
        ignore_result=bool(options.get("ignore_result")),
        chord=_sig(options["chord"], "chord") if options.get("chord") else None,  # a chord header part's body
    )
    return list_for(queue, priority), raw, task_id


def chord_ids(sig: dict) -> list[str]:
    """Every job id a client may wait on in a ``celery.chord`` signature: the body's (what ``chord()``
    returns), the header members' and the chord's own."""
    ids: list[str] = []

    def add(s: Any) -> None:
        if isinstance(s, dict):
            task_id = _str_id((s.get("options") or {}).get("task_id")) if isinstance(s.get("options"), dict) else None
            if task_id and task_id not in ids:
                ids.append(task_id)
            for member in (s.get("kwargs") or {}).get("tasks") or () if isinstance(s.get("kwargs"), dict) else ():
                add(member)
        elif isinstance(s, list):
            for member in s:
                add(member)

    kwargs = sig.get("kwargs") if isinstance(sig.get("kwargs"), dict) else {}
    add(kwargs.get("body"))
    add(kwargs.get("header"))
    add(sig)
    return ids


def expand(sig: dict, chain: list | None = None) -> list[tuple[dict, list | None, str | None, int | None]]:
    """The plain signatures to publish for ``sig``: ``(signature, chain, group id, group index)``.

    Celery's canvas primitives arrive as signatures of its built-in tasks: ``celery.group`` (publish every
    member, sharing the group id) and ``celery.chain`` (publish the first step with the rest as its
    chain, stored last step first). Anything else is published as it is (``celery.chord``: see
    :func:`raysys.queue.chord.expand`).
    """
    kind = sig.get("task")
    tasks = (sig.get("kwargs") or {}).get("tasks") if kind in ("celery.group", "celery.chain") else None
    if kind == "celery.group" and isinstance(tasks, list) and tasks:
        gid = _str_id((sig.get("options") or {}).get("task_id")) or str(uuid.uuid4())
        out = []
        for i, member in enumerate(tasks):
            for s, c, _, _ in expand(_sig(member, "group"), chain):
                out.append((s, c, gid, i))
        return out
    if kind == "celery.chain" and isinstance(tasks, list) and tasks:
        steps = [_sig(t, "chain") for t in tasks]
        rest = list(reversed(steps[1:])) + list(chain or [])
        return expand(steps[0], rest or None)
    return [(sig, chain, None, None)]

