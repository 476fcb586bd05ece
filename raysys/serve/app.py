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
Serve on the cluster at ``settings.ray_address`` and returns the base URL. The replica's state and the work
behind the routes are :class:`raysys.serve.service.Service`; errors become JSON in
:mod:`raysys.serve.http_errors`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from ray import serve
from ray.serve.context import _get_global_client

from raysys import errors
from raysys.actors.warehouse import Warehouse
from raysys.analytics.transcripts import transcribe_recording
from raysys.config import Settings
from raysys.ingest.pipeline import search
from raysys.runtime import init_ray
from raysys.serve import uploads
from raysys.serve.edge import Edge
from raysys.serve.http_errors import install_error_handlers
from raysys.serve.service import (
    ANALYTICS_TASK,
    MAX_METRICS_DAYS,
    MULTIPART_SLACK,
    PUBLIC_TASKS,
    JobAccepted,
    Service,
    TaskRequest,
    check_settings,
)
from raysys.tasks.registry import load_all

log = logging.getLogger("raysys.serve")


# --- the FastAPI app -----------------------------------------------------------------------------------


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
            from raysys.analytics.redaction_turns import Policy, redact_transcription  # noqa: PLC0415 - phonenumbers' metadata: only when a transcript is answered

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
