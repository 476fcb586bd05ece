"""The model actors on the session's Ray cluster: contracts, pools, batching, bad input, CLI."""

from __future__ import annotations

import concurrent.futures as cf
import json

import numpy as np
import pytest
import soundfile as sf

from raysys.errors import InvalidInput, ModelUnavailable, TooLarge
from raysys.models.emotion import LABELS

SEGMENT_KEYS = {"start", "end", "speaker", "channel"}


def test_diarize_file_contract_on_two_speaker_sample(model_actors, msettings, sample_wav):
    from raysys.actors.diarization import diarize_file

    result = diarize_file(msettings, str(sample_wav))
    assert set(result) == {"num_speakers", "segments", "duration", "layout", "backend", "model_version", "rtf"}
    assert result["num_speakers"] == 2 and result["layout"] == "mono" and result["backend"] == "builtin"
    assert result["duration"] == pytest.approx(30.0) and result["rtf"] > 0
    for s in result["segments"]:
        assert set(s) == SEGMENT_KEYS and s["channel"] is None and 0 <= s["start"] < s["end"] <= 30.0
    # Bytes work the same; a known count is obeyed.
    again = diarize_file(msettings, sample_wav.read_bytes(), num_speakers=3)
    assert again["num_speakers"] == 3


def test_stereo_is_detected_and_split_by_channel(model_actors, msettings, stereo_call):
    from raysys.actors.diarization import diarize_file

    result = diarize_file(msettings, stereo_call["path"])
    assert result["layout"] == "stereo" and result["num_speakers"] == 2
    assert {(s["speaker"], s["channel"]) for s in result["segments"]} == {("agent", 0), ("customer", 1)}
    mono = diarize_file(msettings, stereo_call["path"], layout="mono")
    assert mono["layout"] == "mono" and all(s["channel"] is None for s in mono["segments"])


def test_bad_audio_fails_clearly_and_the_actor_keeps_serving(model_actors, msettings, tmp_path, sample_wav):
    from raysys.actors.diarization import diarization_pool, diarize_file

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + b"\x00" * 64)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 2, np.float32), 16000)
    mono = tmp_path / "mono.wav"
    sf.write(mono, np.zeros(16000, np.float32), 16000)
    with pytest.raises(InvalidInput):
        diarize_file(msettings, corrupt)
    with pytest.raises(InvalidInput, match="empty"):
        diarize_file(msettings, empty)
    with pytest.raises(TooLarge):
        diarize_file(msettings.replace(max_audio_seconds=10.0), sample_wav)
    with pytest.raises(InvalidInput, match="2-channel"):
        diarize_file(msettings, mono, layout="stereo")
    with pytest.raises(InvalidInput, match="num_speakers"):
        diarize_file(msettings, sample_wav, num_speakers=0)
    assert diarize_file(msettings, silent)["segments"] == []
    # The actor survived all of it and is ready.
    (info,) = diarization_pool(msettings).ready()
    assert info["backend"] == "builtin" and info["threads"] == 1 and info["parameters_on"] == ["cpu"]


def test_analyze_file_gives_emotion_per_segment(model_actors, msettings, speech_dir, sample_wav):
    from raysys.actors.emotion import analyze_file

    path = speech_dir / "spk1_snt1.wav"
    segments = [{"start": 0.0, "end": 1.4, "speaker": "A"}, {"start": 1.4, "end": 2.87, "speaker": "B"},
                {"start": 5.0, "end": 6.0, "speaker": "A"}]  # the last lies past the end: dropped
    transcript = [{"start": 0.0, "end": 1.4, "text": "thank you, that is great"},
                  {"start": 1.4, "end": 2.9, "text": "this is terrible and unacceptable"}]
    result = analyze_file(msettings, path, segments=segments, transcript=transcript)
    assert result["backend"] == "builtin" and result["model_version"]
    assert [s["speaker"] for s in result["segments"]] == ["A", "B"]
    first, second = result["segments"]
    for s in result["segments"]:
        assert set(s) == {"start", "end", "speaker", "label", "scores", "valence", "arousal"}
        assert s["label"] in LABELS and 0 <= s["arousal"] <= 1
    assert first["valence"] > 0 > second["valence"]
    # Without segments the file is diarized first.
    whole = analyze_file(msettings, sample_wav)
    assert len(whole["segments"]) >= 2 and {s["speaker"] for s in whole["segments"]} == {"SPEAKER_00", "SPEAKER_01"}
    with pytest.raises(InvalidInput, match="start < end"):
        analyze_file(msettings, path, segments=[{"start": 2, "end": 1}])


def test_speechbrain_and_pyannote_backends_through_the_actors(model_actors, msettings, speech_dir, sample_wav,
                                                               pyannote_folder, speechbrain_folder, tmp_path):
    from raysys.actors.diarization import diarize_file
    from raysys.actors.emotion import analyze_file
    from raysys.actors.pool import shutdown_pools

    settings = msettings.replace(diarization_model=str(pyannote_folder), emotion_model=str(speechbrain_folder))
    short = tmp_path / "short.wav"
    wav, sr = sf.read(sample_wav, dtype="float32")
    sf.write(short, wav[: sr * 5], sr)
    diar = diarize_file(settings, short, backend="pyannote")
    assert diar["backend"] == "pyannote" and "pyannote.audio" in diar["model_version"]
    for s in diar["segments"]:
        assert set(s) == SEGMENT_KEYS and 0 <= s["start"] < s["end"] <= 5.0 + 1e-3
    emo = analyze_file(settings, speech_dir / "spk2_snt1.wav", segments=[{"start": 0, "end": 2.0, "speaker": "X"}],
                       backend="speechbrain")
    assert emo["backend"] == "speechbrain" and len(emo["segments"]) == 1
    assert emo["segments"][0]["label"] in LABELS
    shutdown_pools(("diarization", "emotion"))  # give the CPUs back before the next tests


def test_unloadable_model_fails_loudly_and_is_retried(model_actors, msettings, tmp_path, sample_wav):
    from ray.util import list_named_actors

    from raysys.actors.diarization import diarization_pool, diarize_file

    settings = msettings.replace(diarization_model=str(tmp_path / "missing-pipeline"))
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        diarization_pool(settings, "pyannote").ready(timeout=120)
    with pytest.raises(ModelUnavailable):
        diarize_file(settings, sample_wav, backend="pyannote")
    # The broken replica was removed, so a fixed model would load on the next request.
    prefix = diarization_pool(settings, "pyannote").prefix
    assert not [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def test_embedding_pool_batches_concurrent_requests(model_actors, msettings):
    import ray

    from raysys.actors.embedding import TextEncoder, embed_texts, embedding_pool

    single = embed_texts(msettings, ["refund my card", "hello"])
    assert single.shape == (2, 384) and single.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(single, axis=1), 1.0, atol=1e-4)
    assert embed_texts(msettings, []).shape == (0, 384)
    texts = [[f"question number {i}", f"answer {i}"] for i in range(24)]
    with cf.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda t: embed_texts(msettings, t), texts))
    assert all(r.shape == (2, 384) for r in results)
    (info,) = embedding_pool(msettings).ready()
    assert info["batches"] < info["items"]  # concurrent requests shared model calls
    local = TextEncoder().encode(texts[5])
    np.testing.assert_allclose(results[5], local, atol=1e-4)
    assert ray.is_initialized()


def test_num_gpus_auto_is_zero_without_gpus_and_explicit_values_win(model_actors, msettings):
    from raysys.actors.pool import pool_settings, resolve_num_gpus

    assert resolve_num_gpus("diarization", None) == 0.0
    assert resolve_num_gpus("emotion", 0.25) == 0.25
    assert pool_settings(msettings.replace(emotion_replicas=3), "emotion") == (3, 0.0)


def test_cli_diarize_prints_two_speakers_and_valid_rttm(model_actors, sample_wav, capsys, monkeypatch, tmp_path):
    from raysys.cli import main

    monkeypatch.setenv("RAYSYS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["diarize", str(sample_wav), "--format", "rttm"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines
    speakers = set()
    for line in lines:
        f = line.split()
        assert len(f) == 10 and f[0] == "SPEAKER" and f[1] == "sample" and f[2] == "1"
        assert float(f[3]) >= 0 and float(f[4]) > 0 and float(f[3]) + float(f[4]) <= 30.001
        speakers.add(f[7])
    assert len(speakers) == 2
    assert main(["emotion", str(sample_wav)]) == 0
    emotion = json.loads(capsys.readouterr().out)
    assert emotion["segments"] and all(s["label"] in LABELS for s in emotion["segments"])
    assert main(["diarize", str(tmp_path / "absent.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err
