"""The task registry: Celery task names -> Python callables and their options.

A task is a plain function registered with :func:`task`. Its first parameter is a
:class:`TaskContext` (settings, job id, try number, progress), then the Celery ``args``/``kwargs``
exactly as producers send them. It returns a JSON-serialisable value. It may raise
:class:`raysys.errors.Retry` (or call ``ctx.retry(exc=..., countdown=...)``, as Celery's ``self.retry``) to
be retried, :class:`raysys.errors.InvalidInput`/``NotFound`` to fail at once, and any other exception to be
retried up to ``max_retries`` with backoff. Lifecycle hooks (``on_success``, ``on_failure``, ``on_retry``, or
``hooks=`` an object with them) are options of :func:`task` too (:mod:`raysys.tasks.hooks`).

Short names are accepted as aliases (``ingest_document`` for ``workers.tasks.ingest_document``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from raysys.config import Settings
from raysys.errors import Retry, UnknownTask
from raysys.tasks import hooks as task_hooks

# Modules that register tasks; imported by load_all() wherever tasks run or are listed.
TASK_MODULES = (
    "raysys.tasks.builtin",
    "raysys.tasks.ingest",
    "raysys.tasks.analytics",
    "raysys.tasks.transcription",
    "raysys.tasks.metrics",
    "raysys.tasks.reports",
    "raysys.tasks.maintenance",
)


@dataclass
class TaskContext:
    """What a running task knows about its job."""

    settings: Settings
    task_id: str = ""
    task_name: str = ""
    queue: str = ""
    retries: int = 0
    progress_cb: Callable[[float, str], None] | None = field(default=None, repr=False)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1] (shown as Celery's PROGRESS state and in logs)."""
        if self.progress_cb is not None:
            self.progress_cb(max(0.0, min(1.0, fraction)), message)

    def retry(self, exc: BaseException | None = None, countdown: float | None = None,
              max_retries: int | None = None) -> None:
        """Run this job again after ``countdown`` seconds (None: the task's backoff), as Celery's ``self.retry``.

        Raises:
            raysys.errors.Retry: always (let it propagate); past ``max_retries`` the job fails with ``exc``.
        """
        raise Retry(exc, countdown=countdown, max_retries=max_retries)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fn: Callable[..., Any]
    queue: str
    aliases: tuple[str, ...] = ()
    max_retries: int | None = None        # None: settings.max_retries
    retry_backoff: float = 1.0            # first retry delay in seconds, doubled each try, jittered
    light: bool = False                   # quick and never blocking: run in batches in the bridge's process
    num_cpus: float = 1.0                 # Ray resources for one run
    num_gpus: float = 0.0
    soft_time_limit: float | None = None  # None: settings.task_soft_time_limit
    time_limit: float | None = None       # None: settings.task_time_limit
    hooks: task_hooks.TaskHooks | None = None  # on_success / on_failure / on_retry (raysys.tasks.hooks)

    def check_arguments(self, args: list | tuple, kwargs: dict) -> None:
        """Raise TypeError when ``args``/``kwargs`` do not fit the task's signature."""
        self.signature.bind(None, *args, **kwargs)

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The task function's signature, read once (every admitted job is checked against it)."""
        return inspect.signature(self.fn)


REGISTRY: dict[str, TaskSpec] = {}
_LOADED = {"builtin": False}  # whether load_all() imported the built-in task modules in this process
_ALIASES: dict[str, str] = {}


def task(name: str, queue: str, *, aliases: tuple[str, ...] = (), hooks: Any = None,
         on_success: Callable | None = None, on_failure: Callable | None = None, on_retry: Callable | None = None,
         **options: Any) -> Callable:
    """Register ``fn`` under ``name`` (and each alias); options as in :class:`TaskSpec`.

    ``on_success(retval, task_id, args, kwargs)``, ``on_failure(exc, task_id, args, kwargs, einfo)`` and
    ``on_retry(exc, task_id, args, kwargs, einfo)`` are the task's lifecycle hooks, as Celery's ``Task``
    methods; ``hooks`` an object or class with such methods (:mod:`raysys.tasks.hooks`).
    """
    spec_hooks = task_hooks.TaskHooks.build(hooks, on_success=on_success, on_failure=on_failure, on_retry=on_retry)

    def register(fn: Callable) -> Callable:
        spec = TaskSpec(name=name, fn=fn, queue=queue, aliases=tuple(aliases), hooks=spec_hooks, **options)
        REGISTRY[name] = spec
        for alias in (*aliases, name.rsplit(".", 1)[-1]):
            _ALIASES.setdefault(alias, name)
        fn.spec = spec  # type: ignore[attr-defined]
        return fn

    return register


def load_all(extra: Iterable[str] = ()) -> dict[str, TaskSpec]:
    """Import every task module (those not yet written are skipped) and return the registry.

    ``extra`` names more modules to import (``settings.task_modules``, ``RAYSYS_TASK_MODULES``); unlike
    the built-in ones, a missing extra module is an error (an operator asked for it).
    """
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    _LOADED["builtin"] = True
    for module in extra:
        importlib.import_module(module)
    return REGISTRY


def names_of(spec: TaskSpec) -> tuple[str, ...]:
    """Every name a producer may use for ``spec``: its full name, aliases and short name."""
    return tuple(n for n, full in _ALIASES.items() if full == spec.name) + (spec.name,)


def lookup(name: str) -> TaskSpec:
    """The task registered as ``name`` or an alias of it. Raises :class:`UnknownTask`."""
    spec = REGISTRY.get(name) or REGISTRY.get(_ALIASES.get(name, ""))
    if spec is None and not _LOADED["builtin"]:  # tasks of another module may be registered already
        load_all()
        spec = REGISTRY.get(name) or REGISTRY.get(_ALIASES.get(name, ""))
    if spec is None:
        raise UnknownTask(f"unknown task {name!r}")
    return spec
