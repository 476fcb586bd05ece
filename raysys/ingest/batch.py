"""Batch ingestion: many files fanned out over the Ray cluster, a bounded number in flight.

Files are grouped - small ones together (up to 16 files or 256 KiB per group), a large one alone - and
each group is one Ray task running :func:`raysys.ingest.pipeline.ingest_documents` over one database
connection, its files' chunks embedded in shared batches. At most ``max_in_flight`` groups run at
once (default ``WORKER_CONCURRENCY``, else the cluster's CPUs), so a 100,000-file batch holds
100,000 paths in the driver, not 100,000 pending tasks. A file that fails - outside the allowed
roots, corrupt, unsupported, too large - yields a ``failed`` result with its error and every other
file goes on; only a failure of the whole group (a crashed worker, the database or the embedding
actor down) fails the files of that group together.

Directories are expanded recursively (hidden files and folders skipped, symlinks followed only when
their target stays inside the allowed roots). Files reached twice are ingested once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ray

from raysys.config import Settings
from raysys.errors import Forbidden, InvalidInput, NotFound, RaysysError, TooLarge
from raysys.ingest.pipeline import document_id_for, ingest_documents
from raysys.paths import confine, inside_any, tenant_roots

log = logging.getLogger(__name__)

MAX_BATCH_FILES = 100_000
GROUP_BYTES = 256 * 1024  # small files per Ray task, by total size ...
GROUP_FILES = 16          # ... and by count


def error_result(source_path: str, exc: BaseException, document_id: str | None = None) -> dict[str, Any]:
    """The per-document entry of a file that failed."""
    return {"source_path": source_path, "document_id": document_id, "status": "failed",
            "error": {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
                      "http_status": getattr(exc, "http_status", 500),
                      "retryable": bool(getattr(exc, "retryable", not isinstance(exc, RaysysError)))}}


def expand_paths(settings: Settings, paths: Iterable[str | os.PathLike[str]], limit: int = MAX_BATCH_FILES,
                 tenant_id: str | None = None) -> tuple[list[tuple[str, Path]], list[dict[str, Any]]]:
    """Confine and expand ``paths``: ([(as given, real file path)], [failed entries]).

    A folder inside ``tenant_id``'s own folders (``<root>/<tenant_id>/``, see :mod:`raysys.paths`) never
    leads out of them: a symlink in it to another tenant's file is refused like a path outside the roots.
    """
    files: list[tuple[str, Path]] = []
    failed: list[dict[str, Any]] = []
    seen: set[Path] = set()

    def add(given: str, real: Path) -> None:
        if real not in seen:
            seen.add(real)
            files.append((given, real))
        if len(files) > limit:
            raise TooLarge(f"the batch holds more than {limit:,} files; split it")

    own: tuple[Path, ...] = ()
    if tenant_id is not None:
        try:
            own = tenant_roots(settings.allowed_roots, tenant_id)
        except InvalidInput:  # an id that cannot be a folder name has no folder of its own
            own = ()

    for raw in paths:
        given = os.fspath(raw) if isinstance(raw, (str, os.PathLike)) else repr(raw)
        try:
            if not isinstance(raw, (str, os.PathLike)):
                raise InvalidInput(f"source path must be a string, got {type(raw).__name__}")
            real = confine(raw, settings.allowed_roots)
            if not real.is_dir():
                add(given, real)
                continue
            inner_roots: Iterable[Any] = own if own and inside_any(real, own) else settings.allowed_roots
            for folder, dirs, names in os.walk(real):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    inner = os.path.join(folder, name)
                    try:
                        add(inner, confine(inner, inner_roots))
                    except TooLarge:
                        raise
                    except (Forbidden, InvalidInput) as exc:
                        failed.append(error_result(inner, exc))
        except TooLarge:
            raise
        except (Forbidden, InvalidInput, NotFound) as exc:
            failed.append(error_result(given, exc))
    return files, failed


def _remote_ingest():
    @ray.remote(num_cpus=1, max_retries=1, retry_exceptions=False)
    def ingest_group(settings: Settings, tenant_id: str, files: list[tuple[str, str]]) -> list[dict[str, Any]]:
        items = [(real, document_id_for(real)) for _, real in files]
        try:
            outcomes = ingest_documents(settings, tenant_id, items)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is down: every file of the group fails
            outcomes = [exc] * len(files)
        results = []
        for (given, _), (_, document_id), outcome in zip(files, items, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("ingest %s failed: %s: %s", given, type(outcome).__name__, outcome)
                results.append(error_result(given, outcome, document_id))
            else:
                outcome["source_path"] = given
                results.append(outcome)
        return results

    return ingest_group


def default_in_flight(settings: Settings) -> int:
    if settings.worker_concurrency:
        return settings.worker_concurrency

    return max(1, min(16, int(ray.cluster_resources().get("CPU", 2))))


def group_files(files: list[tuple[str, Path]], max_bytes: int = GROUP_BYTES,
                max_files: int = GROUP_FILES) -> list[list[tuple[str, str]]]:
    """Small files travel together (one Ray task, one database connection, shared embedding batches);
    a file of ``max_bytes`` or more travels alone."""
    groups: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    size = 0
    for given, real in files:
        try:
            n = real.stat().st_size
        except OSError:
            n = 0  # the task reports the error
        if current and (size + n > max_bytes or len(current) >= max_files):
            groups.append(current)
            current, size = [], 0
        current.append((given, str(real)))
        size += n
    if current:
        groups.append(current)
    return groups


def ingest_many(settings: Settings, tenant_id: str, paths: Iterable[str | os.PathLike[str]], *,
                max_in_flight: int | None = None,
                on_total: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Ingest every file under ``paths``; yield one result per file as it completes.

    Ray must be initialised. ``on_total(n)`` is called once with the number of results to expect.
    Results are :func:`raysys.ingest.pipeline.ingest_document` summaries (with ``source_path`` as
    given) or ``failed`` entries from :func:`error_result`. ``max_in_flight`` bounds the Ray tasks
    running at once; each takes a group of small files (:func:`group_files`) or one large file.
    """
    files, failed = expand_paths(settings, paths, tenant_id=tenant_id)
    if on_total:
        on_total(len(files) + len(failed))
    yield from failed
    ingest_group = _remote_ingest()
    limit = max(1, max_in_flight or default_in_flight(settings))
    pending: dict[Any, list[tuple[str, str]]] = {}
    queue = iter(group_files(files))
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < limit:
            group = next(queue, None)
            if group is None:
                exhausted = True
                break
            pending[ingest_group.remote(settings, tenant_id, group)] = group
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            group = pending.pop(ref)
            try:
                yield from ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a crashed worker fails its files only
                for given, _ in group:
                    yield error_result(given, exc)
