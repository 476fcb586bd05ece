"""API keys -> tenants. A key arrives as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Keys are created and revoked with ``raysys apikey create|revoke`` and stored hashed
(:meth:`raysys.storage.postgres.Database.create_api_key`); every request looks its key up, so a
revoked key stops working on the next request.
"""

from __future__ import annotations

from raysys.errors import RaysysError


class Unauthorized(RaysysError):
    """No API key, or one that is unknown or revoked (HTTP 401)."""

    http_status = 401


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str:
    """The API key a request carries. Raises :class:`Unauthorized` when there is none or it is malformed."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise Unauthorized("the Authorization header must be 'Bearer <api key>'")
    raise Unauthorized("an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
