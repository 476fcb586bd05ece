"""The trained builtin emotion model: in-process on real audio from ../shared/data, and through the CLI.

EmoDB clips used here were also in the model's training set (it trains on all 10 speakers); the
speaker-independent figures are in bench/emotion.py. The English clips (data/speech) were never seen.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_data

from raysys.audio import load_audio
from raysys.errors import ModelUnavailable
from raysys.models.emotion import LABELS, WEIGHTS, BuiltinEmotion
from raysys.models.emotion_features import FEATURE_NAMES, N_FEATURES, segment_features, telephone

# One speaker, one sentence, two emotions: EmoDB's speaker 03 reading a01 in anger ("W") and neutrally.
SHOUTED, CALM = "03a01Wa.flac", "03a01Nc.flac"


@pytest.fixture(scope="module")
def model():
    return BuiltinEmotion()


@pytest.fixture(scope="module")
def emodb():
    return shared_data("emotion", "emodb")


def test_features_ignore_level_and_sample_rate(speech_dir):
    wav = load_audio(speech_dir / "spk1_snt1.wav")[0]
    loud = segment_features(wav / np.abs(wav).max() * 0.9)
    quiet = segment_features(wav * 0.01)
    assert loud.shape == (N_FEATURES,) == (len(FEATURE_NAMES),) and np.all(np.isfinite(loud))
    np.testing.assert_allclose(quiet, loud, rtol=1e-3, atol=1e-3)
    # The same speech given at 8 kHz is analysed in the same band as at 16 kHz.
    import soxr

    at8k = soxr.resample(wav, 16000, 8000, quality="HQ").astype(np.float32)
    np.testing.assert_allclose(segment_features(at8k, 8000), loud, rtol=0.05, atol=0.15)


def test_output_contract_and_calm_english_speech_is_neutral(model, speech_dir):
    pieces = [load_audio(p)[0] for p in sorted(speech_dir.glob("*.wav"))]
    out = model.classify(pieces)
    assert len(out) == len(pieces) == 12
    for r in out:
        assert r["label"] in LABELS and set(r["scores"]) == set(LABELS)
        assert abs(sum(r["scores"].values()) - 1) < 1e-3
        assert -1 <= r["valence"] <= 1 and 0 <= r["arousal"] <= 1
    # Calm read English from two speakers the model never heard, in a language it was not trained on.
    assert sum(r["label"] == "neutral" for r in out) >= 10
    assert np.median([r["arousal"] for r in out]) < 0.3
    # Each piece is scored on its own: the same piece among others or alone gets the same scores.
    assert model.classify(pieces[:1]) == out[:1]


def test_shouted_and_calm_clips_differ_from_audio_alone_full_band_and_telephone(model, emodb):
    shouted, calm = (load_audio(emodb / name)[0] for name in (SHOUTED, CALM))
    for a, b in ((shouted, calm), (telephone(shouted), telephone(calm)), (shouted * 0.02, calm * 3)):
        hot, cool = model.classify([a, b])
        assert hot["label"] == "angry" and hot["arousal"] > 0.8
        assert cool["label"] == "neutral" and cool["arousal"] < 0.2
        assert hot["valence"] < cool["valence"]


def test_transcript_valence_tells_angry_from_happy_on_an_agitated_voice(model, emodb):
    shouted = load_audio(emodb / SHOUTED)[0]
    angry, pleased = model.classify(
        [shouted, shouted], ["this is ridiculous, I was charged twice and nobody fixed the problem",
                             "thank you so much, that was really helpful, great service"])
    assert angry["label"] == "angry" and pleased["label"] == "happy"
    assert angry["valence"] < 0 < pleased["valence"]
    assert angry["arousal"] == pleased["arousal"] > 0.8  # the words change valence, not arousal


def test_silence_and_very_short_segments_say_little(model, speech_dir):
    wav = load_audio(speech_dir / "spk1_snt1.wav")[0]
    silent, tiny, short, whole = model.classify([np.zeros(16000, np.float32), np.zeros(10, np.float32),
                                                 wav[8000:8800], wav])
    for r in (silent, tiny):
        assert set(r["scores"].values()) == {0.25} and r["arousal"] == 0 and r["valence"] == 0
    # 50 ms of speech: too few frames for the statistics, so its scores are pulled towards "cannot tell".
    feats = segment_features(wav[8000:8800])[None]
    tempered, tempered_arousal = model.score_features(feats, np.array([0.05]))
    raw, raw_arousal = model.score_features(feats)
    assert tempered.max() < raw.max() and abs(tempered_arousal[0] - 0.5) < abs(raw_arousal[0] - 0.5)
    assert max(short["scores"].values()) == pytest.approx(tempered.max(), abs=1e-4)
    assert whole["label"] == "neutral"
    assert model.classify([]) == []


def test_unreadable_or_mismatched_weights_fail_clearly(tmp_path):
    bad = tmp_path / "w.json"
    bad.write_text("{not json")
    with pytest.raises(ModelUnavailable, match="unreadable"):
        BuiltinEmotion(weights=bad)
    doc = json.loads(WEIGHTS.read_text())
    doc["feature_names"] = doc["feature_names"][:-1]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ModelUnavailable, match="do not match"):
        BuiltinEmotion(weights=bad)


def test_shipped_weights_record_their_data_and_the_recipe_is_deterministic(emodb):
    """The cheap stand-in for ``scripts/train_emotion.py --check`` (about 20-80 s, too slow here):
    the shipped file names the exact EmoDB bytes it came from, and the recipe run twice on one
    speaker's clips gives the same bytes."""
    from raysys.models import emotion_training as recipe

    doc = json.loads(WEIGHTS.read_text())
    clips = recipe.emodb_clips(emodb)
    assert doc["trained_on"]["sha256"] == recipe.fingerprint(clips)
    assert doc["trained_on"]["clips"] == len(clips) == 535 and doc["feature_names"] == list(FEATURE_NAMES)
    assert WEIGHTS.stat().st_size < 100_000
    one = [c for c in clips if c.speaker == "03"]
    first = json.dumps(recipe.fit(recipe.featurize(one, ("full", "telephone")), one))
    second = json.dumps(recipe.fit(recipe.featurize(one, ("full", "telephone")), one))
    assert first == second


def test_cli_labels_a_shouted_and_a_calm_clip_differently(model_actors, emodb, speech_dir, tmp_path, capsys,
                                                         monkeypatch):
    """``raysys emotion FILE`` with no transcript: the diarizer finds the speech, the trained model labels it.

    "Shouted" is EmoDB's speaker 03 reading sentence a01 in anger, "calm" the same speaker and sentence
    read neutrally (both in the training set; honest held-out figures are in bench/emotion.py), plus a
    calm English utterance the model never heard; all three as 8 kHz telephone-band WAV files too.
    """
    from raysys.cli import main

    monkeypatch.setenv("RAYSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import soxr

    files = {}
    for name, src in (("shouted", emodb / SHOUTED), ("calm", emodb / CALM), ("english", speech_dir / "spk1_snt1.wav")):
        wav = load_audio(src)[0]
        files[name] = tmp_path / f"{name}.wav"
        sf.write(files[name], wav, 16000)
        files[f"{name}-8k"] = tmp_path / f"{name}-8k.wav"
        sf.write(files[f"{name}-8k"], soxr.resample(telephone(wav), 16000, 8000), 8000)
    results = {}
    for name, path in files.items():
        assert main(["emotion", str(path)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["backend"] == "builtin" and out["model_version"].startswith("builtin-emodb")
        assert out["segments"], name
        longest = max(out["segments"], key=lambda s: s["end"] - s["start"])
        results[name] = longest
    for suffix in ("", "-8k"):
        shouted, calm, english = (results[n + suffix] for n in ("shouted", "calm", "english"))
        assert shouted["label"] == "angry" and shouted["arousal"] > 0.5, suffix
        assert calm["label"] == "neutral" and english["label"] == "neutral", suffix
        assert calm["arousal"] < 0.5 and english["arousal"] < 0.5, suffix
