"""Speech emotion with speechbrain's wav2vec2-IEMOCAP recipe (``foreign_class``).

The recipe (``speechbrain/emotion-recognition-wav2vec2-IEMOCAP``) ships ``hyperparams.yaml`` and
``custom_interface.py`` with ``CustomEncoderWav2vec2Classifier``; this backend loads it from a local
folder or hub id and only calls ``classify_batch(wavs, wav_lens)`` and the label encoder, so any
folder that provides that interface works (the tests build a tiny random one offline). Labels are the
recipe's ``neu``/``ang``/``hap``/``sad``, reported as neutral/angry/happy/sad.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from raysys.constants import SAMPLE_RATE
from raysys.errors import ModelUnavailable
from raysys.models.emotion import LABELS, circumplex

SHORT = {"neu": "neutral", "ang": "angry", "hap": "happy", "sad": "sad", "exc": "happy", "fru": "angry"}
MAX_PIECE_SECONDS = 20.0


class SpeechBrainEmotion:
    """The wav2vec2-IEMOCAP classifier loaded once; :meth:`classify` scores many segments in one batch."""

    name = "speechbrain"

    def __init__(self, source: str, *, savedir: str, device: str = "cpu", token: str | None = None) -> None:
        import torch  # noqa: PLC0415 - torch: heavy, only where the model runs
        from speechbrain.inference.interfaces import foreign_class  # noqa: PLC0415 - speechbrain: heavy, only in the emotion actor

        self.torch = torch
        try:
            self.model = foreign_class(source=source, pymodule_file="custom_interface.py",
                                       classname="CustomEncoderWav2vec2Classifier", savedir=savedir,
                                       run_opts={"device": device})
        except Exception as exc:  # noqa: BLE001 - every loader failure means "model unavailable"
            raise ModelUnavailable(f"speechbrain emotion model {source!r} could not be loaded: {exc}") from exc
        self.model.eval()
        encoder = self.model.hparams.label_encoder
        encoder.ignore_len() if hasattr(encoder, "ignore_len") else None
        self.raw_labels = [encoder.ind2lab[i] for i in sorted(encoder.ind2lab)]
        self.labels = [SHORT.get(lab, lab) for lab in self.raw_labels]
        self.device = device
        self.model_version = f"speechbrain {Path(str(source).rstrip('/')).name}"
        self.lock = threading.Lock()

    def parameters_on(self) -> list[str]:
        return sorted({str(p.device) for p in self.model.mods.parameters()})

    def classify(self, pieces: list[np.ndarray], transcripts: list[str | None] | None = None) -> list[dict]:
        """Scores for each mono 16 kHz piece: ``{"label", "scores", "valence", "arousal"}``."""
        torch = self.torch
        if not pieces:
            return []
        # Long segments are cut into pieces of at most 20 s; their probabilities are averaged.
        limit = int(MAX_PIECE_SECONDS * SAMPLE_RATE)
        flat, owner = [], []
        for i, wav in enumerate(pieces):
            wav = wav if len(wav) >= SAMPLE_RATE // 4 else np.pad(wav, (0, SAMPLE_RATE // 4 - len(wav)))
            for start in range(0, len(wav), limit):
                chunk = wav[start:start + limit]
                if len(chunk) >= SAMPLE_RATE // 4 or start == 0:
                    flat.append(chunk)
                    owner.append(i)
        longest = max(len(w) for w in flat)
        batch = np.zeros((len(flat), longest), np.float32)
        for j, w in enumerate(flat):
            batch[j, :len(w)] = w
        lens = torch.tensor([len(w) / longest for w in flat], dtype=torch.float32)
        with self.lock, torch.inference_mode():
            probs = self.model.classify_batch(torch.from_numpy(batch), lens)[0]
        probs = probs.reshape(len(flat), -1).float().cpu().numpy()
        out = []
        owner_arr = np.array(owner)
        for i in range(len(pieces)):
            p = probs[owner_arr == i].mean(axis=0)
            scores = {lab: 0.0 for lab in LABELS}
            for lab, v in zip(self.labels, p, strict=False):
                scores[lab] = scores.get(lab, 0.0) + float(v)
            label = max(scores, key=scores.get)
            valence, arousal = circumplex(scores)
            out.append({"label": label, "scores": {k: round(v, 4) for k, v in scores.items()},
                        "valence": round(valence, 4), "arousal": round(arousal, 4)})
        return out
