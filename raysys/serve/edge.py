"""The API's edge: ASGI middleware that answers before any body byte is read.

FastAPI reads and parses a request's body before it runs the route's dependencies, so a key check
written as a dependency comes too late: an unauthenticated client could make the server read (and
spool to disk) a body of any size. This middleware sits in front of every route and, from the
headers alone, in this order:

1. ``/v1/*``: the API key (``Authorization: Bearer`` or ``X-API-Key``) must map to a tenant — else
   401 at once. The tenant is put in the request's scope for the routes (:func:`scope_tenant`).
2. Every route: the announced ``Content-Length`` must be within the body limit — else 413 at once. A
   multipart body (an upload) may be ``MAX_UPLOAD_BYTES`` plus framing, any other body
   ``MAX_REQUEST_BYTES``. Bodies without a length (chunked) are counted as they stream and stopped
   with a 413 the moment they pass the limit.
3. ``/v1/*``: the key's request rate and the tenant's requests in progress
   (:mod:`raysys.serve.limits`) — else 429 with ``Retry-After``.

It knows no route by name, so routes added later are covered as they are.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException

from raysys.errors import RaysysError, TooLarge
from raysys.serve.auth import Unauthorized, key_from_headers
from raysys.serve.limits import Limited

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("raysys.serve")

TENANT_SCOPE_KEY = "raysys.tenant"
PROTECTED_PREFIX = "/v1/"


class BodyTooLarge(HTTPException):
    """A streamed body passed its limit while a route was reading it (FastAPI lets HTTPException through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body is larger than the {limit}-byte limit")


def scope_tenant(scope: Scope) -> str | None:
    """The tenant the edge authenticated for this request (None outside ``/v1/*``)."""
    return scope.get(TENANT_SCOPE_KEY)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class Edge:
    """ASGI middleware: key, body size, rate and tenant slots checked from the headers (see the module).

    Args:
        app: the wrapped ASGI app.
        service: the replica's :class:`raysys.serve.service.Service` (``authenticate``, ``limits``, ``settings``).
        upload_limit: the largest multipart body, in bytes.
        body_limit: the largest other body, in bytes.
    """

    def __init__(self, app: ASGIApp, service: Any, upload_limit: int, body_limit: int) -> None:
        self.app, self.service = app, service
        self.upload_limit, self.body_limit = upload_limit, body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        protected = path.startswith(PROTECTED_PREFIX) or path == PROTECTED_PREFIX.rstrip("/")
        content_type = (_header(scope, b"content-type") or "").lower()
        limit = self.upload_limit if content_type.startswith("multipart/") else self.body_limit
        settings = self.service.settings
        holder = None
        try:
            tenant = key = None
            if protected:
                key = key_from_headers(_header(scope, b"authorization"), _header(scope, b"x-api-key"))
                tenant = await self.service.tenant_for_key(key)
            length = _header(scope, b"content-length")
            if length is not None:
                if not length.strip().isdigit():
                    await self._reply(send, scope, 400, "InvalidInput", "Content-Length must be a whole number")
                    return
                if int(length) > limit:
                    raise TooLarge(f"the request body is larger than the {limit}-byte limit")
            if protected:
                holder = await self.service.limits.admit(key, "requests", tenant, settings.api_tenant_concurrency,
                                                         "requests")
                scope[TENANT_SCOPE_KEY] = tenant
        except (Unauthorized, TooLarge, Limited) as exc:
            await self._refuse(send, scope, exc)
            return
        except Exception:  # noqa: BLE001 - PostgreSQL or Redis down: a plain 503, the cause in the log
            log.exception("edge checks failed for %s %s", scope.get("method"), path)
            await self._reply(send, scope, 503, "Unavailable", "the service cannot check requests now; retry shortly",
                              {"Retry-After": "5"})
            return
        try:
            await self.app(scope, _counting(receive, limit), send)
        finally:
            if holder is not None:
                await self.service.limits.release("requests", tenant, holder)

    async def _refuse(self, send: Send, scope: Scope, exc: RaysysError) -> None:
        headers = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, Limited):
            headers["Retry-After"] = str(exc.retry_after)
        await self._reply(send, scope, exc.http_status, type(exc).__name__, str(exc), headers)

    @staticmethod
    async def _reply(send: Send, scope: Scope, status: int, kind: str, detail: str,
                     headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": kind, "detail": detail}).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if _header(scope, b"content-length") not in (None, "0") or _header(scope, b"transfer-encoding"):
            # The body was never read: the connection cannot carry another request after this answer.
            raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` body bytes have arrived."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped
