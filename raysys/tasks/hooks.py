"""Task lifecycle hooks: Celery's ``on_success`` / ``on_failure`` / ``on_retry``, per task and global.

Per task, as Celery's ``Task`` methods (the seed's ``CallbackTask``), given to :func:`raysys.tasks.registry.task`::

    @task("workers.tasks.send_invoice", queue="reports", on_failure=alert_oncall)
    def send_invoice(ctx, invoice_id): ...

    class InvoiceHooks:                      # or an object (a class is instantiated once)
        def on_success(self, retval, task_id, args, kwargs): ...
        def on_failure(self, exc, task_id, args, kwargs, einfo): ...
        def on_retry(self, exc, task_id, args, kwargs, einfo): ...

    @task("workers.tasks.send_invoice", queue="reports", hooks=InvoiceHooks)

Global, for every task (middleware in dramatiq's sense): ``raysys.tasks.hooks.add(obj)`` in a task module
(``RAYSYS_TASK_MODULES``), where ``obj`` has any of the three methods with the task's name first:
``on_success(task_name, retval, task_id, args, kwargs)``, ``on_failure(task_name, exc, task_id, args, kwargs,
einfo)``, ``on_retry(task_name, exc, task_id, args, kwargs, einfo)``.

The bridge calls them when it settles a job (the process that imported the task modules), once per event:
``on_retry`` once per retry, ``on_failure`` once when the job fails for good, ``on_success`` once. ``exc`` is
the task's exception re-created from its result (its class where it is importable), ``einfo`` an
:class:`ExceptionInfo` with the traceback text. Hooks run in order on one thread of their own, so a slow hook
never holds up the bridge, right after the transition is decided (its result may reach Redis a few
milliseconds later). A hook that raises is logged and changes nothing. A revoked job calls no hook. As the
jobs themselves, hooks are at least once: a bridge that dies between a hook and its write runs the job again.
With no hook registered a job costs one attribute check.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("raysys.tasks.hooks")

SUCCESS, FAILURE, RETRY = "on_success", "on_failure", "on_retry"
EVENTS = (SUCCESS, FAILURE, RETRY)

_middleware: list[Any] = []
_calls: queue.SimpleQueue = queue.SimpleQueue()
_lock = threading.Lock()
_thread: threading.Thread | None = None


@dataclass(frozen=True)
class ExceptionInfo:
    """What Celery passes as ``einfo``: the exception, its type and its traceback text."""

    exception: BaseException | None
    traceback: str = ""

    @property
    def type(self) -> type | None:
        return type(self.exception) if self.exception is not None else None

    def __str__(self) -> str:
        return self.traceback


@dataclass(frozen=True)
class TaskHooks:
    """One task's hooks (each a callable or None)."""

    on_success: Callable[..., Any] | None = None
    on_failure: Callable[..., Any] | None = None
    on_retry: Callable[..., Any] | None = None

    @classmethod
    def build(cls, hooks: Any = None, **callables: Any) -> TaskHooks | None:
        """From a hooks object or class (its methods) and/or callables by event name; None if there are none.

        Raises:
            TypeError: an unknown event name, or a hook that is not callable.
        """
        unknown = set(callables) - set(EVENTS)
        if unknown:
            raise TypeError(f"unknown task hooks: {', '.join(sorted(unknown))} (known: {', '.join(EVENTS)})")
        if isinstance(hooks, type):
            hooks = hooks()
        found = {name: getattr(hooks, name, None) for name in EVENTS} if hooks is not None else {}
        found.update({k: v for k, v in callables.items() if v is not None})
        for name, fn in found.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"task hook {name} must be callable, got {type(fn).__name__}")
        if not any(found.values()):
            if hooks is not None:
                raise TypeError(f"{type(hooks).__name__} has none of {', '.join(EVENTS)}")
            return None
        return cls(**found)


def add(middleware: Any) -> Any:
    """Register ``middleware`` (an object, or a class instantiated once) for every task; returns it."""
    if isinstance(middleware, type):
        middleware = middleware()
    if not any(callable(getattr(middleware, name, None)) for name in EVENTS):
        raise TypeError(f"{type(middleware).__name__} has none of {', '.join(EVENTS)}")
    _middleware.append(middleware)
    return middleware


def remove(middleware: Any) -> None:
    """Unregister ``middleware`` (no error if it was not registered)."""
    if middleware in _middleware:
        _middleware.remove(middleware)


def wanted(spec: Any) -> bool:
    """Whether a job of ``spec`` has any hook to call (global or its own)."""
    return bool(_middleware) or spec.hooks is not None


def emit(spec: Any, event: str, task_id: str, args: list, kwargs: dict, *, retval: Any = None,
         exc: BaseException | None = None, traceback: str | None = None) -> None:
    """Queue ``event``'s hooks for one job of ``spec`` (its own, then every middleware's) on the hook thread."""
    calls = []
    own = getattr(spec.hooks, event, None) if spec.hooks is not None else None
    if event == SUCCESS:
        tail: tuple = (retval, task_id, args, kwargs)
    else:
        tail = (exc, task_id, args, kwargs, ExceptionInfo(exc, traceback or ""))
    if own is not None:
        calls.append((own, tail))
    for middleware in list(_middleware):
        fn = getattr(middleware, event, None)
        if callable(fn):
            calls.append((fn, (spec.name, *tail)))
    if not calls:
        return
    _ensure_thread()
    for fn, call_args in calls:
        _calls.put((spec.name, event, task_id, fn, call_args))


def drain(timeout: float = 5.0) -> bool:
    """Wait until every hook queued so far has run (for a bridge stopping, and tests); False on timeout."""
    if _thread is None:  # no hook ever queued
        return True
    done = threading.Event()
    _ensure_thread()
    _calls.put(done)
    return done.wait(timeout)


def _ensure_thread() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="raysys-task-hooks", daemon=True)
            _thread.start()


def _serve() -> None:
    while True:
        item = _calls.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        name, event, task_id, fn, call_args = item
        try:
            fn(*call_args)
        except Exception:  # a hook never changes the job's result
            log.exception("job %s %s: %s hook %s raised (ignored)", task_id, name, event,
                          getattr(fn, "__qualname__", repr(fn)))
