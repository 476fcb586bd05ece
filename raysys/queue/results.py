"""Celery result-backend values: states, the result format, Celery's exception classes, kombu's JSON.

Results (``celery-task-meta-<id>``): ``{"status", "result", "traceback", "children", "date_done",
"task_id"}`` with upper-case status, plus ``name``, ``args``, ``kwargs``, ``worker``, ``retries`` and
``queue`` as a worker with ``result_extended`` writes them (RESULT_EXTENDED, on by default); failures carry
``{"exc_type", "exc_message": [args], "exc_module"}`` as Celery's backend writes them, so an unchanged Celery
client re-creates the exception. Values are JSON with kombu's markers for datetime/date/time/Decimal/UUID/
bytes so a Celery client (kombu ``loads``) gets the same Python types back.

The JSON codec (:func:`dumps`/:func:`loads`) is the one messages use for their args, kwargs and
envelopes too.
"""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import decimal
import json
import sys
import traceback as tb_mod
import uuid
from typing import TYPE_CHECKING, Any

from raysys import errors

if TYPE_CHECKING:  # a type only: messages import this module
    from raysys.queue.messages import Message


# States, as Celery spells them.
PENDING, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, PROGRESS = (
    "PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "PROGRESS",
)
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
EXCEPTION_STATES = frozenset({FAILURE, RETRY, REVOKED})


# --- Celery's exception classes, for processes without Celery installed --------------------------------
# Results name them with exc_module "celery.exceptions" so a Celery client re-creates its own classes.


class SoftTimeLimitExceeded(Exception):  # Celery's name
    """The job ran past its soft time limit and was cancelled."""


class TimeLimitExceeded(Exception):  # Celery's name
    """The job ran past its hard time limit and its worker was killed."""


class TaskRevokedError(Exception):
    """The job was revoked (for instance its ``expires`` passed before it ran)."""


class NotRegistered(KeyError):  # Celery's name
    """No task of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not registered"


class ContentDisallowed(Exception):  # kombu's name
    """The message's content type is refused (pickle above all)."""


class DecodeError(Exception):
    """The message could not be decoded (malformed JSON or base64)."""


class WorkerLostError(Exception):
    """The worker running the job died and the job could not be run again."""


class ChordError(Exception):
    """A chord could not complete: a header part failed, was refused or revoked (:mod:`raysys.queue.chord`)."""


# exc_module each Celery-named class is reported under (what a Celery client has loaded).
_CELERY_NAMES: dict[type, str] = {
    SoftTimeLimitExceeded: "celery.exceptions",
    TimeLimitExceeded: "celery.exceptions",
    TaskRevokedError: "celery.exceptions",
    NotRegistered: "celery.exceptions",
    WorkerLostError: "celery.exceptions",
    ChordError: "celery.exceptions",
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


_TYPED = json.JSONDecoder(object_hook=_object_hook)


def loads(text: str | bytes) -> Any:
    """Decode JSON text, with kombu's ``{"__type__": ..., "__value__": ...}`` markers turned back into values.

    Text that cannot hold a marker (no ``__type__``, no ``\\u`` escape that could spell one) skips the
    per-object hook: the whole decode stays in C, and every job's message and result is decoded this way.
    """
    if isinstance(text, (bytes, bytearray)):
        if b"__type__" not in text and b"\\u" not in text:
            return json.loads(text)
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # as json.loads does
    elif "__type__" not in text and "\\u" not in text:
        return json.loads(text)
    return _TYPED.decode(text)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


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
                children: list | None = None, parent_id: str | None = None, ready: bool | None = None,
                extended: dict | None = None) -> dict:
    meta = {"status": status, "result": result, "traceback": traceback, "children": children or [],
            "date_done": now_iso() if (status in READY_STATES if ready is None else ready) else None}
    if parent_id:
        meta["parent_id"] = parent_id
    if extended:
        meta.update(extended)
    meta["task_id"] = task_id
    return meta


def extended_fields(msg: Message, worker: str) -> dict:
    """What a Celery worker with ``result_extended=True`` adds to a result (``AsyncResult.name``, ``.args``,
    ``.kwargs``, ``.worker``, ``.retries``, ``.queue`` read them)."""
    return {"name": msg.task, "args": msg.args, "kwargs": msg.kwargs, "worker": worker, "retries": msg.retries,
            "queue": msg.queue}


def success_json(task_id: str, value_json: str, *, children: list | None = None, parent_id: str | None = None,
                 extended: dict | None = None) -> str:
    """SUCCESS value from an already-encoded result (keeps the bridge's per-job work to string joins)."""
    parent = f', "parent_id": {json.dumps(parent_id)}' if parent_id else ""
    extra = f", {dumps(extended)[1:-1]}" if extended else ""
    return (f'{{"status": "SUCCESS", "result": {value_json}, "traceback": null, '
            f'"children": {json.dumps(children or [])}, "date_done": "{now_iso()}"{parent}{extra}, '
            f'"task_id": {json.dumps(task_id)}}}')


def failure_json(task_id: str, exc_meta: dict, traceback: str | None = None, *, status: str = FAILURE,
                 parent_id: str | None = None, children: list | None = None, extended: dict | None = None) -> str:
    return dumps(result_meta(task_id, status, exc_meta, traceback=traceback, parent_id=parent_id,
                             children=children, extended=extended))


def revoked_json(task_id: str, reason: str = "expired", *, extended: dict | None = None) -> str:
    return dumps(result_meta(task_id, REVOKED, exception_meta(TaskRevokedError(reason)), extended=extended))


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
