"""Train the builtin emotion model from Berlin EmoDB and write raysys/assets/emotion_builtin.json.

Reproducible bit for bit: sorted file list, deterministic augmentation (a simulated phone line, no
random noise), one thread, and weights rounded to 6 significant digits. ``--check`` rebuilds the
weights in memory and compares them byte for byte with the shipped file (exit 1 on a difference).
The recipe (label mapping, features, heads) is :mod:`raysys.models.emotion_training`; the licence of
the data and of the weights is in raysys/assets/SOURCES.md.

    .venv/bin/python scripts/train_emotion.py            # write raysys/assets/emotion_builtin.json
    .venv/bin/python scripts/train_emotion.py --check    # rebuild and compare (about a minute)
"""

from __future__ import annotations

import os

# One thread everywhere before numpy/scipy load: the same sums in the same order on every run.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "emotion" / "emodb"
OUT = ROOT / "raysys" / "assets" / "emotion_builtin.json"
VERSION = "1"


def build(data: Path) -> str:
    """The weights file's text, trained on every EmoDB clip under ``data``."""
    from raysys.models import emotion_training as recipe  # noqa: PLC0415 - after the argument parsing, so --help needs no torch

    clips = recipe.emodb_clips(data)
    features = recipe.featurize(clips)
    weights = recipe.fit(features, clips)
    doc = {
        "version": VERSION,
        "model": "two logistic heads on level-invariant acoustic descriptors (raysys.models.emotion_features)",
        "trained_on": {
            "corpus": "Berlin EmoDB (CC0 1.0), first 2 s of each clip",
            "clips": len(clips),
            "speakers": sorted({c.speaker for c in clips}),
            "sha256": recipe.fingerprint(clips),
            "conditions": list(recipe.CONDITIONS),
            "label_of": recipe.LABEL_OF,
            "arousal_of": recipe.AROUSAL_OF,
            "C": recipe.C,
            "script": "scripts/train_emotion.py",
        },
        **weights,
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"EmoDB folder (default {DATA})")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="rebuild and compare with --out; write nothing")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"EmoDB not found at {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    text = build(args.data)
    took = time.perf_counter() - t0
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{'identical' if same else 'DIFFERENT'}: rebuilt weights vs {args.out} ({took:.1f} s)")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.encode()) / 1024:.0f} KiB) in {took:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
