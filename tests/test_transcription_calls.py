"""Calls without turns get turns from their audio (source 'asr'); platform turns always win.

Real PostgreSQL, chDB, Ray and the PocketSphinx backend, on the demo recording (real read utterances:
an LJSpeech agent and a LibriSpeech customer whose words are known, see raysys/assets/SOURCES.md).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest
from analytics_fixtures import run, utc, with_db

from raysys.analytics.intents import UNKNOWN, IntentModel
from raysys.storage.postgres import Call, Turn
from raysys.synthetic import INTENTS
from raysys.tasks.analytics import process_call_analytics
from raysys.tasks.transcription import transcribe_call

START = utc(2025, 3, 10, 9, 30)
PLATFORM = [Turn(0, "agent", 0.0, 3.0, "Thank you for calling, how can I help you today?"),
            Turn(1, "customer", 3.5, 8.0, "I can't log in to my account")]


@pytest.fixture(autouse=True)
def _free_model_actors(model_actors):
    """The model pools this module starts are killed at its end (they hold CPUs of the shared cluster)."""


@pytest.fixture
def demo_audio(asettings) -> Path:
    root = Path(asettings.allowed_roots[0])
    root.mkdir(parents=True, exist_ok=True)
    with resources.as_file(resources.files("raysys") / "assets" / "demo_call.wav") as src:
        return Path(shutil.copyfile(src, root / "demo_call.wav"))


@pytest.fixture
def reference():
    return json.loads((resources.files("raysys") / "assets" / "demo_call_reference.json").read_text())


@pytest.fixture
def catalogue_settings(asettings, tmp_path, tenant_id, text_encoder):
    """The demo's catalogue (the synthetic contact-centre intents) trained for this tenant."""
    texts = [p for phrasings in INTENTS.values() for p in phrasings]
    labels = [i for i, phrasings in INTENTS.items() for _ in phrasings]
    IntentModel.train(texts, labels, text_encoder.encode).save(tmp_path / "intents" / tenant_id)
    return asettings.replace(intent_model_dir=str(tmp_path / "intents"))


def seed(settings, tenant, call_id, audio_path, turns=()):
    async def go(db):
        await db.upsert_tenant(tenant)
        await db.upsert_calls([Call(id=call_id, tenant_id=tenant, customer_id="c1", agent_id="a1", started_at=START,
                                    answered_at=START + timedelta(seconds=2), ended_at=START + timedelta(seconds=40),
                                    audio_path=str(audio_path), resolved=True)])
        if turns:
            await db.replace_turns(tenant, call_id, list(turns))

    run(with_db(settings, go))


def turns_of(settings, tenant, call_id):
    async def go(db):
        return await db.get_turns(tenant, call_id)

    return run(with_db(settings, go))


def words_of(turns):
    return " ".join(t.text for t in turns).lower().split()


def test_a_call_with_audio_and_no_turns_is_transcribed_stored_as_asr_and_analysed(
        ctx, catalogue_settings, tenant_id, demo_audio, reference):
    ctx.settings = catalogue_settings
    call_id = f"{tenant_id}_asr"
    seed(catalogue_settings, tenant_id, call_id, demo_audio)
    out = process_call_analytics(ctx, call_id)
    assert out["transcribed"] and out["turn_source"] == "asr"
    turns = turns_of(catalogue_settings, tenant_id, call_id)
    assert turns and all(t.source == "asr" and t.model_version.startswith("pocketsphinx:") for t in turns)
    assert all(t.words and 0.0 <= t.confidence <= 1.0 for t in turns)
    # The words are the recording's own: most reference words are heard, in the right speakers' turns.
    ref_customer = " ".join(t["text"] for t in reference["turns"] if t["role"] == "customer").lower().split()
    heard_customer = set(words_of([t for t in turns if t.speaker_role == "customer"]))
    assert len(set(ref_customer) & heard_customer) / len(set(ref_customer)) > 0.6, heard_customer
    assert {t.speaker_role for t in turns} == {"agent", "customer"}
    assert turns[0].speaker_role == "agent"  # the agent opens the call
    # Text analytics ran on the transcript: a known intent, a summary made of its words.
    assert out["intent"] != UNKNOWN and out["summary"]
    assert set(out["summary"].lower().split()) & set(words_of(turns))
    assert "transcription" in out["timings"]

    async def row(db):
        return await db.get_analytics(tenant_id, call_id)

    stored = run(with_db(catalogue_settings, row))
    assert stored["details"]["transcription"]["stored"] is True
    assert stored["model_versions"]["transcription"].startswith("pocketsphinx:")
    # Running again keeps one set of transcribed turns (they are the call's turns now: not re-transcribed).
    again = process_call_analytics(ctx, call_id)
    assert not again["transcribed"] and len(turns_of(catalogue_settings, tenant_id, call_id)) == len(turns)


@pytest.fixture
def short_audio(demo_audio) -> Path:
    """The demo recording's first 5.5 s (the agent's first utterance): enough to transcribe, quick."""
    import soundfile as sf

    wav, sr = sf.read(demo_audio, dtype="float32")
    path = demo_audio.with_name("short.wav")
    sf.write(path, wav[: int(5.5 * sr)], sr)
    return path


def test_platform_turns_are_never_replaced_by_transcripts(ctx, asettings, tenant_id, short_audio):
    demo_audio = short_audio
    call_id = f"{tenant_id}_platform"
    seed(asettings, tenant_id, call_id, demo_audio, turns=PLATFORM)
    out = transcribe_call(ctx, call_id, str(demo_audio))
    assert out["stored"] is False and out["turns"]  # transcribed, returned, not stored
    kept = turns_of(asettings, tenant_id, call_id)
    assert [(t.text, t.source) for t in kept] == [(t.text, "platform") for t in PLATFORM]

    # A call with transcribed turns gets the platform's turns when they arrive (the platform wins).
    call2 = f"{tenant_id}_later"
    seed(asettings, tenant_id, call2, demo_audio)
    assert transcribe_call(ctx, call2, str(demo_audio))["stored"] is True
    assert {t.source for t in turns_of(asettings, tenant_id, call2)} == {"asr"}

    async def platform_writes(db):
        await db.replace_turns(tenant_id, call2, PLATFORM)
        return await db.save_asr_turns(tenant_id, call2, [Turn(0, "agent", 0.0, 1.0, "overwritten?")])

    assert run(with_db(asettings, platform_writes)) is False
    assert [t.source for t in turns_of(asettings, tenant_id, call2)] == ["platform", "platform"]


def test_post_transcribe_needs_a_key_refuses_non_audio_and_returns_turns(asettings, ray_cluster, tenant_id,
                                                                          short_audio):
    """The route in-process (FastAPI's TestClient) over the session's PostgreSQL, Redis and Ray."""
    from fastapi.testclient import TestClient

    from raysys.serve.app import create_app
    from raysys.serve.service import Service

    async def key(db):
        return (await db.create_api_key(tenant_id, "asr"))[1]

    secret = run(with_db(asettings, key))
    with TestClient(create_app(Service(asettings))) as client:
        audio = short_audio.read_bytes()
        assert client.post("/v1/transcribe", files={"file": ("a.wav", audio, "audio/wav")}).status_code == 401
        auth = {"Authorization": f"Bearer {secret}"}
        bad = client.post("/v1/transcribe", files={"file": ("notes.wav", b"not audio at all", "audio/wav")},
                          headers=auth)
        assert 400 <= bad.status_code < 500 and "Traceback" not in bad.text
        assert client.post("/v1/transcribe", files={"file": ("a.wav", audio, "audio/wav")}, data={"layout": "diagonal"},
                           headers=auth).status_code == 422
        r = client.post("/v1/transcribe", files={"file": ("a.wav", audio, "audio/wav")}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backend"] == "pocketsphinx" and body["duration"] == pytest.approx(5.5, abs=0.01)
    heard = " ".join(t["text"] for t in body["turns"]).split()
    assert {"imprisonment", "entirely"} & set(heard), heard  # "and imprisonment for debt has almost entirely ..."
    assert all(w["start"] < w["end"] for t in body["turns"] for w in t["words"]) and "diarization" not in body


def test_transcripts_render_as_text_srt_and_webvtt():
    from raysys.commands.transcribe import render

    result = {"turns": [{"role": "agent", "start": 0.5, "end": 2.25, "text": "hello there"},
                        {"role": "customer", "start": 3661.0, "end": 3662.5, "text": "hi"}], "diarization": {}}
    assert render(result, "txt") == "[00:00.500] agent: hello there\n[01:01.000] customer: hi\n"
    assert render(result, "srt") == ("1\n00:00:00,500 --> 00:00:02,250\nagent: hello there\n\n"
                                     "2\n01:01:01,000 --> 01:01:02,500\ncustomer: hi\n")
    assert render(result, "vtt").startswith("WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nagent: hello there\n")
    assert json.loads(render(result, "json")) == {"turns": result["turns"]}
