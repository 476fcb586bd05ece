"""The producer side, for code without Celery: send jobs, wait for results.

Messages are Celery protocol v2 JSON, LPUSHed onto the queue's Redis list (or its Celery priority
list) exactly as a Celery producer would, so raysys bridges and Celery workers both take them::

    from raysys.queue.client import Client
    client = Client(settings)
    res = client.send_task("workers.tasks.ingest_document", kwargs={...})
    res.get(timeout=60)

The seed README's snippets work with only the import line changed::

    from raysys.queue.client import tasks
    result = tasks.ingest_document.delay(document_id="doc_123", tenant_id="t", source_path="/tmp/d.pdf")
    print(result.get())

``tasks`` builds its :class:`Client` lazily from the environment (``Settings.from_env().resolved()``):
this module is an edge, like the CLI. Signatures, callbacks (``link``/``link_error``) and chains
are written in Celery's own format::

    client.chain(tasks.a.s(1), tasks.b.s(), tasks.c.s()).apply_async()
"""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

from raysys.config import Settings
from raysys.errors import UnknownTask
from raysys.queue import canvas, keys, messages, results

log = logging.getLogger(__name__)

# Where each task goes when the registry is not importable here (the Celery service's routes).
DEFAULT_ROUTES: dict[str, str] = {
    "workers.tasks.ingest_document": "ingest",
    "workers.tasks.ingest_batch": "ingest",
    "workers.tasks.process_call_analytics": "analytics",
    "workers.tasks.diarize_call": "analytics",
    "workers.tasks.analyze_emotion": "analytics",
    "workers.tasks.aggregate_daily_metrics": "analytics",
    "workers.tasks.generate_daily_report": "reports",
    "workers.tasks.cleanup_expired_sessions": "reports",
    "workers.tasks.audit_models": "reports",
}


def resolve_task(name: str, settings: Settings) -> tuple[str, str]:
    """``(canonical name, default queue)`` for a task name or alias.

    Uses the task registry when it knows the name, else the Celery service's routes (short names map
    to ``workers.tasks.<name>``). A task registered on every queue (``raysys.ping``) defaults to the
    first configured queue. Raises :class:`UnknownTask` when neither knows it.
    """
    try:
        from raysys.tasks.registry import REGISTRY, load_all, lookup  # noqa: PLC0415 - a producer that names queues itself never loads the task modules

        if not REGISTRY or settings.task_modules:
            load_all(settings.task_modules)
        spec = lookup(name)
        queue = settings.queues[0] if spec.queue == "*" else spec.queue
        return spec.name, queue
    except UnknownTask:
        pass
    except Exception as exc:  # noqa: BLE001 - a broken task module must not stop producers; fall back to routes
        log.warning("task registry unavailable here (%s); routing %r by the Celery service's routes", exc, name)
    full = name if name in DEFAULT_ROUTES else f"workers.tasks.{name}"
    if full in DEFAULT_ROUTES:
        return full, DEFAULT_ROUTES[full]
    raise UnknownTask(f"unknown task {name!r}: pass queue= to send it anyway")


class AsyncResult:
    """A handle on one job's result in the Celery result backend (like ``celery.result.AsyncResult``)."""

    def __init__(self, task_id: str, client: Client) -> None:
        self.id = task_id
        self.task_id = task_id
        self._client = client
        self._cache: dict | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def _meta(self) -> dict:
        if self._cache is not None:
            return self._cache
        raw = self._client.redis.get(keys.result_key(self.id))
        meta = results.loads(raw) if raw else {"status": results.PENDING, "result": None, "traceback": None}
        if meta.get("status") in results.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        """PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE or REVOKED."""
        return self._meta().get("status", results.PENDING)

    status = state

    @property
    def result(self) -> Any:
        """The return value, the exception for FAILURE/RETRY/REVOKED, progress info, or None."""
        meta = self._meta()
        if meta.get("status") in results.EXCEPTION_STATES:
            return results.exception_from_meta(meta.get("result"))
        return meta.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        return self._meta().get("traceback")

    @property
    def date_done(self) -> str | None:
        return self._meta().get("date_done")

    def ready(self) -> bool:
        return self.state in results.READY_STATES

    def successful(self) -> bool:
        return self.state == results.SUCCESS

    def failed(self) -> bool:
        return self.state == results.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5) -> Any:
        """Wait for the job to finish and return its value.

        Subscribes to the result channel first and then reads the stored value, so a result written
        at any moment is seen. ``interval`` is how often the stored value is re-read as a fallback.

        Raises:
            TimeoutError: no final result within ``timeout`` seconds.
            the job's exception (re-created from the result) when it failed or was revoked and
            ``propagate`` is true.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        meta = self._meta()
        if meta.get("status") not in results.READY_STATES:
            pubsub = self._client.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.result_key(self.id))
                while True:
                    meta = self._meta()
                    if meta.get("status") in results.READY_STATES:
                        break
                    wait = interval if deadline is None else min(interval, deadline - time.monotonic())
                    if wait <= 0:
                        raise builtins.TimeoutError(f"job {self.id} did not finish within {timeout} s")
                    message = pubsub.get_message(timeout=wait)
                    if message and message.get("type") == "message":
                        data = results.loads(message["data"])
                        if data.get("status") in results.READY_STATES:
                            meta = self._cache = data
                            break
            finally:
                pubsub.close()
        status = meta.get("status")
        if status == results.SUCCESS:
            return meta.get("result")
        exc = results.exception_from_meta(meta.get("result"))
        if propagate:
            raise exc
        return exc

    wait = get

    def forget(self) -> None:
        self._client.redis.delete(keys.result_key(self.id))
        self._cache = None


class Signature(dict):
    """A Celery signature (a dict, so it travels inside messages as Celery writes it)."""

    def __init__(self, client: Client, task: str, args: Iterable = (), kwargs: dict | None = None,
                 immutable: bool = False, **options: Any) -> None:
        super().__init__(canvas.signature(task, list(args), kwargs, immutable=immutable, **options))
        self._client = client

    def set(self, **options: Any) -> Signature:
        self["options"].update(options)
        return self

    def apply_async(self, args: Iterable = (), kwargs: dict | None = None, **options: Any) -> AsyncResult:
        merged = {**self["options"], **options}
        call_args = list(self["args"]) if self["immutable"] else [*args, *self["args"]]
        return self._client.send_task(self["task"], call_args, {**self["kwargs"], **(kwargs or {})}, **merged)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Signature) -> Chain:
        return Chain(self._client, [self, other])


class Chain:
    """Several signatures run one after another, each getting the previous one's return value."""

    def __init__(self, client: Client, steps: list[Signature]) -> None:
        self._client = client
        self.steps = list(steps)

    def __or__(self, other: Signature) -> Chain:
        return Chain(self._client, [*self.steps, other])

    def apply_async(self, args: Iterable = (), kwargs: dict | None = None, **options: Any) -> AsyncResult:
        """Send the first step; the rest travel in its ``embed.chain`` (last step first, as Celery stores it).

        Returns the last step's result handle (as Celery's chain does).
        """
        if not self.steps:
            raise ValueError("an empty chain")
        rest = []
        for sig in self.steps[1:]:
            sig = Signature(self._client, sig["task"], sig["args"], sig["kwargs"], sig["immutable"], **sig["options"])
            sig["options"].setdefault("task_id", str(uuid.uuid4()))
            full, queue = self._client._route(sig["task"], sig["options"].get("queue"))
            sig["task"] = full
            sig["options"]["queue"] = queue
            rest.append(sig)
        first = self.steps[0]
        first.apply_async(args, kwargs, chain=[dict(s) for s in reversed(rest)], **options)
        last_id = rest[-1]["options"]["task_id"] if rest else None
        return AsyncResult(last_id, self._client) if last_id else first  # type: ignore[return-value]

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)


class TaskProxy:
    """``tasks.<name>``: ``.delay()``, ``.apply_async()``, ``.s()``, ``.si()`` like a Celery task."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self._client.send_task(self.name, args, kwargs)

    def apply_async(self, args: Iterable | None = None, kwargs: dict | None = None, **options: Any) -> AsyncResult:
        return self._client.send_task(self.name, tuple(args or ()), kwargs, **options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self._client, self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self._client, self.name, args, kwargs, immutable=True)

    signature = s


class _Tasks:
    """Attribute access to tasks by short or full name: ``tasks.ingest_document``."""

    def __init__(self, client: Client | None = None) -> None:
        self._client = client

    def _get_client(self) -> Client:
        if self._client is None:
            self._client = Client(Settings.from_env().resolved())
        return self._client

    def __getattr__(self, name: str) -> TaskProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return TaskProxy(self._get_client(), name)

    def __getitem__(self, name: str) -> TaskProxy:
        return TaskProxy(self._get_client(), name)


class Client:
    """Sends jobs to raysys' queues and reads their results.

    Args:
        settings: where Redis is (``settings.redis_url``; results from ``settings.backend_url``).
        redis: an existing ``redis.Redis`` client to use instead of opening one.
    """

    def __init__(self, settings: Settings, redis: Any = None) -> None:
        self.settings = settings
        self._redis = redis
        self.tasks = _Tasks(self)

    @property
    def redis(self) -> Any:
        if self._redis is None:
            import redis  # noqa: PLC0415 - only the subscribe-to-results path needs the client here

            self._redis = redis.Redis.from_url(self.settings.redis_url)
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _route(self, name: str, queue: str | None) -> tuple[str, str]:
        try:
            full, default = resolve_task(name, self.settings)
        except UnknownTask:
            if queue is None:
                raise
            return name, queue
        return full, queue or default

    def send_task(self, name: str, args: Iterable = (), kwargs: dict | None = None, *, queue: str | None = None,
                  task_id: str | None = None, countdown: float | None = None, eta: Any = None,
                  expires: Any = None, priority: int | None = None, link: Any = None, link_error: Any = None,
                  chain: list | None = None, time_limit: float | None = None, soft_time_limit: float | None = None,
                  retries: int = 0, **_ignored: Any) -> AsyncResult:
        """Enqueue one job and return its result handle.

        ``queue`` defaults to the task's registered queue; ``countdown`` (seconds) or ``eta`` (datetime,
        ISO string or unix seconds) delay it; ``expires`` (seconds from now, datetime or ISO) revokes it
        when it has not started by then; ``priority`` 0-9 picks Celery's priority list (lower runs first).
        ``link``/``link_error`` are signatures (or lists of them) run after success/failure.

        Raises:
            UnknownTask: the name is unknown here and no ``queue`` was given.
            ValueError: a time argument is not a time.
        """
        key, raw, task_id = self.encode(name, args, kwargs, queue=queue, task_id=task_id, countdown=countdown, eta=eta,
                                        expires=expires, priority=priority, link=link, link_error=link_error,
                                        chain=chain, time_limit=time_limit, soft_time_limit=soft_time_limit,
                                        retries=retries)
        self.redis.lpush(key, raw)
        return AsyncResult(task_id, self)

    def encode(self, name: str, args: Iterable = (), kwargs: dict | None = None, *, queue: str | None = None,
               task_id: str | None = None, countdown: float | None = None, eta: Any = None, expires: Any = None,
               priority: int | None = None, link: Any = None, link_error: Any = None, chain: list | None = None,
               time_limit: float | None = None, soft_time_limit: float | None = None,
               retries: int = 0) -> tuple[str, bytes, str]:
        """What :meth:`send_task` pushes, without pushing it: ``(list key, message, task id)``."""
        full, queue = self._route(name, queue)
        eta_ts = messages.to_timestamp(eta, "eta")
        if countdown is not None:
            eta_ts = time.time() + float(countdown)
        if isinstance(expires, (int, float)) and not isinstance(expires, bool):
            expires_ts: float | None = time.time() + float(expires)
        else:
            expires_ts = messages.to_timestamp(expires, "expires")
        task_id = task_id or str(uuid.uuid4())
        raw = messages.encode_celery(
            full, list(args), kwargs or {}, task_id=task_id, queue=queue, eta=eta_ts, expires=expires_ts,
            retries=retries, time_limit=time_limit, soft_time_limit=soft_time_limit, priority=priority,
            callbacks=_sig_list(link), errbacks=_sig_list(link_error), chain=chain,
        )
        return keys.list_for(queue, priority), raw, task_id

    def AsyncResult(self, task_id: str) -> AsyncResult:  # Celery's spelling
        return AsyncResult(task_id, self)

    def signature(self, name: str, args: Iterable = (), kwargs: dict | None = None, *, immutable: bool = False,
                  **options: Any) -> Signature:
        return Signature(self, name, args, kwargs, immutable, **options)

    def chain(self, *steps: Signature) -> Chain:
        return Chain(self, list(steps))


def _sig_list(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return [dict(value)]
    return [dict(v) for v in value]


tasks = _Tasks()
"""Tasks by name, with a client built from the environment on first use."""
