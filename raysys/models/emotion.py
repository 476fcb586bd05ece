"""Speech emotion per speaker segment: one interface, two backends, one output shape.

Every backend returns, per segment, ``{"label", "scores": {label: p}, "valence", "arousal"}`` with
labels ``neutral``, ``angry``, ``happy``, ``sad`` (the wav2vec2-IEMOCAP set), valence in [-1, 1]
and arousal in [0, 1].

- ``speechbrain``: :class:`~raysys.models.speechbrain_backend.SpeechBrainEmotion`, a trained
  classifier; valence and arousal are read off its label probabilities (:func:`circumplex`).
- ``builtin`` (default, offline): :class:`BuiltinEmotion`, a transparent baseline, described below.

What the builtin baseline is
    *Arousal* (how activated the voice is) from acoustics: loudness of the segment against the rest
    of the call and against typical speech level, pitch variability (semitone spread of F0 from an
    autocorrelation tracker) and speaking rate (energy-envelope peaks per second, a syllable-rate
    proxy). *Valence* (how positive) only from words: when a transcript is given, a small sentiment
    lexicon with negation handling scores the text that overlaps the segment. Labels are the
    nearest prototypes in the valence/arousal plane (neutral, happy, angry, sad), softened into scores.

What it is not
    It cannot hear valence: from audio alone, an angry and an elated voice look alike (both loud,
    fast, varied), so without a transcript valence is 0 and the label is ``neutral`` unless arousal
    is extreme — then it reports high arousal but cannot say which. It knows no sarcasm, no context
    beyond the segment's words, no language but English for the lexicon, and its arousal depends on
    microphone gain and distance as much as on the speaker. Use it for trends across many calls
    (an agitated stretch, a calm one), never for a verdict on a single utterance; use the
    speechbrain backend (or better) for labels that matter.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput, ModelUnavailable
from raysys.models.sentiment import text_sentiment

LABELS = ("neutral", "angry", "happy", "sad")
BACKENDS = ("builtin", "speechbrain")

# Positions of the labels in the (valence, arousal) plane (Russell's circumplex, rough placements).
PROTOTYPES = {"neutral": (0.0, 0.4), "angry": (-0.6, 0.8), "happy": (0.6, 0.65), "sad": (-0.5, 0.2)}


def circumplex(scores: dict[str, float]) -> tuple[float, float]:
    """(valence, arousal) as the probability-weighted mean of the label prototypes."""
    total = sum(scores.get(lab, 0.0) for lab in PROTOTYPES) or 1.0
    valence = sum(scores.get(lab, 0.0) * v for lab, (v, _) in PROTOTYPES.items()) / total
    arousal = sum(scores.get(lab, 0.0) * a for lab, (_, a) in PROTOTYPES.items()) / total
    return max(-1.0, min(1.0, valence)), max(0.0, min(1.0, arousal))


def scores_from_point(valence: float, arousal: float, temperature: float = 0.05) -> dict[str, float]:
    """Soft label scores from a (valence, arousal) point: softmax of negative squared distances."""
    logits = {lab: -((valence - v) ** 2 + (arousal - a) ** 2) / temperature for lab, (v, a) in PROTOTYPES.items()}
    top = max(logits.values())
    exp = {lab: math.exp(x - top) for lab, x in logits.items()}
    z = sum(exp.values())
    return {lab: exp[lab] / z for lab in LABELS}


class EmotionModel(Protocol):
    name: str
    model_version: str
    device: str

    def classify(self, pieces: list[np.ndarray], transcripts: list[str | None] | None = None) -> list[dict]: ...


# --- the builtin baseline --------------------------------------------------------------------------

def text_valence(text: str) -> float:
    """Valence of ``text`` in [-1, 1] from the sentiment model (:mod:`raysys.models.sentiment`, the one
    model behind call sentiment and the CSAT proxy too); 0 when it finds no opinion."""
    return text_sentiment(text)


def acoustic_features(wav: np.ndarray) -> dict[str, float]:
    """Loudness (dBFS of voiced frames), pitch median/spread (Hz, semitones), rate (peaks/s)."""
    frame, hop = 640, 320  # 40 ms / 20 ms
    if len(wav) < frame:
        wav = np.pad(wav, (0, frame - len(wav)))
    n = 1 + (len(wav) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    frames = wav[idx].astype(np.float64)
    rms = np.sqrt(np.mean(frames ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms + 1e-9)
    active = db > max(db.max() - 30, -80)  # relative to the segment: level is judged separately
    if not active.any():
        return {"loudness_db": -100.0, "pitch_hz": 0.0, "pitch_spread_st": 0.0, "rate": 0.0, "voiced": 0.0}
    # Pitch by normalised autocorrelation in 60-400 Hz on the louder frames.
    f = frames[active] - frames[active].mean(axis=1, keepdims=True)
    f *= np.hanning(frame)
    spec = np.fft.rfft(f, 2 * frame)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :frame]
    ac /= np.maximum(ac[:, :1], 1e-12)
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    strength = ac[np.arange(len(ac)), lag]
    voiced = strength > 0.45
    f0 = SAMPLE_RATE / lag[voiced]
    if len(f0) >= 3:
        semis = 12 * np.log2(f0 / np.median(f0))
        pitch, spread = float(np.median(f0)), float(np.std(np.clip(semis, -12, 12)))
    else:
        pitch, spread = 0.0, 0.0
    # Syllable-rate proxy: peaks of the smoothed loudness envelope, 100 ms apart at least.
    env = np.convolve(db, np.ones(3) / 3, mode="same")
    peaks = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > db.max() - 20)
    peak_idx = np.flatnonzero(peaks)
    if len(peak_idx):
        kept = [peak_idx[0]]
        for p in peak_idx[1:]:
            if p - kept[-1] >= 5:
                kept.append(p)
        n_peaks = len(kept)
    else:
        n_peaks = 0
    speech_seconds = max(active.sum() * hop / SAMPLE_RATE, 0.5)
    return {"loudness_db": float(np.median(db[active])), "pitch_hz": pitch, "pitch_spread_st": spread,
            "rate": min(n_peaks / speech_seconds, 10.0), "voiced": float(voiced.mean())}


class BuiltinEmotion:
    """The offline baseline (see the module docstring for what it can and cannot tell)."""

    name = "builtin"
    model_version = "builtin-acoustic-lexicon 1"

    def __init__(self, device: str = "cpu") -> None:
        self.device = "cpu"

    def classify(self, pieces: list[np.ndarray], transcripts: list[str | None] | None = None) -> list[dict]:
        """Scores for each mono 16 kHz piece; ``transcripts[i]`` (or None) is its text."""
        if not pieces:
            return []
        feats = [acoustic_features(np.asarray(w, dtype=np.float32)) for w in pieces]
        loud = np.array([f["loudness_db"] for f in feats])
        reference = float(np.median(loud[loud > -100])) if np.any(loud > -100) else -30.0
        out = []
        for i, f in enumerate(feats):
            if f["loudness_db"] <= -100:
                arousal = 0.0
            else:
                z = (0.35 * (f["loudness_db"] - reference) / 6 + 0.2 * (f["loudness_db"] + 30) / 12
                     + 0.25 * (f["pitch_spread_st"] - 2.5) / 1.5 + 0.2 * (f["rate"] - 4.0) / 1.5)
                arousal = 1 / (1 + math.exp(-z))
            text = transcripts[i] if transcripts and i < len(transcripts) else None
            valence = text_valence(text) if text else 0.0
            scores = scores_from_point(valence, arousal)
            out.append({"label": max(scores, key=scores.get), "scores": {k: round(v, 4) for k, v in scores.items()},
                        "valence": round(valence, 4), "arousal": round(arousal, 4)})
        return out


def make_emotion_model(backend: str, *, model: str | None = None, savedir: str | None = None, device: str = "cpu",
                       token: str | None = None) -> EmotionModel:
    """Load an emotion backend. ``model`` is the speechbrain recipe (folder or hub id).

    Raises:
        InvalidInput: unknown backend. ModelUnavailable: the model cannot be loaded.
    """
    if backend == "builtin":
        return BuiltinEmotion()
    if backend == "speechbrain":
        from raysys.models.speechbrain_backend import SpeechBrainEmotion  # noqa: PLC0415

        if not model:
            raise ModelUnavailable("the speechbrain backend needs EMOTION_MODEL (a local folder or hub id).")
        import tempfile  # noqa: PLC0415

        return SpeechBrainEmotion(model, savedir=savedir or tempfile.mkdtemp(prefix="raysys-sb-"), device=device,
                                  token=token)
    raise InvalidInput(f"unknown emotion backend {backend!r} (choose {', '.join(BACKENDS)}).")


def transcript_for(segment: dict, transcript: list[dict] | None) -> str | None:
    """The transcript text that overlaps ``segment`` (entries ``{"start", "end", "text"}``)."""
    if not transcript:
        return None
    parts = []
    for entry in transcript:
        try:
            start, end, text = float(entry["start"]), float(entry["end"]), str(entry.get("text", ""))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("transcript entries need start, end and text.") from None
        if min(end, segment["end"]) - max(start, segment["start"]) > 0:
            parts.append(text)
    return " ".join(parts) or None
