"""CLI commands: ``raysys intents train|classify`` and ``raysys analytics audit-set``.

    raysys intents train --csv catalogue.csv --out models/intents [--threshold 0.25]
    raysys intents classify --model models/intents [--input texts.txt] [--format jsonl|csv]
    raysys analytics audit-set --data ../shared/data --out audit/

``classify`` reads one text per line (or a CSV with a ``text`` column, or JSON lines with ``"text"``)
from ``--input`` or standard input and writes one ``{"text", "intent", "confidence"}`` per line.
Neither needs Ray: the sentence encoder runs in this process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from raysys.analytics.audit import build_default_set
from raysys.analytics.intents import IntentModel, read_catalogue
from raysys.errors import InvalidInput


def _encoder(settings):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from raysys.actors.embedding import TextEncoder  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    enc = TextEncoder(settings.embedding_model)
    return enc, lambda texts: enc.encode(list(texts), batch_size=128)


def _read_inputs(path: str | None) -> list[str]:
    if path is None:
        lines = sys.stdin.read().splitlines()
        suffix = ""
    else:
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
        suffix = p.suffix.lower()
    if suffix == ".csv" or (lines and lines[0].strip().lower().split(",")[0] == "text" and "," in lines[0]):
        return [r["text"] for r in csv.DictReader(lines) if (r.get("text") or "").strip()]
    if suffix in (".jsonl", ".ndjson"):
        out = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    out.append(str(json.loads(line)["text"]))
                except (ValueError, KeyError, TypeError):
                    raise InvalidInput(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
        return out
    return [line.strip() for line in lines if line.strip()]


def _train(args: argparse.Namespace, settings) -> int:
    texts, cats = read_catalogue(args.csv)
    if not texts:
        raise InvalidInput(f"{args.csv} has no rows with both text and category")
    enc, encode = _encoder(settings)
    started = time.perf_counter()
    model = IntentModel.train(texts, cats, encode, threshold=args.threshold, c=args.c, encoder_name=enc.model_name)
    model.save(args.out)
    print(json.dumps({"out": str(args.out), "version": model.version, "examples": len(texts),
                      "intents": len(model.labels), "seconds": round(time.perf_counter() - started, 2)}))
    return 0


def _classify(args: argparse.Namespace, settings) -> int:
    model = IntentModel.load(args.model)
    texts = _read_inputs(args.input)
    _, encode = _encoder(settings)
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
    if writer:
        writer.writerow(["text", "intent", "confidence"])
    for start in range(0, len(texts), 512):
        chunk = texts[start:start + 512]
        for text, (intent, conf) in zip(chunk, model.predict(chunk, encode, threshold=args.threshold), strict=True):
            if writer:
                writer.writerow([text, intent, f"{conf:.4f}"])
            else:
                out.write(json.dumps({"text": text, "intent": intent, "confidence": round(conf, 4)}) + "\n")
    out.flush()
    return 0


def _audit_set(args: argparse.Namespace, settings) -> int:
    def train(texts, cats, out):
        enc, encode = _encoder(settings)
        IntentModel.train(texts, cats, encode, encoder_name=enc.model_name).save(out)

    dest = build_default_set(Path(args.data), Path(args.out), recordings=tuple(args.recordings.split(",")),
                             train_intents=None if args.no_train else train, emotion_per_label=args.emotion_clips)
    print(json.dumps({"audit_dir": str(dest)}))
    return 0


def _guard(fn):
    def run(args: argparse.Namespace, settings) -> int:
        try:
            return fn(args, settings)
        except InvalidInput as exc:
            print(f"raysys: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub) -> None:
    """Add ``intents`` and ``analytics`` to the `raysys` parser."""
    p = sub.add_parser("intents", help="train and run intent classifiers (catalogue CSV text,category)")
    isub = p.add_subparsers(dest="intents_command", metavar="ACTION", required=True)
    t = isub.add_parser("train", help="train a classifier from a text,category CSV")
    t.add_argument("--csv", required=True, help="catalogue CSV with the columns text,category")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--threshold", type=float, default=0.25, help="below this confidence the intent is 'unknown'")
    t.add_argument("--c", type=float, default=10.0, help="inverse regularisation of the logistic regression")
    t.set_defaults(func=_guard(_train))
    c = isub.add_parser("classify", help="classify texts (one per line) with a trained model")
    c.add_argument("--model", required=True, help="model directory written by `intents train`")
    c.add_argument("--input", help="file of texts (.txt lines, .csv with a text column, .jsonl); default stdin")
    c.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    c.add_argument("--threshold", type=float, default=None, help="override the model's confidence threshold")
    c.set_defaults(func=_guard(_classify))

    a = sub.add_parser("analytics", help="analytics utilities")
    asub = a.add_subparsers(dest="analytics_command", metavar="ACTION", required=True)
    s = asub.add_parser("audit-set", help="build a model audit set (recordings + RTTM, intents CSV, "
                                       "EmoDB clips, sentiment CSV) from shared data")
    s.add_argument("--data", required=True, help="the shared data directory (diarization/, intents/banking77/, "
                                           "emotion/emodb/)")
    s.add_argument("--out", required=True, help="audit set directory to write (use as AUDIT_DIR)")
    s.add_argument("--recordings", default="sample,trn00,trn01", help="comma-separated recording ids")
    s.add_argument("--no-train", action="store_true", help="do not train the audited intent model")
    s.add_argument("--emotion-clips", type=int, default=5, help="EmoDB clips per emotion (0: none)")
    s.set_defaults(func=_guard(_audit_set))
