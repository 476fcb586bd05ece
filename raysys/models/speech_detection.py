"""Speech regions for the builtin diarizer: silero-vad probabilities, then hysteresis and padding rules.

silero-vad's weights ship inside its wheel. :class:`SpeechDetector` computes its speech probability
per 32 ms frame the way silero's own sequence model does (the frame-independent STFT and conv encoder
on thousands of frames per call, only its LSTM cell sequential, run as one ``nn.LSTM``);
:meth:`SpeechDetector.speech_regions` turns them into regions with the rules and thresholds described
in :mod:`raysys.models.builtin_diarization` (step 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from raysys.constants import SAMPLE_RATE

if TYPE_CHECKING:
    from raysys.models.builtin_diarization import BuiltinParams

VAD_FRAME = 512  # samples per silero-vad frame at 16 kHz (32 ms)
VAD_CONTEXT = 64  # samples of the previous frame silero-vad prepends to each frame
VAD_PIECE = 4096  # frames per silero-vad encoder call (131 s)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


class SpeechDetector:
    """silero-vad in this process (CPU: a tiny, sequential model). Not thread-safe; the diarizer locks."""

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        # Imported here, not at the top: importing silero_vad sets torch's thread count to 1, and this
        # is where the caller's count can be put back.
        import silero_vad  # noqa: PLC0415 - its import resets torch threads (see above)

        torch.set_num_threads(threads)
        self.version = getattr(silero_vad, "__version__", "?")
        self.model = silero_vad.load_silero_vad()  # TorchScript
        rnn = self.model._model.decoder.rnn  # its LSTMCell, as an nn.LSTM that runs a whole sequence per call
        self.lstm = torch.nn.LSTM(rnn.weight_ih.shape[1], rnn.weight_hh.shape[1]).eval()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.lstm, f"{name}_l0").copy_(getattr(rnn, name))

    def speech_probs(self, wav: np.ndarray) -> np.ndarray:
        """silero-vad speech probability per 32 ms frame.

        The same numbers as streaming the model frame by frame (``audio_forward``, one TorchScript call
        per 32 ms: 9,375 calls for 5 minutes), computed as silero's own sequence model does it: each
        frame's input is its 512 samples plus the previous frame's last 64, so the STFT and conv encoder
        run on thousands of frames per call; only the 128-unit LSTM cell is sequential, and it runs as
        one ``nn.LSTM`` over the whole sequence (state carried between pieces, memory flat on long
        audio). 300 s: 2.9 s → 0.25 s of CPU, probabilities equal to 1e-5.
        """
        peak = float(np.abs(wav).max()) if len(wav) else 0.0
        level = rms(wav)
        if peak <= 0:
            return np.zeros(len(wav) // VAD_FRAME, dtype=np.float32)
        gain = min(0.05 / max(level, 1e-6), 0.99 / peak)  # quiet far-field audio under-triggers the VAD
        x = torch.from_numpy(np.ascontiguousarray(wav * gain, dtype=np.float32))
        n = (len(x) + VAD_FRAME - 1) // VAD_FRAME
        x = torch.nn.functional.pad(x, (VAD_CONTEXT, n * VAD_FRAME - len(x)))  # zero context before frame 0
        frames = x.unfold(0, VAD_CONTEXT + VAD_FRAME, VAD_FRAME)[:n]  # a view: (n, 576)
        model = self.model._model
        state = None
        probs = []
        with torch.no_grad():
            for i in range(0, n, VAD_PIECE):
                feats = model.encoder(model.run_extractors(frames[i:i + VAD_PIECE])).squeeze(-1)  # (m, 128)
                h, state = self.lstm(feats.unsqueeze(1), state)
                probs.append(model.decoder.decoder(h.squeeze(1).unsqueeze(-1)).squeeze(1).mean(1))
        return torch.cat(probs).numpy()[:n].astype(np.float32)

    def speech_regions(self, probs: np.ndarray, duration: float, params: BuiltinParams) -> list[tuple[float, float]]:
        """Speech regions ``[(start, end)]`` in seconds from silero's per-frame ``probs``.

        Hysteresis (``vad_onset``/``vad_offset``), detections under ``vad_min_speech`` dropped, then
        padding and gap filling. When that finds nothing but some frame reaches ``vad_fallback_onset``,
        a second pass at that onset (offset half of it, no minimum length) keeps the confident peaks:
        far-field laughter and murmurs score 0.2-0.35 where noise, hum and clicks stay under 0.05, and a
        recording with speech in it must not come back with no speaker at all.
        """
        p = params
        regions = hysteresis(probs, p.vad_onset, p.vad_offset, p.vad_min_speech)
        if not regions and len(probs) and float(np.max(probs)) >= p.vad_fallback_onset:
            regions = hysteresis(probs, p.vad_fallback_onset, p.vad_fallback_onset / 2, 0.0)
        merged: list[list[float]] = []
        for a, b in regions:
            a, b = max(0.0, a - p.vad_pad), min(duration, b + p.vad_pad)
            if merged and a - merged[-1][1] < p.vad_fill_gap:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        return [(a, b) for a, b in merged if b - a >= p.vad_min_region]


def hysteresis(probs: np.ndarray, onset: float, offset: float, min_speech: float) -> list[list[float]]:
    """Runs that start at a frame ``>= onset`` and end at the first frame ``< offset``, in seconds,
    at least ``min_speech`` long."""
    step = VAD_FRAME / SAMPLE_RATE
    regions: list[list[float]] = []
    active, start = False, 0
    for i, v in enumerate(probs):
        if not active and v >= onset:
            active, start = True, i
        elif active and v < offset:
            active = False
            regions.append([start * step, i * step])
    if active:
        regions.append([start * step, len(probs) * step])
    return [r for r in regions if r[1] - r[0] >= min_speech - 1e-9]
