"""Speech to text: words → turns (unit), chunking, the PocketSphinx backend on real recordings, and the
faster-whisper loading path on a random-weight Whisper built offline (its words are noise: contract only)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_data

from raysys.errors import InvalidInput, ModelUnavailable
from raysys.models.transcription import assign_speakers, split_at_silences, words_to_turns


def w(word, start, end, conf=0.9, channel=None):
    out = {"word": word, "start": start, "end": end, "confidence": conf}
    if channel is not None:
        out["channel"] = channel
    return out


def norm(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def wer(ref: str, hyp: str) -> float:
    import jiwer

    return jiwer.wer(" ".join(norm(ref)), " ".join(norm(hyp)) or "<empty>")


def reference(uid: str) -> str:
    path = shared_data("asr", "read", "transcripts.tsv")
    return dict(line.rstrip("\n").split("\t", 1) for line in path.open())[uid]


# --- words → turns (hand-made words and segments) ---------------------------------------------------------


SEGMENTS = [{"start": 0.0, "end": 3.0, "speaker": "SPK_A"}, {"start": 3.2, "end": 6.0, "speaker": "SPK_B"},
            {"start": 6.1, "end": 9.0, "speaker": "SPK_A"}]


def test_words_are_grouped_into_turns_of_the_speaker_they_overlap_with_roles():
    words = [w("hello", 0.2, 0.6), w("how", 0.7, 0.9), w("can", 1.0, 1.2, 0.5), w("i", 1.2, 1.3),
             w("my", 3.3, 3.5), w("card", 3.5, 3.9), w("was", 2.9, 3.25),  # mostly before B starts: A's
             w("stolen", 3.95, 4.5), w("sorry", 6.3, 6.8)]
    turns = words_to_turns(words, SEGMENTS, {"SPK_A": "agent", "SPK_B": "customer"})
    assert [(t["speaker"], t["role"], t["text"]) for t in turns] == [
        ("SPK_A", "agent", "hello how can i was"), ("SPK_B", "customer", "my card stolen"),
        ("SPK_A", "agent", "sorry")]
    assert turns[0]["start"] == 0.2 and turns[0]["end"] == 3.25
    assert turns[0]["confidence"] == pytest.approx((0.9 * 4 + 0.5) / 5, abs=1e-4)
    assert [x["word"] for x in turns[1]["words"]] == ["my", "card", "stolen"]


def test_a_long_pause_splits_a_turn_and_words_outside_speech_go_to_the_nearest_speaker():
    words = [w("one", 0.1, 0.4), w("two", 2.8, 2.95), w("late", 9.5, 9.8), w("again", 12.5, 12.9)]
    turns = words_to_turns(words, SEGMENTS, {"SPK_A": "agent"}, max_gap=2.0)
    assert [(t["text"], t["role"]) for t in turns] == [("one", "agent"), ("two", "agent"), ("late", "agent"),
                                                       ("again", "agent")]
    # Unknown labels get the role 'unknown'; no diarization at all still gives turns.
    assert words_to_turns([w("hi", 0.0, 0.3)], [])[0] | {"words": None} == {
        "speaker": None, "role": "unknown", "channel": None, "start": 0.0, "end": 0.3, "text": "hi",
        "confidence": 0.9, "words": None}


def test_stereo_words_keep_their_channel_even_where_the_other_channel_speaks():
    segments = [{"start": 0.0, "end": 5.0, "speaker": "agent", "channel": 0},
                {"start": 2.0, "end": 6.0, "speaker": "customer", "channel": 1}]
    words = [w("hello", 0.5, 1.0, channel=0), w("yes", 2.5, 2.8, channel=1), w("right", 3.0, 3.4, channel=0)]
    tagged = assign_speakers(words, segments)
    assert [x["speaker"] for x in tagged] == ["agent", "customer", "agent"]
    turns = words_to_turns(words, segments, {"agent": "agent", "customer": "customer"})
    assert [(t["role"], t["text"]) for t in turns] == [("agent", "hello"), ("customer", "yes"), ("agent", "right")]


def test_long_audio_is_cut_in_its_pauses_and_the_pieces_cover_it():
    rng = np.random.default_rng(0)
    sr = 16000
    parts, pauses = [], []
    t = 0.0
    for _ in range(12):  # 12 bursts of 'speech' of 3-6 s with 0.5 s pauses: 45-80 s
        n = int(rng.uniform(3, 6) * sr)
        parts.append(rng.normal(0, 0.1, n).astype(np.float32))
        t += n / sr
        parts.append(np.zeros(int(0.5 * sr), np.float32))
        pauses.append((t, t + 0.5))
        t += 0.5
    wav = np.concatenate(parts)
    pieces = split_at_silences(wav, target_s=12, max_s=18, min_s=5)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(wav) and len(pieces) >= 3
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    for a, b in pieces:
        assert (b - a) / sr <= 18.0 + 1e-6
    for _, cut in pieces[:-1]:
        assert any(p0 <= cut / sr <= p1 for p0, p1 in pauses), f"cut at {cut / sr:.2f}s is not in a pause"
    assert split_at_silences(wav[: 10 * sr], max_s=18) == [(0, 10 * sr)] and split_at_silences(wav[:0]) == []


# --- pocketsphinx on real recordings ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sphinx():
    from raysys.models.transcription import make_transcriber

    return make_transcriber("pocketsphinx")


def test_pocketsphinx_from_its_wheel_transcribes_a_real_read_utterance(sphinx):
    uid = "1089-134686-0000"
    wav, sr = sf.read(shared_data("asr", "read", f"{uid}.wav"), dtype="float32")
    out = sphinx.transcribe(wav)
    assert out["language"] == "en" and sphinx.model_version.startswith("pocketsphinx-")
    assert wer(reference(uid), out["text"]) < 0.4, out["text"]
    duration = len(wav) / sr
    starts = [x["start"] for x in out["words"]]
    assert starts == sorted(starts) and all(0 <= x["start"] < x["end"] <= duration + 0.05 for x in out["words"])
    confidences = [x["confidence"] for x in out["words"]]
    assert all(0.0 <= c <= 1.0 for c in confidences) and min(confidences) < 1.0  # posteriors, not a constant
    # Silence gives no words; another language is refused clearly.
    assert sphinx.transcribe(np.zeros(sr, np.float32))["words"] == []
    with pytest.raises(InvalidInput, match="English only"):
        sphinx.transcribe(wav, language="de")


def test_unknown_backend_and_missing_whisper_folder_fail_clearly(tmp_path):
    from raysys.models.transcription import make_transcriber

    with pytest.raises(InvalidInput, match="unknown transcription backend"):
        make_transcriber("nope")
    with pytest.raises(ModelUnavailable, match="faster-whisper"):
        make_transcriber("faster-whisper", model=str(tmp_path / "empty-hub-id-offline"))


# --- faster-whisper on a random-weight Whisper built offline -------------------------------------------------


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    from raysys.models.random_whisper import build_random_whisper

    return build_random_whisper(tmp_path_factory.mktemp("whisper"))


FAST = {"beam_size": 1, "temperature": 0.0, "max_new_tokens": 24}  # random weights: keep generation short


def test_faster_whisper_loads_a_converted_folder_detects_language_and_returns_timed_words(whisper_folder):
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    from raysys.models.transcription import make_transcriber

    assert {p.name for p in whisper_folder.iterdir()} >= {"model.bin", "tokenizer.json", "preprocessor_config.json"}
    model = make_transcriber("faster-whisper", model=str(whisper_folder), config=FAST)
    assert model.compute_type == "int8" and model.device == "cpu" and model.model_version.endswith(":ct2")
    wav, sr = sf.read(shared_data("asr", "read", "1089-134686-0001.wav"), dtype="float32")
    out = model.transcribe(wav)  # no language given: detected (multilingual models) or English
    assert out["language"] in _LANGUAGE_CODES
    for x in out["words"]:
        assert set(x) == {"word", "start", "end", "confidence"} and 0 <= x["start"] <= x["end"] <= len(wav) / sr + 1
        assert 0.0 <= x["confidence"] <= 1.0
    assert isinstance(out["text"], str)
    # CTranslate2 4.8 calls this layout English-only (a real multilingual folder detects and honours the language).
    expected = "fr" if model.model.model.is_multilingual else "en"
    assert model.transcribe(wav, language="fr")["language"] == expected


def test_transcription_pool_runs_faster_whisper_in_chunks_across_replicas(model_actors, msettings, whisper_folder):
    """End to end through the actor pool: 3 copies of a 10 s utterance are cut at pauses, sent to both
    replicas at once, and the words come back in time order with progress reported."""
    from raysys.actors.pool import ModelPool
    from raysys.actors.transcription import TranscriptionActor, transcribe_audio

    wav, sr = sf.read(shared_data("asr", "read", "1089-134686-0000.wav"), dtype="float32")
    gap = np.zeros(sr, np.float32)
    audio = np.concatenate([wav, gap, wav, gap, wav])
    buf = __import__("io").BytesIO()
    sf.write(buf, audio, sr, format="WAV")
    pool = ModelPool("transcription", TranscriptionActor, {"backend": "faster-whisper", "model": str(whisper_folder),
                                                           "options": FAST}, replicas=2, num_gpus=0, threads=1)
    seen = []
    out = transcribe_audio(msettings, buf.getvalue(), pool=pool, chunk_seconds=8.0,
                           progress=lambda f, m: seen.append(f))
    assert out["chunks"] >= 3 and out["backend"] == "faster-whisper" and out["layout"] == "mono"
    assert out["duration"] == pytest.approx(len(audio) / sr, abs=0.01)
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    starts = [x["start"] for x in out["words"]]
    assert starts == sorted(starts) and all(x["channel"] is None for x in out["words"])
    facts = pool.ready()
    assert len(facts) == 2 and sum(f["items"] for f in facts) == out["chunks"]
    assert all(f["items"] > 0 for f in facts), "every replica decoded a piece"
