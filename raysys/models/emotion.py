"""Speech emotion per speaker segment: one interface, two backends, one output shape.

Every backend returns, per segment, ``{"label", "scores": {label: p}, "valence", "arousal"}`` with
labels ``neutral``, ``angry``, ``happy``, ``sad`` (the wav2vec2-IEMOCAP set), valence in [-1, 1]
and arousal in [0, 1].

- ``speechbrain``: :class:`~raysys.models.speechbrain_backend.SpeechBrainEmotion`, a trained
  classifier; valence and arousal are read off its label probabilities (:func:`circumplex`).
- ``builtin`` (default, offline): :class:`BuiltinEmotion`, a small trained model, described below.

What the builtin model is
    Per segment, 60 acoustic descriptors that do not depend on the recording level or on the rest of
    the call (:mod:`raysys.models.emotion_features`: energy dynamics, pitch level/spread/movement,
    voicing, spectral tilt and shape, a syllable-rate proxy, all from the 300-3400 Hz telephone band)
    go through two logistic heads trained on Berlin EmoDB (CC0; ``scripts/train_emotion.py``
    rebuilds the weights bit for bit): a four-way *label* head (neutral, angry, happy, sad) and an
    *arousal* head (P(high): anger, joy, fear vs neutral, boredom, sadness). Valence from the voice is
    the label probabilities' circumplex valence. When a transcript overlaps the segment, its text
    valence (:func:`text_valence`, the one hook to the text side) re-weights the label
    probabilities and is blended into the valence. Each segment is scored on its own, so a single
    clip and a segment of a long call are treated alike. Speaker-independent cross-validation on
    EmoDB (bench/emotion.py): arousal ROC AUC about 0.99 and four-class UAR about 0.71, full band and
    8 kHz telephone alike.

What it is not
    It was trained on 10 German actors' 2-second acted clips: expect lower figures on spontaneous
    speech, and treat single-utterance labels as indications. From the voice, anger and joy are
    easily confused (both loud, fast and high); sadness and a flat, bored or tired voice too. It does
    not hear sarcasm, knows no context beyond the segment, does not handle overlapped speakers, very
    short segments (under half a second) or heavy noise well, and it is not calibrated on any
    population of callers: use it for trends across calls and for flagging agitated stretches, and
    the speechbrain backend (or better) for labels that matter.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np

from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput, ModelUnavailable
from raysys.models.emotion_features import FEATURE_NAMES, segment_features
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


# --- the builtin trained model ----------------------------------------------------------------------

WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "emotion_builtin.json"
TEXT_WEIGHT = 0.5  # share of the text's valence in a segment's valence when a transcript overlaps it
TEXT_TEMPERATURE = 0.25  # how sharply the text's valence favours the labels near it (see classify)
RELIABLE_SECONDS = 0.5  # shorter segments hold too few frames for pitch and rhythm statistics


def acoustic_valence(scores: dict[str, float]) -> float:
    """Valence heard in the voice: the label probabilities weighted by the labels' valence."""
    return circumplex(scores)[0]


class BuiltinEmotion:
    """The trained offline model: acoustic descriptors → two logistic heads (see the module docstring).

    The weights (``raysys/assets/emotion_builtin.json``, made by ``scripts/train_emotion.py`` from
    EmoDB) are read once, here; scoring is a feature pass per segment and two matrix products per batch.
    """

    name = "builtin"

    def __init__(self, device: str = "cpu", weights: str | Path | None = None) -> None:
        path = Path(weights) if weights else WEIGHTS
        try:
            data = json.loads(path.read_text())
            self.mean = np.asarray(data["mean"], dtype=np.float64)
            self.scale = np.asarray(data["scale"], dtype=np.float64)
            label, arousal = data["heads"]["label"], data["heads"]["arousal"]
            self.classes = tuple(label["classes"])
            self.label_w = np.asarray(label["coef"], dtype=np.float64)
            self.label_b = np.asarray(label["intercept"], dtype=np.float64)
            self.arousal_w = np.asarray(arousal["coef"][0], dtype=np.float64)
            self.arousal_b = float(arousal["intercept"][0])
            names = tuple(data["feature_names"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelUnavailable(f"the builtin emotion weights {path} are unreadable: {exc}") from None
        if names != FEATURE_NAMES or set(self.classes) != set(LABELS) or self.label_w.shape != (4, len(names)):
            raise ModelUnavailable(f"the builtin emotion weights {path} do not match this version's features.")
        self.model_version = f"builtin-emodb-logreg {data.get('version', '?')}"
        self.device = "cpu"

    def acoustic(self, pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Label probabilities ``[n, 4]`` (in :data:`LABELS` order) and P(high arousal) ``[n]`` from audio alone."""
        feats = np.stack([segment_features(np.asarray(w, dtype=np.float32)) for w in pieces])
        return self.score_features(feats, np.array([len(w) / SAMPLE_RATE for w in pieces]))

    def score_features(self, feats: np.ndarray, seconds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`acoustic` from precomputed :func:`segment_features` rows ``[n, N_FEATURES]``.

        ``seconds`` (the segments' durations) tempers the scores of segments shorter than
        :data:`RELIABLE_SECONDS` towards "cannot tell"; all-zero rows (digital silence) get flat
        label scores and arousal 0.
        """
        feats = np.asarray(feats, dtype=np.float64)
        z = (feats - self.mean) / self.scale
        trust = np.ones(len(z)) if seconds is None else np.clip(np.asarray(seconds) / RELIABLE_SECONDS, 0.0, 1.0)
        logits = (z @ self.label_w.T + self.label_b) * trust[:, None]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        order = [self.classes.index(lab) for lab in LABELS]
        arousal = 1 / (1 + np.exp(-(z @ self.arousal_w + self.arousal_b) * trust))
        silent = ~np.any(feats, axis=1)
        p[silent] = 1 / len(LABELS)
        arousal[silent] = 0.0
        return p[:, order], arousal

    def classify(self, pieces: list[np.ndarray], transcripts: list[str | None] | None = None) -> list[dict]:
        """Scores for each mono 16 kHz piece; ``transcripts[i]`` (or None) is the text spoken in it.

        Each piece is scored on its own (no normalisation against the other pieces). With a text, its
        valence (:func:`text_valence`) re-weights the acoustic label probabilities by how close each
        label's valence is to it (a product of experts: the voice tells arousal and some valence, the
        words tell valence), and the reported valence blends the two.
        """
        if not pieces:
            return []
        probs, arousal = self.acoustic(pieces)
        out = []
        for i, p in enumerate(probs):
            scores = dict(zip(LABELS, p.tolist(), strict=True))
            valence = acoustic_valence(scores) if max(p) - min(p) > 1e-6 else 0.0  # flat: nothing heard
            text = transcripts[i] if transcripts and i < len(transcripts) else None
            if text:
                tv = text_valence(text)
                prior = {lab: math.exp(-((tv - PROTOTYPES[lab][0]) ** 2) / TEXT_TEMPERATURE) for lab in LABELS}
                z = sum(scores[lab] * prior[lab] for lab in LABELS) or 1.0
                scores = {lab: scores[lab] * prior[lab] / z for lab in LABELS}
                valence = TEXT_WEIGHT * tv + (1 - TEXT_WEIGHT) * acoustic_valence(scores)
            out.append({"label": max(scores, key=scores.get), "scores": {k: round(v, 4) for k, v in scores.items()},
                        "valence": round(max(-1.0, min(1.0, valence)), 4), "arousal": round(float(arousal[i]), 4)})
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
        from raysys.models.speechbrain_backend import SpeechBrainEmotion  # noqa: PLC0415 - a cycle: the speechbrain backend imports this module's labels

        if not model:
            raise ModelUnavailable("the speechbrain backend needs EMOTION_MODEL (a local folder or hub id).")

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
