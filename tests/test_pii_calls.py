"""PII redaction through the real paths: the analytics task (real PostgreSQL, chDB, Ray) stores redacted
turns and the count, the summary endpoint (a real local HTTP server) sees no PII, archives and document
chunks are redacted where the tenant's policy says so."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from analytics_fixtures import run, utc, with_db

from raysys.constants import EMBEDDING_DIM
from raysys.storage.postgres import Call, Turn
from raysys.tasks.analytics import process_call_analytics

START = utc(2025, 3, 10, 9, 30)
PII = ["4111", "07700", "900123", "jane.doe", "1985", "536-22-8130"]
TURNS = [Turn(0, "agent", 0.0, 3.0, "Thanks for calling, can I take the long card number please?"),
         Turn(1, "customer", 3.5, 8.0, "Sure, it's 4111 1111"),
         Turn(2, "agent", 8.0, 8.5, "Okay"),
         Turn(3, "customer", 8.6, 12.0, "1111 1111, and my mobile is 07700 900123"),
         Turn(4, "agent", 12.5, 15.0, "And your date of birth and e-mail?"),
         Turn(5, "customer", 15.5, 20.0, "The third of June 1985, jane.doe@example.com, social is 536-22-8130"),
         Turn(6, "agent", 20.5, 24.0, "Thank you, the payment of £49.99 for order 12345678 has gone through.")]


class _Chat(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # the name http.server calls
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        payload = json.dumps({"choices": [{"message": {"content": "Customer paid by card; call 07700 900123."}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Chat.bodies = []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def seed(settings, tenant, call_id, pii: bool | None = None):
    async def go(db):
        await db.upsert_tenant(tenant)
        await db.set_tenant_pii(tenant, pii)
        await db.upsert_calls([Call(id=call_id, tenant_id=tenant, customer_id="c1", started_at=START,
                                    ended_at=START + timedelta(seconds=30))])
        await db.replace_turns(tenant, call_id, TURNS)

    run(with_db(settings, go))


def stored(settings, tenant, call_id):
    async def go(db):
        return await db.get_turns(tenant, call_id), await db.get_analytics(tenant, call_id)

    return run(with_db(settings, go))


def test_analytics_stores_redacted_turns_and_the_count_and_the_summary_endpoint_sees_no_pii(
        ctx, asettings, tenant_id, chat_url):
    ctx.settings = asettings.replace(summary_llm_url=chat_url)
    call_id = f"{tenant_id}_pii"
    seed(asettings, tenant_id, call_id)
    out = process_call_analytics(ctx, call_id)
    turns, row = stored(asettings, tenant_id, call_id)
    texts = [t.text for t in turns]
    assert texts[1] == "Sure, it's [CARD]" and texts[3] == "[CARD], and my mobile is [PHONE]"
    assert texts[5] == "[DOB], [EMAIL], social is [SSN]"
    assert texts[6] == TURNS[6].text  # the amount and the order number survive
    assert row["pii_redactions"] == 5 == out["pii_redactions"]
    assert row["pii_redaction_counts"] == {"CARD": 1, "PHONE": 1, "DOB": 1, "EMAIL": 1, "SSN": 1}
    assert len(_Chat.bodies) == 1 and "[CARD]" in _Chat.bodies[0]
    for secret in PII:
        assert secret not in _Chat.bodies[0]
        assert secret not in json.dumps(out) and secret not in (row["summary"] or "")
    assert row["summary"] == "Customer paid by card; call [PHONE]."  # the model's answer is redacted too
    # A re-run reads the already redacted turns: same text, and the count of the first run is kept.
    process_call_analytics(ctx, call_id)
    again, row = stored(asettings, tenant_id, call_id)
    assert [t.text for t in again] == texts and row["pii_redactions"] == 5


def test_a_tenant_with_redaction_off_keeps_its_text(ctx, asettings, tenant_id):
    call_id = f"{tenant_id}_plain"
    seed(asettings, tenant_id, call_id, pii=False)
    process_call_analytics(ctx, call_id)
    turns, row = stored(asettings, tenant_id, call_id)
    assert [t.text for t in turns] == [t.text for t in TURNS]
    assert row["pii_redactions"] == 0 and row["pii_redaction_counts"] == {}


def test_archived_turns_are_redacted(asettings, analytics_chdb, tenant_id):
    from raysys.actors.warehouse import Warehouse
    from raysys.tasks.maintenance import _archive_calls

    call_id = f"{tenant_id}_old"
    seed(asettings, tenant_id, call_id)  # never analysed: the stored turns still hold the PII
    wh = Warehouse(asettings)

    async def go(db):
        return await _archive_calls(db, wh, START + timedelta(days=1), asettings)

    assert run(with_db(asettings, go))["calls_archived"] >= 1
    mine = [r for r in wh.archived_calls(tenant_id) if r["call_id"] == call_id]
    assert mine and "[CARD]" in mine[0]["turns"]
    for secret in PII:
        assert secret not in mine[0]["turns"]


@pytest.mark.parametrize("redact_documents", [True, False])
def test_document_chunks_are_redacted_when_the_tenant_asks(settings, tenant_id, redact_documents):
    from raysys.ingest.pipeline import ingest_document

    async def go(db):
        await db.upsert_tenant(tenant_id)
        await db.set_tenant_pii(tenant_id, None, redact_documents)

    run(with_db(settings, go))
    root = settings.allowed_roots[-1]
    path = f"{root}/escalations.md"
    import os

    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
        f.write("# Escalations\n\nCall the duty manager Sam on 07700 900123 or write to sam.lee@example.com.\n"
                "Refunds over £250 need a second approval.\n")

    def embed(texts):
        return np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)

    assert ingest_document(settings, tenant_id, path, embed=embed)["status"] == "ingested"

    async def chunks(db):
        return [r["text"] for r in await db.pool.fetch(
            "SELECT text FROM document_chunks WHERE tenant_id = $1 ORDER BY position", tenant_id)]

    text = "\n".join(run(with_db(settings, chunks)))
    assert "£250" in text
    if redact_documents:
        assert "[PHONE]" in text and "[EMAIL]" in text and "07700" not in text and "sam.lee" not in text
    else:
        assert "07700 900123" in text and "sam.lee@example.com" in text
