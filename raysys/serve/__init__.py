"""The HTTP API on Ray Serve (see :mod:`raysys.serve.app`). ``deploy(settings) -> base_url`` starts it.

Layer 6, beside scheduler and jobs (none imports another): may import the queue and every layer
below; imported by commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raysys.config import Settings


def deploy(settings: Settings, *, blocking: bool = False) -> str:
    """Deploy the API on the cluster at ``settings.ray_address``; return its base URL (see app.deploy)."""
    from raysys.serve.app import deploy as _deploy  # noqa: PLC0415 - Serve and FastAPI load only when the API is deployed

    return _deploy(settings, blocking=blocking)


__all__ = ["deploy"]
