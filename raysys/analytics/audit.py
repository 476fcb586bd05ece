"""Model audits on a labelled set: diarization error rate and intent accuracy, with speed.

An audit set is a directory::

    <dir>/diarization/<uri>.wav   recordings
    <dir>/diarization/*.rttm      reference speaker turns (RTTM; the file id column names the recording)
    <dir>/intents.csv             text,category rows the intent model has not been trained on
    <dir>/intent_model/           optional: the intent model to audit (else INTENT_MODEL_DIR)

:func:`build_default_set` makes one from the project's shared data (pyannote's sample and AMI
excerpts, Banking77), training the audited intent model on the Banking77 rows it does not keep.
"""

from __future__ import annotations

import csv
import random
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raysys.errors import InvalidInput

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
    from pyannote.core import Annotation, Segment  # noqa: PLC0415

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
    from pyannote.metrics.diarization import DiarizationErrorRate  # noqa: PLC0415

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


def build_default_set(shared_data: Path, dest: Path, *, recordings: Sequence[str] = ("sample", "trn00", "trn01"),
                      per_intent: int = 4, train_intents: Callable[[list[str], list[str], Path], Any] | None = None,
                      seed: int = 0) -> Path:
    """Build an audit set from ``../shared/data`` under ``dest``.

    Copies the named recordings with their RTTM turns, keeps ``per_intent`` Banking77 rows per intent as
    ``intents.csv`` and, with ``train_intents(texts, categories, out_dir)``, trains the audited intent
    model on the remaining rows into ``dest/intent_model``.
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
    return dest
