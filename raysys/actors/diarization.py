"""The DiarizationActor pool and :func:`diarize_file`, the one way the rest of raysys diarizes audio.

``diarize_file(settings, audio, ...)`` decodes and checks the audio in the caller (bad audio fails
there with InvalidInput, before any actor is involved), chooses the layout (stereo agent/customer
split or mono clustering), and sends the samples to a replica of the cluster's diarization pool
(:mod:`raysys.actors.pool`). Backends: ``builtin`` (offline) and ``pyannote`` (``DIARIZATION_MODEL``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from raysys.actors.pool import ModelPool, ModelServer, get_pool
from raysys.audio import is_stereo_call, load_audio
from raysys.config import Settings
from raysys.errors import InvalidInput
from raysys.models.builtin_diarization import BuiltinDiarizer
from raysys.models.diarization import diarize_waveform, make_diarizer

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "mono", "stereo")


class DiarizationActor(ModelServer):
    """Holds one diarization backend (and the builtin VAD for stereo splits); batches requests.

    A request item is ``{"audio": ndarray, "layout", "num_speakers", "min_speakers", "max_speakers"}``;
    the result is the dict of :func:`raysys.models.diarization.diarize_waveform`.
    """

    max_batch = 8

    def load(self, spec: dict, device: str) -> Any:
        model = make_diarizer(spec["backend"], model=spec.get("model"), token=spec.get("token"), device=device)
        self.vad = model if spec["backend"] == "builtin" else None
        return model

    def _stereo_vad(self):
        if self.vad is None:
            self.vad = BuiltinDiarizer(device="cpu")
        return self.vad

    def run_batch(self, items: list[dict]) -> list[Any]:
        # Files differ in length, so each runs on its own; the batch serialises access to the model
        # and lets one scheduling round trip carry many queued files.

        out: list[Any] = []
        for item in items:
            try:
                vad = self._stereo_vad() if item["layout"] == "stereo" else None
                out.append(diarize_waveform(self.model, item["audio"], layout=item["layout"],
                                            num_speakers=item.get("num_speakers"),
                                            min_speakers=item.get("min_speakers"),
                                            max_speakers=item.get("max_speakers"), vad_model=vad))
            except Exception as exc:  # noqa: BLE001 - one bad file must not fail the others
                out.append(exc)
        return out

    def describe(self) -> dict:
        info = {"backend": self.model.name, "model_version": self.model.model_version}
        on = getattr(self.model, "parameters_on", None)
        if on is not None:
            info["parameters_on"] = on()
        else:
            info["parameters_on"] = sorted({str(p.device) for p in self.model.encoder.parameters()})
        return info


def backend_spec(settings: Settings, backend: str | None = None) -> dict:
    backend = (backend or settings.diarization_backend).lower()
    spec: dict = {"backend": backend}
    if backend == "pyannote":
        spec["model"] = settings.diarization_model
        spec["token"] = settings.hf_token
    elif backend != "builtin":
        raise InvalidInput(f"unknown diarization backend {backend!r} (choose builtin or pyannote).")
    return spec


def diarization_pool(settings: Settings, backend: str | None = None) -> ModelPool:
    """The cluster's diarization pool for ``backend`` (default ``DIARIZATION_BACKEND``)."""
    return get_pool(settings, "diarization", DiarizationActor, backend_spec(settings, backend))


def choose_layout(audio: np.ndarray, layout: str) -> str:
    if layout not in LAYOUTS:
        raise InvalidInput(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if layout == "stereo":
        if audio.shape[0] != 2:
            raise InvalidInput(f"stereo layout needs a 2-channel recording; this one has {audio.shape[0]}.")
        return "stereo"
    if layout == "auto" and audio.shape[0] == 2 and is_stereo_call(audio):
        return "stereo"
    return "mono"


def diarize_file(settings: Settings, audio_path: str | Path | bytes, *, num_speakers: int | None = None,
                 min_speakers: int | None = None, max_speakers: int | None = None, layout: str = "auto",
                 backend: str | None = None) -> dict:
    """Who spoke when in ``audio_path`` (a path or the file's bytes). Ray must be initialised.

    Returns ``{"num_speakers", "segments": [{"start", "end", "speaker", "channel"}], "duration",
    "layout", "backend", "model_version", "rtf"}``. Stereo (given, or detected with ``layout="auto"``)
    gives speakers ``agent`` (channel 0) and ``customer`` (channel 1). Silent audio gives no segments.

    Raises:
        InvalidInput: bad, empty, corrupt or unsupported audio, or bad arguments (TooLarge when longer
            than MAX_AUDIO_SECONDS). ModelUnavailable: the backend's model cannot be loaded.
    """
    for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                        ("max_speakers", max_speakers)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InvalidInput(f"{name} must be a whole number of at least 1, got {value!r}.")
    if min_speakers and max_speakers and min_speakers > max_speakers:
        raise InvalidInput(f"min_speakers ({min_speakers}) exceeds max_speakers ({max_speakers}).")
    audio, _ = load_audio(audio_path, mono=False, max_seconds=settings.max_audio_seconds)
    chosen = choose_layout(audio, layout)
    if chosen == "mono":
        audio = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
    else:
        audio = audio[:2]
    item = {"audio": np.ascontiguousarray(audio, dtype=np.float32), "layout": chosen, "num_speakers": num_speakers,
            "min_speakers": min_speakers, "max_speakers": max_speakers}
    result = diarization_pool(settings, backend).call(item)
    log.info("diarized %s: %d speakers, %d segments, rtf %.4f (%s)", _label(audio_path), result["num_speakers"],
             len(result["segments"]), result["rtf"], result["backend"])
    return result


def _label(source: str | Path | bytes) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes | bytearray) else str(source)
