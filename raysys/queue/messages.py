"""Queue messages: Celery task protocol v2 (and 1) and raysys' native envelope, decoded and encoded.

Messages (what producers LPUSH onto ``<queue>``):

- **Celery protocol v2**, exactly as kombu's Redis transport stores it: a JSON envelope
  ``{"body", "content-encoding", "content-type", "headers", "properties"}`` whose body is base64 of
  the JSON ``[args, kwargs, embed]``; ``embed`` holds ``callbacks``, ``errbacks``, ``chain`` (last step
  first) and ``chord``. Headers used: ``task``, ``id`` (else ``properties.correlation_id``), ``eta``,
  ``expires`` (naive times are read in the worker's time zone, CELERY_TIMEZONE, as Celery does),
  ``retries``, ``timelimit`` ``[hard, soft]`` (null, 0 and numeric strings read as Celery reads them),
  ``root_id``, ``parent_id``, ``group``, ``group_index``, ``ignore_result``, ``compression``.
  Only ``content-type: application/json`` is accepted (never pickle, yaml or msgpack: ContentDisallowed).
  A ``compression`` header of gzip/zlib, bzip2 or lzma is undone within the size limit (a body that
  expands past it is TooLarge); brotli, zstd and unknown methods are ContentDisallowed.
- **Celery protocol 1** (``task_protocol=1``: empty headers, everything in a JSON body dict) is read
  too and converted to an equivalent v2 envelope (retries and requeues publish v2).
- **Native envelope**, for producers without Celery (``redis-cli LPUSH ingest '...'``)::

      {"task": "raysys.ping", "id": "...", "args": [...], "kwargs": {...},
       "eta": ISO-8601 or unix seconds, "countdown": seconds, "expires": ISO/unix, "retries": 0,
       "timelimit": [hard, soft], "priority": 0, "callbacks": [...], "errbacks": [...], "chain": [...]}

  Only ``task`` is required; a missing ``id`` gets a fresh one.

Anything else raises :class:`raysys.errors.Refused` (with ``task_id`` set when an id was readable):
:func:`decode` never raises anything else, whatever the bytes.

Priorities: producers put priority ``p`` on ``<queue>\\x06\\x16<step>`` where the step is the largest of
kombu's ``priority_steps`` not above ``p`` (0/3/6/9 by default, any subset of 0-9 when configured);
consumers take all ten levels, lowest first.

The values inside (args, kwargs) use kombu's JSON (:mod:`raysys.queue.results`); the canvas a
message carries is read in :mod:`raysys.queue.canvas`.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import copy
import datetime as dt
import json
import lzma
import math
import re
import time
import uuid
import zlib
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from raysys.errors import Refused, TooLarge
from raysys.queue.results import ContentDisallowed, DecodeError, dumps, loads

CELERY_CONTENT_TYPE = "application/json"
# Header (native field ``outages``) counting a job's retries after infrastructure outages; Celery workers keep
# unknown headers as they are.
OUTAGES_HEADER = "raysys_outages"


# --- time ------------------------------------------------------------------------------------------------


def to_timestamp(value: Any, name: str = "time", tz: str | None = None) -> float | None:
    """ISO-8601 string, datetime or unix seconds -> unix seconds.

    A naive time is read in ``tz`` (an IANA name; a Celery worker reads it in its ``timezone``,
    CELERY_TIMEZONE here), UTC when ``tz`` is None. Raises ValueError for anything else, including
    NaN and infinities.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite time, got {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} is not an ISO-8601 time: {value[:100]!r}") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_zone(tz))
        return value.timestamp()
    raise ValueError(f"{name} must be a time, got {type(value).__name__}")


def _zone(tz: str | None) -> dt.tzinfo:
    if not tz or tz == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def to_iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()

# --- decoded messages ---------------------------------------------------------------------------------


@dataclass
class Message:
    """A decoded job. ``raw`` is the exact bytes claimed from Redis (acks remove exactly these)."""

    id: str
    task: str
    args: list
    kwargs: dict
    queue: str
    kind: str = "celery"                      # "celery" (protocol v2, or v1 converted) | "native"
    retries: int = 0
    outages: int = 0                          # retries after infrastructure outages (not counted in retries)
    eta: float | None = None                  # unix seconds
    expires: float | None = None
    time_limit: float | None = None           # hard, seconds
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    priority: int | None = None
    ignore_result: bool = False               # the producer asked for no result (Celery stores none)
    callbacks: list[dict] | None = None
    errbacks: list[dict] | None = None
    chain: list[dict] | None = None
    chord: dict | None = None                 # the chord body when this job is part of a chord header
    raw: bytes = b""
    envelope: dict = field(default_factory=dict, repr=False)


def refused(reason: str, task_id: str | None = None, task: str | None = None, exc_cls: type = Refused,
            error: BaseException | None = None, chord_body: Any = None) -> Refused:
    """A :class:`Refused` carrying what the bridge needs: the id to fail, the task, what to report (``error``,
    else ``exc_cls(reason)``), and for a refused chord part its body's signature ``chord_body``: ``also_fail``
    is that body's id (a client may be waiting on it), whose errbacks the signature names."""
    err = Refused(reason)
    err.task_id = task_id  # type: ignore[attr-defined]
    err.task = task  # type: ignore[attr-defined]
    err.exc_cls = exc_cls  # type: ignore[attr-defined]
    err.error = error  # type: ignore[attr-defined]
    err.also_fail = chord_body_id(chord_body)  # type: ignore[attr-defined]
    err.chord_body = chord_body  # type: ignore[attr-defined]
    return err


_ID_RE = re.compile(rb'"(?:id|correlation_id|task_id)"\s*:\s*"([A-Za-z0-9_.:\-]{1,200})"')


def sniff_id(raw: bytes) -> str | None:
    """Best-effort job id from a message too large or too broken to decode."""
    m = _ID_RE.search(raw[:65536]) or (_ID_RE.search(raw[-65536:]) if len(raw) > 65536 else None)
    return m.group(1).decode() if m else None


def _limit(value: Any, name: str) -> float | None:
    """A time limit in seconds: None, 0 (no limit, as Celery reads it) or a positive number (numeric strings
    are read too). Raises ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if value.strip() else None
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, got {value[:50]!r}") from None
        if value is None:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value) or None


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"timelimit must be [hard, soft], got {str(value)[:50]!r}")
    return _limit(value[0], "hard time limit"), _limit(value[1], "soft time limit")


def _retries(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"retries must be a whole number, got {str(value)[:50]!r}")
    return value


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"priority must be a whole number, got {str(value)[:50]!r}")
    return max(0, min(255, value))


def _opt_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{name} must be a string, got {type(value).__name__}")


def _sig(value: Any, name: str) -> dict:
    """A Celery signature dict, checked so that publishing it later cannot fail on its shape."""
    if not isinstance(value, dict) or not isinstance(value.get("task"), str) or not value["task"]:
        raise ValueError(f"embed {name} must hold signatures with a task name")
    for key, kind in (("args", list), ("kwargs", dict), ("options", dict)):
        if value.get(key) is not None and not isinstance(value[key], kind):
            raise ValueError(f"{name} signature {value['task']!r}: {key} must be a {kind.__name__}")
    return value


def _sig_list(value: Any, name: str) -> list[dict] | None:
    if value is None:
        return None
    if isinstance(value, dict):  # a single signature where Celery writes a list of one
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"embed {name} must be a list of signatures")
    return [_sig(s, name) for s in value] or None


# Compression a Celery producer may ask for (header ``compression``) -> a bounded decompressor factory.
_DECOMPRESSORS = {
    "application/x-gzip": lambda: zlib.decompressobj(wbits=47),  # kombu's zlib (and real gzip: 47 reads both)
    "gzip": lambda: zlib.decompressobj(wbits=47),
    "zlib": lambda: zlib.decompressobj(wbits=47),
    "application/x-bz2": bz2.BZ2Decompressor,
    "bzip2": bz2.BZ2Decompressor,
    "bzip": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
    "lzma": lzma.LZMADecompressor,
    "xz": lzma.LZMADecompressor,
}
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # decompressed body limit when the caller gives none


def _decompress(data: bytes, method: Any, limit: int) -> bytes:
    """Undo kombu's body compression, never producing more than ``limit`` bytes (a bomb is refused)."""
    factory = _DECOMPRESSORS.get(str(method).lower()) if isinstance(method, str) else None
    if factory is None:
        raise _Unsupported(f"unsupported compression {method!r} (gzip/zlib, bzip2 and lzma are accepted)")
    try:
        out = factory().decompress(data, limit + 1)  # at most limit + 1 bytes, whatever the ratio
    except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
        raise ValueError(f"bad {method} data: {exc}") from None
    if len(out) > limit:
        raise _TooBig(f"body decompresses to more than the limit of {limit} bytes")
    return out


class _Unsupported(ValueError):
    pass


class _TooBig(ValueError):
    pass


def decode(raw: bytes | str, queue: str, *, max_bytes: int | None = None, tz: str | None = None) -> Message:
    """Decode one message taken from ``queue``. Naive ``eta``/``expires`` times are read in ``tz``.

    Never raises anything but :class:`Refused`, whatever the bytes are.

    Raises:
        Refused: oversize (also once decompressed), not JSON, not a known envelope, a refused content
            type (pickle) or compression, bad base64, a malformed body or headers. ``.task_id`` is set when
            an id could be read, ``.exc_cls`` is the Celery-named class to report.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if max_bytes is not None and len(raw) > max_bytes:
        raise refused(f"message of {len(raw)} bytes exceeds the limit of {max_bytes} bytes", sniff_id(raw),
                      exc_cls=TooLarge)
    try:
        env = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise refused(f"malformed JSON: {str(exc)[:200]}", sniff_id(raw), exc_cls=DecodeError) from None
    if not isinstance(env, dict):
        raise refused("message is not a JSON object", exc_cls=DecodeError)
    try:
        if "headers" in env or "body" in env:
            msg = _decode_celery(env, queue, max_bytes or DEFAULT_MAX_BODY, tz)
        elif "task" in env:
            msg = _decode_native(env, queue, tz)
        else:
            raise refused("neither a Celery protocol v2 message nor a raysys envelope",
                          sniff_id(raw), exc_cls=DecodeError)
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a hostile message does, it is refused, never raised
        raise refused(f"unreadable message: {type(exc).__name__}: {str(exc)[:200]}", sniff_id(raw),
                      exc_cls=DecodeError) from None
    msg.raw = raw
    return msg


def _str_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # a hand-made message with a numeric id: the result key uses its text
        return str(value)
    return value if isinstance(value, str) and value else None


def _decode_celery(env: dict, queue: str, max_body: int, tz: str | None) -> Message:
    headers = env.get("headers")
    props = env.get("properties")
    if headers is None:
        headers = {}
    if props is None:
        props = {}
    if not isinstance(headers, dict) or not isinstance(props, dict):
        raise refused("Celery message whose headers or properties are not objects", exc_cls=DecodeError)
    task_id = _str_id(headers.get("id")) or _str_id(props.get("correlation_id"))
    task = headers.get("task") if isinstance(headers.get("task"), str) and headers.get("task") else None
    ctype = env.get("content-type")
    if ctype != CELERY_CONTENT_TYPE:
        raise refused(f"refused content type {ctype!r}: only {CELERY_CONTENT_TYPE} is accepted",
                      task_id, task, exc_cls=ContentDisallowed)
    body = env.get("body")
    encoding = props.get("body_encoding", "base64")
    try:
        if encoding == "base64":
            if not isinstance(body, str):
                raise ValueError("body is not a base64 string")
            text = base64.b64decode(body, validate=True)
        elif encoding in (None, "", "utf-8") and isinstance(body, str):
            text = body.encode("utf-8")
        else:
            raise ValueError(f"unsupported body encoding {encoding!r}")
        if headers.get("compression"):
            text = _decompress(text, headers["compression"], max_body)
    except _Unsupported as exc:
        raise refused(str(exc), task_id, task, exc_cls=ContentDisallowed) from None
    except _TooBig as exc:
        raise refused(str(exc), task_id, task, exc_cls=TooLarge) from None
    except (binascii.Error, ValueError) as exc:
        raise refused(f"bad body encoding: {exc}", task_id, task, exc_cls=DecodeError) from None
    try:
        decoded = loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise refused(f"malformed JSON body: {str(exc)[:200]}", task_id, task, exc_cls=DecodeError) from None
    if isinstance(decoded, dict) and not headers.get("task"):
        return _decode_celery_v1(decoded, env, props, queue, tz)
    if task_id is None:
        raise refused("Celery message without an id header", task=task, exc_cls=DecodeError)
    if task is None:
        raise refused("Celery message without a task header", task_id, exc_cls=DecodeError)
    if not (isinstance(decoded, list) and len(decoded) in (2, 3)):
        raise refused("body is not [args, kwargs, embed]", task_id, task, exc_cls=DecodeError)
    args, kwargs, embed = (*decoded, None) if len(decoded) == 2 else decoded
    chord_body = embed.get("chord") if isinstance(embed, dict) else None  # a refused part fails its body
    if not isinstance(args, list):
        raise refused(f"body args must be a list, got {type(args).__name__}", task_id, task,
                      exc_cls=DecodeError,
                      chord_body=chord_body)
    if not isinstance(kwargs, dict):
        raise refused(f"body kwargs must be an object, got {type(kwargs).__name__}", task_id, task,
                      exc_cls=DecodeError,
                      chord_body=chord_body)
    if embed is not None and not isinstance(embed, dict):
        raise refused("body embed must be an object", task_id, task, exc_cls=DecodeError)
    embed = embed or {}
    try:
        hard, soft = _timelimit(headers.get("timelimit"))
        group_index = headers.get("group_index")
        if group_index is not None and (isinstance(group_index, bool) or not isinstance(group_index, int)):
            raise ValueError("group_index must be a whole number")
        return Message(
            id=task_id, task=task, args=args, kwargs=kwargs, queue=queue, kind="celery",
            retries=_retries(headers.get("retries")), outages=_retries(headers.get(OUTAGES_HEADER)),
            eta=to_timestamp(headers.get("eta"), "eta", tz), expires=to_timestamp(headers.get("expires"), "expires", tz),
            time_limit=hard, soft_time_limit=soft,
            root_id=_opt_str(headers.get("root_id"), "root_id"), parent_id=_opt_str(headers.get("parent_id"), "parent_id"),
            group=_opt_str(headers.get("group"), "group"), group_index=group_index,
            priority=_priority(props.get("priority")), ignore_result=bool(headers.get("ignore_result")),
            callbacks=_sig_list(embed.get("callbacks"), "callbacks"),
            errbacks=_sig_list(embed.get("errbacks"), "errbacks"), chain=_sig_list(embed.get("chain"), "chain"),
            chord=_sig(chord_body, "chord") if chord_body else None, envelope=env,
        )
    except ValueError as exc:
        raise refused(f"bad message: {exc}", task_id, task, exc_cls=DecodeError,
                      chord_body=chord_body) from None


def chord_body_id(body: Any) -> tuple[str, ...]:
    """The id of a chord's body (``(id,)``), or ``()``."""
    if isinstance(body, dict) and isinstance(body.get("options"), dict):
        body_id = _str_id(body["options"].get("task_id"))
        if body_id:
            return (body_id,)
    return ()


def _decode_celery_v1(body: dict, env: dict, props: dict, queue: str, tz: str | None) -> Message:
    """Celery task protocol 1 (``task_protocol=1``): everything in the body. Converted to a v2 envelope so
    retries and dead-letter requeues publish protocol 2, which every Celery 4+/5 worker reads too."""
    task_id = _str_id(body.get("id")) or _str_id(props.get("correlation_id"))
    task = body.get("task") if isinstance(body.get("task"), str) and body.get("task") else None
    if task_id is None:
        raise refused("protocol 1 message without an id", task=task, exc_cls=DecodeError)
    if task is None:
        raise refused("protocol 1 message without a task name", task_id, exc_cls=DecodeError)
    args = body.get("args") if body.get("args") is not None else []
    kwargs = body.get("kwargs") if body.get("kwargs") is not None else {}
    try:
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("args must be a list and kwargs an object")
        hard, soft = _timelimit(body.get("timelimit"))
        callbacks = _sig_list(body.get("callbacks"), "callbacks")
        errbacks = _sig_list(body.get("errbacks"), "errbacks")
        chord = _sig(body["chord"], "chord") if body.get("chord") else None
        eta = to_timestamp(body.get("eta"), "eta", tz)
        expires = to_timestamp(body.get("expires"), "expires", tz)
        retries = _retries(body.get("retries"))
        group = _opt_str(body.get("taskset") or body.get("group"), "taskset")
        priority = _priority(props.get("priority"))
    except ValueError as exc:
        raise refused(f"bad message: {exc}", task_id, task, exc_cls=DecodeError,
                      chord_body=body.get("chord")) from None
    v2 = json.loads(encode_celery(
        task, args, kwargs, task_id=task_id, queue=queue, eta=eta, expires=expires, retries=retries,
        time_limit=hard, soft_time_limit=soft, group=group, priority=priority, callbacks=callbacks,
        errbacks=errbacks, chord=chord, reply_to=props.get("reply_to") if isinstance(props.get("reply_to"), str) else None,
    ))
    return Message(id=task_id, task=task, args=args, kwargs=kwargs, queue=queue, kind="celery", retries=retries,
                   eta=eta, expires=expires, time_limit=hard, soft_time_limit=soft, root_id=task_id, group=group,
                   priority=priority, callbacks=callbacks, errbacks=errbacks, chord=chord, envelope=v2)


def _decode_native(env: dict, queue: str, tz: str | None) -> Message:
    task = env.get("task")
    task_id = env.get("id") if env.get("id") is not None else str(uuid.uuid4())
    task_id = _str_id(task_id)
    if task_id is None:
        raise refused("id must be a non-empty string", exc_cls=DecodeError)
    if not isinstance(task, str) or not task:
        raise refused("task must be a non-empty string", task_id, exc_cls=DecodeError)
    try:
        args = env.get("args") if env.get("args") is not None else []
        kwargs = env.get("kwargs") if env.get("kwargs") is not None else {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("args must be a list and kwargs an object")
        eta = to_timestamp(env.get("eta"), "eta", tz)
        if env.get("countdown") is not None:
            cd = env["countdown"]
            if isinstance(cd, bool) or not isinstance(cd, (int, float)) or not math.isfinite(cd):
                raise ValueError("countdown must be a number of seconds")
            eta = time.time() + float(cd)
            env = {**env, "countdown": None, "eta": eta}  # re-encodes keep the absolute time
        hard, soft = _timelimit(env.get("timelimit"))
        msg = Message(
            id=task_id, task=task, args=args, kwargs=kwargs, queue=queue, kind="native",
            retries=_retries(env.get("retries")), outages=_retries(env.get("outages")), eta=eta,
            expires=to_timestamp(env.get("expires"), "expires", tz),
            time_limit=hard, soft_time_limit=soft, root_id=_opt_str(env.get("root_id"), "root_id"),
            parent_id=_opt_str(env.get("parent_id"), "parent_id"), priority=_priority(env.get("priority")),
            ignore_result=bool(env.get("ignore_result")),
            callbacks=_sig_list(env.get("callbacks"), "callbacks"), errbacks=_sig_list(env.get("errbacks"), "errbacks"),
            chain=_sig_list(env.get("chain"), "chain"), envelope={**env, "id": task_id},
        )
    except ValueError as exc:
        raise refused(f"bad message: {exc}", task_id, task, exc_cls=DecodeError) from None
    return msg


# --- encoding messages ----------------------------------------------------------------------------------


def encode_celery(task: str, args: list | tuple = (), kwargs: dict | None = None, *, task_id: str | None = None,
                  queue: str = "celery", eta: float | None = None, expires: float | None = None, retries: int = 0,
                  time_limit: float | None = None, soft_time_limit: float | None = None,
                  root_id: str | None = None, parent_id: str | None = None, group: str | None = None,
                  priority: int | None = None, callbacks: list | None = None, errbacks: list | None = None,
                  chain: list | None = None, reply_to: str | None = None, origin: str = "raysys",
                  chord: dict | None = None, group_index: int | None = None, ignore_result: bool = False) -> str:
    """A Celery protocol v2 message, byte for byte shaped like kombu 5.7's Redis transport stores it."""
    task_id = task_id or str(uuid.uuid4())
    args = list(args)
    kwargs = dict(kwargs or {})
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    body = base64.b64encode(dumps([args, kwargs, embed]).encode("utf-8")).decode("ascii")
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": to_iso(eta), "expires": to_iso(expires),
        "group": group, "group_index": group_index, "retries": retries, "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id, "parent_id": parent_id, "argsrepr": repr(tuple(args)),
        "kwargsrepr": repr(kwargs), "origin": origin, "ignore_result": ignore_result, "replaced_task_nesting": 0,
        "stamped_headers": None, "stamps": {},
    }
    props: dict[str, Any] = {
        "correlation_id": task_id, "reply_to": reply_to or str(uuid.uuid4()), "delivery_mode": 2,
    }
    if expires is not None:
        props["expiration"] = str(max(0, int((expires - time.time()) * 1000)))
    props.update({
        "delivery_info": {"exchange": "", "routing_key": queue}, "priority": int(priority or 0),
        "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    })
    return json.dumps({"body": body, "content-encoding": "utf-8", "content-type": CELERY_CONTENT_TYPE,
                       "headers": headers, "properties": props})


def encode_native(task: str, args: list | tuple = (), kwargs: dict | None = None, *, task_id: str | None = None,
                  **fields: Any) -> str:
    """A raysys native envelope (see the module docstring for the fields)."""
    env = {"task": task, "id": task_id or str(uuid.uuid4()), "args": list(args), "kwargs": dict(kwargs or {})}
    env.update({k: v for k, v in fields.items() if v is not None})
    return dumps(env)


def reencode(msg: Message, *, retries: int | None = None, eta: float | None = None, clear_eta: bool = False,
             outages: int | None = None) -> str:
    """``msg`` as a new message with another retry count, outage retry count and/or eta (what Celery
    publishes on retry)."""
    env = copy.deepcopy(msg.envelope)
    if msg.kind == "celery":
        h = env.get("headers")
        if not isinstance(h, dict):
            h = env["headers"] = {}
        if retries is not None:
            h["retries"] = retries
        if outages is not None:
            h[OUTAGES_HEADER] = outages
        if eta is not None or clear_eta:
            h["eta"] = to_iso(eta)
        props = env.get("properties")
        if not isinstance(props, dict):
            props = env["properties"] = {}
        props["delivery_tag"] = str(uuid.uuid4())
        return json.dumps(env)
    if retries is not None:
        env["retries"] = retries
    if outages is not None:
        env["outages"] = outages
    if eta is not None or clear_eta:
        env["eta"] = eta
    env.pop("countdown", None)
    return dumps(env)


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {str(value)[:50]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    return value

