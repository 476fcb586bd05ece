"""Intent classifier: training, persistence, threshold, CLI, and accuracy on a held-out Banking77 split."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from analytics_fixtures import SMALL_CATALOGUE
from conftest import shared_data

from raysys.analytics import intents
from raysys.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]


def _write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "category"])
        w.writerows(rows)
    return path


def _cli(*args: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "raysys.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_trained_model_classifies_unseen_phrasings_and_round_trips(tmp_path, text_encoder):
    texts, cats = zip(*SMALL_CATALOGUE, strict=True)
    model = intents.IntentModel.train(list(texts), list(cats), text_encoder.encode, threshold=0.2)
    assert sorted(model.labels) == ["card_lost", "delivery_status", "password_reset"]
    queries = ["somebody stole my credit card", "my delivery is late", "I need to reset my login password"]
    expected = ["card_lost", "delivery_status", "password_reset"]
    assert [p[0] for p in model.predict(queries, text_encoder.encode)] == expected

    model.save(tmp_path / "m")
    loaded = intents.IntentModel.load(tmp_path / "m")
    assert loaded.version == model.version and loaded.labels == model.labels
    assert [p[0] for p in loaded.predict(queries, text_encoder.encode)] == expected
    assert not list((tmp_path / "m").glob("*.pkl")), "model directories hold no pickles"


def test_low_confidence_is_unknown_and_call_intent_comes_from_the_content_turn(text_encoder):
    texts, cats = zip(*SMALL_CATALOGUE, strict=True)
    model = intents.IntentModel.train(list(texts), list(cats), text_encoder.encode, threshold=0.2)
    preds = model.predict(["my card was stolen"], text_encoder.encode, threshold=0.999)
    assert preds[0][0] == intents.UNKNOWN and 0 < preds[0][1] < 0.999
    name, conf, evidence = intents.classify_call(
        model, ["Hi there.", "I think somebody stole my card on the bus", "Okay thanks."], text_encoder.encode)
    assert name == "card_lost" and evidence.startswith("I think somebody")
    assert intents.classify_call(model, [], text_encoder.encode)[0] == intents.UNKNOWN


def test_bad_catalogues_and_model_dirs_are_clear_errors(tmp_path, text_encoder):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhello,greet\n")
    with pytest.raises(InvalidInput, match="text,category"):
        intents.read_catalogue(bad)
    one = _write_csv(tmp_path / "one.csv", [("hello", "greet"), ("hi", "greet")])
    texts, cats = intents.read_catalogue(one)
    with pytest.raises(InvalidInput, match="two categories"):
        intents.IntentModel.train(texts, cats, text_encoder.encode)
    with pytest.raises(InvalidInput, match="not an intent model"):
        intents.IntentModel.load(tmp_path)
    # Tenant model lookup never leaves the base directory.
    base = tmp_path / "models"
    intents.IntentModel.train(*zip(*SMALL_CATALOGUE, strict=True), text_encoder.encode).save(base / "tenant_a")
    assert intents.model_dir_for(str(base), "tenant_a") == base / "tenant_a"
    assert intents.model_dir_for(str(base), "../models/tenant_a") is None
    assert intents.model_dir_for(str(base), "other") is None


def test_cli_train_and_classify_jsonl_from_stdin_and_file(tmp_path):
    catalogue = _write_csv(tmp_path / "cat.csv", SMALL_CATALOGUE)
    out = _cli("intents", "train", "--csv", str(catalogue), "--out", str(tmp_path / "model"), "--threshold", "0.2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["intents"] == 3
    res = _cli("intents", "classify", "--model", str(tmp_path / "model"), "--format", "jsonl",
               stdin="my parcel never arrived\nsomeone took my card\n")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["intent"] for x in lines] == ["delivery_status", "card_lost"]
    assert all(set(x) == {"text", "intent", "confidence"} and 0 <= x["confidence"] <= 1 for x in lines)
    missing = _cli("intents", "classify", "--model", str(tmp_path / "nope"), "--format", "jsonl", stdin="x\n")
    assert missing.returncode == 2 and "not an intent model" in missing.stderr


@pytest.mark.slow
def test_cli_banking77_held_out_accuracy_at_least_90_percent(tmp_path):
    """Stratified 80/20 split of Banking77's train.csv (every 5th example of each intent is held out)."""
    rows = list(csv.DictReader(shared_data("intents", "banking77", "train.csv").open(newline="")))
    by_cat = defaultdict(list)
    for r in rows:
        by_cat[r["category"]].append((r["text"], r["category"]))
    train, test = [], []
    for examples in by_cat.values():
        for k, row in enumerate(examples):
            (test if k % 5 == 4 else train).append(row)
    _write_csv(tmp_path / "train.csv", train)
    (tmp_path / "test.txt").write_text("\n".join(t for t, _ in test) + "\n")
    out = _cli("intents", "train", "--csv", str(tmp_path / "train.csv"), "--out", str(tmp_path / "model"))
    assert out.returncode == 0, out.stderr
    res = _cli("intents", "classify", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "test.txt"),
               "--format", "jsonl")
    assert res.returncode == 0, res.stderr
    preds = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(preds) == len(test)
    accuracy = sum(p["intent"] == cat for p, (_, cat) in zip(preds, test, strict=True)) / len(test)
    print(f"banking77 held-out accuracy: {accuracy:.4f} on {len(test)} texts, trained on {len(train)}")
    assert accuracy >= 0.90
