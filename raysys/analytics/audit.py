"""Model audits on a labelled set: diarization error rate, intent accuracy, emotion recall and sentiment
accuracy, with speed.

An audit set is a directory::

    <dir>/diarization/<uri>.wav   recordings
    <dir>/diarization/*.rttm      reference speaker turns (RTTM; the file id column names the recording)
    <dir>/intents.csv             text,category rows the intent model has not been trained on
    <dir>/intent_model/           optional: the intent model to audit (else INTENT_MODEL_DIR)
    <dir>/emotion/                labelled clips, one emotion each: either a labels.csv (``path,label``,
                                  paths relative to the folder) or EmoDB-style names (``03a01Wa.wav``: the
                                  sixth character is the emotion: W angry, F happy, T sad, N neutral;
                                  EmoDB's other emotions are not in the models' label set and are skipped)
    <dir>/sentiment.csv           optional: ``text,label`` rows (positive/neutral/negative); without it
                                  the set raysys ships (``raysys/assets/sentiment_audit.csv``) is used

:func:`build_default_set` makes one from the project's shared data (pyannote's sample and AMI
excerpts, Banking77, EmoDB clips), training the audited intent model on the Banking77 rows it does
not keep.
"""

from __future__ import annotations

import csv
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raysys.errors import InvalidInput

SENTIMENT_LABELS = ("negative", "neutral", "positive")
EMOTION_LABELS = ("neutral", "angry", "happy", "sad")  # the label set of every emotion backend
EMODB_CODES = {"W": "angry", "F": "happy", "T": "sad", "N": "neutral"}  # Ärger, Freude, Trauer, neutral
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
BUNDLED_SENTIMENT_SET = Path(__file__).resolve().parent.parent / "assets" / "sentiment_audit.csv"
DER_COLLAR = 0.5  # pyannote.metrics collar: 0.25 s forgiven on each side of every reference boundary


def read_rttm(paths: Sequence[Path]) -> dict[str, list[tuple[float, float, str]]]:
    """uri -> [(start, end, speaker)] from RTTM ``SPEAKER`` lines."""
    out: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for path in paths:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 8 and parts[0] == "SPEAKER":
                start, dur = float(parts[3]), float(parts[4])
                out[parts[1]].append((start, start + dur, parts[7]))
    return dict(out)


def _annotation(turns: Sequence[tuple[float, float, str]], uri: str):
    from pyannote.core import Annotation, Segment  # noqa: PLC0415 - pyannote: heavy, only to score diarization

    ann = Annotation(uri=uri)
    for k, (start, end, speaker) in enumerate(turns):
        if end > start:
            ann[Segment(start, end), k] = speaker
    return ann


def diarization_items(audit_dir: Path) -> list[tuple[Path, list[tuple[float, float, str]]]]:
    """(recording, reference turns) for each recording that has a reference."""
    folder = audit_dir / "diarization"
    refs = read_rttm(sorted(folder.glob("*.rttm"))) if folder.is_dir() else {}
    items = []
    for uri, turns in sorted(refs.items()):
        wav = folder / f"{uri}.wav"
        if wav.is_file():
            items.append((wav, turns))
    return items


def diarization_error_rate(pairs: Sequence[tuple[Sequence[tuple[float, float, str]], Sequence[dict]]]) -> dict[str, Any]:
    """Global DER over (reference turns, hypothesis segments ``{start, end, speaker}``) pairs."""
    from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: PLC0415 - pyannote: heavy, only to score diarization

    metric = DiarizationErrorRate(collar=DER_COLLAR, skip_overlap=False)
    per_file = []
    for k, (ref, hyp) in enumerate(pairs):
        uri = f"f{k}"
        value = metric(_annotation(ref, uri), _annotation([(s["start"], s["end"], str(s["speaker"])) for s in hyp], uri))
        per_file.append(round(float(value), 4))
    return {"der": float(abs(metric)) if pairs else 0.0, "per_file": per_file, "collar": DER_COLLAR}


def intent_accuracy(rows: Sequence[tuple[str, str]], predict: Callable[[list[str]], list[tuple[str, float]]]) -> dict:
    preds = predict([t for t, _ in rows])
    correct = sum(1 for (_, cat), (p, _) in zip(rows, preds, strict=True) if p == cat)
    return {"accuracy": correct / len(rows) if rows else 0.0, "n": len(rows), "correct": correct}


def read_sentiment_set(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of a ``text,label`` CSV (header required; labels positive/neutral/negative).

    Raises:
        InvalidInput: missing file, no ``text``/``label`` columns, an unknown label or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"sentiment audit set {path} does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise InvalidInput(f"{path}: needs a header with text and label columns")
        rows = []
        for n, r in enumerate(reader, start=2):
            label = (r["label"] or "").strip().lower()
            if label not in SENTIMENT_LABELS:
                raise InvalidInput(f"{path} line {n}: label {r['label']!r} is not one of {', '.join(SENTIMENT_LABELS)}")
            if (r["text"] or "").strip():
                rows.append((r["text"], label))
    if not rows:
        raise InvalidInput(f"{path}: no labelled rows")
    return rows


def sentiment_set_path(audit_dir: Path) -> Path:
    """The audit set's ``sentiment.csv``, else the set raysys ships."""
    own = Path(audit_dir) / "sentiment.csv"
    return own if own.is_file() else BUNDLED_SENTIMENT_SET


def sentiment_accuracy(rows: Sequence[tuple[str, str]], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label recall and confusion of predicted ``labels`` against ``rows``' labels."""
    gold = [g for _, g in rows]
    return _classification(gold, list(labels), SENTIMENT_LABELS) | {"misses": [
        {"text": t, "label": g, "predicted": p} for (t, g), p in zip(rows, labels, strict=True) if g != p][:20]}


def audit_sentiment(audit_dir: Path) -> list[dict[str, Any]]:
    """Audit rows (accuracy and macro-F1, 3 classes) of the sentiment model on the audit set's sentiment set.

    Returns ``[{"model": "sentiment", "version", "metric", "value", "rtf": 0.0, "details"}]``.
    Raises InvalidInput for a malformed ``sentiment.csv``.
    """
    from raysys.analytics import sentiment  # noqa: PLC0415 - keeps VADER's lexicon load off the other audits' path

    path = sentiment_set_path(audit_dir)
    rows = read_sentiment_set(path)
    t0 = time.perf_counter()
    labels = [sentiment.label_for(sentiment.text_sentiment(t)) for t, _ in rows]
    elapsed = time.perf_counter() - t0
    scores = sentiment_accuracy(rows, labels)
    details = {**scores, "set": str(path), "seconds_per_text": elapsed / len(rows)}
    version = sentiment.model_version()
    return [{"model": "sentiment", "version": version, "metric": metric, "value": scores[metric], "rtf": 0.0,
             "details": details} for metric in ("accuracy", "macro_f1")]


def emotion_items(audit_dir: Path) -> tuple[list[tuple[Path, str]], int]:
    """((clip, label) pairs, clips skipped) from ``<dir>/emotion`` (labels.csv, else EmoDB-style names).

    Raises:
        InvalidInput: a labels.csv without ``path``/``label`` columns, or naming a missing file.
    """
    folder = Path(audit_dir) / "emotion"
    if not folder.is_dir():
        return [], 0
    items: list[tuple[Path, str]] = []
    skipped = 0
    table = folder / "labels.csv"
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise InvalidInput(f"{table}: needs a header with path and label columns")
            for r in reader:
                clip = (folder / r["path"]).resolve()
                if folder.resolve() not in clip.parents or not clip.is_file():
                    raise InvalidInput(f"{table}: {r['path']!r} is not a file inside {folder}")
                label = (r["label"] or "").strip().lower()
                if label in EMOTION_LABELS:
                    items.append((clip, label))
                else:
                    skipped += 1
        return items, skipped
    for clip in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        label = EMODB_CODES.get(clip.stem[5:6]) if len(clip.stem) == 7 else None
        if label:
            items.append((clip, label))
        else:
            skipped += 1
    return items, skipped


def emotion_recall(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Unweighted average recall (over the labels present), accuracy and confusion of (gold, predicted)."""
    out = _classification([g for g, _ in pairs], [p for _, p in pairs], EMOTION_LABELS)
    present = [lab for lab in EMOTION_LABELS if any(g == lab for g, _ in pairs)]
    out["uar"] = sum(out["recall"][lab] for lab in present) / len(present) if present else 0.0
    return out


def _classification(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    n = len(gold)
    confusion = {g: {p: sum(1 for a, b in zip(gold, pred, strict=True) if a == g and b == p) for p in labels}
                 for g in labels}
    recall, f1s = {}, []
    for lab in labels:
        tp = confusion[lab][lab]
        support = sum(confusion[lab].values())
        predicted = sum(1 for p in pred if p == lab)
        recall[lab] = tp / support if support else 0.0
        f1s.append(2 * tp / (support + predicted) if support + predicted else 0.0)
    correct = sum(1 for a, b in zip(gold, pred, strict=True) if a == b)
    return {"accuracy": correct / n if n else 0.0, "macro_f1": sum(f1s) / len(f1s), "n": n, "correct": correct,
            "recall": recall, "confusion": confusion}


def build_default_set(shared_data: Path, dest: Path, *, recordings: Sequence[str] = ("sample", "trn00", "trn01"),
                      per_intent: int = 4, train_intents: Callable[[list[str], list[str], Path], Any] | None = None,
                      seed: int = 0, emotion_per_label: int = 5) -> Path:
    """Build an audit set from ``../shared/data`` under ``dest``.

    Copies the named recordings with their RTTM turns, keeps ``per_intent`` Banking77 rows per intent as
    ``intents.csv`` and, with ``train_intents(texts, categories, out_dir)``, trains the audited intent
    model on the remaining rows into ``dest/intent_model``. Copies ``emotion_per_label`` EmoDB clips of
    each of the four emotions (speakers 03 and 08 first: note that EmoDB is also the training corpus of
    the default emotion model, so this set tracks changes rather than measuring generalisation) and the
    sentiment set raysys ships as ``sentiment.csv``.

    Raises:
        InvalidInput: ``shared_data`` lacks the diarization folder or a named recording.
    """
    diar = shared_data / "diarization"
    if not diar.is_dir():
        raise InvalidInput(f"{shared_data} has no diarization/ folder")
    out = dest / "diarization"
    out.mkdir(parents=True, exist_ok=True)
    refs = read_rttm(sorted(diar.glob("*.rttm")))
    for uri in recordings:
        if uri not in refs or not (diar / f"{uri}.wav").is_file():
            raise InvalidInput(f"{diar} has no recording {uri!r} with a reference")
        shutil.copyfile(diar / f"{uri}.wav", out / f"{uri}.wav")
        (out / f"{uri}.rttm").write_text("".join(
            f"SPEAKER {uri} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>\n" for s, e, spk in refs[uri]))
    catalogue = shared_data / "intents" / "banking77" / "train.csv"
    if catalogue.is_file():
        with catalogue.open(newline="") as fh:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
        by_cat: dict[str, list[int]] = defaultdict(list)
        for i, (_, cat) in enumerate(rows):
            by_cat[cat].append(i)
        rng = random.Random(seed)
        held = {i for idx in by_cat.values() for i in rng.sample(idx, min(per_intent, len(idx)))}
        with (dest / "intents.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "category"])
            w.writerows(rows[i] for i in sorted(held))
        if train_intents is not None:
            rest = [rows[i] for i in range(len(rows)) if i not in held]
            train_intents([t for t, _ in rest], [c for _, c in rest], dest / "intent_model")
    emodb = shared_data / "emotion" / "emodb"
    if emotion_per_label and emodb.is_dir():
        out = dest / "emotion"
        out.mkdir(exist_ok=True)
        clips = sorted(p for p in emodb.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and len(p.stem) == 7)
        # two speakers first (a man and a woman), then the rest, so a small set still has both voices
        clips.sort(key=lambda p: (p.stem[:2] not in ("03", "08"), p.name))
        for code in EMODB_CODES:
            for clip in [p for p in clips if p.stem[5] == code][:emotion_per_label]:
                shutil.copyfile(clip, out / clip.name)
    shutil.copyfile(BUNDLED_SENTIMENT_SET, dest / "sentiment.csv")
    return dest
