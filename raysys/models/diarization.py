"""Speaker diarization: one interface, two backends, and the stereo channel split.

- ``builtin`` (default): :class:`~raysys.models.builtin_diarization.BuiltinDiarizer`, offline.
- ``pyannote``: :class:`~raysys.models.pyannote_backend.PyannoteDiarizer` (local folder or hub id).
- Stereo contact-centre recordings (agent on channel 0, customer on channel 1) are split by channel
  instead of clustered: each channel's speech regions (silero-vad) become that party's turns, and a
  channel only counts as speaking where it is not far quieter than the other (cross-talk bleed).

:func:`diarize_waveform` is what the DiarizationActor calls; it returns the contract's dict.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput, ModelUnavailable
from raysys.models.builtin_diarization import BuiltinDiarizer
from raysys.models.pyannote_backend import PyannoteDiarizer

BACKENDS = ("builtin", "pyannote")
STEREO_SPEAKERS = ("agent", "customer")
BLEED_DB = 15.0  # a channel this much quieter than the other in a frame is cross-talk, not speech


class Diarizer(Protocol):
    name: str
    model_version: str
    device: str

    def diarize(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, *, num_speakers: int | None = None,
                min_speakers: int | None = None, max_speakers: int | None = None) -> list[dict]: ...


def make_diarizer(backend: str, *, model: str | None = None, token: str | None = None, device: str = "cpu"
                  ) -> Diarizer:
    """Load a diarization backend. ``model`` is the pyannote pipeline (folder or hub id).

    Raises:
        InvalidInput: unknown backend. ModelUnavailable: the model cannot be loaded.
    """
    if backend == "builtin":
        try:
            return BuiltinDiarizer(device=device)
        except Exception as exc:  # noqa: BLE001 - any load failure is ModelUnavailable
            raise ModelUnavailable(f"builtin diarizer could not load: {exc}") from exc
    if backend == "pyannote":
        if not model:
            raise ModelUnavailable("the pyannote backend needs DIARIZATION_MODEL (a local folder or hub id).")
        return PyannoteDiarizer(model, token=token, device=device)
    raise InvalidInput(f"unknown diarization backend {backend!r} (choose {', '.join(BACKENDS)}).")


def channel_split(vad_model, channels: np.ndarray) -> list[dict]:
    """Turns of a two-party stereo call: channel 0 → ``agent``, channel 1 → ``customer``.

    ``vad_model`` is a :class:`BuiltinDiarizer` (its silero-vad and region rules are reused).
    """
    frame = 0.02
    hop = int(frame * SAMPLE_RATE)
    n = channels.shape[1]
    n_frames = max(1, n // hop)
    energy = []
    for ch in channels:
        x = ch[:n_frames * hop].astype(np.float64).reshape(n_frames, hop)
        energy.append(10 * np.log10(np.mean(x ** 2, axis=1) + 1e-10))
    energy_db = np.array(energy)
    segments: list[dict] = []
    duration = n / SAMPLE_RATE
    for c, ch in enumerate(channels):
        probs = vad_model.speech_probs(ch)
        regions = vad_model.speech_regions(probs, duration)
        # Speaking: not far quieter than the other channel (bleed), and not near-silence either.
        louder = (energy_db[c] >= energy_db[1 - c] - BLEED_DB) & (energy_db[c] > energy_db[c].max() - 40.0)
        for a, b in regions:
            fa, fb = int(a / frame), min(n_frames, int(np.ceil(b / frame)))
            mask = louder[fa:fb]
            if mask.size == 0 or not mask.any():
                continue
            # Keep the region from its first to its last frame that is not bleed.
            idx = np.flatnonzero(mask)
            start, end = (fa + idx[0]) * frame, min(duration, (fa + idx[-1] + 1) * frame)
            if end - start >= 0.1:
                segments.append({"start": round(start, 3), "end": round(end, 3), "speaker": STEREO_SPEAKERS[c],
                                 "channel": c})
    return sorted(segments, key=lambda s: (s["start"], s["channel"]))


def diarize_waveform(diarizer: Diarizer, audio: np.ndarray, *, layout: str = "mono", num_speakers: int | None = None,
                     min_speakers: int | None = None, max_speakers: int | None = None, vad_model=None) -> dict:
    """Diarize ``audio`` ((n,) mono or (2, n) stereo at 16 kHz) into the contract's result dict.

    ``layout`` is ``"mono"`` (cluster speakers) or ``"stereo"`` (split channels; needs ``vad_model``,
    a BuiltinDiarizer, or ``diarizer`` itself when it is one).
    """
    t0 = time.perf_counter()
    if layout == "stereo":
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise InvalidInput("stereo layout needs a 2-channel recording.")
        vad = vad_model or (diarizer if hasattr(diarizer, "speech_probs") else None)
        if vad is None:
            raise ModelUnavailable("the stereo channel split needs the builtin VAD, which is not loaded.")
        duration = audio.shape[1] / SAMPLE_RATE
        segments = channel_split(vad, audio)
        speakers = sorted({s["speaker"] for s in segments}, key=STEREO_SPEAKERS.index)
        backend, version = "channel-split", vad.model_version
    else:
        wav = audio if audio.ndim == 1 else audio.mean(axis=0)
        duration = len(wav) / SAMPLE_RATE
        segments = diarizer.diarize(wav, SAMPLE_RATE, num_speakers=num_speakers, min_speakers=min_speakers,
                                    max_speakers=max_speakers)
        for s in segments:
            s["channel"] = None
        speakers = sorted({s["speaker"] for s in segments})
        backend, version = diarizer.name, diarizer.model_version
    elapsed = time.perf_counter() - t0
    return {
        "num_speakers": len(speakers),
        "segments": segments,
        "duration": round(duration, 3),
        "layout": layout,
        "backend": backend,
        "model_version": version,
        "rtf": round(elapsed / duration, 5) if duration > 0 else 0.0,
    }
