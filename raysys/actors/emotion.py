"""The EmotionActor pool and :func:`analyze_file`: emotion per speaker segment of a recording.

``analyze_file`` decodes the audio in the caller, takes the given speaker segments (or diarizes the
file first through :func:`raysys.actors.diarization.diarize_file`), cuts each segment (from its own
channel for stereo calls) and sends all of them as one request to a replica of the emotion pool,
which batches concurrent requests into one model call. Backends: ``builtin`` (offline baseline,
see :mod:`raysys.models.emotion` for what it can and cannot tell) and ``speechbrain``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from raysys.actors.diarization import diarize_file
from raysys.actors.pool import ModelPool, ModelServer, get_pool
from raysys.audio import load_audio
from raysys.config import Settings
from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput
from raysys.models.emotion import make_emotion_model, transcript_for

log = logging.getLogger(__name__)

MIN_SEGMENT_SECONDS = 0.05


class EmotionActor(ModelServer):
    """Holds one emotion backend. A request item is ``{"pieces": [ndarray], "transcripts": [str|None]}``;
    all items of a batch go through the model in one ``classify`` call."""

    max_batch = 32

    def load(self, spec: dict, device: str) -> Any:
        return make_emotion_model(spec["backend"], model=spec.get("model"), token=spec.get("token"),
                                  savedir=tempfile.mkdtemp(prefix="raysys-emotion-"), device=device)

    def run_batch(self, items: list[dict]) -> list[Any]:
        pieces: list[np.ndarray] = []
        texts: list[str | None] = []
        bounds = []
        for item in items:
            start = len(pieces)
            pieces.extend(item["pieces"])
            texts.extend(item.get("transcripts") or [None] * len(item["pieces"]))
            bounds.append((start, len(pieces)))
        try:
            scored = self.model.classify(pieces, texts)
        except Exception:  # noqa: BLE001 - find the bad request: score each on its own
            out: list[Any] = []
            for item in items:
                try:
                    out.append({"scored": self.model.classify(item["pieces"], item.get("transcripts")),
                                "model_version": self.model.model_version})
                except Exception as exc:  # noqa: BLE001 - one item's failure is that item's result, not the batch's
                    out.append(exc)
            return out
        return [{"scored": scored[a:b], "model_version": self.model.model_version} for a, b in bounds]

    def describe(self) -> dict:
        info = {"backend": self.model.name, "model_version": self.model.model_version}
        on = getattr(self.model, "parameters_on", None)
        info["parameters_on"] = on() if on is not None else ["cpu"]
        return info


def backend_spec(settings: Settings, backend: str | None = None) -> dict:
    backend = (backend or settings.emotion_backend).lower()
    spec: dict = {"backend": backend}
    if backend == "speechbrain":
        spec["model"] = settings.emotion_model
        spec["token"] = settings.hf_token
    elif backend != "builtin":
        raise InvalidInput(f"unknown emotion backend {backend!r} (choose builtin or speechbrain).")
    return spec


def emotion_pool(settings: Settings, backend: str | None = None) -> ModelPool:
    """The cluster's emotion pool for ``backend`` (default ``EMOTION_BACKEND``)."""
    return get_pool(settings, "emotion", EmotionActor, backend_spec(settings, backend))


def _check_segments(segments: Any, duration: float) -> list[dict]:
    if not isinstance(segments, list):
        raise InvalidInput("segments must be a list of {start, end, speaker}.")
    out = []
    for s in segments:
        try:
            start, end = float(s["start"]), float(s["end"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(f"a segment needs numeric start and end, got {s!r}.") from None
        if not (np.isfinite(start) and np.isfinite(end)) or end <= start or start < 0:
            raise InvalidInput(f"a segment needs 0 <= start < end, got {start}..{end}.")
        start, end = start, min(end, duration)
        if end - start < MIN_SEGMENT_SECONDS:
            continue  # past the end of the audio, or too short to say anything
        out.append({"start": round(start, 3), "end": round(end, 3), "speaker": str(s.get("speaker", "SPEAKER_00")),
                    "channel": s.get("channel")})
    return out


def analyze_file(settings: Settings, audio_path: str | Path | bytes, *, segments: list[dict] | None = None,
                 transcript: list[dict] | None = None, backend: str | None = None) -> dict:
    """Emotion of each speaker segment of ``audio_path`` (a path or bytes). Ray must be initialised.

    ``segments`` are ``[{"start", "end", "speaker", "channel"?}]`` (diarized first when omitted);
    ``transcript`` is an optional ``[{"start", "end", "text"}]`` that gives the text of each segment.

    Returns ``{"segments": [{"start", "end", "speaker", "label", "scores", "valence", "arousal"}],
    "backend", "model_version"}``; silent audio gives no segments.

    Raises:
        InvalidInput: bad audio, segments or transcript. ModelUnavailable: the model cannot load.
    """
    if transcript is not None and not isinstance(transcript, list):
        raise InvalidInput("transcript must be a list of {start, end, text}.")
    audio, _ = load_audio(audio_path, mono=False, max_seconds=settings.max_audio_seconds)
    duration = audio.shape[1] / SAMPLE_RATE
    if segments is None:
        segments = diarize_file(settings, audio_path)["segments"]
    checked = _check_segments(segments, duration)
    mono = audio.mean(axis=0)
    pieces, texts = [], []
    for s in checked:
        a, b = int(s["start"] * SAMPLE_RATE), int(s["end"] * SAMPLE_RATE)
        channel = s.get("channel")
        source = audio[channel] if isinstance(channel, int) and 0 <= channel < audio.shape[0] else mono
        pieces.append(np.ascontiguousarray(source[a:b], dtype=np.float32))
        texts.append(transcript_for(s, transcript))
    pool = emotion_pool(settings, backend)
    if pieces:
        reply = pool.call({"pieces": pieces, "transcripts": texts})
        scored, version = reply["scored"], reply["model_version"]
    else:
        scored, version = [], pool.ready()[0].get("model_version", "")
    out = []
    for s, r in zip(checked, scored, strict=True):
        out.append({"start": s["start"], "end": s["end"], "speaker": s["speaker"], "label": r["label"],
                    "scores": r["scores"], "valence": r["valence"], "arousal": r["arousal"]})
    backend_name = (backend or settings.emotion_backend).lower()
    log.info("emotion of %d segments (%s)", len(out), backend_name)
    return {"segments": out, "backend": backend_name, "model_version": version}

