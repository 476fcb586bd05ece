"""The API's errors as JSON: raysys' error hierarchy (and Ray's) mapped to ``{"error", "detail"}`` bodies with
the status of the :mod:`raysys.errors` class; nothing internal (tracebacks, hosts, paths) reaches the client.
"""

from __future__ import annotations

import logging
import uuid

import ray.exceptions as rex
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from raysys import errors
from raysys.serve.limits import Limited
from raysys.serve.service import GatewayTimeout

log = logging.getLogger("raysys.serve")

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
