"""One API replica's state and the work behind the routes: keys to tenants, scoped jobs, on-demand analytics,
readiness (:class:`Service`), and the request and response bodies the routes share.

Every job a tenant enqueues is bound to it here (:meth:`Service.scope_arguments`): ``tenant_id`` is the
caller's, ``call_id`` one of its calls, paths confined to its folders or to the call's recording.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import ray
from fastapi import Request
from pydantic import BaseModel, Field

from raysys import errors
from raysys.actors.diarization import diarization_pool
from raysys.actors.emotion import emotion_pool
from raysys.actors.warehouse import Warehouse
from raysys.config import Settings
from raysys.paths import confine, confine_to_tenant
from raysys.queue.client import Client
from raysys.serve.auth import Unauthorized, key_from_headers
from raysys.serve.edge import scope_tenant
from raysys.serve.jobstore import JobStore
from raysys.serve.limits import Limits
from raysys.storage import postgres
from raysys.tasks import execute

log = logging.getLogger("raysys.serve")

ANALYTICS_TASK = "workers.tasks.process_call_analytics"
# Tasks that take neither a tenant nor a call and are harmless for any tenant to run.
PUBLIC_TASKS = frozenset({"raysys.ping"})
# Multipart framing and form fields around the file; the file itself is held to max_upload_bytes.
MULTIPART_SLACK = 64 * 1024
MAX_METRICS_DAYS = 366
MODELS_LOADING = "models are loading"
MAX_DELAY_SECONDS = 30 * 86_400  # the furthest a job may be put off (countdown or eta)


class GatewayTimeout(errors.RaysysError):
    """The work did not finish within the time the request allowed (HTTP 504)."""

    http_status = 504


# --- request/response bodies ------------------------------------------------------------------------


class TaskRequest(BaseModel):
    """A job to enqueue: the task's Celery ``args``/``kwargs`` and optional delivery options."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    countdown: float | None = Field(None, ge=0, le=MAX_DELAY_SECONDS, description="run after this many seconds")
    eta: datetime | None = Field(None, description="run at this time (ISO 8601, at most 30 days ahead)")
    expires: float | None = Field(None, gt=0, description="revoke if not started within this many seconds")
    priority: int | None = Field(None, ge=0, le=9, description="Celery priority, 0 runs first")


class JobAccepted(BaseModel):
    job_id: str
    task: str
    queue: str
    state: str = "PENDING"
    status_url: str


# --- the service: state shared by the routes of one replica --------------------------------------------


class Service:
    """Connections of one API replica: PostgreSQL (keys, calls), Redis (jobs), the queue producer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db: postgres.Database | None = None
        self.jobs: JobStore | None = None
        self.limits: Limits | None = None
        self._client = None
        self._models_ready = False
        self._models_task: asyncio.Future | None = None

    async def start(self) -> None:
        check_settings(self.settings)
        self.db = await postgres.Database.open(postgres.database_url(self.settings), max_size=8)
        self.jobs = JobStore(self.settings)
        self.limits = Limits(self.settings, self.jobs.broker)
        execute.resolve("raysys.ping")  # import every task module now, not on the first request

    async def stop(self) -> None:
        if self.db is not None:
            await self.db.close()
        if self.jobs is not None:
            await self.jobs.close()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.settings)
        return self._client

    # auth ---------------------------------------------------------------------------------------------

    async def tenant_for_key(self, key: str) -> str:
        """The tenant of API key ``key``. Raises :class:`Unauthorized` when it is unknown or revoked."""
        tenant = await self.db.tenant_for_key(key)
        if tenant is None:
            raise Unauthorized("the API key is unknown or revoked")
        return tenant

    async def tenant_for(self, request: Request) -> str:
        """The request's tenant: the one the edge authenticated (else the key is looked up here)."""
        tenant = scope_tenant(request.scope)
        if tenant is not None:
            return tenant
        key = key_from_headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
        return await self.tenant_for_key(key)

    # jobs ---------------------------------------------------------------------------------------------

    async def enqueue(self, tenant_id: str, name: str, args: list, kwargs: dict, **options: Any) -> JobAccepted:
        """Check and scope a job for ``tenant_id``, record its owner, send it to its queue.

        Raises InvalidInput when ``eta`` is more than 30 days ahead (besides :meth:`scope_arguments`' errors).
        """
        spec = execute.resolve(name)
        delay = float(options.get("countdown") or 0.0)
        eta = options.get("eta")
        if eta is not None:
            eta = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
            delay = max(delay, (eta - datetime.now(UTC)).total_seconds())
            if delay > MAX_DELAY_SECONDS:
                raise errors.InvalidInput(f"eta is more than {MAX_DELAY_SECONDS // 86_400} days ahead")
        args, kwargs = await self.scope_arguments(tenant_id, spec, args, kwargs)
        job_id = str(uuid.uuid4())
        await self.jobs.record(tenant_id, job_id, delay=delay)
        options = {k: v for k, v in options.items() if v is not None}
        await asyncio.to_thread(self.client.send_task, spec.name, args=args, kwargs=kwargs, task_id=job_id,
                                **options)
        queue = spec.queue if spec.queue != "*" else self.settings.queues[0]
        log.info("enqueued job=%s task=%s queue=%s tenant=%s", job_id, spec.name, queue, tenant_id)
        return JobAccepted(job_id=job_id, task=spec.name, queue=queue, status_url=f"/v1/jobs/{job_id}")

    async def scope_arguments(self, tenant_id: str, spec, args: list, kwargs: dict) -> tuple[list, dict]:
        """Bind the job's arguments to the task and hold them to the caller's tenant.

        - ``tenant_id`` (positional or keyword, null or absent; also into a task's ``**kwargs``) is set
          to the caller's tenant; another tenant's id answers 404 as if it did not exist.
        - ``call_id`` must be one of the tenant's calls (404).
        - ``*_path``/``*_paths``: a call's task (one with ``call_id``) reads only that call's stored
          recording; any other task only paths under the tenant's folders ``<root>/<tenant_id>/``
          (relative paths are taken from there). Else 403. Each is passed on as its real path.
        - A task with neither a tenant nor a call is refused unless it is public (``raysys.ping``).

        Returns the ``(args, kwargs)`` to send. Raises NotFound, Forbidden or InvalidInput.
        """
        sig = inspect.signature(spec.fn)
        params = list(sig.parameters.values())[1:]  # drop the TaskContext
        names = [p.name for p in params]
        args, kwargs = list(args), dict(kwargs)

        def own(given: Any) -> None:
            if given is not None and given != tenant_id:
                raise errors.NotFound(f"tenant {given!r} not found")

        if "tenant_id" in names:
            param = params[names.index("tenant_id")]
            position = names.index("tenant_id")
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) and position < len(args):
                own(args[position])
                args[position] = tenant_id
            else:
                own(kwargs.get("tenant_id"))
                kwargs["tenant_id"] = tenant_id
        elif "tenant_id" in kwargs and any(p.kind is p.VAR_KEYWORD for p in params):
            own(kwargs["tenant_id"])
            kwargs["tenant_id"] = tenant_id
        try:
            spec.check_arguments(args, kwargs)
            bound = sig.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise errors.InvalidInput(f"arguments do not fit task {spec.name}: {exc}") from None
        call = None
        if "call_id" in bound.arguments:
            call = await self.db.get_call(str(bound.arguments["call_id"]), tenant_id)
        for name, value in list(bound.arguments.items()):
            if not (name.endswith("_path") or name.endswith("_paths")):
                continue
            many = isinstance(value, list | tuple)
            confined = [self.confine(tenant_id, path, call) for path in (value if many else [value])]
            bound.arguments[name] = confined if many else confined[0]
        if "tenant_id" not in names and "call_id" not in names and spec.name not in PUBLIC_TASKS:
            raise errors.Forbidden(f"task {spec.name} is not tenant-scoped; an operator runs it with `raysys submit`")
        return list(bound.args[1:]), dict(bound.kwargs)

    def confine(self, tenant_id: str, path: Any, call: Any = None) -> str:
        """The real path of ``path`` if ``tenant_id`` may have a task read it (see :meth:`scope_arguments`).

        Raises InvalidInput (not a non-empty string) or Forbidden; the message names the path as given.
        """
        if not isinstance(path, str) or not path:
            raise errors.InvalidInput("a path argument must be a non-empty string")
        if call is None:
            return str(confine_to_tenant(path, self.settings.allowed_roots, tenant_id))
        # A call's recording is where the platform stored it, whatever folder that is; nothing else.
        stored = confine(call.audio_path, self.settings.allowed_roots) if call.audio_path else None
        given = confine(path, self.settings.allowed_roots)
        if stored is None or given != stored:
            raise errors.Forbidden(f"path {path!r} is not the recording of call {call.id!r}")
        return str(given)

    async def job(self, tenant_id: str, job_id: str) -> dict[str, Any]:
        state = await self.jobs.owned_state(tenant_id, job_id)
        if state is None:
            raise errors.NotFound(f"job {job_id!r} not found")
        return state

    # on-demand analytics ---------------------------------------------------------------------------

    async def analytics_now(self, tenant_id: str, call_id: str, timeout: float) -> dict[str, Any]:
        """Run the call's analytics and wait for them, in one of the tenant's ``API_TENANT_WAIT_SLOTS``.

        Raises NotFound (not the tenant's call), Limited (no slot free), GatewayTimeout.
        """
        await self.db.get_call(call_id, tenant_id)
        async with self.limits.slot("wait", tenant_id, self.settings.api_tenant_wait_slots,
                                    "wait=true analytics requests"):
            return await self._analytics_now(tenant_id, call_id, timeout)

    async def _analytics_now(self, tenant_id: str, call_id: str, timeout: float) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        started = time.perf_counter()
        ref = execute.submit(self.settings, ANALYTICS_TASK, [call_id], task_id=job_id)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)
        except TimeoutError:
            ray.cancel(ref)
            raise GatewayTimeout(f"analytics of call {call_id!r} did not finish within {timeout:g} s; "
                                 "use wait=false to enqueue it") from None
        except Exception as exc:  # noqa: BLE001 - re-raised as its raysys error
            raise errors.unwrap(exc) from None
        elapsed = time.perf_counter() - started
        log.info("analytics call=%s job=%s tenant=%s elapsed=%.3f", call_id, job_id, tenant_id, elapsed)
        return {"call_id": call_id, "job_id": job_id, "state": "SUCCESS", "elapsed_s": round(elapsed, 3),
                "result": result}

    # readiness ------------------------------------------------------------------------------------

    async def readiness(self) -> dict[str, str]:
        """Each dependency -> "ok", "loading" (models still loading) or "unavailable".

        The reason a dependency is not ready goes to the server log only: /readyz answers anyone, and
        error texts carry hosts, ports and paths.
        """
        checks: dict[str, str] = {}

        async def check(name: str, probe) -> None:
            try:
                await asyncio.wait_for(probe(), 10.0)
                checks[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                exc = errors.unwrap(exc)
                loading = isinstance(exc, errors.ModelUnavailable) and str(exc) == MODELS_LOADING
                checks[name] = "loading" if loading else "unavailable"
                if not loading:
                    log.warning("readiness: %s is not ready: %s: %s", name, type(exc).__name__, exc)

        async def pg() -> None:
            await self.db.ping()

        async def warehouse() -> None:

            if not await asyncio.to_thread(Warehouse(self.settings).ping):
                raise RuntimeError("warehouse did not answer")

        await asyncio.gather(check("redis", self.jobs.ping), check("postgres", pg), check("warehouse", warehouse),
                             check("models", self.models))
        return checks

    async def models(self) -> None:
        """Raise unless the diarization and emotion actors are up with their models loaded.

        The first check starts the pools loading in the background (a load can take longer than a
        probe may wait) and reports "loading" until they are ready; a failed load is reported once
        and retried on the next check.
        """
        if self._models_ready:
            return
        if self._models_task is None:
            self._models_task = asyncio.ensure_future(asyncio.to_thread(models_ready, self.settings))
        if not self._models_task.done():
            raise errors.ModelUnavailable(MODELS_LOADING)
        task, self._models_task = self._models_task, None
        task.result()  # raises the load's error
        self._models_ready = True


def models_ready(settings: Settings) -> list[dict]:
    """Start (if needed) the shared diarization and emotion actors and wait until their models are loaded.

    Raises ModelUnavailable when a model cannot load.
    """
    return [*diarization_pool(settings).ready(), *emotion_pool(settings).ready()]


def check_settings(settings: Settings) -> None:
    """Fail at start, in one sentence, when the API could not serve a request."""
    postgres.database_url(settings)  # raises ConfigError when no database is known
    settings.redis_url  # noqa: B018 - raises ConfigError when no broker is known
