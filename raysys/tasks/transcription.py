"""Transcripts from audio (queue ``analytics``): words → speaker turns, stored as the call's turns.

- :func:`transcribe_recording` — diarize (unless given) and transcribe a recording, then assign the
  words to speakers and roles and group them into turns. The CLI (``raysys transcribe``), the HTTP route
  (``POST /v1/transcribe``) and the tasks below all use it.
- ``workers.tasks.transcribe_call(call_id, audio_path)`` — transcribe a call's recording and store the
  turns with ``source='asr'`` unless the platform wrote turns for the call (platform turns win).
- :func:`ensure_turns` — what ``process_call_analytics`` does for a call with audio and no turns.

Roles: stereo recordings give agent (channel 0) and customer (channel 1); a call's ``audio_layout``
(its metadata) says whether it is stereo; otherwise the first speaker is the agent and the one who
speaks most of the rest is the customer (:func:`raysys.analytics.callmetrics.map_speakers`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from raysys.analytics import callmetrics, redaction_turns
from raysys.config import Settings
from raysys.errors import InvalidInput
from raysys.tasks.registry import TaskContext, task

log = logging.getLogger(__name__)
ORCHESTRATION_CPUS = 0.25  # the task waits on the model actors, which hold CPUs of their own


def transcribe_recording(settings: Settings, audio: str | Path | bytes, *, layout: str = "auto",
                         diarization: dict | None = None, backend: str | None = None, language: str | None = None,
                         progress=None) -> dict[str, Any]:  # noqa: ANN001
    """Turns with words from a recording. Ray must be initialised.

    ``diarization`` is :func:`raysys.actors.diarization.diarize_file`'s result when the caller has it
    (otherwise the recording is diarized here, beside the transcription). ``progress(fraction, msg)``
    hears how far the transcription is.

    Returns ``{"turns": [{"speaker", "role", "channel", "start", "end", "text", "confidence", "words"}],
    "text", "language", "duration", "layout", "backend", "model_version", "diarization", "speaker_mapping",
    "chunks", "rtf", "timings"}``.

    Raises InvalidInput (bad audio or arguments), ModelUnavailable (a model cannot be loaded).
    """
    import concurrent.futures  # noqa: PLC0415

    from raysys.actors.diarization import diarize_file  # noqa: PLC0415
    from raysys.actors.transcription import transcribe_audio  # noqa: PLC0415
    from raysys.models.transcription import words_to_turns  # noqa: PLC0415

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    report = progress or (lambda f, m: None)
    source = audio if isinstance(audio, bytes | bytearray) else str(audio)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # Diarization and transcription use different actors: run them side by side.
        diar_future = None if diarization is not None else pool.submit(diarize_file, settings, source, layout=layout)
        words = transcribe_audio(settings, source, layout=layout, backend=backend, language=language,
                                 progress=lambda f, m: report(0.9 * f, m))
        timings["transcription"] = words["elapsed"]
        if diar_future is not None:
            diarization = diar_future.result()
            timings["diarization_wait"] = round(time.perf_counter() - t0 - words["elapsed"], 3)
    assert diarization is not None
    mapping = callmetrics.map_speakers(diarization["segments"], (), diarization.get("layout"))
    segments = diarization["segments"]
    if words["layout"] == "stereo" and diarization.get("layout") != "stereo":
        segments = []  # channels are the speakers; mono clustering labels do not apply
    turns = words_to_turns(words["words"], segments, mapping["mapping"])
    if words["layout"] == "stereo":
        for t in turns:
            t["role"] = callmetrics.ROLES[t["channel"]] if t["channel"] in (0, 1) else t["role"]
            t["speaker"] = t["speaker"] or t["role"]
        mapping = {"mapping": {r: r for r in callmetrics.ROLES}, "method": "channel"}
    timings["total"] = round(time.perf_counter() - t0, 3)
    report(1.0, f"{len(turns)} turns")
    return {"turns": turns, "text": "\n".join(f"{t['role']}: {t['text']}" for t in turns),
            "language": words["language"], "duration": words["duration"], "layout": words["layout"],
            "backend": words["backend"], "model_version": words["model_version"], "diarization": diarization,
            "speaker_mapping": mapping, "chunks": words["chunks"], "rtf": words["rtf"], "timings": timings}


def stored_turns(result: dict[str, Any]) -> list[Any]:
    """``call_turns`` rows (:class:`raysys.storage.postgres.Turn`, source 'asr') from a transcription."""
    from raysys.storage.postgres import Turn  # noqa: PLC0415

    version = f"{result['backend']}:{result['model_version']}"
    return [Turn(turn_index=i, speaker_role=t["role"] if t["role"] in callmetrics.ROLES else "unknown",
                 start_s=t["start"], end_s=t["end"], text=t["text"], source="asr", model_version=version,
                 confidence=t["confidence"], words=t["words"]) for i, t in enumerate(result["turns"])]


def ensure_turns(settings: Settings, call: Any, turns: list[Any], audio: Path | None,
                 progress=lambda f, m: None,  # noqa: ANN001
                 policy: redaction_turns.Policy | None = None) -> tuple[list[Any], dict | None, dict | None]:
    """The call's turns, transcribed from ``audio`` and stored when the call has none.

    Returns ``(turns, diarization, transcription facts)``; the last two are None when nothing was
    transcribed (the call has turns, or no audio). When the platform writes turns while this runs,
    its turns are kept and returned.
    """
    if turns or audio is None:
        return turns, None, None
    from raysys.tasks.analytics import open_db, run_sync  # noqa: PLC0415 - analytics imports this module

    result = transcribe_recording(settings, audio, layout=call.audio_layout or "auto", progress=progress)
    # PII is redacted before the turns are stored (``policy``: the tenant's; default: the settings').
    result, found = redaction_turns.redact_transcription(result, policy or redaction_turns.Policy.for_tenant(settings))
    rows = stored_turns(result)

    async def store():
        async with open_db(settings) as db:
            saved = await db.save_asr_turns(call.tenant_id, call.id, rows)
            return saved, await db.get_turns(call.tenant_id, call.id)

    saved, current = run_sync(store())
    facts = {"backend": result["backend"], "model_version": result["model_version"], "language": result["language"],
             "turns": len(rows), "words": sum(len(t["words"]) for t in result["turns"]), "stored": saved,
             "rtf": result["rtf"], "chunks": result["chunks"], "seconds": result["timings"]["total"],
             "pii_counts": found.counts if found is not None else {}}
    log.info("call %s transcribed: %d turns, %d words, stored=%s (%s)", call.id, facts["turns"], facts["words"],
             saved, result["backend"])
    return current, result["diarization"], facts


@task("workers.tasks.transcribe_call", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def transcribe_call(ctx: TaskContext, call_id: str, audio_path: str) -> dict[str, Any]:
    """Transcribe ``audio_path`` for ``call_id``; store the turns (source 'asr') if the call exists and the
    platform wrote none.

    Returns ``{"call_id", "turns", "text", "language", "duration", "backend", "model_version", "stored",
    "rtf"}``; ``stored`` is False when the call is not in the database or has platform turns.
    Raises Forbidden (outside the allowed roots), NotFound (no such file), InvalidInput (bad audio).
    """
    if not isinstance(call_id, str) or not call_id:
        raise InvalidInput("call_id must be a non-empty string")
    from raysys.storage.postgres import NotFound as RowNotFound  # noqa: PLC0415
    from raysys.tasks.analytics import confined_audio, open_db, postgres_url, run_sync  # noqa: PLC0415

    path = confined_audio(ctx.settings, audio_path)
    call, tenant_pii = None, None
    if _has_db(ctx.settings, postgres_url):
        async def load():
            async with open_db(ctx.settings) as db:
                try:
                    found = await db.get_call(call_id)
                except RowNotFound:
                    return None, None
                return found, await db.tenant_pii(found.tenant_id)
        call, tenant_pii = run_sync(load())
    layout = call.audio_layout if call is not None and call.audio_layout else "auto"
    result = transcribe_recording(ctx.settings, path, layout=layout, progress=ctx.progress)
    # Stored and returned (the job result lands in Redis) only redacted, under the call's tenant's policy.
    result, _ = redaction_turns.redact_transcription(result, redaction_turns.Policy.for_tenant(ctx.settings,
                                                                                                 tenant_pii))
    stored = False
    if call is not None:
        rows = stored_turns(result)

        async def store():
            async with open_db(ctx.settings) as db:
                return await db.save_asr_turns(call.tenant_id, call.id, rows)

        stored = run_sync(store())
    return {"call_id": call_id, "turns": result["turns"], "text": result["text"], "language": result["language"],
            "duration": result["duration"], "layout": result["layout"], "backend": result["backend"],
            "model_version": result["model_version"], "stored": stored, "rtf": result["rtf"]}


def _has_db(settings: Settings, resolve) -> bool:  # noqa: ANN001
    try:
        resolve(settings)
    except Exception:  # noqa: BLE001 - no database configured: transcribe without storing
        return False
    return True

