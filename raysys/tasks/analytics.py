"""Post-call analytics tasks (queue ``analytics``): the whole call, diarization alone, emotion alone.

``workers.tasks.process_call_analytics(call_id)`` loads the call and its turns, runs diarization and
emotion on the recording through the model actors (when the call has one), maps the diarized speakers
to agent and customer, classifies the customer's intent, summarises the call, computes the call's
metrics, and stores the result idempotently: one ``call_analytics`` row in PostgreSQL (upsert) and one
``call_facts`` row in ClickHouse (ReplacingMergeTree, newest version wins). A call without a recording
still gets its text analytics (intent, summary, text sentiment, metrics from the turns).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raysys.actors.diarization import diarize_file
from raysys.actors.embedding import encoder
from raysys.actors.emotion import analyze_file
from raysys.actors.warehouse import Warehouse
from raysys.analytics import agentmetrics, callmetrics, intents, redaction_turns, summary
from raysys.analytics import sentiment as call_sentiment
from raysys.analytics.transcripts import ensure_turns
from raysys.config import Settings
from raysys.constants import ORCHESTRATION_CPUS
from raysys.errors import InvalidInput
from raysys.paths import confine_file
from raysys.storage.postgres import open_db, run_sync
from raysys.tasks.registry import TaskContext, task

log = logging.getLogger(__name__)


def confined_audio(settings: Settings, audio_path: str) -> Path:
    """The recording's real path inside ``settings.allowed_roots``; Forbidden/NotFound otherwise."""
    return confine_file(audio_path, settings.allowed_roots, "recording")


def redact_stored_turns(settings: Settings, call: Any, turns: list[Any], policy: redaction_turns.Policy,
                        earlier: dict[str, int] | None = None) -> tuple[list[Any], dict[str, int]]:
    """The call's turns with PII redacted (stored in place of the originals) and the counts per kind, with
    ``earlier`` counts (transcribed turns were redacted before they were stored) added."""
    counts = dict(earlier or {})
    if not policy.calls or not turns:
        return turns, counts
    redacted, found = redaction_turns.redact_call_turns(turns, policy.regions)
    changed = [t for t, spans in zip(redacted, found.spans, strict=True) if spans]
    # Turns redacted by an earlier run carry tags only: that run's counts still hold (a re-run keeps them).
    # Turns transcribed in this run (``earlier`` given) were counted just now.
    tagged = earlier is None and any(redaction_turns.has_tags(t.text) for t in turns)
    if changed or tagged:
        async def store() -> dict[str, int]:
            async with open_db(settings) as db:
                if changed:
                    await db.redact_turns(call.tenant_id, call.id, changed)
                return await db.pii_counts(call.tenant_id, call.id) if tagged else {}

        for kind, n in run_sync(store()).items():
            counts[kind] = counts.get(kind, 0) + n
    for kind, n in found.counts.items():
        counts[kind] = counts.get(kind, 0) + n
    return redacted, counts


# --- analysis ----------------------------------------------------------------------------------------------


def _turn_dicts(turns: list[Any]) -> list[dict[str, Any]]:
    return [{"role": t.speaker_role, "text": t.text, "start": t.start_s, "end": t.end_s} for t in turns]


def analyse_call(settings: Settings, call: Any, turns: list[Any], *, audio: Path | None,
                 progress=lambda f, m: None, diarization: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``process_call_analytics`` computes, without storing it. Needs Ray for the models.

    ``diarization``: the recording's diarization when the caller already has it (transcription ran it).
    """
    timings: dict[str, float] = {}
    versions: dict[str, str] = {}
    t0 = time.perf_counter()
    # Intent and summary need only the turns: they run beside the audio models, not after them.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        text_stage = pool.submit(_text_analytics, settings, call, turns)
        result = _audio_analytics(settings, call, turns, audio, progress, timings, versions, diarization)
        progress(0.7, "intent and summary")
        intent, summ, text_versions, timings["text"] = text_stage.result()
    versions.update(text_versions)
    handling = callmetrics.aht(call, result["timeline"]["duration_seconds"])
    timings["total"] = time.perf_counter() - t0
    return {**result, "intent": intent, "summary": summ, "aht": handling, "versions": versions,
            "timings": {k: round(v, 3) for k, v in timings.items()}, "escalated": agentmetrics.escalated(turns)}


def _audio_analytics(settings: Settings, call: Any, turns: list[Any], audio: Path | None, progress,
                     timings: dict[str, float], versions: dict[str, str],
                     diarization: dict[str, Any] | None = None) -> dict[str, Any]:
    """Diarization, emotion, speaker roles, timeline and sentiment (from the turns when there is no audio)."""
    t0 = time.perf_counter()
    emotion: dict[str, Any] | None = None
    mapping: dict[str, Any] = {"mapping": {}, "method": "none"}
    if audio is not None:
        if diarization is None:
            progress(0.1, "diarization")
            diarization = diarize_file(settings, str(audio), layout=call.audio_layout or "auto")
            timings["diarization"] = time.perf_counter() - t0
        versions["diarization"] = f"{diarization.get('backend', '')}:{diarization.get('model_version', '')}"
        mapping = callmetrics.map_speakers(diarization["segments"], turns, diarization.get("layout"))
        progress(0.4, "emotion")
        t1 = time.perf_counter()
        transcript = [{"start": t.start_s, "end": t.end_s, "text": t.text} for t in turns if t.text]
        emotion = analyze_file(settings, str(audio), segments=diarization["segments"], transcript=transcript or None)
        timings["emotion"] = time.perf_counter() - t1
        versions["emotion"] = f"{emotion.get('backend', '')}:{emotion.get('model_version', '')}"
        role_of = mapping["mapping"]
        segments = [{**s, "role": role_of.get(str(s["speaker"]), "unknown")} for s in diarization["segments"]]
        diarization = {**diarization, "segments": segments, "speaker_roles": role_of}
        timeline = callmetrics.timeline_metrics([{**s, "speaker": s["role"]} for s in segments],
                                                diarization.get("duration"))
        timeline["source"] = "audio"
        sentiment_items = [{"start": s["start"], "end": s["end"], "valence": s.get("valence"),
                            "role": role_of.get(str(s.get("speaker")), "unknown")} for s in emotion["segments"]]
        sentiment_source = "emotion"
    else:
        timeline = callmetrics.timeline_metrics(
            [{"start": t.start_s, "end": t.end_s, "speaker": t.speaker_role} for t in turns])
        timeline["source"] = "turns"
        sentiment_items = []
        sentiment_source = "text"
    # The words witness sentiment better than the voice: whenever the call has text, the sentiment model
    # scores its turns (call sentiment and so the CSAT proxy); emotion valence stands in only without text.
    text_items = call_sentiment.turn_sentiments(turns)
    if text_items or not any(i.get("valence") is not None for i in sentiment_items):
        sentiment_items, sentiment_source = text_items, "text"
    versions["sentiment"] = call_sentiment.model_version()
    sentiment = callmetrics.sentiment_summary(sentiment_items)
    return {"diarization": diarization, "emotion": emotion, "mapping": mapping, "timeline": timeline,
            "sentiment": sentiment, "sentiment_source": sentiment_source,
            "customer_sentiment": agentmetrics.customer_sentiment(sentiment_items)}


def _text_analytics(settings: Settings, call: Any, turns: list[Any]) -> tuple[dict, dict, dict[str, str], float]:
    """(intent, summary, model versions, seconds) from the call's turns alone."""
    t2 = time.perf_counter()
    versions: dict[str, str] = {}
    encode = encoder(settings)
    tdicts = _turn_dicts(turns)
    customer_texts = [t.text for t in turns if t.speaker_role == "customer" and t.text.strip()]
    model_dir = intents.model_dir_for(settings.intent_model_dir, call.tenant_id)
    intent: dict[str, Any]
    if model_dir is not None and (customer_texts or tdicts):
        model = intents.load_cached(model_dir)
        name, confidence, evidence = intents.classify_call(model, customer_texts or [t["text"] for t in tdicts],
                                                           encode)
        intent = {"intent": name, "confidence": round(confidence, 4), "source": "model", "evidence": evidence}
        versions["intents"] = model.version
    elif call.intent:
        intent = {"intent": call.intent, "confidence": None, "source": "call record"}
    else:
        intent = {"intent": intents.UNKNOWN, "confidence": None,
                  "source": "no intent model" if model_dir is None else "no customer speech"}
    summ = summary.summarize(tdicts, encode, llm_url=settings.summary_llm_url, llm_model=settings.summary_llm_model,
                             llm_api_key=settings.summary_llm_api_key)
    return intent, summ, versions, time.perf_counter() - t2


def _values(result: dict[str, Any], call: Any) -> dict[str, Any]:
    """The ``call_analytics`` row (PostgreSQL)."""
    tl, s = result["timeline"], result["sentiment"]
    diar = result["diarization"]
    return {
        "num_speakers": diar["num_speakers"] if diar else len({t for t in tl["speech_seconds"]}),
        "diarization": diar, "emotion": result["emotion"],
        "intent": result["intent"]["intent"], "intent_confidence": result["intent"]["confidence"],
        "summary": result["summary"]["text"],
        "talk_seconds": result["aht"]["talk_seconds"], "silence_seconds": tl["silence_seconds"],
        "overlap_seconds": tl["overlap_seconds"], "interruptions": tl["interruptions"],
        "aht_seconds": result["aht"]["aht_seconds"],
        "sentiment_start": s["start"], "sentiment_end": s["end"], "sentiment_mean": s["mean"],
        "details": {"timeline": tl, "speaker_mapping": result["mapping"], "intent": result["intent"],
                    "summary": result["summary"], "aht": result["aht"], "sentiment_source": result["sentiment_source"],
                    "timings": result["timings"]},
        "model_versions": result["versions"],
    }


def _fact(call: Any, values: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The ``call_facts`` row (ClickHouse); missing sentiment counts as neutral (0)."""
    started = call.started_at if call.started_at.tzinfo else call.started_at.replace(tzinfo=UTC)
    return {
        "tenant_id": call.tenant_id, "call_id": call.id, "started_at": started.astimezone(UTC),
        "day": started.astimezone(UTC).date(), "customer_id": call.customer_id, "agent_id": call.agent_id or "",
        "channel": call.channel, "intent": values["intent"] or "", "resolved": bool(call.resolved),
        "talk_seconds": result["aht"]["talk_seconds"], "hold_seconds": result["aht"]["hold_seconds"],
        "acw_seconds": result["aht"]["acw_seconds"], "aht_seconds": result["aht"]["aht_seconds"],
        "sentiment_mean": values["sentiment_mean"] or 0.0, "sentiment_start": values["sentiment_start"] or 0.0,
        "sentiment_end": values["sentiment_end"] or 0.0, "num_speakers": min(255, int(values["num_speakers"] or 0)),
        "silence_seconds": values["silence_seconds"], "overlap_seconds": values["overlap_seconds"],
        "interruptions": values["interruptions"], **agentmetrics.fact_fields(result),
    }


# --- tasks -------------------------------------------------------------------------------------------------


@task("workers.tasks.process_call_analytics", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def process_call_analytics(ctx: TaskContext, call_id: str) -> dict[str, Any]:
    """Analyse one call and store the result (re-running replaces it).

    Returns a summary: call id, tenant, intent, speakers, AHT, sentiment, summary text, timings.
    Raises NotFound (no such call, or its recording is missing), Forbidden (recording outside the
    allowed roots), InvalidInput (unreadable audio).
    """
    if not isinstance(call_id, str) or not call_id:
        raise InvalidInput("call_id must be a non-empty string")
    settings = ctx.settings

    async def load():
        async with open_db(settings) as db:
            call = await db.get_call(call_id)  # NotFound: no such call
            return call, await db.get_turns(call.tenant_id, call_id), await db.tenant_pii(call.tenant_id)

    call, turns, tenant_pii = run_sync(load())
    policy = redaction_turns.Policy.for_tenant(settings, tenant_pii)
    audio = confined_audio(settings, call.audio_path) if call.audio_path else None
    # A recording without turns is transcribed first (stored as source='asr'; platform turns win).
    t_asr = time.perf_counter()
    turns, diarization, transcribed = ensure_turns(
        settings, call, turns, audio, progress=lambda f, m: ctx.progress(0.05 + 0.45 * f, m), policy=policy)
    turns, pii_counts = redact_stored_turns(settings, call, turns, policy, (transcribed or {}).get("pii_counts"))
    result = analyse_call(settings, call, turns, audio=audio, diarization=diarization,
                          progress=ctx.progress if transcribed is None else lambda f, m: ctx.progress(0.5 + f / 2, m))
    if transcribed is not None:
        result["timings"]["transcription"] = round(time.perf_counter() - t_asr - result["timings"]["total"], 3)
        result["timings"]["total"] = round(time.perf_counter() - t_asr, 3)
        result["versions"]["transcription"] = f"{transcribed['backend']}:{transcribed['model_version']}"
    result["summary"]["text"] = policy.text(result["summary"]["text"])  # a chat model may echo what it guessed
    values = _values(result, call)
    values.update(pii_redactions=sum(pii_counts.values()), pii_redaction_counts=pii_counts)
    if transcribed is not None:
        values["details"]["transcription"] = transcribed
    ctx.progress(0.9, "storing")

    async def store():
        async with open_db(settings) as db:
            await db.save_analytics(call.tenant_id, call.id, values)

    run_sync(store())
    Warehouse(settings).insert_call_facts([_fact(call, values, result)])
    log.info("call analytics done call=%s tenant=%s intent=%s audio=%s elapsed=%.2fs", call.id, call.tenant_id,
             values["intent"], audio is not None, result["timings"]["total"])
    return {
        "call_id": call.id, "tenant_id": call.tenant_id, "intent": values["intent"],
        "intent_confidence": values["intent_confidence"], "num_speakers": values["num_speakers"],
        "talk_seconds": values["talk_seconds"], "silence_seconds": values["silence_seconds"],
        "overlap_seconds": values["overlap_seconds"], "interruptions": values["interruptions"],
        "aht_seconds": values["aht_seconds"], "sentiment": result["sentiment"], "summary": values["summary"],
        "has_audio": audio is not None, "timings": result["timings"],
        "transcribed": transcribed is not None, "turn_source": turns[0].source if turns else None,
        "pii_redactions": values["pii_redactions"],
    }


@task("workers.tasks.diarize_call", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def diarize_call(ctx: TaskContext, call_id: str, audio_path: str) -> dict[str, Any]:
    """Who spoke when in ``audio_path``: ``{call_id, num_speakers, segments: [{start, end, speaker}], ...}``.

    Raises Forbidden (outside the allowed roots), NotFound (no such file), InvalidInput (bad audio).
    """
    path = confined_audio(ctx.settings, audio_path)

    result = diarize_file(ctx.settings, str(path))
    return {"call_id": call_id, **result}


@task("workers.tasks.analyze_emotion", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def analyze_emotion(ctx: TaskContext, call_id: str, audio_path: str) -> dict[str, Any]:
    """Emotion per speaker segment of ``audio_path`` (diarized first), and a summary per speaker.

    Returns ``{call_id, segments: [{start, end, speaker, label, scores, valence, arousal}],
    speakers: {speaker: {seconds, valence, arousal, label}}, backend, model_version}``.
    """
    path = confined_audio(ctx.settings, audio_path)

    diar = diarize_file(ctx.settings, str(path))
    ctx.progress(0.5, "emotion")
    result = analyze_file(ctx.settings, str(path), segments=diar["segments"])
    speakers: dict[str, dict[str, Any]] = {}
    for seg in result["segments"]:
        entry = speakers.setdefault(str(seg["speaker"]), {"seconds": 0.0, "_v": 0.0, "_a": 0.0, "_labels": {}})
        w = max(0.0, float(seg["end"]) - float(seg["start"]))
        entry["seconds"] += w
        entry["_v"] += w * float(seg.get("valence") or 0.0)
        entry["_a"] += w * float(seg.get("arousal") or 0.0)
        entry["_labels"][seg.get("label")] = entry["_labels"].get(seg.get("label"), 0.0) + w
    for entry in speakers.values():
        secs = entry["seconds"] or 1.0
        entry["valence"] = round(entry.pop("_v") / secs, 4)
        entry["arousal"] = round(entry.pop("_a") / secs, 4)
        labels = entry.pop("_labels")
        entry["label"] = max(labels, key=labels.get) if labels else None
        entry["seconds"] = round(entry["seconds"], 3)
    return {"call_id": call_id, "segments": result["segments"], "speakers": speakers,
            "num_speakers": diar["num_speakers"], "backend": result.get("backend"),
            "model_version": result.get("model_version"), "processed_at": datetime.now(UTC).isoformat()}
