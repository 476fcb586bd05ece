"""process_call_analytics and friends on real PostgreSQL, chDB and Ray (text-only calls here)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from analytics_fixtures import SMALL_CATALOGUE, run, utc, with_db

from raysys.analytics.intents import IntentModel
from raysys.errors import Forbidden, InvalidInput, NotFound
from raysys.storage.postgres import Call, Turn
from raysys.tasks.analytics import diarize_call, process_call_analytics

START = utc(2025, 3, 10, 9, 30)
TURNS = [Turn(0, "agent", 0.0, 3.0, "Thank you for calling, how can I help you today?"),
         Turn(1, "customer", 3.5, 8.0, "Hi. I think somebody stole my card at the station"),
         Turn(2, "agent", 7.5, 12.0, "I'm sorry to hear that, I have blocked the card and ordered a new one"),
         Turn(3, "customer", 12.5, 14.0, "Thanks, that's great.")]


def seed(settings, tenant, call_id, audio_path=None, turns=TURNS):
    async def go(db):
        await db.upsert_tenant(tenant)
        await db.upsert_calls([Call(id=call_id, tenant_id=tenant, customer_id="cust1", agent_id="ag1",
                                    started_at=START, answered_at=START + timedelta(seconds=5),
                                    ended_at=START + timedelta(seconds=125), hold_seconds=20, acw_seconds=30,
                                    audio_path=audio_path, resolved=True)])
        await db.replace_turns(tenant, call_id, turns)

    run(with_db(settings, go))


def analytics_row(settings, tenant, call_id):
    async def go(db):
        return await db.get_analytics(tenant, call_id)

    return run(with_db(settings, go))


@pytest.fixture
def intent_settings(asettings, tmp_path, tenant_id, text_encoder):
    texts, cats = zip(*SMALL_CATALOGUE, strict=True)
    IntentModel.train(list(texts), list(cats), text_encoder.encode).save(tmp_path / "intents" / tenant_id)
    return asettings.replace(intent_model_dir=str(tmp_path / "intents"))


def test_call_without_audio_gets_text_analytics_stored_once(ctx, intent_settings, warehouse, tenant_id):
    ctx.settings = intent_settings
    call_id = f"{tenant_id}_call1"
    seed(intent_settings, tenant_id, call_id)
    out = process_call_analytics(ctx, call_id)
    assert out["has_audio"] is False and out["intent"] == "card_lost"
    assert out["aht_seconds"] == pytest.approx(100 + 20 + 30)  # talk (answer to end, less hold) + hold + ACW
    row = analytics_row(intent_settings, tenant_id, call_id)
    assert row["intent"] == "card_lost" and 0 < row["intent_confidence"] <= 1
    assert row["details"]["intent"]["evidence"].startswith("Hi. I think somebody stole")
    assert row["summary"] and any(line.startswith(("Agent:", "Customer:")) for line in row["summary"].splitlines())
    # The agent starts 0.5 s before the customer stops and goes on for 4.5 s: one interruption.
    assert row["overlap_seconds"] == pytest.approx(0.5) and row["interruptions"] == 1
    assert row["details"]["timeline"]["interruptions_by"] == {"agent": 1}
    assert row["silence_seconds"] == pytest.approx(14.0 - 13.0)
    assert row["sentiment_end"] > 0.3  # "Thanks, that's great."
    assert row["details"]["sentiment_source"] == "text" and row["details"]["timeline"]["source"] == "turns"
    fact = warehouse.call_fact(tenant_id, call_id)
    assert fact["intent"] == "card_lost" and fact["aht_seconds"] == pytest.approx(150) and fact["resolved"] == 1
    assert str(fact["day"]) == "2025-03-10"
    # The agent scorecards' inputs: 7.5 of the 13 s of speech are the agent's, its one interruption, the
    # customer's own sentiment at the end, and words that show no escalation.
    assert fact["agent_talk_share"] == pytest.approx(7.5 / 13, abs=1e-3) and fact["agent_interruptions"] == 1
    assert fact["customer_sentiment_end"] > 0.3 and fact["escalated"] == 0

    # Re-running replaces: one analytics row, one fact (the newest).
    seed(intent_settings, tenant_id, call_id, turns=[*TURNS[:3], Turn(3, "customer", 12.5, 14.0, "This is useless.")])
    process_call_analytics(ctx, call_id)
    assert analytics_row(intent_settings, tenant_id, call_id)["sentiment_end"] < 0

    async def count(db):
        return await db.pool.fetchval("SELECT count(*) FROM call_analytics WHERE call_id = $1", call_id)

    assert run(with_db(intent_settings, count)) == 1
    assert warehouse.count_call_facts(tenant_id) == 1
    assert warehouse.call_fact(tenant_id, call_id)["sentiment_end"] < 0


def test_missing_call_bad_ids_and_paths_outside_the_roots_fail_clearly(ctx, asettings, tenant_id, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        process_call_analytics(ctx, "no-such-call")
    with pytest.raises(InvalidInput):
        process_call_analytics(ctx, "")
    outside = tmp_path / "elsewhere.wav"
    outside.write_bytes(b"RIFF")
    seed(asettings, tenant_id, f"{tenant_id}_c2", audio_path=str(outside))
    with pytest.raises(Forbidden):
        process_call_analytics(ctx, f"{tenant_id}_c2")
    with pytest.raises(Forbidden):
        diarize_call(ctx, "c", "/etc/passwd")
    root = asettings.allowed_roots[0]
    with pytest.raises(NotFound):
        diarize_call(ctx, "c", f"{root}/missing.wav")


def test_call_without_an_intent_model_uses_the_call_record(ctx, asettings, tenant_id):
    async def go(db):
        await db.upsert_tenant(tenant_id)
        await db.upsert_calls([Call(id=f"{tenant_id}_c3", tenant_id=tenant_id, customer_id="u", started_at=START,
                                    intent="billing_dispute")])

    run(with_db(asettings, go))
    out = process_call_analytics(ctx, f"{tenant_id}_c3")
    row = analytics_row(asettings, tenant_id, f"{tenant_id}_c3")
    assert out["intent"] == "billing_dispute" and row["details"]["intent"]["source"] == "call record"
    assert row["summary"] == "" and row["sentiment_mean"] is None


def _overlap(a, b):
    return sum(max(0.0, min(x[1], y[1]) - max(x[0], y[0])) for x in a for y in b)


def test_call_with_a_real_recording_maps_diarized_speakers_to_roles(ctx, intent_settings, warehouse, tenant_id):
    """pyannote's 30 s two-speaker sample; the turns (from its RTTM reference) say who is the agent."""
    import shutil

    from analytics_fixtures import rttm_turns
    from conftest import shared_data

    ctx.settings = intent_settings
    root = Path(intent_settings.allowed_roots[0])
    root.mkdir(parents=True, exist_ok=True)
    audio = root / "sample.wav"
    shutil.copyfile(shared_data("diarization", "sample.wav"), audio)
    turns = rttm_turns(shared_data("diarization", "sample.rttm"))
    seed(intent_settings, tenant_id, f"{tenant_id}_audio", audio_path=str(audio), turns=turns)
    out = process_call_analytics(ctx, f"{tenant_id}_audio")
    assert out["has_audio"] and out["num_speakers"] == 2 and out["intent"] == "card_lost"
    row = analytics_row(intent_settings, tenant_id, f"{tenant_id}_audio")
    assert row["details"]["speaker_mapping"]["method"] == "turns"
    assert sorted(row["details"]["speaker_mapping"]["mapping"].values()) == ["agent", "customer"]
    assert row["details"]["timeline"]["source"] == "audio" and row["emotion"]["segments"]
    assert set(row["model_versions"]) >= {"diarization", "emotion", "intents", "sentiment"}
    # The call has text: its sentiment comes from the sentiment model on the customer's turns, not from
    # the emotion backend's segment valence.
    from raysys.analytics.callmetrics import sentiment_summary
    from raysys.models.sentiment import default_model

    assert row["details"]["sentiment_source"] == "text"
    assert row["model_versions"]["sentiment"] == default_model().model_version
    expected = sentiment_summary([{"start": t.start_s, "end": t.end_s, "role": t.speaker_role,
                                   "valence": default_model().score(t.text)} for t in turns])
    assert row["sentiment_mean"] == pytest.approx(expected["mean"]) and expected["mean"] != 0
    # The diarized agent speech lies mostly where the reference says the agent speaks.
    agent_hyp = [(s["start"], s["end"]) for s in row["diarization"]["segments"] if s["role"] == "agent"]
    agent_ref = [(t.start_s, t.end_s) for t in turns if t.speaker_role == "agent"]
    hyp_len = sum(e - s for s, e in agent_hyp)
    assert hyp_len > 0 and _overlap(agent_hyp, agent_ref) / hyp_len > 0.7
    assert 0 < row["talk_seconds"] and row["silence_seconds"] >= 0 and -1 <= row["sentiment_mean"] <= 1
    assert warehouse.call_fact(tenant_id, f"{tenant_id}_audio")["num_speakers"] == 2


def test_stereo_recording_maps_roles_by_channel(ctx, asettings, tenant_id):
    from analytics_fixtures import stereo_call

    root = Path(asettings.allowed_roots[0])
    root.mkdir(parents=True, exist_ok=True)
    turns = stereo_call(root / "stereo.wav")
    seed(asettings, tenant_id, f"{tenant_id}_st", audio_path=str(root / "stereo.wav"), turns=turns)
    out = process_call_analytics(ctx, f"{tenant_id}_st")
    row = analytics_row(asettings, tenant_id, f"{tenant_id}_st")
    assert row["details"]["speaker_mapping"]["method"] == "channel" and out["num_speakers"] == 2
    speech = row["details"]["timeline"]["speech_seconds"]
    ref = {r: sum(t.end_s - t.start_s for t in turns if t.speaker_role == r) for r in ("agent", "customer")}
    for role in ("agent", "customer"):
        assert speech[role] == pytest.approx(ref[role], rel=0.35)
