"""Sentiment benchmark: accuracy on labelled sets and speed, the model beside the word lists it replaced.

Sets (../shared/data/sentiment, evaluation only: nothing in raysys is trained or tuned on them; see
SOURCES.md there): UCI "Sentiment Labelled Sentences" (Amazon, Yelp, IMDB; 2 classes, 500+500 each)
and the GoEmotions test split mapped to 3 classes (positive/negative/neutral), plus raysys' own
contact-centre audit set (raysys/assets/sentiment_audit.csv, 3 classes).

Scorers:
  model         raysys.models.sentiment (VADER + the contact-centre layer): call sentiment, segment
                valence and the CSAT proxy all use it
  vader only    the same without the contact-centre layer (what the layer adds or costs)
  emotion list  the word list of raysys.models.emotion.text_valence before the model (commit a9f7320)
  analytics list  the word list of raysys.analytics.sentiment.text_sentiment before the model
(the two lists are copied verbatim into bench/legacy_wordlists.py).

Metrics: 2-class sets: accuracy of the sign (score > 0 positive, < 0 negative; a score of exactly 0,
"no opinion found", counts as wrong) and the share of texts left at 0. 3-class sets: accuracy and
macro-F1 of the label at the ±0.05 cut-offs (VADER's published ones, used for every scorer).
Speed: texts per second on one thread over the UCI set, wall clock and per CPU second of this process
(the wall figure is noisy on a shared machine: the load average is printed beside it).

    .venv/bin/python bench/sentiment.py
    .venv/bin/python bench/sentiment.py --data ../shared/data/sentiment
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import legacy_wordlists  # noqa: E402

from raysys.analytics.audit import read_sentiment_set  # noqa: E402
from raysys.models.sentiment import SentimentModel, label_for  # noqa: E402

UCI = ("uci_amazon.tsv", "uci_yelp.tsv", "uci_imdb.tsv", "uci_all.tsv")
GOEMOTIONS = "goemotions_test_sentiment.tsv"
OWN_SET = ROOT / "raysys" / "assets" / "sentiment_audit.csv"


def read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            text, label = line.rsplit("\t", 1)
            rows.append((text, label.strip()))
    return rows


def two_class(scores: list[float], rows: list[tuple[str, str]]) -> tuple[float, float]:
    right = sum(1 for s, (_, y) in zip(scores, rows, strict=True) if (s > 0 and y == "positive")
                or (s < 0 and y == "negative"))
    zero = sum(1 for s in scores if s == 0)
    return right / len(rows), zero / len(rows)


def three_class(scores: list[float], rows: list[tuple[str, str]]) -> tuple[float, float]:
    pred = [label_for(s) for s in scores]
    gold = [y for _, y in rows]
    acc = sum(p == g for p, g in zip(pred, gold, strict=True)) / len(rows)
    f1s = []
    for lab in ("negative", "neutral", "positive"):
        tp = sum(p == lab and g == lab for p, g in zip(pred, gold, strict=True))
        fp = sum(p == lab and g != lab for p, g in zip(pred, gold, strict=True))
        fn = sum(p != lab and g == lab for p, g in zip(pred, gold, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return acc, sum(f1s) / 3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sentiment"))
    args = ap.parse_args()
    data = Path(args.data)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    model = SentimentModel()
    vader_only = SentimentModel()
    vader_only._phrases = []  # the bare library: no phrases ...
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader_only._analyzer.lexicon = SentimentIntensityAnalyzer().lexicon  # ... and VADER's own lexicon
    scorers: dict[str, Callable[[str], float]] = {
        "model": model.score, "vader only": vader_only.score,
        "emotion list": legacy_wordlists.emotion_text_valence,
        "analytics list": legacy_wordlists.analytics_text_sentiment,
    }
    print(f"raysys sentiment model {model.model_version}; data {data}")
    head = f"{'set':<26}{'n':>6}  " + "".join(f"{name:>22}" for name in scorers)
    print("\n2-class accuracy (sign; 0 = wrong) [share of texts scored 0]")
    print(head)
    for name in UCI:
        path = data / name
        if not path.is_file():
            print(f"{name:<26} missing")
            continue
        rows = read_tsv(path)
        cells = []
        for fn in scorers.values():
            acc, zero = two_class([fn(t) for t, _ in rows], rows)
            cells.append(f"{acc * 100:>13.1f} % [{zero * 100:>3.0f} %]")
        print(f"{name:<26}{len(rows):>6}  " + "".join(cells))

    print("\n3-class accuracy / macro-F1 (labels at ±0.05)")
    print(head)
    sets = [(GOEMOTIONS, read_tsv(data / GOEMOTIONS) if (data / GOEMOTIONS).is_file() else None),
            ("raysys audit set (own)", read_sentiment_set(OWN_SET))]
    for name, rows in sets:
        if not rows:
            print(f"{name:<26} missing")
            continue
        cells = []
        for fn in scorers.values():
            acc, f1 = three_class([fn(t) for t, _ in rows], rows)
            cells.append(f"{acc * 100:>12.1f} % / {f1:.3f}")
        print(f"{name:<26}{len(rows):>6}  " + "".join(cells))

    uci = read_tsv(data / "uci_all.tsv") if (data / "uci_all.tsv").is_file() else read_sentiment_set(OWN_SET)
    texts = [t for t, _ in uci]
    print(f"\nspeed, texts/s on one thread ({len(texts)} texts, mean {sum(map(len, texts)) / len(texts):.0f} chars; "
          f"load average {os.getloadavg()[0]:.1f}):")
    line = []
    for name, fn in scorers.items():
        best = best_cpu = float("inf")
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            for t in texts:
                fn(t)
            best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
        line.append(f"{name} {len(texts) / best:,.0f} ({len(texts) / max(best_cpu, 1e-9):,.0f} per CPU second)")
    print("  " + " | ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
