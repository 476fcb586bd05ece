"""Connecting this process to the Ray cluster raysys runs on."""

from __future__ import annotations

import json
import logging
import os

from raysys.config import Settings
from raysys.constants import RAY_NAMESPACE

log = logging.getLogger(__name__)


def init_ray(settings: Settings, **kwargs) -> None:
    """``ray.init`` against ``settings.ray_address`` (the embedded head when `raysys up` started one).

    With no address at all, Ray starts a private local cluster for this process, which is what a
    one-off CLI call or a test wants. Idempotent.
    """
    import ray  # noqa: PLC0415 - Ray loads only when a command connects: the CLI starts without it

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    address = settings.ray_address
    if "RAY_AUTH_MODE" not in os.environ and (not address or address == embedded_ray_address(settings)):
        # A cluster raysys starts itself (`raysys up`'s head, or a private one for this process) runs with
        # token auth: say so up front, which also spares users Ray's "Token authentication is enabled"
        # warning on every command. A private cluster creates its token when none exists.
        _token_mode()
    elif address:
        # Ray 2.60 heads use token auth, but ray.init(address=...) does not turn it on by itself when a
        # token exists; Ray's own helper does (only when RAY_AUTH_MODE is unset and a token exists).
        try:
            from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415 - Ray's private auth setup, only when connecting
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        except ImportError:  # a Ray without token auth
            pass
    kwargs.setdefault("log_to_driver", False)
    kwargs.setdefault("configure_logging", False)
    ray.init(address=address, namespace=RAY_NAMESPACE, ignore_reinit_error=True, **kwargs)
    log.debug("connected to Ray at %s", address or "a new local cluster")


def embedded_ray_address(settings: Settings) -> str | None:
    """The GCS address of the head `raysys up` started for this data directory, if its state records one."""
    try:
        return json.loads(settings.stack_file.read_text()).get("urls", {}).get("ray")
    except (OSError, ValueError, AttributeError):
        return None


def _token_mode() -> None:
    """Token auth for this process and its children, as Ray's own helper turns it on: the variable, and
    Ray's cached config refreshed (it was read when ``ray`` was imported)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config  # noqa: PLC0415 - Ray's private config cache, only when connecting

        Config.initialize("")
    except (ImportError, AttributeError):  # a Ray without the cache reads the variable when it connects
        pass
