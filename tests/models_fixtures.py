"""Fixtures for the model and audio tests: small audio files, offline random checkpoints, settings.

Heavy things are built once per session (the random pyannote pipeline, the tiny speechbrain recipe,
the builtin diarizer); model actors started by a test module are killed when it ends so they do not
hold the shared Ray cluster's CPUs for the rest of the suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import shared_data

from raysys.config import Settings


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def msettings(tmp_path) -> Settings:
    """Settings for model tests (no Redis or PostgreSQL needed)."""
    return Settings.from_env({}, data_dir=str(tmp_path / "data"))


@pytest.fixture(scope="module")
def model_actors(ray_cluster):
    """The session's Ray cluster; every model actor made by the module is killed at its end."""
    from raysys.actors.pool import shutdown_pools

    yield ray_cluster
    shutdown_pools()


@pytest.fixture(scope="session")
def sample_wav():
    return shared_data("diarization", "sample.wav")


@pytest.fixture(scope="session")
def speech_dir():
    return shared_data("speech")


@pytest.fixture(scope="session")
def builtin_diarizer():
    import torch

    from raysys.models.builtin_diarization import BuiltinDiarizer

    model = BuiltinDiarizer()
    torch.set_num_threads(1)
    return model


@pytest.fixture(scope="session")
def pyannote_folder(tmp_path_factory):
    """A random-weight SpeakerDiarization pipeline folder (short 3 s windows, large step: fast)."""
    from raysys.models.random_checkpoints import build_pyannote_pipeline

    return build_pyannote_pipeline(tmp_path_factory.mktemp("pyannote") / "pipeline", chunk_seconds=3.0, step=0.5)


@pytest.fixture(scope="session")
def speechbrain_folder(tmp_path_factory):
    """A tiny random-weight wav2vec2-IEMOCAP-shaped recipe folder."""
    from raysys.models.random_checkpoints import build_speechbrain_emotion

    return build_speechbrain_emotion(tmp_path_factory.mktemp("speechbrain") / "emotion")


@pytest.fixture(scope="session")
def stereo_call(tmp_path_factory, speech_dir):
    """A 2-channel call: agent (speaker 1) on the left at 0.5 s, customer (speaker 2) on the right after.

    Each channel carries a faint (-30 dB) copy of the other, as real call recorders do.
    """
    agent, sr = sf.read(speech_dir / "spk1_snt1.wav", dtype="float32")
    customer, _ = sf.read(speech_dir / "spk2_snt1.wav", dtype="float32")
    gap = int(0.5 * sr)
    n = gap + len(agent) + gap + len(customer) + gap
    left, right = np.zeros(n, np.float32), np.zeros(n, np.float32)
    left[gap:gap + len(agent)] = agent
    start = 2 * gap + len(agent)
    right[start:start + len(customer)] = customer
    stereo = np.stack([left + 0.03 * right, right + 0.03 * left], axis=1)
    path = tmp_path_factory.mktemp("stereo") / "call.wav"
    sf.write(path, stereo, sr)
    return {"path": path, "agent": (gap / sr, (gap + len(agent)) / sr),
            "customer": (start / sr, (start + len(customer)) / sr)}
