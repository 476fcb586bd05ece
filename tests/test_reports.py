"""Daily report: HTML/CSV contents, and delivery to a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import csv
import email
import io
from datetime import date, timedelta
from email import policy

import pytest
from analytics_fixtures import run, utc, with_db

from raysys.actors.warehouse import Warehouse
from raysys.analytics.report import CHARTS, build_report, save_report
from raysys.errors import NotFound, Retry
from raysys.stack import free_port
from raysys.tasks.reports import generate_daily_report

DAY = date(2025, 3, 10)
PNG = b"\x89PNG\r\n\x1a\n"


def _daily(day, total, aht=300.0, fcr=0.75, csat=0.1):
    return {"day": day, "total_calls": total, "aht_mean": aht, "aht_p90": aht * 1.5, "fcr": fcr, "fcr_final": 1,
            "csat_proxy": csat, "top_intents": [("billing", 3), ("card_lost", 1)],
            "calls_by_hour": [0] * 9 + [3, 1] + [0] * 13}


def _calls(n):
    return [{"call_id": f"c{i}", "started_at": utc(2025, 3, 10, 9 + i % 2, i), "customer_id": f"u{i}",
             "agent_id": "a1", "channel": "voice", "intent": "billing" if i < 3 else "card_lost", "resolved": 1,
             "talk_seconds": 200.0, "hold_seconds": 10.0, "acw_seconds": 30.0, "aht_seconds": 240.0 + i,
             "sentiment_mean": 0.1 * i, "silence_seconds": 5.0, "overlap_seconds": 1.0, "interruptions": 0}
            for i in range(n)]


def test_report_html_csv_and_charts(tmp_path):
    rows = [_daily(DAY - timedelta(days=k), 10 + k) for k in (6, 5, 3, 1)] + [_daily(DAY, 4, aht=420.0)]
    report = build_report("acme <&>", DAY, rows, _calls(4))
    assert set(report.charts) == set(CHARTS) and all(png.startswith(PNG) for png in report.charts.values())
    html = report.html()
    assert "acme &lt;&amp;&gt;" in html and "acme <&>" not in html
    assert "7.0 min" in html and "75.0 %" in html and "+0.10" in html  # AHT 420 s, FCR, CSAT
    for name in CHARTS:
        assert f'src="charts/{name}.png"' in html
    metrics = list(csv.DictReader(io.StringIO(report.csv_files["metrics.csv"].decode())))
    assert [m["day"] for m in metrics] == [(DAY - timedelta(days=k)).isoformat() for k in range(6, -1, -1)]
    assert [m["total_calls"] for m in metrics] == ["16", "15", "0", "13", "0", "11", "4"]  # gaps are zero days
    assert metrics[-1]["top_intent"] == "billing"
    calls = list(csv.DictReader(io.StringIO(report.csv_files["calls.csv"].decode())))
    assert [c["call_id"] for c in calls] == ["c0", "c2", "c1", "c3"]  # by start time and calls[3]["aht_seconds"] == "243.00"
    paths = save_report(report, tmp_path / "r")
    assert (tmp_path / "r" / "report.html").read_text() == html
    assert all((tmp_path / "r" / "charts" / f"{n}.png").read_bytes().startswith(PNG) for n in CHARTS)
    assert set(paths) >= {"html", "metrics.csv", "calls.csv"}


def _seed(settings, tenant, recipients):
    async def go(db):
        await db.upsert_tenant(tenant, "Acme", recipients)

    run(with_db(settings, go))
    facts = [{"tenant_id": tenant, "call_id": c["call_id"], "started_at": c["started_at"], "customer_id": c["customer_id"],
              "intent": c["intent"], "resolved": True, "aht_seconds": c["aht_seconds"], "sentiment_mean": c["sentiment_mean"]}
             for c in _calls(4)]
    Warehouse(settings).insert_call_facts(facts)


def test_generate_daily_report_emails_inline_charts_and_csv(ctx, asettings, tenant_id, smtp_server):
    url, handler = smtp_server
    ctx.settings = asettings.replace(smtp_url=url, report_sender="reports@raysys.test")
    _seed(asettings, tenant_id, ["ops@acme.test", "boss@acme.test"])
    out = generate_daily_report(ctx, tenant_id, DAY.isoformat())  # aggregates the day first (not done yet)
    assert out["emailed"] is True and out["total_calls"] == 4 and out["calls_in_csv"] == 4
    report_dir = asettings.reports_dir / tenant_id / DAY.isoformat()
    assert (report_dir / "report.html").is_file() and (report_dir / "calls.csv").is_file()

    assert len(handler.messages) == 1
    sender, rcpts, raw = handler.messages[0]
    assert sender == "reports@raysys.test" and sorted(rcpts) == ["boss@acme.test", "ops@acme.test"]
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == f"Daily contact-centre report: {tenant_id}, 2025-03-10"
    html = msg.get_body(preferencelist=("html",)).get_content()
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(images) == len(CHARTS)
    for part in images:
        assert part.get_payload(decode=True).startswith(PNG)
        assert f'src="cid:{str(part["Content-ID"]).strip().strip("<>")}"' in html
    attachments = {p.get_filename(): p.get_payload(decode=True).decode() for p in msg.iter_attachments()
                   if p.get_content_type() == "text/csv"}
    assert set(attachments) == {"metrics.csv", "calls.csv"}
    assert attachments["calls.csv"].splitlines()[0].startswith("call_id,started_at")
    assert len(attachments["calls.csv"].splitlines()) == 5
    assert "2025-03-10,4," in attachments["metrics.csv"]
    assert "Total calls: 4" in msg.get_body(preferencelist=("plain",)).get_content()


def test_report_without_smtp_unknown_tenant_and_smtp_down(ctx, asettings, tenant_id):
    _seed(asettings, tenant_id, ["ops@acme.test"])
    out = generate_daily_report(ctx, tenant_id, DAY.isoformat())
    assert out["emailed"] is False and "SMTP_URL" in out["not_emailed_reason"]
    assert (asettings.reports_dir / tenant_id / DAY.isoformat() / "report.html").is_file()
    with pytest.raises(NotFound):
        generate_daily_report(ctx, "no_such_tenant", DAY.isoformat())
    ctx.settings = asettings.replace(smtp_url=f"smtp://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(Retry):
        generate_daily_report(ctx, tenant_id, DAY.isoformat())


def test_csv_cells_that_a_spreadsheet_would_run_are_guarded():
    """Customer ids, agent ids and intents come from producers and callers: a spreadsheet must not run them."""
    calls = _calls(6)
    hostile = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\r=1"]
    for call, text in zip(calls, hostile, strict=True):
        call["customer_id"] = text
    calls[0]["agent_id"], calls[0]["intent"] = "=cmd|' /C calc'!A0", "@intent"
    calls[1]["sentiment_mean"] = -0.5  # a number stays a number
    report = build_report("acme", DAY, [_daily(DAY, 6)], calls)
    rows = list(csv.DictReader(io.StringIO(report.csv_files["calls.csv"].decode(), newline="")))
    assert sorted(r["customer_id"] for r in rows) == sorted("'" + t for t in hostile)
    first = next(r for r in rows if r["call_id"] == "c0")
    assert first["agent_id"] == "'=cmd|' /C calc'!A0" and first["intent"] == "'@intent"
    assert next(r for r in rows if r["call_id"] == "c1")["sentiment_mean"] == "-0.5"
    assert all(not v.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for k, v in r.items()
               if k != "sentiment_mean")
