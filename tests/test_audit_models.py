"""audit_models audits emotion and sentiment too: labelled sets, figures per model version in the warehouse
(real chDB through its actor), regressions flagged against the previous audit, and the audit report that
charts them. The emotion clips go through the configured emotion backend's actor on the real Ray cluster."""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import shared_data

from raysys.analytics import audit, audit_report
from raysys.errors import InvalidInput
from raysys.models.sentiment import default_model
from raysys.tasks.maintenance import audit_models

SENTENCES = ["I've been waiting forty minutes.", "Thank you, that fixed it.", "My account number is 4 5 7.",
             "That's not helpful at all.", "You've been very helpful.", "What time do you open on Sunday?"]
OTHER = {"positive": "negative", "negative": "neutral", "neutral": "positive"}


def _sentiment_csv(path: Path, labels: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(zip(SENTENCES, labels, strict=True))


def _emodb_clips(dest: Path) -> list[Path]:
    """One EmoDB clip of each audited emotion plus one of boredom (L), which no backend labels."""
    emodb = shared_data("emotion", "emodb")
    dest.mkdir(parents=True, exist_ok=True)
    picked = []
    for code in "WFTNL":
        clip = sorted(emodb.glob(f"03a0?{code}?.*"))[0]
        picked.append(Path(shutil.copyfile(clip, dest / clip.name)))
    return picked


def _rows(out, model):
    return {r["metric"]: r for r in out["results"] if r["model"] == model}


def test_emotion_and_sentiment_audits_are_stored_flagged_and_charted(ctx, asettings, warehouse, tmp_path):
    from raysys.actors.emotion import analyze_file
    from raysys.audio import load_audio

    model = default_model()
    predicted = [model.analyze(t).label for t in SENTENCES]

    # run 1: EmoDB-style names; sentiment labels the model agrees with
    first_dir = tmp_path / "first"
    clips = _emodb_clips(first_dir / "emotion")
    _sentiment_csv(first_dir / "sentiment.csv", predicted)
    ctx.settings = asettings.replace(audit_dir=str(first_dir))
    first = audit_models(ctx)
    emo, sen = _rows(first, "emotion"), _rows(first, "sentiment")
    assert set(emo) == {"uar", "accuracy"} and set(sen) == {"accuracy", "macro_f1"}
    assert 0.0 <= emo["uar"]["value"] <= 1.0 and emo["uar"]["rtf"] > 0
    assert sen["accuracy"]["value"] == 1.0 and sen["accuracy"]["version"] == model.model_version
    stored = warehouse.query("SELECT model, metric, version, value, details FROM model_audits "
                             "WHERE run_id = {r:String} AND model IN ('emotion', 'sentiment') ORDER BY model, metric",
                             {"r": first["run_id"]})
    assert [(r["model"], r["metric"]) for r in stored] == [("emotion", "accuracy"), ("emotion", "uar"),
                                                           ("sentiment", "accuracy"), ("sentiment", "macro_f1")]
    assert '"skipped": 1' in stored[0]["details"]  # the boredom clip has no label in the models' set
    assert stored[1]["version"] == emo["uar"]["version"] and stored[1]["version"].count(":") >= 1

    # what the configured emotion backend says of each clip, through the same actor
    labels = {}
    for clip in clips[:4]:
        samples, rate = load_audio(clip)
        out = analyze_file(asettings, str(clip), segments=[{"start": 0.0, "end": len(samples) / rate,
                                                            "speaker": "clip"}])
        labels[clip.name] = out["segments"][0]["label"]

    def labelled_set(name: str, relabel) -> Path:
        d = tmp_path / name
        (d / "emotion" / "clips").mkdir(parents=True)
        for clip in clips[:4]:
            shutil.copyfile(clip, d / "emotion" / "clips" / f"{clip.stem}_{name}.flac")
        with (d / "emotion" / "labels.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label"])
            w.writerows((f"clips/{c.stem}_{name}.flac", relabel(labels[c.name])) for c in clips[:4])
        return d

    # run 2: a labels.csv that agrees with the backend: perfect figures
    agree = labelled_set("agree", lambda lab: lab)
    _sentiment_csv(agree / "sentiment.csv", predicted)
    ctx.settings = asettings.replace(audit_dir=str(agree))
    second = audit_models(ctx)
    emo = _rows(second, "emotion")
    assert emo["accuracy"]["value"] == 1.0 and emo["uar"]["value"] == 1.0
    assert not any(r.startswith(("emotion", "sentiment")) for r in second["regressions"])

    # run 3: every label wrong: emotion and sentiment both regress against run 2
    rotate = {"neutral": "angry", "angry": "happy", "happy": "sad", "sad": "neutral"}
    worse = labelled_set("worse", rotate.get)
    _sentiment_csv(worse / "sentiment.csv", [OTHER[p] for p in predicted])
    ctx.settings = asettings.replace(audit_dir=str(worse))
    third = audit_models(ctx)
    emo, sen = _rows(third, "emotion"), _rows(third, "sentiment")
    assert emo["accuracy"]["value"] == 0.0 and emo["accuracy"]["baseline"] == 1.0 and emo["accuracy"]["regression"]
    assert sen["accuracy"]["value"] == 0.0 and sen["accuracy"]["baseline"] == 1.0 and sen["accuracy"]["regression"]
    assert {"emotion:uar", "emotion:accuracy", "sentiment:accuracy", "sentiment:macro_f1"} <= set(third["regressions"])
    flags = warehouse.query("SELECT model, metric, regression FROM model_audits WHERE run_id = {r:String} "
                            "AND model IN ('emotion', 'sentiment')", {"r": third["run_id"]})
    assert all(f["regression"] == 1 for f in flags) and len(flags) == 4

    # the audit report charts every model's figures over the runs, the newest run's regressions named
    files = third["report"]
    html = Path(files["html"]).read_text()
    assert f"run {third['run_id']}" in html and "Regressions:" in html and "sentiment:accuracy" in html
    for name in ("emotion_uar", "emotion_accuracy", "sentiment_accuracy", "sentiment_macro_f1"):
        assert f"charts/{name}.png" in html
        assert Path(files[f"chart:{name}"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = Path(files["audits.csv"]).read_text()
    assert all(r["run_id"] in table for r in (first, second, third))


def test_an_unreadable_clip_is_named_in_the_error(asettings, tmp_path):
    from raysys.tasks.maintenance import run_audit

    (tmp_path / "emotion").mkdir()
    (tmp_path / "emotion" / "03a01Wa.wav").write_bytes(b"RIFF not really a wave file")
    # no Ray needed: the clip is refused while it is decoded, before any actor is asked
    with pytest.raises(InvalidInput, match="emotion audit clip .*03a01Wa.wav"):
        run_audit(asettings, tmp_path, wh=lambda *a: None)


def test_bad_audit_sets_fail_clearly(tmp_path):
    (tmp_path / "emotion").mkdir()
    (tmp_path / "emotion" / "labels.csv").write_text("file,emotion\nx.wav,angry\n")
    with pytest.raises(InvalidInput, match="path and label"):
        audit.emotion_items(tmp_path)
    (tmp_path / "emotion" / "labels.csv").write_text("path,label\n../../etc/passwd,angry\n")
    with pytest.raises(InvalidInput, match="not a file inside"):
        audit.emotion_items(tmp_path)
    (tmp_path / "sentiment.csv").write_text("text,label\nfine thanks,happy\n")
    with pytest.raises(InvalidInput, match="line 2: label 'happy'"):
        audit.audit_sentiment(tmp_path)
    (tmp_path / "sentiment.csv").write_text("sentence;label\n")
    with pytest.raises(InvalidInput, match="text and label"):
        audit.audit_sentiment(tmp_path)
    (tmp_path / "sentiment.csv").write_text("text,label\n")
    with pytest.raises(InvalidInput, match="no labelled rows"):
        audit.audit_sentiment(tmp_path)


def test_emodb_names_map_to_the_four_labels_and_the_shipped_set_stands_in(tmp_path):
    folder = tmp_path / "emotion"
    folder.mkdir()
    for name in ("03a01Wa.wav", "08b02Fc.flac", "10a04Ta.wav", "16b10Nb.wav", "11a01Ld.wav", "notes.txt",
                 "clip.wav"):
        (folder / name).write_bytes(b"")
    items, skipped = audit.emotion_items(tmp_path)
    assert sorted((p.name, lab) for p, lab in items) == [("03a01Wa.wav", "angry"), ("08b02Fc.flac", "happy"),
                                                         ("10a04Ta.wav", "sad"), ("16b10Nb.wav", "neutral")]
    assert skipped == 2  # boredom and a name that is not EmoDB's; the .txt is not audio
    rows = audit.audit_sentiment(tmp_path)  # no sentiment.csv: the shipped set
    assert rows[0]["details"]["set"] == str(audit.BUNDLED_SENTIMENT_SET) and rows[0]["details"]["n"] >= 100
    assert 0.0 <= rows[0]["value"] <= 1.0


def test_recall_and_accuracy_figures():
    pairs = [("angry", "angry"), ("angry", "neutral"), ("sad", "sad"), ("happy", "angry")]
    got = audit.emotion_recall(pairs)
    assert got["accuracy"] == 0.5 and got["uar"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # neutral absent
    assert got["confusion"]["angry"]["neutral"] == 1
    rows = [("a", "positive"), ("b", "negative"), ("c", "neutral"), ("d", "neutral")]
    got = audit.sentiment_accuracy(rows, ["positive", "neutral", "neutral", "neutral"])
    assert got["accuracy"] == 0.75 and got["recall"]["negative"] == 0.0
    assert got["misses"] == [{"text": "b", "label": "negative", "predicted": "neutral"}]


def test_audit_report_colours_versions_and_marks_regressions(tmp_path):
    t0 = datetime(2026, 11, 1, 2, tzinfo=UTC)
    history = []
    for k, (version, value, regression) in enumerate([("v1", 0.8, 0), ("v1", 0.81, 0), ("v2", 0.6, 1)]):
        history.append({"run_id": f"r{k}", "model": "sentiment", "version": version, "metric": "accuracy",
                        "value": value, "rtf": 0.0, "baseline": None if k == 0 else 0.8, "regression": regression,
                        "run_at": t0 + timedelta(days=k)})
        history.append({"run_id": f"r{k}", "model": "diarization", "version": "builtin:1", "metric": "der",
                        "value": 0.1, "rtf": 0.02, "baseline": None, "regression": 0, "run_at": t0 + timedelta(days=k)})
    report = audit_report.build(list(reversed(history)), "r2")
    assert sorted(report.charts) == ["diarization_der", "sentiment_accuracy"]
    assert [r["value"] for r in report.series["sentiment:accuracy"]] == [0.8, 0.81, 0.6]  # oldest first
    assert report.regressions == ["sentiment:accuracy"]
    html = report.html()
    assert html.count('class="regression"') == 1 and "lower is better" not in html  # titles live in the PNGs
    files = audit_report.save(report, tmp_path / "out")
    assert Path(files["html"]).is_file() and len(Path(files["audits.csv"]).read_text().splitlines()) == 1 + 6
    quiet = audit_report.build(history[:2], "r0")
    assert quiet.regressions == [] and "No regression" in quiet.html()
