"""Intent classification: a tenant's catalogue of labelled examples trained into a classifier.

The catalogue is a CSV with the columns ``text,category`` (one example utterance per row). Texts are
embedded with the MiniLM sentence encoder (:class:`raysys.actors.embedding.TextEncoder` or the
cluster's embedding actor) and a multinomial logistic regression (scikit-learn) is fitted on the
vectors. A prediction whose probability is below the model's threshold is ``"unknown"``.

A model directory holds ``intents.json`` (labels, threshold, encoder name, version, training facts)
and ``weights.npz`` (the regression's coefficients and intercepts). Nothing is pickled, so loading a
model directory never runs code from it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raysys.errors import InvalidInput

UNKNOWN = "unknown"
DEFAULT_THRESHOLD = 0.25
MODEL_FORMAT = 1
META_FILE = "intents.json"
WEIGHTS_FILE = "weights.npz"

Encoder = Callable[[Sequence[str]], np.ndarray]


def read_catalogue(path: str | Path) -> tuple[list[str], list[str]]:
    """(texts, categories) from a ``text,category`` CSV. Raises InvalidInput on a malformed file."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "text" not in fields or "category" not in fields:
                raise InvalidInput(f"{path}: the catalogue needs a header with the columns text,category "
                                   f"(found {','.join(fields) or 'no header'}).")
            reader.fieldnames = fields
            texts, cats = [], []
            for row in reader:
                text, cat = (row.get("text") or "").strip(), (row.get("category") or "").strip()
                if text and cat:
                    texts.append(text)
                    cats.append(cat)
    except OSError as exc:
        raise InvalidInput(f"cannot read the catalogue {path}: {exc.strerror or exc}.") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"{path} is not a UTF-8 CSV file: {exc}.") from None
    return texts, cats


@dataclass
class IntentModel:
    """A fitted classifier over sentence embeddings. Build with :meth:`train` or :meth:`load`."""

    labels: list[str]
    coef: np.ndarray        # (n_labels, dim); for two labels the binary regression is expanded to two rows
    intercept: np.ndarray   # (n_labels,)
    threshold: float = DEFAULT_THRESHOLD
    meta: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.meta.get("version", "")

    # --- training ---------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Sequence[str], categories: Sequence[str], encode: Encoder, *,
              threshold: float = DEFAULT_THRESHOLD, c: float = 10.0, encoder_name: str = "",
              vectors: np.ndarray | None = None) -> IntentModel:
        """Fit on ``texts`` labelled ``categories``. ``vectors`` (already encoded texts) skips encoding.

        Raises:
            InvalidInput: fewer than two categories, or texts and categories of different lengths.
        """
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - scikit-learn: heavy, only when training

        if len(texts) != len(categories):
            raise InvalidInput("texts and categories must have the same length.")
        counts = Counter(categories)
        if len(counts) < 2:
            raise InvalidInput(f"an intent catalogue needs at least two categories, got {len(counts)}.")
        if not 0.0 <= threshold < 1.0:
            raise InvalidInput(f"the confidence threshold must be in [0, 1), got {threshold}.")
        started = time.perf_counter()
        X = vectors if vectors is not None else encode(list(texts))
        clf = LogisticRegression(C=c, max_iter=2000)
        clf.fit(X, list(categories))
        labels = [str(x) for x in clf.classes_]
        coef, intercept = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)
        if len(labels) == 2:  # binary: sigmoid(z) == softmax([0, z])
            coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]], dtype=np.float32)
        digest = hashlib.sha256(coef.tobytes() + intercept.tobytes() + "\x00".join(labels).encode()).hexdigest()
        meta = {
            "format": MODEL_FORMAT, "version": digest[:12], "encoder": encoder_name, "threshold": threshold,
            "C": c, "examples": len(texts), "per_category": dict(sorted(counts.items())),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "train_seconds": round(time.perf_counter() - started, 3), "dim": int(coef.shape[1]),
        }
        return cls(labels=labels, coef=coef, intercept=intercept, threshold=threshold, meta=meta)

    # --- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / WEIGHTS_FILE, coef=self.coef, intercept=self.intercept)
        meta = {**self.meta, "labels": self.labels, "threshold": self.threshold}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> IntentModel:
        """Load a model directory written by :meth:`save`. Raises InvalidInput when it is not one."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as npz:
                coef, intercept = npz["coef"], npz["intercept"]
        except FileNotFoundError:
            raise InvalidInput(f"{directory} is not an intent model directory (no {META_FILE} / {WEIGHTS_FILE}; "
                               "train one with `raysys intents train`).") from None
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(f"{directory}: unreadable intent model ({exc}).") from None
        if meta.get("format") != MODEL_FORMAT or coef.shape[0] != len(meta.get("labels", ())):
            raise InvalidInput(f"{directory}: unsupported or inconsistent intent model.")
        return cls(labels=list(meta["labels"]), coef=coef, intercept=intercept,
                   threshold=float(meta.get("threshold", DEFAULT_THRESHOLD)), meta=meta)

    # --- prediction -------------------------------------------------------------------------------

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(n, n_labels) class probabilities for already-encoded texts."""
        z = np.asarray(vectors, dtype=np.float32) @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_vectors(self, vectors: np.ndarray, threshold: float | None = None) -> list[tuple[str, float]]:
        """(intent, confidence) per row; ``unknown`` below the threshold (confidence stays the top score)."""
        if len(vectors) == 0:
            return []
        threshold = self.threshold if threshold is None else threshold
        probs = self.probabilities(vectors)
        best = probs.argmax(axis=1)
        out = []
        for i, j in enumerate(best):
            p = float(probs[i, j])
            out.append((self.labels[j] if p >= threshold else UNKNOWN, p))
        return out

    def predict(self, texts: Sequence[str], encode: Encoder,
                threshold: float | None = None) -> list[tuple[str, float]]:
        return self.predict_vectors(encode(list(texts)), threshold) if texts else []


def classify_call(model: IntentModel, customer_texts: Sequence[str], encode: Encoder,
                  max_turns: int = 6) -> tuple[str, float, str]:
    """The call's intent from the customer's first turns: the most confident turn wins.

    Customers state why they call early; greetings score low on every intent, so taking the turn with
    the highest top probability ignores them. Returns (intent, confidence, the text it came from).
    """
    texts = [t for t in customer_texts if t.strip()][:max_turns]
    if not texts:
        return UNKNOWN, 0.0, ""
    preds = model.predict(texts, encode)
    i = max(range(len(preds)), key=lambda k: preds[k][1])
    return preds[i][0], preds[i][1], texts[i]


_CACHE: dict[tuple[str, float], IntentModel] = {}


def load_cached(directory: str | Path) -> IntentModel:
    """:meth:`IntentModel.load`, cached per process until the model files change."""
    directory = Path(directory)
    stamp = (directory / META_FILE).stat().st_mtime if (directory / META_FILE).exists() else 0.0
    key = (str(directory.resolve()), stamp)
    if key not in _CACHE:
        _CACHE[key] = IntentModel.load(directory)
    return _CACHE[key]


def model_dir_for(base: str | None, tenant_id: str) -> Path | None:
    """The tenant's model: ``<base>/<tenant_id>/`` if it exists, else ``<base>`` itself if it is a model."""
    if not base:
        return None
    root = Path(base)
    candidates = [root]
    if tenant_id and "/" not in tenant_id and "\\" not in tenant_id and tenant_id not in (".", ".."):
        candidates.insert(0, root / tenant_id)
    for candidate in candidates:
        if (candidate / META_FILE).is_file():
            return candidate
    return None
