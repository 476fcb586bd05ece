"""PII redaction benchmark: span-level precision and recall per entity type, raysys beside two baselines.

The set is ``bench/pii_eval.jsonl`` (built by ``bench/pii_dataset.py`` from templates and random values,
seed 17; nothing in raysys.models.redaction was fitted to it). Systems:

  raysys      raysys.analytics.redaction_turns.redact_turns over each item's turns (as the tasks do)
  naive regex one regular expression per type, turn by turn, first match wins (what a quick redaction
              filter usually is: ``\\d{3}-\\d{2}-\\d{4}``, 13-16 digits, 10-11 digit phones ...)
  none        no redaction (recall 0: the risk when redaction is off)

Scoring: a found span is a true positive when it overlaps a labelled span of the same type that no
other found span has matched; "any type" counts a labelled span as found when anything overlaps it
(what matters for privacy), and a found span as right when it overlaps any labelled span. Hard
negatives: the share of negative items in which anything was redacted. Speed: CPU seconds of this
process per item (``time.process_time``).

    .venv/bin/python bench/pii.py [--data bench/pii_eval.jsonl]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

from raysys.analytics.redaction_turns import redact_turns
from raysys.models.redaction import KINDS

NAIVE = [
    ("EMAIL", re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")),
    ("SSN", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("CARD", re.compile(r"\b(?:\d[ -]?){13,16}\b")),
    ("SORT_CODE", re.compile(r"\b\d{2}-\d{2}-\d{2}\b")),
    ("PHONE", re.compile(r"(?:\+\d{1,3}[ .-]?)?\(?\d{3,5}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b")),
    ("NINO", re.compile(r"\b[A-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b")),
    ("DOB", re.compile(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b")),
    ("ACCOUNT", re.compile(r"\b\d{8}\b")),
    ("ADDRESS", re.compile(r"\b\d+\s+\w+\s+(?:Street|Road|Avenue|Lane|Close|Drive|Way)\b")),
]


def naive(turns: list[tuple[str, str]]) -> list[list[tuple[int, int, str]]]:
    out = []
    for _, text in turns:
        found: list[tuple[int, int, str]] = []
        for kind, pattern in NAIVE:
            for m in pattern.finditer(text):
                if not any(m.start() < e and m.end() > s for s, e, _ in found):
                    found.append((m.start(), m.end(), kind))
        out.append(found)
    return out


def raysys(turns: list[tuple[str, str]]) -> list[list[tuple[int, int, str]]]:
    return [[(s.start, s.end, s.kind) for s in spans] for spans in redact_turns(turns).spans]


def none(turns: list[tuple[str, str]]) -> list[list[tuple[int, int, str]]]:
    return [[] for _ in turns]


def score(items: list[dict], system) -> dict:
    tp, fp, fn = defaultdict(int), defaultdict(int), defaultdict(int)
    any_found = any_gold = any_right = any_pred = 0
    negatives_hit = negatives = 0
    t0 = time.process_time()
    for item in items:
        turns = [(t["role"], t["text"]) for t in item["turns"]]
        predicted = system(turns)
        gold = [(g["turn"], g["start"], g["end"], g["type"]) for g in item["spans"]]
        used: set[int] = set()
        for turn, spans in enumerate(predicted):
            for s, e, kind in spans:
                any_pred += 1
                overlapping = [i for i, g in enumerate(gold) if g[0] == turn and s < g[2] and e > g[1]]
                any_right += bool(overlapping)
                match = next((i for i in overlapping if gold[i][3] == kind and i not in used), None)
                if match is None:
                    fp[kind] += 1
                else:
                    used.add(match)
                    tp[kind] += 1
        for i, g in enumerate(gold):
            any_gold += 1
            if i not in used:
                fn[g[3]] += 1
            any_found += any(g[1] < e and s < g[2] for s, e, _ in predicted[g[0]])
        if item["kind"] == "negative":
            negatives += 1
            negatives_hit += any(predicted)
    seconds = time.process_time() - t0
    return {"tp": tp, "fp": fp, "fn": fn, "any_recall": any_found / max(1, any_gold),
            "any_precision": any_right / any_pred if any_pred else None, "negatives_hit": negatives_hit,
            "negatives": negatives, "cpu_ms_per_item": 1000 * seconds / max(1, len(items))}


def _pr(tp: int, fp: int, fn: int) -> str:
    p = f"{tp / (tp + fp):6.1%}" if tp + fp else "     -"
    r = f"{tp / (tp + fn):6.1%}" if tp + fn else "     -"
    return f"{p} {r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).with_name("pii_eval.jsonl"))
    args = parser.parse_args()
    items = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    systems = {"raysys": raysys, "naive regex": naive, "none": none}
    results = {name: score(items, fn) for name, fn in systems.items()}
    spans = sum(len(i["spans"]) for i in items)
    print(f"{len(items)} items, {spans} labelled spans, "
          f"{sum(i['kind'] == 'negative' for i in items)} hard negatives ({args.data.name})\n")
    print(f"{'type':<11}{'gold':>5}  " + "  ".join(f"{n:^15}" for n in systems))
    print(f"{'':<18}" + "  ".join(f"{'prec':>7} {'recall':>6} " for _ in systems))
    gold_by = defaultdict(int)
    for i in items:
        for g in i["spans"]:
            gold_by[g["type"]] += 1
    for kind in KINDS:
        row = [_pr(r["tp"][kind], r["fp"][kind], r["fn"][kind]) for r in results.values()]
        print(f"{kind:<11}{gold_by[kind]:>5}  " + "  ".join(f"{c:>15}" for c in row))
    row = [_pr(sum(r["tp"].values()), sum(r["fp"].values()), sum(r["fn"].values())) for r in results.values()]
    print(f"{'all (typed)':<11}{spans:>5}  " + "  ".join(f"{c:>15}" for c in row))
    row = [(f"{r['any_precision']:6.1%}" if r["any_precision"] is not None else "     -") + f" {r['any_recall']:6.1%}"
           for r in results.values()]
    print(f"{'all (any)':<11}{spans:>5}  " + "  ".join(f"{c:>15}" for c in row))
    print("\nhard negatives with anything redacted: "
          + ", ".join(f"{n} {r['negatives_hit']}/{r['negatives']}" for n, r in results.items()))
    print("CPU per item: " + ", ".join(f"{n} {r['cpu_ms_per_item']:.2f} ms" for n, r in results.items()))


if __name__ == "__main__":
    main()
