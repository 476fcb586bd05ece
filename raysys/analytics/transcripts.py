"""Transcripts from audio: words → speaker turns, and a call's turns transcribed when it has none.

- :func:`transcribe_recording` — diarize (unless given) and transcribe a recording, then assign the
  words to speakers and roles and group them into turns. The CLI (``raysys transcribe``), the HTTP route
  (``POST /v1/transcribe``) and the tasks (:mod:`raysys.tasks.transcription`, :mod:`raysys.tasks.analytics`)
  all use it.
- :func:`stored_turns` — a transcription as ``call_turns`` rows (``source='asr'``).
- :func:`ensure_turns` — what ``process_call_analytics`` does for a call with audio and no turns:
  transcribe and store the turns unless the platform wrote some (platform turns win).

Roles: stereo recordings give agent (channel 0) and customer (channel 1); a call's ``audio_layout``
(its metadata) says whether it is stereo; otherwise the first speaker is the agent and the one who
speaks most of the rest is the customer (:func:`raysys.analytics.callmetrics.map_speakers`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from pathlib import Path
from typing import Any

from raysys.analytics import callmetrics, redaction_turns
from raysys.config import Settings
from raysys.models.transcription import words_to_turns
from raysys.storage.postgres import Call, Turn, open_db, run_sync

log = logging.getLogger(__name__)


def transcribe_recording(settings: Settings, audio: str | Path | bytes, *, layout: str = "auto",
                         diarization: dict | None = None, backend: str | None = None, language: str | None = None,
                         progress=None) -> dict[str, Any]:
    """Turns with words from a recording. Ray must be initialised.

    ``diarization`` is :func:`raysys.actors.diarization.diarize_file`'s result when the caller has it
    (otherwise the recording is diarized here, beside the transcription). ``progress(fraction, msg)``
    hears how far the transcription is.

    Returns ``{"turns": [{"speaker", "role", "channel", "start", "end", "text", "confidence", "words"}],
    "text", "language", "duration", "layout", "backend", "model_version", "diarization", "speaker_mapping",
    "chunks", "rtf", "timings"}``.

    Raises InvalidInput (bad audio or arguments), ModelUnavailable (a model cannot be loaded).
    """
    # The actor modules import torch and Ray (about 4 s): only a process that transcribes pays for them, not
    # every process that imports the task modules (the bridges, the Serve replicas).
    from raysys.actors.diarization import diarize_file  # noqa: PLC0415 - see above
    from raysys.actors.transcription import transcribe_audio  # noqa: PLC0415 - see above

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


def stored_turns(result: dict[str, Any]) -> list[Turn]:
    """``call_turns`` rows (:class:`raysys.storage.postgres.Turn`, source 'asr') from a transcription."""
    version = f"{result['backend']}:{result['model_version']}"
    return [Turn(turn_index=i, speaker_role=t["role"] if t["role"] in callmetrics.ROLES else "unknown",
                 start_s=t["start"], end_s=t["end"], text=t["text"], source="asr", model_version=version,
                 confidence=t["confidence"], words=t["words"]) for i, t in enumerate(result["turns"])]


def ensure_turns(settings: Settings, call: Call, turns: list[Turn], audio: Path | None,
                 progress=lambda f, m: None,
                 policy: redaction_turns.Policy | None = None) -> tuple[list[Turn], dict | None, dict | None]:
    """The call's turns, transcribed from ``audio`` and stored when the call has none.

    Returns ``(turns, diarization, transcription facts)``; the last two are None when nothing was
    transcribed (the call has turns, or no audio). When the platform writes turns while this runs,
    its turns are kept and returned.
    """
    if turns or audio is None:
        return turns, None, None
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
