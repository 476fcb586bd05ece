"""CLI: `raysys ingest PATH... --tenant T` and `raysys search "query" --tenant T`.

``raysys ingest`` runs the ingestion pipeline directly on the Ray cluster (no queue), with a progress
bar; directories are expanded. The paths named on the command line are allowed roots for this run
(the operator chose them), on top of ``RAYSYS_ALLOWED_ROOTS``; symlinks inside them that lead out
are still refused.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from raysys.config import Settings
from raysys.errors import InvalidInput, RaysysError
from raysys.runtime import init_ray
from raysys.storage.postgres import database_url


def register(sub) -> None:
    """Add this family's sub-commands to the `raysys` parser."""
    p = sub.add_parser("ingest", help="ingest documents (PDF, DOCX, HTML, Markdown, text) into the RAG index")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories (expanded recursively)")
    p.add_argument("--tenant", required=True, help="tenant id the documents belong to")
    p.add_argument("--document-id", help="document id (one file only; default: derived from the file's path)")
    p.add_argument("--concurrency", type=int, default=None, help="documents in flight (default: cluster CPUs)")
    p.add_argument("--json", action="store_true", help="print one JSON result per document")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="the chunks of a tenant's documents nearest to a question")
    p.add_argument("query")
    p.add_argument("--tenant", required=True)
    p.add_argument("--top", type=int, default=5, help="how many chunks (default 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)


def _ready(settings: Settings) -> Settings:
    """The settings with the embedded stack's URLs; ConfigError (exit code 2) when there is no database."""
    settings = settings.resolved()
    database_url(settings)
    return settings


def cmd_ingest(args, settings: Settings) -> int:
    from raysys.ingest.batch import ingest_many  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    resolved = _ready(settings)
    if args.document_id and len(args.paths) != 1:
        print("raysys: --document-id needs exactly one PATH", file=sys.stderr)
        return 2
    roots = tuple(dict.fromkeys((*resolved.allowed_roots, *(os.path.realpath(p) for p in args.paths))))
    resolved = resolved.replace(allowed_roots=roots)
    paths = [str(Path(p).absolute()) for p in args.paths]
    init_ray(resolved)

    if args.document_id:
        from raysys.ingest.batch import error_result  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser
        from raysys.ingest.pipeline import ingest_document  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        try:
            results = iter([ingest_document(resolved, args.tenant, paths[0], args.document_id)])
        except (RaysysError, OSError) as exc:
            results = iter([error_result(paths[0], exc, args.document_id)])
        total = 1
        bar_total = {"n": 1}
    else:
        bar_total = {"n": 0}
        results = ingest_many(resolved, args.tenant, paths, max_in_flight=args.concurrency,
                              on_total=lambda n: bar_total.__setitem__("n", n))
        total = None

    counts = {"ingested": 0, "unchanged": 0, "failed": 0}
    chunks = pages = 0
    bar = tqdm(total=total, unit="doc", disable=args.no_progress or args.json or not sys.stderr.isatty(),
               file=sys.stderr)
    try:
        for result in results:
            if bar.total != bar_total["n"]:
                bar.total = bar_total["n"]
            bar.update(1)
            counts[result["status"]] += 1
            if result["status"] == "ingested":
                chunks += result.get("chunks") or 0
                pages += result.get("pages") or 0
            if args.json:
                print(json.dumps(result, default=str))
            elif result["status"] == "failed":
                tqdm.write(f"FAILED    {result['source_path']}: {result['error']['type']}: {result['error']['message']}",
                           file=sys.stdout)
            else:
                tqdm.write(f"{result['status']:<9} {result['source_path']} -> {result['document_id']} "
                          f"({result.get('chunks')} chunks, {result.get('pages') or '-'} pages, {result['seconds']:.2f}s)",
                           file=sys.stdout)
            bar.set_postfix(failed=counts["failed"], chunks=chunks)
    finally:
        bar.close()
    if not args.json:
        print(f"{sum(counts.values())} documents: {counts['ingested']} ingested, {counts['unchanged']} unchanged, "
              f"{counts['failed']} failed; {chunks} chunks, {pages} pages")
    return 1 if counts["failed"] else 0


def cmd_search(args, settings: Settings) -> int:
    from raysys.ingest.pipeline import search  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    resolved = _ready(settings)
    init_ray(resolved)
    try:
        hits = search(resolved, args.tenant, args.query, args.top)
    except InvalidInput as exc:
        print(f"raysys: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return 0
    if not hits:
        print(f"no documents indexed for tenant {args.tenant!r}")
        return 1
    for rank, hit in enumerate(hits, 1):
        where = f"p.{hit.page}" if hit.page else f"#{hit.position}"
        print(f"{rank}. {hit.score:.3f}  {hit.title or hit.document_id}  {where}"
              + (f"  [{hit.heading}]" if hit.heading else ""))
        text = " ".join(hit.text.split())
        print(f"   {text[:300]}{'...' if len(text) > 300 else ''}")
    return 0
