"""Small random-weight checkpoints, built offline, in the exact on-disk form of the real ones.

No weights can be downloaded on the machines raysys is tested on, yet the pyannote and speechbrain
loading code must be exercised end to end. These builders write folders that the real loaders take:

- :func:`build_pyannote_pipeline` — ``config.yaml`` for ``SpeakerDiarization`` plus ``segmentation/``
  (a ``PyanNet`` with powerset ``Specifications``), ``embedding/`` (``WeSpeakerResNet34``) and
  ``plda/`` (VBx transforms), each checkpoint saved as pyannote saves its own (Lightning checkpoint
  with the ``pyannote.audio`` section from ``Model.on_save_checkpoint``), like
  ``pyannote/speaker-diarization-community-1``.
- :func:`build_speechbrain_emotion` — ``hyperparams.yaml``, ``custom_interface.py`` (the
  wav2vec2-IEMOCAP recipe's interface), a tiny Hugging Face wav2vec2, ``wav2vec2.ckpt``,
  ``model.ckpt`` and ``label_encoder.txt``, loadable with ``foreign_class``.

Their outputs are noise: use them for contracts and speed, never for accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CUSTOM_INTERFACE = '''"""Interface of speechbrain/emotion-recognition-wav2vec2-IEMOCAP (its custom_interface.py)."""
import torch
from speechbrain.inference.interfaces import Pretrained


class CustomEncoderWav2vec2Classifier(Pretrained):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def encode_batch(self, wavs, wav_lens=None, normalize=False):
        if len(wavs.shape) == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        wavs, wav_lens = wavs.to(self.device), wav_lens.to(self.device)
        wavs = wavs.float()
        outputs = self.mods.wav2vec2(wavs)
        outputs = self.mods.avg_pool(outputs, wav_lens)
        outputs = outputs.view(outputs.shape[0], -1)
        return outputs

    def classify_batch(self, wavs, wav_lens=None):
        outputs = self.encode_batch(wavs, wav_lens)
        outputs = self.mods.output_mlp(outputs)
        out_prob = self.hparams.softmax(outputs)
        score, index = torch.max(out_prob, dim=-1)
        text_lab = self.hparams.label_encoder.decode_torch(index)
        return out_prob, score, index, text_lab

    def classify_file(self, path):
        waveform = self.load_audio(path)
        return self.classify_batch(waveform.unsqueeze(0), torch.tensor([1.0]))

    def forward(self, wavs, wav_lens=None, normalize=False):
        return self.encode_batch(wavs=wavs, wav_lens=wav_lens, normalize=normalize)
'''


def _save_pyannote_model(model, folder: Path) -> None:
    """Save as pyannote's hub checkpoints are saved: a Lightning checkpoint named pytorch_model.bin."""
    import lightning  # noqa: PLC0415 - lightning: heavy, only to build the test checkpoint
    import torch  # noqa: PLC0415 - torch: heavy, only where the model runs

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = {"state_dict": model.state_dict(), "pytorch-lightning_version": lightning.__version__,
                  "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)  # adds the "pyannote.audio" section (versions, class, specs)
    torch.save(checkpoint, folder / "pytorch_model.bin")


def build_pyannote_pipeline(root: str | Path, *, chunk_seconds: float = 5.0, step: float = 0.1,
                            seed: int = 0) -> Path:
    """Write a random-weight ``SpeakerDiarization`` pipeline folder; returns it.

    ``chunk_seconds`` is the segmentation window (community-1 uses 10 s) and ``step`` its hop as a
    fraction of it; tests use short windows and a large step to stay fast.
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    import pyannote.audio  # noqa: PLC0415 - pyannote.audio: heavy, only to build the test checkpoint
    import torch  # noqa: PLC0415 - torch: heavy, only where the model runs
    import yaml  # noqa: PLC0415 - PyYAML (with Ray, not a declared dependency): only for the checkpoint's config
    from pyannote.audio.core.task import Problem, Resolution, Specifications  # noqa: PLC0415 - pyannote.audio: heavy, only to build the test checkpoint
    from pyannote.audio.models.embedding import WeSpeakerResNet34  # noqa: PLC0415 - pyannote.audio: heavy, only to build the test checkpoint
    from pyannote.audio.models.segmentation import PyanNet  # noqa: PLC0415 - pyannote.audio: heavy, only to build the test checkpoint

    root = Path(root)
    torch.manual_seed(seed)
    segmentation = PyanNet(sincnet={"stride": 10},
                           lstm={"hidden_size": 16, "num_layers": 1, "bidirectional": True, "monolithic": True},
                           linear={"hidden_size": 16, "num_layers": 1})
    segmentation.specifications = Specifications(
        problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=chunk_seconds,
        classes=["speaker#1", "speaker#2", "speaker#3"], powerset_max_classes=2, permutation_invariant=True)
    segmentation.build()
    _save_pyannote_model(segmentation, root / "segmentation")

    embedding = WeSpeakerResNet34()
    embedding.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK,
                                              duration=chunk_seconds)
    _save_pyannote_model(embedding, root / "embedding")

    rng = np.random.default_rng(seed)
    plda = root / "plda"
    plda.mkdir(parents=True, exist_ok=True)
    np.savez(plda / "xvec_transform.npz", mean1=(rng.normal(size=256) * 0.01).astype("f4"),
             mean2=(rng.normal(size=128) * 0.01).astype("f4"), lda=(rng.normal(size=(256, 128)) / 16).astype("f4"))
    q, _ = np.linalg.qr(rng.normal(size=(128, 128)))
    np.savez(plda / "plda.npz", mu=np.zeros(128, "f4"), tr=q.astype("f4"),
             psi=np.sort(rng.uniform(0.5, 5.0, 128))[::-1].astype("f4"))

    config = {
        "version": pyannote.audio.__version__,
        "pipeline": {
            "name": "pyannote.audio.pipelines.SpeakerDiarization",
            "params": {"segmentation": "$model/segmentation", "segmentation_step": step,
                       "embedding": "$model/embedding", "plda": "$model/plda", "clustering": "VBxClustering",
                       "embedding_batch_size": 16, "segmentation_batch_size": 16},
        },
        "params": {"segmentation": {"min_duration_off": 0.0},
                   "clustering": {"threshold": 0.6, "Fa": 0.07, "Fb": 0.8}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def build_speechbrain_emotion(root: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight wav2vec2-IEMOCAP-shaped recipe folder; returns it."""
    import torch  # noqa: PLC0415 - torch: heavy, only where the model runs
    from hyperpyyaml import load_hyperpyyaml  # noqa: PLC0415 - hyperpyyaml (with speechbrain): only to build the test checkpoint
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model  # noqa: PLC0415 - transformers: heavy, only to build the test checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    hub = root / "wav2vec2-tiny"
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(config).save_pretrained(hub)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(hub)
    (root / "hyperparams.yaml").write_text(f"""\
# A tiny, random-weight stand-in for speechbrain/emotion-recognition-wav2vec2-IEMOCAP (same interface).
pretrained_path: {root}
wav2vec2_hub: {hub}
encoder_dim: 32
out_n_neurons: 4
wav2vec2: !new:speechbrain.lobes.models.huggingface_transformers.wav2vec2.Wav2Vec2
    source: !ref <wav2vec2_hub>
    output_norm: True
    freeze: True
    save_path: {root / "wav2vec2_checkpoints"}
avg_pool: !new:speechbrain.nnet.pooling.StatisticsPooling
    return_std: False
output_mlp: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <encoder_dim>
    n_neurons: !ref <out_n_neurons>
    bias: False
model: !new:torch.nn.ModuleList
    - [!ref <output_mlp>]
modules:
    wav2vec2: !ref <wav2vec2>
    output_mlp: !ref <output_mlp>
    avg_pool: !ref <avg_pool>
softmax: !new:speechbrain.nnet.activations.Softmax
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        wav2vec2: !ref <wav2vec2>
        model: !ref <model>
        label_encoder: !ref <label_encoder>
    paths:
        wav2vec2: !ref <pretrained_path>/wav2vec2.ckpt
        model: !ref <pretrained_path>/model.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
""")
    (root / "custom_interface.py").write_text(CUSTOM_INTERFACE)
    hparams = load_hyperpyyaml((root / "hyperparams.yaml").read_text())
    torch.save(hparams["wav2vec2"].state_dict(), root / "wav2vec2.ckpt")
    torch.save(hparams["model"].state_dict(), root / "model.ckpt")
    encoder = hparams["label_encoder"]
    encoder.update_from_iterable(["neu", "ang", "hap", "sad"])
    encoder.save(root / "label_encoder.txt")
    return root
