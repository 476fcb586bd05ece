"""Ingestion end to end on real files, real PostgreSQL (pgvector) and a real Ray cluster with the
MiniLM embedding actor: chunks and vectors land in PostgreSQL, search finds paraphrased questions,
re-ingestion is idempotent, a changed document is replaced atomically, bad files fail clearly and
alone, and the CLI works."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from ingest_fixtures import QUESTIONS, corrupt_docx, encrypted_pdf, make_pdf, write_corpus

from raysys.errors import Forbidden, InvalidInput, NotFound, TooLarge, UnsupportedMedia
from raysys.ingest.pipeline import document_id_for, ingest_document, search
from raysys.storage import documents as index
from raysys.storage.postgres import connect
from raysys.tasks.registry import TaskContext, lookup


@pytest.fixture
def docs_root(settings) -> Path:
    root = Path(settings.allowed_roots[-1])
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def corpus(docs_root) -> dict[str, Path]:
    return write_corpus(docs_root / "corpus")


def fetch(url: str, sql: str, *args):
    async def run():
        conn = await connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def run_task(settings, name: str, *args):
    spec = lookup(name)
    return spec.fn(TaskContext(settings=settings, task_id="t-1", task_name=spec.name, queue=spec.queue), *args)


def test_tasks_are_registered_on_the_ingest_queue():
    for name in ("workers.tasks.ingest_document", "workers.tasks.ingest_batch", "ingest_document", "ingest_batch"):
        assert lookup(name).queue == "ingest"
    lookup("ingest_document").check_arguments(["doc_1", "tenant", "/tmp/x.pdf"], {})
    lookup("ingest_batch").check_arguments(["tenant", ["/tmp/x.pdf"]], {})


def test_each_format_lands_chunks_and_vectors_in_postgres(settings, ray_cluster, corpus, tenant_id):
    expected_mime = {"handbook.pdf": "application/pdf", "refunds.docx": "wordprocessingml", "mortgage.html": "text/html",
                     "banking.md": "text/markdown", "hours.txt": "text/plain"}
    for name, path in corpus.items():
        summary = run_task(settings, "workers.tasks.ingest_document", f"doc-{name}", tenant_id, str(path))
        json.dumps(summary)  # a Celery result must be JSON
        assert summary["status"] == "ingested" and summary["chunks"] >= 1, summary
        assert expected_mime[name] in summary["mime_type"]

    docs = {r["id"]: r for r in fetch(settings.postgres_url, "SELECT * FROM documents WHERE tenant_id = $1", tenant_id)}
    assert set(docs) == {f"doc-{n}" for n in corpus}
    assert docs["doc-handbook.pdf"]["pages"] == 3
    assert docs["doc-handbook.pdf"]["title"] == "Card and payments handbook"
    assert docs["doc-refunds.docx"]["title"] == "Refund policy"

    rows = fetch(settings.postgres_url, "SELECT document_id, position, page, heading, text, embedding "
                 "FROM document_chunks WHERE tenant_id = $1 ORDER BY document_id, position", tenant_id)
    assert len(rows) == sum(d["chunk_count"] for d in docs.values())
    vectors = np.array([r["embedding"] for r in rows])
    assert vectors.shape[1] == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    pdf = [r for r in rows if r["document_id"] == "doc-handbook.pdf"]
    assert [r["page"] for r in pdf] == [1, 2, 3]
    assert pdf[1]["heading"] == "International Transfers" and "SWIFT" in pdf[1]["text"]
    html = " ".join(r["text"] for r in rows if r["document_id"] == "doc-mortgage.html")
    assert "ten percent" in html
    for noise in ("Log in to online banking", "Careers", "Cookie settings", "Savings accounts", "Tracking pixel",
                  "analytics"):
        assert noise not in html, noise
    docx_headings = {r["heading"] for r in rows if r["document_id"] == "doc-refunds.docx"}
    assert "Refund policy > Refund Timelines" in docx_headings
    for r in rows:  # positions are contiguous per document
        assert r["position"] < docs[r["document_id"]]["chunk_count"]


def test_batch_and_search_find_the_right_chunk_for_paraphrased_questions(settings, ray_cluster, corpus, tenant_id):
    result = run_task(settings, "workers.tasks.ingest_batch", tenant_id, [str(corpus["handbook.pdf"].parent)])
    assert result["total"] == 5 and result["ingested"] == 5 and result["failed"] == 0, result
    by_name = {Path(d["source_path"]).name: d for d in result["documents"]}
    for question, (name, heading, words) in QUESTIONS.items():
        hits = search(settings, tenant_id, question, top_k=3)
        top = hits[0]
        assert top.document_id == by_name[name]["document_id"], (question, [(h.title, h.heading) for h in hits])
        if heading:
            assert heading in top.heading
        assert words in top.text
        assert top.score > hits[-1].score or len(hits) == 1
    # another tenant sees nothing
    assert search(settings, tenant_id + "-other", "debit card refund", top_k=3) == []


def test_reingesting_is_idempotent_and_a_change_replaces_chunks(settings, ray_cluster, docs_root, tenant_id):
    path = docs_root / "policy.md"
    path.write_text("# Fees\n\nThe monthly account fee is four euros.\n\n# Limits\n\nDaily card limit is 500 euros.\n")
    first = ingest_document(settings, tenant_id, str(path), "policy")
    assert first["status"] == "ingested" and first["chunks"] == 2
    before = fetch(settings.postgres_url, "SELECT position, text, embedding::text AS e FROM document_chunks "
                   "WHERE tenant_id = $1 ORDER BY position", tenant_id)
    doc_before = fetch(settings.postgres_url, "SELECT ingested_at, content_hash FROM documents WHERE id = 'policy'")[0]

    again = ingest_document(settings, tenant_id, str(path), "policy")
    assert again["status"] == "unchanged" and again["chunks"] == 2
    assert "timings" not in again or "embed" not in again["timings"]  # nothing parsed or embedded
    assert fetch(settings.postgres_url, "SELECT position, text, embedding::text AS e FROM document_chunks "
                 "WHERE tenant_id = $1 ORDER BY position", tenant_id) == before
    assert fetch(settings.postgres_url, "SELECT ingested_at, content_hash FROM documents WHERE id = 'policy'")[0] == doc_before

    path.write_text("# Fees\n\nThe monthly account fee is now six euros.\n")
    changed = ingest_document(settings, tenant_id, str(path), "policy")
    assert changed["status"] == "ingested" and changed["chunks"] == 1
    assert changed["content_hash"] != first["content_hash"]
    after = fetch(settings.postgres_url, "SELECT position, text FROM document_chunks WHERE tenant_id = $1", tenant_id)
    assert [r["text"] for r in after] == ["The monthly account fee is now six euros."]
    # the same file under a path-derived id (batch/CLI) is another document, and is stable
    assert document_id_for(path.resolve()) == document_id_for(path.resolve())


def test_a_failed_replacement_leaves_the_old_chunks(settings, ray_cluster, docs_root, tenant_id):
    path = docs_root / "a.txt"
    path.write_text("Cheques clear in three working days.\n")
    ingest_document(settings, tenant_id, str(path), "a")
    record = index.DocumentRecord("a", tenant_id, str(path), "sha256:new", "text/plain", None, None, 10, "m", "p")
    from raysys.ingest.chunking import Chunk

    chunks = [Chunk(0, "new text one", None, None, 3), Chunk(1, "new text two", None, None, 3)]
    bad_vectors = np.zeros((2, 3), dtype=np.float32)  # wrong dimension: the second statement fails

    async def replace():
        conn = await connect(settings.postgres_url)
        try:
            await index.replace_document(conn, record, chunks, bad_vectors)
        finally:
            await conn.close()

    with pytest.raises(Exception, match="(?i)dimension"):
        asyncio.run(replace())
    rows = fetch(settings.postgres_url, "SELECT text FROM document_chunks WHERE tenant_id = $1", tenant_id)
    assert [r["text"] for r in rows] == ["Cheques clear in three working days."]
    doc = fetch(settings.postgres_url, "SELECT content_hash FROM documents WHERE tenant_id = $1", tenant_id)[0]
    assert doc["content_hash"] != "sha256:new"


def _bad_files(settings, root: Path, tmp_path: Path) -> list[tuple[str, str, type, str]]:
    """(label, source path, error type, message fragment) for every kind of bad input."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("not for ingestion")
    (root / "escape-link.txt").symlink_to(secret)
    (root / "big.txt").write_text("x " * 10_000)
    pdf = make_pdf(root / "good.pdf")
    raw = pdf.read_bytes()
    (root / "truncated.pdf").write_bytes(raw[: len(raw) // 2])
    encrypted_pdf(pdf, root / "locked.pdf")
    corrupt_docx(root / "broken.docx")
    from ingest_fixtures import PNG_BYTES

    (root / "scan.pdf").write_bytes(PNG_BYTES)
    (root / "data.txt").write_bytes(bytes(range(256)) * 4)
    (root / "empty.txt").write_bytes(b"")
    return [
        ("dotdot", str(root / ".." / ".." / "outside" / "secret.txt"), Forbidden, "outside the allowed roots"),
        ("relative-dotdot", "../../outside/secret.txt", Forbidden, "outside the allowed roots"),
        ("symlink", str(root / "escape-link.txt"), Forbidden, "outside the allowed roots"),
        ("absolute", str(secret), Forbidden, "outside the allowed roots"),
        ("oversize", str(root / "big.txt"), TooLarge, "MAX_DOCUMENT_BYTES"),
        ("corrupt-pdf", str(root / "truncated.pdf"), InvalidInput, "corrupt"),
        ("encrypted-pdf", str(root / "locked.pdf"), InvalidInput, "encrypted"),
        ("corrupt-docx", str(root / "broken.docx"), InvalidInput, "corrupt"),
        ("png-named-pdf", str(root / "scan.pdf"), UnsupportedMedia, "PNG image"),
        ("binary-named-txt", str(root / "data.txt"), UnsupportedMedia, "binary data"),
        ("empty", str(root / "empty.txt"), InvalidInput, "empty"),
        ("missing", str(root / "nope.pdf"), NotFound, "does not exist"),
    ]


def test_bad_files_are_refused_with_clear_errors(settings, docs_root, tmp_path, tenant_id):
    settings = settings.replace(max_document_bytes=10_000)
    cases = _bad_files(settings, docs_root, tmp_path)
    for label, source, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            run_task(settings, "workers.tasks.ingest_document", f"doc-{label}", tenant_id, source)
    assert fetch(settings.postgres_url, "SELECT id FROM documents WHERE tenant_id = $1", tenant_id) == []


def test_page_limit_is_enforced(settings, docs_root, tenant_id):
    pdf = make_pdf(docs_root / "three-pages.pdf")
    with pytest.raises(TooLarge, match="3 pages.*MAX_DOCUMENT_PAGES"):
        ingest_document(settings.replace(max_document_pages=2), tenant_id, str(pdf), "p")


def test_batch_one_bad_file_fails_alone(settings, ray_cluster, docs_root, tmp_path, tenant_id):
    settings = settings.replace(max_document_bytes=10_000)
    cases = _bad_files(settings, docs_root, tmp_path)
    good = docs_root / "good.md"
    good.write_text("# Savings\n\nInstant access savings pay 3 percent interest.\n")
    paths = [str(good)] + [source for _, source, _, _ in cases]
    result = run_task(settings, "workers.tasks.ingest_batch", tenant_id, paths)
    json.dumps(result)
    statuses = {d["source_path"]: d for d in result["documents"]}
    assert statuses[str(good)]["status"] == "ingested"
    for label, source, error, fragment in cases:
        entry = statuses[source]
        assert entry["status"] == "failed", label
        assert entry["error"]["type"] == error.__name__, (label, entry)
        assert fragment in entry["error"]["message"], (label, entry)
    assert result["failed"] == len(cases) and result["ingested"] == 1

    # a directory: the good PDF in it is ingested, the symlink that leads out fails alone
    result = run_task(settings, "workers.tasks.ingest_batch", tenant_id, [str(docs_root)])
    by_name = {Path(d["source_path"]).name: d for d in result["documents"]}
    assert by_name["good.pdf"]["status"] == "ingested"
    assert by_name["good.md"]["status"] == "unchanged"
    assert by_name["escape-link.txt"]["error"]["type"] == "Forbidden"
    assert by_name["locked.pdf"]["status"] == "failed"


def test_cli_ingest_and_search(settings, ray_cluster, tmp_path, tenant_id, monkeypatch, capsys):
    from raysys.cli import main

    folder = write_corpus(tmp_path / "cli-docs")["hours.txt"].parent  # outside the allowed roots: CLI args are roots
    (folder / "notes.bin").write_bytes(b"\x7fELF" + bytes(100))
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    code = main(["ingest", str(folder), "--tenant", tenant_id, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1  # one file failed
    assert "6 documents: 5 ingested, 0 unchanged, 1 failed" in out
    assert "FAILED" in out and "ELF executable" in out

    code = main(["search", "when are branches open at the weekend?", "--tenant", tenant_id, "--top", "2"])
    out = capsys.readouterr().out
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("1. ") and "Branch opening hours" in first, out
    assert "Saturdays" in out.split("2. ")[0]

    code = main(["search", "when are branches open?", "--tenant", tenant_id, "--top", "1", "--json"])
    hits = json.loads(capsys.readouterr().out)
    assert code == 0 and len(hits) == 1 and 0 < hits[0]["score"] <= 1


def test_confine_refuses_escapes(tmp_path):
    from raysys.paths import confine

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("a")
    (tmp_path / "out.txt").write_text("x")
    (root / "link").symlink_to(tmp_path)
    (root / "inner-link").symlink_to(root / "sub")
    roots = [str(root)]
    assert confine(root / "sub" / "a.txt", roots) == (root / "sub" / "a.txt").resolve()
    assert confine("sub/a.txt", roots) == (root / "sub" / "a.txt").resolve()
    assert confine(root / "inner-link" / "a.txt", roots) == (root / "sub" / "a.txt").resolve()
    assert confine(root / "sub" / ".." / "sub" / "a.txt", roots) == (root / "sub" / "a.txt").resolve()
    for bad in (root / ".." / "out.txt", "../out.txt", root / "link" / "out.txt", tmp_path / "out.txt",
                str(root) + "-sibling/x"):
        with pytest.raises(Forbidden):
            confine(bad, roots)
    with pytest.raises(Forbidden, match="no allowed roots"):
        confine(root / "sub" / "a.txt", [])
    with pytest.raises(InvalidInput):
        confine("a\x00b", roots)
    assert os.path.isabs(confine("sub/a.txt", roots))
