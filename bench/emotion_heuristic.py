"""Today's builtin emotion heuristic, frozen for bench/emotion.py (the baseline the trained model replaced).

A verbatim copy of the acoustic part of ``raysys/models/emotion.py`` at commit a9f7320 (before the
trained model): arousal from loudness against the other pieces of the same call, pitch spread and
rate; valence only from a word list. Kept here, outside the package, so the benchmark can run it on
the same folds as the trained model. Not used by raysys itself.
"""

from __future__ import annotations

import math

import numpy as np
from legacy_wordlists import emotion_text_valence as text_valence

from raysys.constants import SAMPLE_RATE
from raysys.models.emotion import scores_from_point

# The word list that shipped with it: one verbatim copy, in legacy_wordlists (bench/ is on sys.path).


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


class HeuristicEmotion:
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


def heuristic_scores(wavs: list[np.ndarray], *, together: bool) -> tuple[list[float], list[str]]:
    """(arousal, label) per clip: each clip as its own call, or all of them as one call's segments."""
    model = HeuristicEmotion()
    out = model.classify(wavs) if together else [model.classify([w])[0] for w in wavs]
    return [r["arousal"] for r in out], [r["label"] for r in out]
