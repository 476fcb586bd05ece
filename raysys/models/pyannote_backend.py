"""Speaker diarization with a ``pyannote.audio`` pipeline (4.x).

``Pipeline.from_pretrained`` takes a local folder holding ``config.yaml`` (and the model folders it
names) or a Hugging Face hub id such as ``pyannote/speaker-diarization-community-1``, with the token
from ``HF_TOKEN``. The pipeline gets waveforms in memory (``{"waveform", "sample_rate"}``), so
pyannote's own file decoding (torchcodec + system FFmpeg) is never needed, and it is moved to the
GPU when there is one. Telemetry is switched off (``PYANNOTE_METRICS_ENABLED=false``) before import.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from raysys.constants import SAMPLE_RATE
from raysys.errors import ModelUnavailable


class PyannoteDiarizer:
    """A pyannote speaker-diarization pipeline loaded once; see :meth:`diarize`."""

    name = "pyannote"

    def __init__(self, source: str, *, token: str | None = None, device: str = "cpu") -> None:
        os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
        import torch  # noqa: PLC0415 - torch: heavy, only where the model runs
        from pyannote.audio import Pipeline  # noqa: PLC0415 - pyannote.audio: heavy, only in the diarization actor

        self.torch = torch
        try:
            pipeline = Pipeline.from_pretrained(source, token=token)
        except Exception as exc:  # noqa: BLE001 - any loader failure means the same thing to callers
            raise ModelUnavailable(f"pyannote pipeline {source!r} could not be loaded: {exc}") from exc
        if pipeline is None:
            raise ModelUnavailable(f"pyannote pipeline {source!r} could not be loaded (gated or missing; "
                                   "set HF_TOKEN or use a local folder).")
        self.pipeline = pipeline.to(torch.device(device))
        self.device = device
        self.source = source
        import pyannote.audio  # noqa: PLC0415 - pyannote.audio: heavy, only in the diarization actor

        self.model_version = f"pyannote.audio {pyannote.audio.__version__} {os.path.basename(str(source).rstrip('/'))}"
        self.lock = threading.Lock()

    def parameters_on(self) -> list[str]:
        """Devices the pipeline's models sit on (for the GPU check)."""
        devices = set()
        for attr in ("_segmentation", "_embedding"):
            obj = getattr(self.pipeline, attr, None)
            model = getattr(obj, "model_", None) or getattr(obj, "model", None)
            if model is not None and hasattr(model, "parameters"):
                devices.update(str(p.device) for p in model.parameters())
        return sorted(devices)

    def diarize(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, *, num_speakers: int | None = None,
                min_speakers: int | None = None, max_speakers: int | None = None) -> list[dict]:
        """Speaker turns ``[{"start", "end", "speaker"}]`` (overlaps kept) of mono ``wav``."""
        torch = self.torch
        if len(wav) < sample_rate // 10:
            return []
        waveform = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
        with self.lock, torch.inference_mode():
            output = self.pipeline({"waveform": waveform, "sample_rate": sample_rate}, num_speakers=num_speakers,
                                   min_speakers=min_speakers, max_speakers=max_speakers)
        annotation = getattr(output, "speaker_diarization", output)
        duration = len(wav) / sample_rate
        segments = []
        for turn, _, label in annotation.itertracks(yield_label=True):
            # The last sliding window is padded past the end of the audio: clip turns to the audio.
            start, end = max(0.0, float(turn.start)), min(duration, float(turn.end))
            if end - start > 0.01:
                segments.append({"start": round(start, 3), "end": round(end, 3), "speaker": str(label)})
        return sorted(segments, key=lambda s: (s["start"], s["speaker"]))
