"""Per-agent scorecards: the per-call inputs, the daily aggregation in real chDB (through the Warehouse
actor) checked against figures computed here from the same calls, and the report's agent section."""

from __future__ import annotations

import csv
import email
import io
from datetime import date, timedelta
from email import policy
from types import SimpleNamespace

import numpy as np
import pytest
from analytics_fixtures import run, utc, with_db

from raysys.analytics import agentmetrics, callmetrics
from raysys.analytics.agent_report import AGENT_CHARTS, sparkline
from raysys.analytics.report import CHARTS
from raysys.tasks.metrics import aggregate_daily_metrics
from raysys.tasks.reports import generate_daily_report

DAY = date(2025, 3, 3)
WINDOW = 7
PNG = b"\x89PNG\r\n\x1a\n"


def _turn(role, text):
    return SimpleNamespace(speaker_role=role, text=text)


def test_escalation_is_read_from_the_words_and_unknown_without_them():
    assert agentmetrics.escalated([_turn("agent", "I'll need to escalate this, someone will call you.")]) is True
    assert agentmetrics.escalated([_turn("agent", "Let me transfer you to my supervisor.")]) is True
    assert agentmetrics.escalated([_turn("customer", "Can I speak to a manager please?")]) is True
    assert agentmetrics.escalated([_turn("agent", "Thank you for calling."),
                                   _turn("customer", "I want to talk to the manager of the shop, he sold it")]) is True
    assert agentmetrics.escalated([_turn("agent", "Thank you for calling, how can I help?"),
                                   _turn("customer", "My card was stolen.")]) is False
    assert agentmetrics.escalated([_turn("agent", "  "), _turn("customer", "")]) is None
    assert agentmetrics.escalated([]) is None


def test_call_fact_fields_talk_share_interruptions_and_customer_sentiment():
    # agent 0-10 and 15-17 (inside the customer's 8-20): each interrupts the other once; speech 12 of 20 s.
    timeline = callmetrics.timeline_metrics([{"start": 0, "end": 10, "speaker": "agent"},
                                             {"start": 8, "end": 20, "speaker": "customer"},
                                             {"start": 15, "end": 17, "speaker": "agent"}])
    items = [{"start": 0, "end": 10, "valence": 0.5, "role": "agent"},
             {"start": 8, "end": 12, "valence": -0.6, "role": "customer"},
             {"start": 12, "end": 16, "valence": 0.0, "role": "customer"},
             {"start": 16, "end": 20, "valence": 0.4, "role": "customer"}]
    fields = agentmetrics.fact_fields({"timeline": timeline, "escalated": False,
                                       "customer_sentiment": agentmetrics.customer_sentiment(items)})
    assert fields == {"agent_talk_share": pytest.approx(0.6), "agent_interruptions": 1,
                      "customer_sentiment_start": pytest.approx(-0.6), "customer_sentiment_end": pytest.approx(0.4),
                      "escalated": False}
    # No customer speech scored and no agent speech: both unknown, not zero.
    none = agentmetrics.fact_fields({"timeline": callmetrics.timeline_metrics([{"start": 0, "end": 5,
                                                                                "speaker": "customer"}]),
                                     "customer_sentiment": agentmetrics.customer_sentiment(items[:1])})
    assert none["agent_talk_share"] is None and none["customer_sentiment_start"] is None and none["escalated"] is None


def test_sparkline_scales_and_shows_gaps():
    assert sparkline([1, 2, None, 8]) == "▁▂·█"
    assert sparkline([3, 3]) == "▁▁" and sparkline([None, None]) == "··"


def _fact(tenant, call_id, when, agent, customer, intent, resolved, talk, hold, acw, s, cs, share, agent_int,
          interruptions, silence, overlap, escalated):
    return {"tenant_id": tenant, "call_id": call_id, "started_at": when, "agent_id": agent, "customer_id": customer,
            "intent": intent, "resolved": resolved, "talk_seconds": float(talk), "hold_seconds": float(hold),
            "acw_seconds": float(acw), "aht_seconds": float(talk + hold + acw), "sentiment_start": s[0],
            "sentiment_end": s[1], "sentiment_mean": (s[0] + s[1]) / 2, "customer_sentiment_start": cs and cs[0],
            "customer_sentiment_end": cs and cs[1], "agent_talk_share": share, "agent_interruptions": agent_int,
            "interruptions": interruptions, "silence_seconds": float(silence), "overlap_seconds": float(overlap),
            "escalated": escalated}


def _facts(t):
    return [
        _fact(t, "c1", utc(2025, 3, 3, 9), "a1", "A", "billing", True, 100, 20, 30, (-0.2, 0.4), (-0.5, 0.5), 0.6, 1, 2,
              10, 2, False),
        _fact(t, "c2", utc(2025, 3, 3, 10), "a1", "B", "card", True, 200, 0, 40, (0.0, 0.2), None, 0.4, 0, 1, 20, 1,
              True),
        _fact(t, "c3", utc(2025, 3, 3, 11), "a1", "C", "billing", False, 300, 60, 20, (-0.4, -0.6), (-0.4, -0.8), None,
              2, 2, 30, 0, None),
        _fact(t, "c4", utc(2025, 3, 3, 12), "a2", "D", "billing", True, 50, 0, 10, (0.1, 0.3), (0.1, 0.3), 0.5, 0, 0, 5,
              0, False),
        _fact(t, "c5", utc(2025, 3, 3, 13), "", "E", "billing", True, 70, 0, 0, (0, 0), None, None, 0, 0, 0, 0, None),
        # Two days later customer A calls again about billing, to another agent: c1 was not a first-contact fix.
        _fact(t, "c6", utc(2025, 3, 5, 9), "a3", "A", "billing", True, 80, 0, 10, (0, 0), None, None, 0, 0, 0, 0,
              None),
        # Another tenant's call by an agent of the same id never counts here.
        _fact("other_" + t, "x1", utc(2025, 3, 3, 9), "a1", "A", "billing", True, 999, 0, 0, (1, 1), (1, 1), 1.0, 9,
              9, 9, 9, True),
    ]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _expected(facts, tenant, agent, day):
    """The scorecard computed from the definitions, independently of the SQL."""
    mine = [f for f in facts if f["tenant_id"] == tenant and f["agent_id"] == agent and f["started_at"].date() == day]

    def first_contact(f):
        later = [g for g in facts if g["tenant_id"] == tenant and g["customer_id"] == f["customer_id"]
                 and g["intent"] == f["intent"] and f["started_at"] < g["started_at"]
                 <= f["started_at"] + timedelta(days=WINDOW)]
        return f["resolved"] and not (f["customer_id"] and later)

    known = [f for f in mine if f["escalated"] is not None]
    return {
        "calls": len(mine), "aht_mean": _mean([f["aht_seconds"] for f in mine]),
        "aht_p90": float(np.percentile([f["aht_seconds"] for f in mine], 90)),
        "talk_mean": _mean([f["talk_seconds"] for f in mine]), "hold_mean": _mean([f["hold_seconds"] for f in mine]),
        "acw_mean": _mean([f["acw_seconds"] for f in mine]), "fcr": sum(map(first_contact, mine)) / len(mine),
        "sentiment_start": _mean([f["sentiment_start"] for f in mine]),
        "sentiment_end": _mean([f["sentiment_end"] for f in mine]),
        "customer_sentiment_start": _mean([f["customer_sentiment_start"] for f in mine]),
        "customer_sentiment_end": _mean([f["customer_sentiment_end"] for f in mine]),
        "customer_sentiment_calls": sum(f["customer_sentiment_start"] is not None for f in mine),
        "talk_share": _mean([f["agent_talk_share"] for f in mine]),
        "agent_interruptions": sum(f["agent_interruptions"] for f in mine),
        "interruptions": sum(f["interruptions"] for f in mine),
        "silence_mean": _mean([f["silence_seconds"] for f in mine]),
        "overlap_mean": _mean([f["overlap_seconds"] for f in mine]),
        "escalations": sum(bool(f["escalated"]) for f in known), "escalations_known": len(known),
    }


def _check(row, expected):
    for key, value in expected.items():
        assert row[key] == (pytest.approx(value) if value is not None else None), key


def test_agent_scorecards_from_known_calls(ctx, warehouse, tenant_id):
    t = tenant_id
    facts = _facts(t)
    warehouse.insert_call_facts(facts)
    out = aggregate_daily_metrics(ctx, date=DAY.isoformat(), tenant_id=t)
    assert out["agents"] == 2  # a1 and a2; the call without an agent has no scorecard
    rows = warehouse.agent_metrics(t, DAY, DAY)
    assert [r["agent_id"] for r in rows] == ["a1", "a2"] and {r["tenant_id"] for r in rows} == {t}
    a1, a2 = rows
    _check(a1, _expected(facts, t, "a1", DAY))
    _check(a2, _expected(facts, t, "a2", DAY))
    # The figures the definitions give by hand, so the reference above is checked too.
    assert a1["calls"] == 3 and a1["aht_mean"] == pytest.approx(770 / 3) and a1["fcr"] == pytest.approx(1 / 3)
    assert a1["customer_sentiment_calls"] == 2 and a1["customer_sentiment_change"] == pytest.approx(0.3)
    assert a1["sentiment_change"] == pytest.approx(0.2) and a1["talk_share"] == pytest.approx(0.5)
    assert a1["escalations"] == 1 and a1["escalations_known"] == 2 and a1["escalation_rate"] == pytest.approx(0.5)
    assert a1["agent_interruptions_per_call"] == pytest.approx(1.0)
    assert [tuple(x) for x in a1["top_intents"]] == [("billing", 2), ("card", 1)]
    assert a2["fcr"] == pytest.approx(1.0) and a2["fcr_final"] == 1
    assert warehouse.agent_metrics(t, DAY, DAY, "a2")[0]["calls"] == 1
    # The later day has its own scorecards; recomputing a day replaces its rows.
    later = date(2025, 3, 5)
    assert aggregate_daily_metrics(ctx, date=later.isoformat(), tenant_id=t)["agents"] == 1
    aggregate_daily_metrics(ctx, date=DAY.isoformat(), tenant_id=t)
    rows = warehouse.agent_metrics(t, DAY, later)
    assert [(r["day"], r["agent_id"]) for r in rows] == [(DAY, "a1"), (DAY, "a2"), (later, "a3")]
    assert warehouse.agent_metrics("other_" + t, DAY, DAY) == []  # that tenant was not aggregated


def test_report_has_the_agent_table_charts_and_csv(ctx, asettings, warehouse, tenant_id, smtp_server):
    url, handler = smtp_server
    ctx.settings = asettings.replace(smtp_url=url, report_sender="reports@raysys.test")

    async def seed(db):
        await db.upsert_tenant(tenant_id, "Acme", ["ops@acme.test"])

    run(with_db(asettings, seed))
    facts = _facts(tenant_id)
    # A week of a1's history for its sparklines: one call a day on three earlier days.
    facts += [_fact(tenant_id, f"h{k}", utc(2025, 3, 3, 9) - timedelta(days=k), "a1", f"H{k}", "card", True, 60 * k, 0, 0, (0, 0),
                    None, 0.5, 0, 0, 0, 0, False) for k in (2, 4, 6)]
    warehouse.insert_call_facts(facts)
    out = generate_daily_report(ctx, tenant_id, DAY.isoformat())  # aggregates the day and its agents first
    assert out["emailed"] is True and out["agents"] == 2
    directory = asettings.reports_dir / tenant_id / DAY.isoformat()
    html = (directory / "report.html").read_text()
    assert '<table class="agents">' in html and "Agents (2)" in html
    agents_table = html[html.index('<table class="agents">'):]
    agents_table = agents_table[:agents_table.index("</table>")]
    assert agents_table.index("<td>a1</td>") < agents_table.index("<td>a2</td>")  # busiest first
    assert "4.3 min" in agents_table and "33 %" in agents_table  # a1: AHT 256.7 s, FCR 1/3
    assert "-0.45 → -0.15" in agents_table  # a1's customer sentiment start -> end over its two scored calls
    assert "1/2" in agents_table  # a1: one escalation of two known
    assert "▁·▁·▁·█" in agents_table  # a1's calls over 7 days: 1 on Feb 25, 27 and Mar 1; 3 on Mar 3
    for name in AGENT_CHARTS:
        assert f'src="charts/{name}.png"' in html
        assert (directory / "charts" / f"{name}.png").read_bytes().startswith(PNG)
    rows = list(csv.DictReader(io.StringIO((directory / "agents.csv").read_text(), newline="")))
    assert [(r["agent_id"], r["calls"], r["fcr"]) for r in rows] == [("a1", "3", "0.3333"), ("a2", "1", "1.00")]
    assert rows[0]["top_intents"] == "billing:2 card:1" and rows[0]["escalation_rate"] == "0.5"
    assert rows[1]["customer_sentiment_change"] == "0.2"

    msg = email.message_from_bytes(handler.messages[0][2], policy=policy.default)
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(images) == len(CHARTS) + len(AGENT_CHARTS)
    body = msg.get_body(preferencelist=("html",)).get_content()
    for part in images:
        assert f'src="cid:{str(part["Content-ID"]).strip().strip("<>")}"' in body
    assert {p.get_filename() for p in msg.iter_attachments() if p.get_content_type() == "text/csv"} == {
        "metrics.csv", "calls.csv", "agents.csv"}
