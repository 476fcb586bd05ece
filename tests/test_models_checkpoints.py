"""The pyannote and speechbrain backends end to end on small random-weight checkpoints built offline.

Random weights: these tests assert the contract (shapes, keys, time ranges, labels), never accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from raysys.audio import load_audio
from raysys.errors import ModelUnavailable
from raysys.models.emotion import LABELS


@pytest.fixture(scope="module")
def pyannote_model(pyannote_folder):
    from raysys.models.pyannote_backend import PyannoteDiarizer

    return PyannoteDiarizer(str(pyannote_folder))


def test_random_pyannote_checkpoints_are_in_pyannote_form(pyannote_folder):
    import torch

    ckpt = torch.load(pyannote_folder / "segmentation" / "pytorch_model.bin", weights_only=False)
    assert ckpt["pyannote.audio"]["architecture"]["class"] == "PyanNet"
    assert ckpt["pyannote.audio"]["specifications"].powerset
    emb = torch.load(pyannote_folder / "embedding" / "pytorch_model.bin", weights_only=False)
    assert emb["pyannote.audio"]["architecture"]["class"] == "WeSpeakerResNet34"
    assert (pyannote_folder / "config.yaml").read_text().count("$model/") == 3


def test_pyannote_pipeline_runs_in_memory_and_returns_turns(pyannote_model, sample_wav):
    wav, _ = load_audio(sample_wav)
    wav = wav[: 16000 * 6]
    segments = pyannote_model.diarize(wav, num_speakers=None)
    assert isinstance(segments, list)
    for s in segments:
        assert set(s) == {"start", "end", "speaker"}
        assert 0 <= s["start"] < s["end"] <= 6.0 + 1e-3
        assert s["speaker"].startswith("SPEAKER_")
    assert pyannote_model.parameters_on() == ["cpu"]
    assert pyannote_model.diarize(np.zeros(100, np.float32)) == []


def test_pyannote_missing_model_is_unavailable(tmp_path):
    from raysys.models.pyannote_backend import PyannoteDiarizer

    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        PyannoteDiarizer(str(tmp_path / "no-such-pipeline"))


@pytest.fixture(scope="module")
def speechbrain_model(speechbrain_folder, tmp_path_factory):
    from raysys.models.speechbrain_backend import SpeechBrainEmotion

    return SpeechBrainEmotion(str(speechbrain_folder), savedir=str(tmp_path_factory.mktemp("sb-save")))


def test_speechbrain_classifies_segments_of_any_length(speechbrain_model, speech_dir):
    pieces = [load_audio(p)[0] for p in sorted(speech_dir.glob("spk*_snt[12].wav"))]
    pieces.append(np.zeros(800, np.float32))  # 50 ms: padded, still scored
    out = speechbrain_model.classify(pieces)
    assert len(out) == len(pieces)
    assert speechbrain_model.labels == ["neutral", "angry", "happy", "sad"]
    for r in out:
        assert r["label"] in LABELS and set(r["scores"]) == set(LABELS)
        assert abs(sum(r["scores"].values()) - 1) < 1e-3
        assert -1 <= r["valence"] <= 1 and 0 <= r["arousal"] <= 1
    assert speechbrain_model.classify([]) == []


def test_speechbrain_missing_recipe_is_unavailable(tmp_path):
    from raysys.models.speechbrain_backend import SpeechBrainEmotion

    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        SpeechBrainEmotion(str(tmp_path / "absent"), savedir=str(tmp_path / "save"))
