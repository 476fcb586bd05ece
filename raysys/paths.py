"""Confining file paths to the directories raysys may read (``settings.allowed_roots``).

A path from a job, a CLI user or an HTTP request is resolved to its real location first (every
symlink followed, every ``..`` collapsed) and only then compared with the roots, which are resolved
the same way. So ``<root>/../etc/passwd`` and ``<root>/link -> /etc`` are refused, while a ``..``
that stays inside a root, or a symlink from one allowed place to another, is fine.

Relative paths are taken relative to the roots (the first root under which the file exists, else the
first root), never to the worker's current directory, which differs from process to process.

Tenants: a tenant's files live in its own folder under each root, ``<root>/<tenant_id>/``
(:func:`tenant_roots`). Whatever a tenant names over HTTP is confined to those folders
(:func:`confine_to_tenant`), so one tenant can name neither another's folder nor a whole root.

Errors name the path as it was given, never its resolved location or the roots: a caller learns
nothing about the server's layout from a refusal.

Limit: the check happens before the file is opened; a process that can rewrite the roots' contents
between the check and the open can still race it. Open the returned path at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from raysys.errors import Forbidden, InvalidInput, NotFound

log = logging.getLogger(__name__)


def _real(path: Path) -> Path:
    # strict=False: a missing file still resolves (the caller reports NotFound/InvalidInput itself).
    return Path(os.path.realpath(path))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> Path:
    """The real path of ``path`` when it lies inside one of ``roots``.

    Args:
        path: absolute, or relative to the roots.
        roots: the allowed directories (``settings.allowed_roots``); none means nothing is allowed.

    Returns:
        The resolved absolute path (symlinks followed). It may not exist; the caller checks that.

    Raises:
        InvalidInput: the path is empty or contains a NUL byte.
        Forbidden: its real location is outside every root (``..`` or a symlink escapes, or no roots).
    """
    raw = os.fspath(path)
    if not raw or "\x00" in raw:
        raise InvalidInput(f"invalid path {raw!r}")
    real_roots = [_real(Path(r).expanduser()) for r in roots]
    if not real_roots:
        raise Forbidden(f"path {raw!r} is not allowed: no allowed roots are configured (RAYSYS_ALLOWED_ROOTS)")
    given = Path(raw).expanduser()
    if given.is_absolute():
        candidates = [_real(given)]
    else:
        joined = [_real(root / given) for root in real_roots]
        candidates = [c for c in joined if c.exists()] or joined[:1]
    real = candidates[0]
    if not any(_inside(real, root) for root in real_roots):
        # The resolved location and the roots stay in the server log (the caller's view is the raw path).
        log.info("path %r refused: it resolves to %s, outside %s", raw, real, [str(r) for r in real_roots])
        raise Forbidden(f"path {raw!r} is outside the allowed roots")
    return real


def confine_file(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]], what: str = "file") -> Path:
    """:func:`confine`, and the file must exist: ``NotFound("<what> '<path>' does not exist")`` otherwise."""
    real = confine(path, roots)
    if not real.is_file():
        raise NotFound(f"{what} {str(path)!r} does not exist")
    return real


def tenant_roots(roots: Iterable[str | os.PathLike[str]], tenant_id: str) -> tuple[Path, ...]:
    """Each root's folder for ``tenant_id``: ``<root>/<tenant_id>`` (they need not exist).

    Raises:
        InvalidInput: ``tenant_id`` cannot be one folder name (empty, ``.``/``..``, a separator or NUL).
    """
    if (not isinstance(tenant_id, str) or not tenant_id or tenant_id in (".", "..") or "/" in tenant_id
            or "\\" in tenant_id or "\x00" in tenant_id or len(tenant_id) > 200):
        raise InvalidInput("the tenant id cannot name a folder")
    return tuple(Path(r).expanduser() / tenant_id for r in roots)


def confine_to_tenant(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]], tenant_id: str) -> Path:
    """:func:`confine` to the tenant's folders ``<root>/<tenant_id>/``; relative paths are taken from them.

    Raises InvalidInput (bad path or tenant id) or Forbidden (outside the tenant's folders).
    """
    return confine(path, tenant_roots(roots, tenant_id))


def inside_any(path: str | os.PathLike[str], roots: Iterable[str | os.PathLike[str]]) -> bool:
    """Whether the real location of ``path`` lies inside one of ``roots`` (resolved the same way)."""
    real = _real(Path(os.fspath(path)).expanduser())
    return any(_inside(real, _real(Path(r).expanduser())) for r in roots)
