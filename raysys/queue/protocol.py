"""Wire formats: Celery task protocol v2 (JSON), raysys' native envelope, Celery result-backend values.

Messages (what producers LPUSH onto ``<queue>``):

- **Celery protocol v2**, exactly as kombu's Redis transport stores it: a JSON envelope
  ``{"body", "content-encoding", "content-type", "headers", "properties"}`` whose body is base64 of
  the JSON ``[args, kwargs, embed]``; ``embed`` holds ``callbacks``, ``errbacks``, ``chain`` (last step
  first) and ``chord``. Headers used: ``task``, ``id``, ``eta``, ``expires``, ``retries``,
  ``timelimit`` ``[hard, soft]``, ``root_id``, ``parent_id``, ``group``. Only
  ``content-type: application/json`` is accepted (never pickle).
- **Native envelope**, for producers without Celery (``redis-cli LPUSH ingest '...'``)::

      {"task": "raysys.ping", "id": "...", "args": [...], "kwargs": {...},
       "eta": ISO-8601 or unix seconds, "countdown": seconds, "expires": ISO/unix, "retries": 0,
       "timelimit": [hard, soft], "priority": 0, "callbacks": [...], "errbacks": [...], "chain": [...]}

  Only ``task`` is required; a missing ``id`` gets a fresh one.

Anything else raises :class:`raysys.errors.Refused` (with ``task_id`` set when an id was readable).

Results (``celery-task-meta-<id>``): ``{"status", "result", "traceback", "children", "date_done",
"task_id"}`` with upper-case status; failures carry ``{"exc_type", "exc_message": [args],
"exc_module"}`` as Celery's backend writes them, so an unchanged Celery client re-creates the exception.
Values are JSON with kombu's markers for datetime/date/time/Decimal/UUID/bytes so a Celery client
(kombu ``loads``) gets the same Python types back.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import datetime as dt
import decimal
import json
import re
import sys
import time
import traceback as tb_mod
import uuid
from dataclasses import dataclass, field
from typing import Any

from raysys.constants import PRIORITY_SEP, PRIORITY_STEPS, RESULT_KEY_PREFIX
from raysys.errors import Refused, TooLarge

CELERY_CONTENT_TYPE = "application/json"

# States, as Celery spells them.
PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, PROGRESS = (
    "PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS",
)
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})


# --- Celery's exception classes, for processes without Celery installed --------------------------------
# Results name them with exc_module "celery.exceptions" so a Celery client re-creates its own classes.


class SoftTimeLimitExceeded(Exception):  # noqa: N818 - Celery's name
    """The job ran past its soft time limit and was cancelled."""


class TimeLimitExceeded(Exception):  # noqa: N818 - Celery's name
    """The job ran past its hard time limit and its worker was killed."""


class TaskRevokedError(Exception):
    """The job was revoked (for instance its ``expires`` passed before it ran)."""


class NotRegistered(KeyError):  # noqa: N818 - Celery's name
    """No task of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not registered"


class ContentDisallowed(Exception):  # noqa: N818 - kombu's name
    """The message's content type is refused (pickle above all)."""


class DecodeError(Exception):
    """The message could not be decoded (malformed JSON or base64)."""


class WorkerLostError(Exception):
    """The worker running the job died and the job could not be run again."""


# exc_module each Celery-named class is reported under (what a Celery client has loaded).
_CELERY_NAMES: dict[type, str] = {
    SoftTimeLimitExceeded: "celery.exceptions",
    TimeLimitExceeded: "celery.exceptions",
    TaskRevokedError: "celery.exceptions",
    NotRegistered: "celery.exceptions",
    WorkerLostError: "celery.exceptions",
    ContentDisallowed: "kombu.exceptions",
    DecodeError: "kombu.exceptions",
}
_BY_NAME: dict[str, type] = {cls.__name__: cls for cls in _CELERY_NAMES}


# --- JSON with kombu's type markers ----------------------------------------------------------------------


def _default(o: Any) -> Any:
    if isinstance(o, dt.datetime):
        return {"__type__": "datetime", "__value__": o.isoformat()}
    if isinstance(o, dt.date):
        return {"__type__": "date", "__value__": o.isoformat()}
    if isinstance(o, dt.time):
        return {"__type__": "time", "__value__": o.isoformat()}
    if isinstance(o, decimal.Decimal):
        return {"__type__": "decimal", "__value__": str(o)}
    if isinstance(o, uuid.UUID):
        return {"__type__": "uuid", "__value__": str(o)}
    if isinstance(o, bytes):
        try:
            return {"__type__": "bytes", "__value__": o.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(o).decode()}
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "__fspath__"):
        return str(o)
    if hasattr(o, "__json__"):
        return o.__json__()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


_DECODERS = {
    "datetime": dt.datetime.fromisoformat,
    "date": lambda v: dt.datetime.fromisoformat(v).date(),
    "time": dt.time.fromisoformat,
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode()),
}


def _object_hook(o: dict) -> Any:
    if len(o) == 2 and "__type__" in o and "__value__" in o:
        decoder = _DECODERS.get(o["__type__"])
        if decoder is not None:
            return decoder(o["__value__"])
    return o


def dumps(value: Any) -> str:
    """JSON text of ``value`` (kombu-compatible markers for datetimes etc.). Raises TypeError."""
    return json.dumps(value, default=_default, separators=(", ", ": "))


def loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_object_hook)


# --- time ------------------------------------------------------------------------------------------------


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def to_timestamp(value: Any, name: str = "time") -> float | None:
    """ISO-8601 string, datetime or unix seconds -> unix seconds (naive times are UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} is not an ISO-8601 time: {value!r}") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    raise ValueError(f"{name} must be a time, got {type(value).__name__}")


def to_iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


# --- queues and priorities -----------------------------------------------------------------------------


def priority_step(priority: int | None) -> int:
    """kombu's mapping of a priority to a list step: the largest of 0, 3, 6, 9 not above it."""
    p = int(priority or 0)
    step = 0
    for s in PRIORITY_STEPS:
        if s <= p:
            step = s
    return step


def list_for(queue: str, priority: int | None = None) -> str:
    """The Redis list a message of ``priority`` for ``queue`` lives in (Celery's layout)."""
    step = priority_step(priority)
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def lists_in_order(queues: list[str] | tuple[str, ...]) -> list[str]:
    """Every list of ``queues`` in the order kombu consumes them: priority step first, then queue."""
    return [list_for(q, s) for s in PRIORITY_STEPS for q in queues]


def result_key(task_id: str) -> str:
    return f"{RESULT_KEY_PREFIX}{task_id}"


# --- decoded messages ---------------------------------------------------------------------------------


@dataclass
class Message:
    """A decoded job. ``raw`` is the exact bytes claimed from Redis (acks remove exactly these)."""

    id: str
    task: str
    args: list
    kwargs: dict
    queue: str
    kind: str = "celery"                      # "celery" | "native"
    retries: int = 0
    eta: float | None = None                  # unix seconds
    expires: float | None = None
    time_limit: float | None = None           # hard, seconds
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    priority: int | None = None
    callbacks: list[dict] | None = None
    errbacks: list[dict] | None = None
    chain: list[dict] | None = None
    raw: bytes = b""
    envelope: dict = field(default_factory=dict, repr=False)


def _refuse(reason: str, task_id: str | None = None, task: str | None = None, exc_cls: type = Refused) -> Refused:
    err = Refused(reason)
    err.task_id = task_id  # type: ignore[attr-defined]
    err.task = task  # type: ignore[attr-defined]
    err.exc_cls = exc_cls  # type: ignore[attr-defined]
    return err


_ID_RE = re.compile(rb'"(?:id|correlation_id|task_id)"\s*:\s*"([A-Za-z0-9_.:\-]{1,200})"')


def sniff_id(raw: bytes) -> str | None:
    """Best-effort job id from a message too large or too broken to decode."""
    m = _ID_RE.search(raw[:65536]) or (_ID_RE.search(raw[-65536:]) if len(raw) > 65536 else None)
    return m.group(1).decode() if m else None


def _limit(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _sig_list(value: Any, name: str) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(s, dict) and isinstance(s.get("task"), str) for s in value):
        raise ValueError(f"embed {name} must be a list of signatures with a task name")
    return value


def decode(raw: bytes | str, queue: str, *, max_bytes: int | None = None) -> Message:
    """Decode one message taken from ``queue``.

    Raises:
        Refused: oversize, not JSON, not a known envelope, a refused content type (pickle), bad base64,
            a malformed body or headers. ``.task_id`` is set when an id could be read, ``.exc_cls`` is
            the Celery-named class to report.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if max_bytes is not None and len(raw) > max_bytes:
        err = _refuse(f"message of {len(raw)} bytes exceeds the limit of {max_bytes} bytes", sniff_id(raw),
                      exc_cls=TooLarge)
        raise err
    try:
        env = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"malformed JSON: {exc}", sniff_id(raw), exc_cls=DecodeError) from None
    if not isinstance(env, dict):
        raise _refuse("message is not a JSON object", exc_cls=DecodeError)
    if "headers" in env or "body" in env:
        msg = _decode_celery(env, queue)
    elif "task" in env:
        msg = _decode_native(env, queue)
    else:
        raise _refuse("neither a Celery protocol v2 message nor a raysys envelope",
                      sniff_id(raw), exc_cls=DecodeError)
    msg.raw = raw
    return msg


def _decode_celery(env: dict, queue: str) -> Message:
    headers = env.get("headers")
    props = env.get("properties") or {}
    if not isinstance(headers, dict) or not isinstance(props, dict):
        raise _refuse("Celery message without a headers object", exc_cls=DecodeError)
    task_id = headers.get("id") or props.get("correlation_id")
    task = headers.get("task")
    if not isinstance(task_id, str) or not task_id:
        raise _refuse("Celery message without an id header (protocol v1 is not supported)",
                      task=task if isinstance(task, str) else None, exc_cls=DecodeError)
    if not isinstance(task, str) or not task:
        raise _refuse("Celery message without a task header", task_id, exc_cls=DecodeError)
    ctype = env.get("content-type")
    if ctype != CELERY_CONTENT_TYPE:
        raise _refuse(f"refused content type {ctype!r}: only {CELERY_CONTENT_TYPE} is accepted",
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
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"bad body encoding: {exc}", task_id, task, exc_cls=DecodeError) from None
    try:
        decoded = loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse(f"malformed JSON body: {exc}", task_id, task, exc_cls=DecodeError) from None
    if not (isinstance(decoded, list) and len(decoded) == 3 and isinstance(decoded[0], list)
            and isinstance(decoded[1], dict) and isinstance(decoded[2], (dict, type(None)))):
        raise _refuse("body is not [args, kwargs, embed]", task_id, task, exc_cls=DecodeError)
    args, kwargs, embed = decoded
    embed = embed or {}
    try:
        if embed.get("chord"):
            raise ValueError("chords are not supported by raysys")
        timelimit = headers.get("timelimit") or [None, None]
        if not isinstance(timelimit, (list, tuple)) or len(timelimit) != 2:
            raise ValueError("timelimit must be [hard, soft]")
        retries = headers.get("retries") or 0
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a whole number")
        priority = props.get("priority")
        if priority is not None and not isinstance(priority, int):
            raise ValueError("priority must be a whole number")
        msg = Message(
            id=task_id, task=task, args=args, kwargs=kwargs, queue=queue, kind="celery", retries=retries,
            eta=to_timestamp(headers.get("eta"), "eta"), expires=to_timestamp(headers.get("expires"), "expires"),
            time_limit=_limit(timelimit[0], "hard time limit"), soft_time_limit=_limit(timelimit[1], "soft time limit"),
            root_id=headers.get("root_id"), parent_id=headers.get("parent_id"), group=headers.get("group"),
            priority=priority, callbacks=_sig_list(embed.get("callbacks"), "callbacks"),
            errbacks=_sig_list(embed.get("errbacks"), "errbacks"), chain=_sig_list(embed.get("chain"), "chain"),
            envelope=env,
        )
    except ValueError as exc:
        raise _refuse(f"bad message: {exc}", task_id, task, exc_cls=DecodeError) from None
    return msg


def _decode_native(env: dict, queue: str) -> Message:
    task = env.get("task")
    task_id = env.get("id") or str(uuid.uuid4())
    if not isinstance(task_id, str):
        raise _refuse("id must be a string", exc_cls=DecodeError)
    if not isinstance(task, str) or not task:
        raise _refuse("task must be a non-empty string", task_id, exc_cls=DecodeError)
    try:
        args = env.get("args") or []
        kwargs = env.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("args must be a list and kwargs an object")
        eta = to_timestamp(env.get("eta"), "eta")
        if env.get("countdown") is not None:
            cd = env["countdown"]
            if isinstance(cd, bool) or not isinstance(cd, (int, float)):
                raise ValueError("countdown must be a number of seconds")
            eta = time.time() + float(cd)
            env = {**env, "countdown": None, "eta": eta}  # re-encodes keep the absolute time
        timelimit = env.get("timelimit") or [None, None]
        if not isinstance(timelimit, (list, tuple)) or len(timelimit) != 2:
            raise ValueError("timelimit must be [hard, soft]")
        retries = env.get("retries") or 0
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a whole number")
        msg = Message(
            id=task_id, task=task, args=args, kwargs=kwargs, queue=queue, kind="native", retries=retries, eta=eta,
            expires=to_timestamp(env.get("expires"), "expires"), time_limit=_limit(timelimit[0], "hard time limit"),
            soft_time_limit=_limit(timelimit[1], "soft time limit"), root_id=env.get("root_id"),
            parent_id=env.get("parent_id"), priority=env.get("priority"),
            callbacks=_sig_list(env.get("callbacks"), "callbacks"), errbacks=_sig_list(env.get("errbacks"), "errbacks"),
            chain=_sig_list(env.get("chain"), "chain"), envelope={**env, "id": task_id},
        )
    except ValueError as exc:
        raise _refuse(f"bad message: {exc}", task_id, task, exc_cls=DecodeError) from None
    return msg


# --- encoding messages ----------------------------------------------------------------------------------


def signature(task: str, args: list | tuple = (), kwargs: dict | None = None, *, immutable: bool = False,
              **options: Any) -> dict:
    """A Celery signature dict (what ``embed.callbacks``/``chain`` hold)."""
    return {"task": task, "args": list(args), "kwargs": dict(kwargs or {}), "options": options,
            "subtask_type": None, "immutable": immutable}


def encode_celery(task: str, args: list | tuple = (), kwargs: dict | None = None, *, task_id: str | None = None,
                  queue: str = "celery", eta: float | None = None, expires: float | None = None, retries: int = 0,
                  time_limit: float | None = None, soft_time_limit: float | None = None,
                  root_id: str | None = None, parent_id: str | None = None, group: str | None = None,
                  priority: int | None = None, callbacks: list | None = None, errbacks: list | None = None,
                  chain: list | None = None, reply_to: str | None = None, origin: str = "raysys") -> str:
    """A Celery protocol v2 message, byte for byte shaped like kombu 5.7's Redis transport stores it."""
    task_id = task_id or str(uuid.uuid4())
    args = list(args)
    kwargs = dict(kwargs or {})
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": None}
    body = base64.b64encode(dumps([args, kwargs, embed]).encode("utf-8")).decode("ascii")
    headers = {
        "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": to_iso(eta), "expires": to_iso(expires),
        "group": group, "group_index": None, "retries": retries, "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id, "parent_id": parent_id, "argsrepr": repr(tuple(args)),
        "kwargsrepr": repr(kwargs), "origin": origin, "ignore_result": False, "replaced_task_nesting": 0,
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


def reencode(msg: Message, *, retries: int | None = None, eta: float | None = None, clear_eta: bool = False) -> str:
    """``msg`` as a new message with another retry count and/or eta (what Celery publishes on retry)."""
    env = copy.deepcopy(msg.envelope)
    if msg.kind == "celery":
        h = env["headers"]
        if retries is not None:
            h["retries"] = retries
        if eta is not None or clear_eta:
            h["eta"] = to_iso(eta)
        props = env.setdefault("properties", {})
        props["delivery_tag"] = str(uuid.uuid4())
        return json.dumps(env)
    if retries is not None:
        env["retries"] = retries
    if eta is not None or clear_eta:
        env["eta"] = eta
    env.pop("countdown", None)
    return dumps(env)


def next_message(sig: dict, parent: Message, value: Any = None, *, prepend: tuple = (),
                 chain: list | None = None, default_queue: str) -> tuple[str, str, str]:
    """Celery's way of publishing a signature after ``parent`` ran: ``(list, raw, task_id)``.

    ``prepend`` (the parent's return value for callbacks and chain steps, its id for errbacks) goes
    before the signature's own args unless the signature is immutable.
    """
    options = dict(sig.get("options") or {})
    args = list(sig.get("args") or [])
    if not sig.get("immutable"):
        args = [*prepend, *args]
    task_id = options.get("task_id") or str(uuid.uuid4())
    queue = options.get("queue") or default_queue
    countdown = options.get("countdown")
    eta = to_timestamp(options.get("eta"), "eta") if options.get("eta") else (
        time.time() + float(countdown) if countdown else None)
    expires = options.get("expires")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        expires = time.time() + float(expires)
    else:
        expires = to_timestamp(expires, "expires")
    priority = options.get("priority", parent.priority)
    raw = encode_celery(
        sig["task"], args, sig.get("kwargs") or {}, task_id=task_id, queue=queue, eta=eta, expires=expires,
        time_limit=options.get("time_limit"), soft_time_limit=options.get("soft_time_limit"),
        root_id=parent.root_id or parent.id, parent_id=parent.id, priority=priority,
        callbacks=options.get("link"), errbacks=options.get("link_error"), chain=chain,
        reply_to=options.get("reply_to"),
    )
    return list_for(queue, priority), raw, task_id


# --- results --------------------------------------------------------------------------------------------


def exception_meta(exc: BaseException) -> dict:
    """``{"exc_type", "exc_message", "exc_module"}`` as Celery's JSON backend writes it."""
    cls = type(exc)
    module = _CELERY_NAMES.get(cls, cls.__module__)
    args = []
    for a in exc.args:
        try:
            json.dumps(a, default=_default)
            args.append(a)
        except (TypeError, ValueError):
            args.append(repr(a))
    return {"exc_type": getattr(cls, "__qualname__", cls.__name__), "exc_message": args, "exc_module": module}


def format_traceback(exc: BaseException) -> str:
    return "".join(tb_mod.format_exception(type(exc), exc, exc.__traceback__))


def children_of(ids: list[str]) -> list:
    return [[[i, None], None] for i in ids]


def result_meta(task_id: str, status: str, result: Any = None, *, traceback: str | None = None,
                children: list | None = None, parent_id: str | None = None, ready: bool | None = None) -> dict:
    meta = {"status": status, "result": result, "traceback": traceback, "children": children or [],
            "date_done": now_iso() if (status in READY_STATES if ready is None else ready) else None}
    if parent_id:
        meta["parent_id"] = parent_id
    meta["task_id"] = task_id
    return meta


def success_json(task_id: str, value_json: str, *, children: list | None = None, parent_id: str | None = None) -> str:
    """SUCCESS value from an already-encoded result (keeps the bridge's per-job work to string joins)."""
    parent = f', "parent_id": {json.dumps(parent_id)}' if parent_id else ""
    return (f'{{"status": "SUCCESS", "result": {value_json}, "traceback": null, '
            f'"children": {json.dumps(children or [])}, "date_done": "{now_iso()}"{parent}, '
            f'"task_id": {json.dumps(task_id)}}}')


def failure_json(task_id: str, exc_meta: dict, traceback: str | None = None, *, status: str = FAILURE,
                 parent_id: str | None = None, children: list | None = None) -> str:
    return dumps(result_meta(task_id, status, exc_meta, traceback=traceback, parent_id=parent_id,
                             children=children))


def revoked_json(task_id: str, reason: str = "expired") -> str:
    return dumps(result_meta(task_id, REVOKED, exception_meta(TaskRevokedError(reason))))


def started_json(task_id: str, info: dict | None = None) -> str:
    return dumps(result_meta(task_id, STARTED, info or {}))


def progress_json(task_id: str, fraction: float, message: str = "") -> str:
    return dumps(result_meta(task_id, PROGRESS, {"progress": fraction, "message": message}))


def is_success(raw_meta: bytes | str | None) -> bool:
    """Whether a stored result value is a SUCCESS (cheap check, no full decode)."""
    if not raw_meta:
        return False
    if isinstance(raw_meta, bytes):
        raw_meta = raw_meta.decode("utf-8", "replace")
    return '"status": "SUCCESS"' in raw_meta[:64] or '"status":"SUCCESS"' in raw_meta[:64]


# --- exceptions back from results ----------------------------------------------------------------------

_SAFE_MODULES = ("builtins", "raysys.errors", "celery.exceptions", "billiard.exceptions", "kombu.exceptions")
_dynamic: dict[tuple[str, str], type] = {}


def exception_from_meta(meta: dict | None) -> BaseException | None:
    """Re-create the exception a result describes, as a Celery client would (never imports a module)."""
    if not meta:
        return None
    if not isinstance(meta, dict) or "exc_type" not in meta:
        return Exception(meta)
    name = str(meta.get("exc_type"))
    module = str(meta.get("exc_module") or "")
    cls: Any = None
    if module in sys.modules and (module in _SAFE_MODULES or not module.startswith("_")):
        cls = sys.modules[module]
        for part in name.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                break
    if cls is None and module == "builtins":
        cls = getattr(builtins, name, None)
    if cls is None and module in ("celery.exceptions", "billiard.exceptions", "kombu.exceptions"):
        cls = _BY_NAME.get(name)
    if cls is None and module == "raysys.errors":
        from raysys import errors  # noqa: PLC0415

        cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        key = (module, name)
        cls = _dynamic.get(key)
        if cls is None:
            cls = type(name.rsplit(".", 1)[-1], (Exception,), {"__module__": module or __name__})
            _dynamic[key] = cls
    message = meta.get("exc_message", [])
    args = message if isinstance(message, (list, tuple)) else [message]
    try:
        return cls(*args)
    except Exception:  # noqa: BLE001 - a class whose __init__ wants other arguments
        exc = Exception.__new__(cls)
        exc.args = tuple(args)
        return exc
