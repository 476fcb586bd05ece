"""The HTTP API: a FastAPI app served by Ray Serve, over the same tasks and model actors as the queues.

Routes (all under ``/v1`` need an API key — ``Authorization: Bearer <key>`` or ``X-API-Key``):

- ``POST /v1/calls/{call_id}/analytics``  run ``process_call_analytics`` now (``wait=true``, default: the
  result in the response) or enqueue it (``wait=false``: 202 and a job id)
- ``GET  /v1/calls/{call_id}/analytics``  the stored analytics of a call
- ``POST /v1/diarize``, ``POST /v1/emotion`` diarization / emotion of an uploaded recording (multipart)
- ``POST /v1/transcribe``                 speaker turns with words of an uploaded recording (multipart)
- ``GET  /v1/tasks``, ``POST /v1/tasks/{name}`` list the tasks a tenant may enqueue / enqueue one
- ``GET  /v1/jobs/{job_id}``              state and result of a job this tenant enqueued
- ``GET  /v1/metrics/daily``              the tenant's daily metrics (warehouse)
- ``GET  /v1/metrics/agents?day=``        the tenant's agent scorecards of one day (warehouse)
- ``GET  /v1/search``                     search the tenant's document index
- ``GET  /healthz`` (process up), ``GET /readyz`` (dependencies and models ready, else 503), ``/docs``.

Every route is tenant-scoped: another tenant's call or job answers 404, exactly as a missing one.
The key, the body size, the key's request rate and the tenant's requests in progress are checked
by :class:`raysys.serve.edge.Edge` before any body byte is read (401, 413, 429 with ``Retry-After``).
A tenant is bound once, there: every task parameter named ``tenant_id`` is the caller's tenant, and
paths are confined to the caller's own folders ``<root>/<tenant_id>/`` (a call's audio to the call's
stored recording).
Errors are JSON ``{"error": <type>, "detail": <one sentence>}`` with the status of the
:mod:`raysys.errors` class; tracebacks stay in the server log.

:func:`build_app` gives the Serve application (``serve.run``/``serve build``); :func:`deploy` starts
Serve on the cluster at ``settings.ray_address`` and returns the base URL.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
import uuid
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import ray
import ray.exceptions as rex
from fastapi import Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.context import _get_global_client
from starlette.exceptions import HTTPException as StarletteHTTPException

from raysys import errors
from raysys.actors.diarization import diarization_pool
from raysys.actors.emotion import emotion_pool
from raysys.actors.warehouse import Warehouse
from raysys.analytics.transcripts import transcribe_recording
from raysys.config import Settings
from raysys.ingest.pipeline import search
from raysys.paths import confine, confine_to_tenant
from raysys.queue.client import Client
from raysys.runtime import init_ray
from raysys.serve import uploads
from raysys.serve.auth import Unauthorized, key_from_headers
from raysys.serve.edge import Edge, scope_tenant
from raysys.serve.jobstore import JobStore
from raysys.serve.limits import Limited, Limits
from raysys.storage import postgres
from raysys.tasks import execute
from raysys.tasks.registry import load_all

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


# --- the FastAPI app -----------------------------------------------------------------------------------


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map raysys' error hierarchy (and Ray's) to JSON bodies; nothing internal reaches the client."""
    @app.exception_handler(errors.RaysysError)
    async def raysys_error(request: Request, exc: Exception) -> JSONResponse:
        exc = errors.unwrap(exc)
        status = getattr(exc, "http_status", 500)
        if isinstance(exc, errors.UnknownTask):
            status = 404
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, Limited):
            headers = {"Retry-After": str(exc.retry_after)}
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if status >= 500 and not isinstance(exc, errors.ModelUnavailable | GatewayTimeout):
            log.error("request %s %s failed", request.method, request.url.path, exc_info=exc)
            detail = "internal error"
        return _error(status, type(exc).__name__, detail, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                    for e in exc.errors()]
        first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return JSONResponse({"error": "InvalidInput", "detail": f"{where}: {first['msg']}".strip(": "),
                             "problems": jsonable_encoder(problems)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "NotFound", 405: "MethodNotAllowed", 413: "TooLarge"}.get(exc.status_code, "HTTPError")
        return _error(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(rex.RayActorError)
    async def actor_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("model/actor unavailable for %s", request.url.path, exc_info=exc)
        return _error(503, "ModelUnavailable", "a model service is restarting; retry shortly",
                      {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        exc = errors.unwrap(exc)
        if isinstance(exc, errors.RaysysError):
            return await raysys_error(request, exc)
        ref = uuid.uuid4().hex[:12]
        log.error("request %s %s failed (ref %s)", request.method, request.url.path, ref, exc_info=exc)
        return _error(500, "InternalError", f"internal error (ref {ref})")


def create_app(service: Service) -> FastAPI:
    """The FastAPI app over ``service`` (its lifespan opens and closes the service's connections)."""
    settings = service.settings
    upload_limit = settings.max_upload_bytes + MULTIPART_SLACK

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="raysys", version="1", lifespan=lifespan,
                  description="On-demand call analytics, recordings, jobs and metrics of a contact centre. "
                              "Every /v1 route needs an API key (`raysys apikey create --tenant T`).")
    install_error_handlers(app)
    # Outermost: nothing of the body is read before the key, size and limits are checked.
    app.add_middleware(Edge, service=service, upload_limit=upload_limit, body_limit=settings.max_request_bytes)
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <api key>")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <api key>")

    async def tenant(request: Request, _b=Security(bearer), _k=Security(header_key)) -> str:
        return await service.tenant_for(request)

    # --- health -------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="the API process is up")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Redis, PostgreSQL, the warehouse and the models are ready",
             responses={503: {"description": "a dependency or a model is not ready"}})
    async def readyz() -> JSONResponse:
        checks = await service.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    # --- calls --------------------------------------------------------------------------------------

    @app.post("/v1/calls/{call_id}/analytics", tags=["calls"], status_code=200,
              summary="run call analytics now (wait=true) or enqueue it (wait=false: 202 and a job id)",
              responses={202: {"model": JobAccepted}, 404: {"description": "no such call for this tenant"},
                         504: {"description": "did not finish within timeout"}})
    async def call_analytics(call_id: str, tenant_id: str = Depends(tenant), wait: bool = True,
                             timeout: float = Query(300.0, gt=0, le=3600)):
        if not wait:
            accepted = await service.enqueue(tenant_id, ANALYTICS_TASK, [call_id], {})
            return JSONResponse(accepted.model_dump(), status_code=202)
        return jsonable_encoder(await service.analytics_now(tenant_id, call_id, min(timeout, settings.task_time_limit)))

    @app.get("/v1/calls/{call_id}/analytics", tags=["calls"], summary="the stored analytics of a call")
    async def stored_analytics(call_id: str, tenant_id: str = Depends(tenant)) -> dict:
        await service.db.get_call(call_id, tenant_id)
        return jsonable_encoder(await service.db.get_analytics(tenant_id, call_id))

    # --- recordings ---------------------------------------------------------------------------------

    @app.post("/v1/diarize", tags=["recordings"],
              summary="who spoke when in an uploaded recording (WAV, FLAC, Ogg, AIFF or MP3)",
              responses={413: {"description": "larger than MAX_UPLOAD_BYTES"},
                         415: {"description": "not an audio format raysys decodes"}})
    async def diarize(file: UploadFile = File(...), tenant_id: str = Depends(tenant),
                      num_speakers: int | None = Form(None, ge=1, le=32),
                      min_speakers: int | None = Form(None, ge=1, le=32),
                      max_speakers: int | None = Form(None, ge=1, le=32),
                      layout: str = Form("auto", pattern="^(auto|mono|stereo)$")) -> dict:
        path = await uploads.save_upload(file, settings, tenant_id)
        try:
            diarize_file = model_function("diarization", "diarize_file")
            return await asyncio.to_thread(diarize_file, settings, str(path), num_speakers=num_speakers,
                                           min_speakers=min_speakers, max_speakers=max_speakers, layout=layout)
        except Exception as exc:  # noqa: BLE001 - re-raised as its raysys error
            raise errors.unwrap(exc) from None
        finally:
            uploads.remove(path)

    @app.post("/v1/emotion", tags=["recordings"],
              summary="emotion per speaker segment of an uploaded recording",
              responses={413: {"description": "larger than MAX_UPLOAD_BYTES"},
                         415: {"description": "not an audio format raysys decodes"}})
    async def emotion(file: UploadFile = File(...), tenant_id: str = Depends(tenant),
                      diarize: bool = Form(True, description="find speaker segments first (else one segment)")) -> dict:
        path = await uploads.save_upload(file, settings, tenant_id)
        try:
            # None: analyze_file diarizes first; otherwise one segment, clamped to the recording's length.
            segments = None if diarize else [{"start": 0.0, "end": 1e9, "speaker": "SPEAKER_00"}]
            analyze_file = model_function("emotion", "analyze_file")
            return await asyncio.to_thread(analyze_file, settings, str(path), segments=segments)
        except Exception as exc:  # noqa: BLE001 - re-raised as its raysys error
            raise errors.unwrap(exc) from None
        finally:
            uploads.remove(path)

    # --- transcription (issue 15): same upload, auth and tenancy as /v1/diarize -------------------

    @app.post("/v1/transcribe", tags=["recordings"],
              summary="speaker turns with words from an uploaded recording (nothing is stored)",
              responses={413: {"description": "larger than MAX_UPLOAD_BYTES"},
                         415: {"description": "not an audio format raysys decodes"}})
    async def transcribe(file: UploadFile = File(...), tenant_id: str = Depends(tenant),
                         layout: str = Form("auto", pattern="^(auto|mono|stereo)$"),
                         language: str | None = Form(None, pattern="^[a-z]{2,3}$")) -> dict:
        path = await uploads.save_upload(file, settings, tenant_id)
        try:

            result = await asyncio.to_thread(transcribe_recording, settings, str(path), layout=layout,
                                             language=language)
            from raysys.analytics.redaction_turns import Policy, redact_transcription  # noqa: PLC0415

            policy = Policy.for_tenant(settings, await service.db.tenant_pii(tenant_id))
            result, _ = redact_transcription(result, policy)  # PII leaves only as tags (issue 17)
            return {**{k: v for k, v in result.items() if k != "diarization"},
                    "num_speakers": result["diarization"]["num_speakers"]}
        except Exception as exc:  # noqa: BLE001 - re-raised as its raysys error
            raise errors.unwrap(exc) from None
        finally:
            uploads.remove(path)

    # --- jobs ---------------------------------------------------------------------------------------

    @app.get("/v1/tasks", tags=["jobs"], summary="the tasks this API can enqueue")
    async def list_tasks(tenant_id: str = Depends(tenant)) -> list[dict]:
        out = []
        for spec in sorted(load_all().values(), key=lambda s: s.name):
            params = list(inspect.signature(spec.fn).parameters)[1:]
            if "tenant_id" in params or "call_id" in params or spec.name in PUBLIC_TASKS:
                out.append({"name": spec.name, "queue": spec.queue, "parameters": params})
        return out

    @app.post("/v1/tasks/{name}", tags=["jobs"], status_code=202, response_model=JobAccepted,
              summary="enqueue a registered task (Celery name or short name)",
              responses={404: {"description": "unknown task"}, 403: {"description": "not a tenant task"}})
    async def enqueue(name: str, body: TaskRequest | None = None, tenant_id: str = Depends(tenant)) -> JobAccepted:
        body = body or TaskRequest()
        return await service.enqueue(tenant_id, name, body.args, body.kwargs, countdown=body.countdown,
                                     eta=body.eta, expires=body.expires, priority=body.priority)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="state and result of a job this tenant enqueued",
             responses={404: {"description": "no such job for this tenant"}})
    async def job(job_id: str, tenant_id: str = Depends(tenant)) -> dict:
        return await service.job(tenant_id, job_id)

    # --- metrics and search -------------------------------------------------------------------------

    @app.get("/v1/metrics/daily", tags=["metrics"], summary="the tenant's daily metrics (AHT, FCR, CSAT proxy ...)")
    async def daily_metrics(tenant_id: str = Depends(tenant), start: date | None = None,
                            end: date | None = None) -> dict:

        end = end or datetime.now(UTC).date()
        start = start or end - timedelta(days=6)
        if start > end:
            raise errors.InvalidInput("start must not be after end")
        if (end - start).days >= MAX_METRICS_DAYS:
            raise errors.InvalidInput(f"a metrics range is at most {MAX_METRICS_DAYS} days")
        rows = await asyncio.to_thread(Warehouse(settings).daily_metrics, tenant_id, start, end)
        return {"tenant_id": tenant_id, "start": start, "end": end, "days": jsonable_encoder(rows)}

    @app.get("/v1/metrics/agents", tags=["metrics"], summary="the tenant's agent scorecards of one day")
    async def agent_metrics(tenant_id: str = Depends(tenant), day: date | None = None,
                            agent_id: str | None = Query(None, min_length=1, max_length=200)) -> dict:
        """Per-agent calls, AHT and its parts, FCR, sentiment, talk share, interruptions, silence, overlap,
        escalations and top intents of ``day`` (default yesterday, UTC); 422 for a malformed day."""
        day = day or datetime.now(UTC).date() - timedelta(days=1)
        rows = await asyncio.to_thread(Warehouse(settings).agent_metrics, tenant_id, day, day, agent_id)
        return {"tenant_id": tenant_id, "day": day, "agents": jsonable_encoder(rows)}

    @app.get("/v1/search", tags=["documents"], summary="search the tenant's document index")
    async def search(q: str = Query(..., min_length=1, max_length=2000), k: int = Query(5, ge=1, le=50),
                     tenant_id: str = Depends(tenant)) -> dict:
        hits = await asyncio.to_thread(search_documents, settings, tenant_id, q, k)
        return {"query": q, "hits": jsonable_encoder(hits)}

    return app


def model_function(module: str, name: str):
    """``raysys.actors.<module>.<name>`` (the shared model actors' entry points), or ModelUnavailable."""
    try:
        return getattr(importlib.import_module(f"raysys.actors.{module}"), name)
    except (ImportError, AttributeError) as exc:
        raise errors.ModelUnavailable(f"the {module} model is not available in this build") from exc


def search_documents(settings: Settings, tenant_id: str, query: str, k: int) -> list[dict]:
    """The tenant's chunks nearest to ``query`` (pgvector search), called from a thread."""
    return [hit.to_dict() if hasattr(hit, "to_dict") else hit for hit in search(settings, tenant_id, query, top_k=k)]


# --- Serve ---------------------------------------------------------------------------------------------

INGRESS_NAME = "raysys-api"
APP_NAME = "raysys"
AUTOSCALING = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16,
               "upscale_delay_s": 10, "downscale_delay_s": 120}


@serve.deployment(name=INGRESS_NAME, ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64,
                  autoscaling_config=AUTOSCALING, health_check_period_s=10, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=20)
@serve.ingress()
class Ingress:
    """One API replica: the FastAPI app over a :class:`Service` (its own connection pools)."""

    def __init__(self, settings: Settings) -> None:
        logging.getLogger("raysys").setLevel(logging.INFO)
        self.service = Service(settings)

    def __serve_build_asgi_app__(self):
        return create_app(self.service)

    async def check_health(self) -> None:
        # Serve restarts a replica whose check raises: a dead PostgreSQL pool or Redis is such a case.
        if self.service.db is not None:
            await self.service.db.ping()
        if self.service.jobs is not None:
            await self.service.jobs.ping()


def build_app(settings: Settings, **options: Any):  # ray.serve.Application
    """The Serve application for ``settings``; ``options`` go to the ingress deployment's ``.options``."""
    check_settings(settings)
    ingress = Ingress
    if options:
        ingress = ingress.options(**options)
    return ingress.bind(settings)


def base_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def deploy(settings: Settings, *, blocking: bool = False, name: str = APP_NAME, route_prefix: str = "/") -> str:
    """Deploy the API on the cluster at ``settings.ray_address`` and return its base URL.

    Starts Serve with HTTP on ``settings.serve_host:serve_port`` (if Serve already runs on the cluster,
    its HTTP options stay as they are and its port is returned). With ``blocking`` it serves until
    interrupted and then deletes the application. Raises :class:`ConfigError` when PostgreSQL or Redis
    is not configured.
    """
    settings = settings.resolved()
    app = build_app(settings)
    init_ray(settings)
    serve.start(http_options={"host": settings.serve_host, "port": settings.serve_port})
    host, port = settings.serve_host, settings.serve_port
    try:
        http = _get_global_client().http_config
        host, port = http.host, http.port
    except Exception:  # noqa: BLE001 - private API; fall back to what we asked for
        pass
    serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    url = base_url(host, port)
    log.info("raysys API at %s (docs at %s/docs)", url, url)
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.delete(name)
    return url
