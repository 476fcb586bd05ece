"""Ingest every document under a directory for one tenant — a `ray job submit` entrypoint.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m raysys.jobs.ingest_dir /data/raysys/documents/acme --tenant acme

Each file with a document extension (PDF, DOCX, HTML, Markdown, text) is ingested by the same code
as ``workers.tasks.ingest_batch`` (:func:`raysys.ingest.batch.ingest_many`: one Ray task per file,
a bounded number in flight; parse, chunk, embed on the embedding actors, index in pgvector). Document
ids derive from the file's real path, as for every other ingestion, so a second run updates the same
documents and unchanged files are skipped by their content hash. DIR must lie inside the allowed roots
(``RAYSYS_ALLOWED_ROOTS``). Progress goes to the job log; the job ends with a JSON summary line and
exits 1 when any document failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from raysys.config import Settings
from raysys.errors import Forbidden
from raysys.ingest.batch import ingest_many
from raysys.jobs import job_settings
from raysys.jobs.backfill import Progress
from raysys.paths import confine
from raysys.runtime import init_ray

log = logging.getLogger("raysys.jobs.ingest_dir")
EXTENSIONS = frozenset({".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt", ".text"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raysys.jobs.ingest_dir", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--tenant", required=True)
    p.add_argument("--concurrency", type=int, default=None,
                   help="documents in flight at once (default WORKER_CONCURRENCY or the cluster's CPUs)")
    p.add_argument("--no-recursive", action="store_true", help="only the directory's own files")
    p.add_argument("--log-every", type=int, default=10, help="a progress line every N documents")
    return p.parse_args(argv)


def find_documents(root: Path, recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """(documents, skipped files) under ``root``, sorted; hidden files and directories are ignored."""
    found, skipped = [], []
    for path in sorted(root.rglob("*") if recursive else root.iterdir()):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or not path.is_file():
            continue
        (found if path.suffix.lower() in EXTENSIONS else skipped).append(path)
    return found, skipped


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    args = parse_args(argv)
    settings = job_settings("ingest_dir", settings)
    if settings is None:
        return 2

    try:
        root = confine(args.directory, settings.allowed_roots)
    except Forbidden as exc:
        print(f"ingest_dir: {exc} (allowed roots: {', '.join(settings.allowed_roots)}; "
              "set RAYSYS_ALLOWED_ROOTS)", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"ingest_dir: {args.directory} is not a directory", file=sys.stderr)
        return 2
    docs, skipped = find_documents(root, recursive=not args.no_recursive)
    log.info("ingest tenant=%s dir=%s: %d documents, %d other files skipped", args.tenant, root, len(docs), len(skipped))
    for path in skipped:
        log.info("skipped %s (not a document type)", path)
    counts = {"ingested": 0, "unchanged": 0, "failed": 0, "chunks": 0}
    failures: dict[str, str] = {}
    started = time.perf_counter()
    if docs:
        init_ray(settings)
        progress = Progress(len(docs), args.log_every, f"ingest {args.tenant}", unit="doc")
        try:
            for result in ingest_many(settings, args.tenant, [str(p) for p in docs],
                                      max_in_flight=args.concurrency):
                status = result.get("status", "failed")
                ok = status != "failed"
                counts[status if status in counts else "failed"] += 1
                counts["chunks"] += int(result.get("chunks") or 0) if ok else 0
                key = str(result.get("source_path"))
                if not ok:
                    err = result.get("error") or {}
                    failures[key] = f"{err.get('type')}: {err.get('message')}"
                progress(key, ok, failures.get(key))
        finally:
            progress.close()
    elapsed = time.perf_counter() - started
    summary = {"tenant": args.tenant, "directory": str(root), "total": len(docs), **counts,
               "succeeded": counts["ingested"] + counts["unchanged"], "skipped": len(skipped),
               "elapsed_s": round(elapsed, 2), "failures": failures}
    log.info("ingest done: %d ingested, %d unchanged, %d failed of %d, %d chunks, %d skipped, %.1f s",
             counts["ingested"], counts["unchanged"], counts["failed"], len(docs), counts["chunks"], len(skipped),
             elapsed)
    print("SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
