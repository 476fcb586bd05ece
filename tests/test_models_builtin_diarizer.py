"""Builtin diarizer internals: VAD blip filter, known speaker count, long-audio clustering, chunked mel."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from raysys.audio import load_audio
from raysys.models.builtin_diarization import MEL_HOP, MEL_WIN
from raysys.models.speech_detection import VAD_FRAME

STEP = VAD_FRAME / 16000  # 32 ms


def test_vad_drops_one_frame_blips_but_keeps_short_words(builtin_diarizer):
    probs = np.zeros(200, np.float32)
    probs[20:23] = 0.45  # a 96 ms click just over the onset, no speech around it
    probs[100:106] = 0.9  # a 0.19 s "yes"
    probs[150:190] = 0.95  # a 1.3 s phrase
    regions = builtin_diarizer.speech_regions(probs, 200 * STEP)
    pad = builtin_diarizer.params.vad_pad
    assert len(regions) == 2
    (a0, b0), (a1, b1) = regions
    assert abs(a0 - (100 * STEP - pad)) < 1e-6 and abs(b0 - (106 * STEP + pad)) < 1e-6
    assert abs(a1 - (150 * STEP - pad)) < 1e-6 and abs(b1 - (190 * STEP + pad)) < 1e-6


def test_known_speaker_count_splits_speakers_not_outliers(builtin_diarizer, sample_wav):
    """num_speakers=2 on the 2-speaker sample scores like the automatic count (cutting the tree at
    exactly 2 clusters used to peel off one outlier window and leave 48 % DER)."""
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    wav, _ = load_audio(sample_wav)
    ref = load_rttm(sample_wav.with_suffix(".rttm"))["sample"]
    for kwargs in ({}, {"num_speakers": 2}, {"min_speakers": 2, "max_speakers": 2}):
        segments = builtin_diarizer.diarize(wav, **kwargs)
        hyp = Annotation(uri="sample")
        for i, s in enumerate(segments):
            hyp[Segment(s["start"], s["end"]), i] = s["speaker"]
        assert len(hyp.labels()) == 2
        assert DiarizationErrorRate(collar=0.25, skip_overlap=False)(ref, hyp, uem=Segment(0, 30)) < 0.15, kwargs


def test_many_windows_are_clustered_through_a_subsample(builtin_diarizer):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 256))
    truth = np.repeat([0, 1, 2, 0], [2500, 2000, 1500, 1000])  # 7,000 windows, ~29 min of speech
    emb = centres[truth] + rng.normal(scale=0.8, size=(len(truth), 256))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    small = copy.copy(builtin_diarizer)
    small.params = replace(builtin_diarizer.params, max_cluster_windows=800)
    labels = small.cluster(emb, None, 1, 8)
    assert labels.shape == (7000,) and labels.max() + 1 == 3
    # Every window lands with its own speaker (up to naming).
    for c in range(3):
        assert len(np.unique(labels[truth == c])) == 1
    assert len(set(labels[truth == c][0] for c in range(3))) == 3
    assert small.cluster(emb, 2, 1, 8).max() + 1 == 2


def test_chunked_mel_equals_one_stft(builtin_diarizer):
    x = (np.random.default_rng(1).normal(size=16000 * 7 + 77) * 0.1).astype(np.float32)
    whole = torch.stft(torch.from_numpy(x), MEL_WIN, MEL_HOP, MEL_WIN, builtin_diarizer.window, center=True,
                       pad_mode="constant", return_complex=True).abs() ** 2
    whole = (builtin_diarizer.mel_fb @ whole).T
    for chunk in (60_000, 97):
        mel = builtin_diarizer.mel(x, chunk_frames=chunk)
        assert mel.shape == whole.shape
        assert float((mel - whole).abs().max()) <= 1e-5 * float(whole.abs().max())


def test_sequence_vad_equals_frame_by_frame_streaming(builtin_diarizer, sample_wav, monkeypatch):
    """speech_probs (encoder on many frames per call, one LSTM over the sequence) = silero's streaming."""
    import raysys.models.speech_detection as sd

    wav = load_audio(sample_wav)[0][:16000 * 8 + 300]  # not a whole number of frames
    gain = min(0.05 / float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))), 0.99 / float(np.abs(wav).max()))
    vad = builtin_diarizer.vad.model
    with torch.no_grad():
        expected = vad.audio_forward(torch.from_numpy((wav * gain).astype(np.float32)), sr=16000)[0].numpy()
    vad.reset_states()
    monkeypatch.setattr(sd, "VAD_PIECE", 37)  # several pieces: the LSTM state must carry across them
    probs = builtin_diarizer.speech_probs(wav)
    assert probs.shape == expected.shape == ((len(wav) + VAD_FRAME - 1) // VAD_FRAME,)
    assert float(np.abs(probs - expected).max()) < 1e-4
    assert probs.max() > 0.9 and probs.min() < 0.1  # speech and silence both present
