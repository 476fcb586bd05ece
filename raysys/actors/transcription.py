"""The TranscriptionActor pool and :func:`transcribe_audio`: words with times from a recording.

``transcribe_audio(settings, audio, ...)`` decodes and checks the audio in the caller (bad audio fails
there with InvalidInput), cuts each channel that is transcribed into pieces at silences
(:func:`raysys.models.transcription.split_at_silences`), and sends the pieces to every replica of the
cluster's transcription pool at once, so a long recording is decoded in parallel across the pool;
``progress(fraction, message)`` is called as pieces finish. Stereo calls (agent on channel 0, customer
on channel 1) are transcribed channel by channel and each word keeps its channel. Backends:
``pocketsphinx`` (offline default) and ``faster-whisper`` (``TRANSCRIPTION_MODEL``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from raysys.actors import deadline
from raysys.actors.diarization import choose_layout
from raysys.actors.pool import ModelPool, ModelServer, get_pool
from raysys.audio import load_audio
from raysys.config import Settings
from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput, ModelUnavailable, RaysysError, ServiceTimeout, unwrap
from raysys.models.transcription import CHUNK_SECONDS, make_transcriber, split_at_silences, transcribe_chunk

log = logging.getLogger(__name__)


class TranscriptionActor(ModelServer):
    """Holds one transcription backend. A request item is ``{"audio": ndarray, "offset": s, "language"}``;
    the result is :func:`raysys.models.transcription.transcribe_chunk`'s dict (words shifted by offset)."""

    max_batch = 4

    def load(self, spec: dict, device: str) -> Any:
        # CTranslate2 keeps its own thread pool: give it the actor's threads, as torch gets them.
        return make_transcriber(spec["backend"], model=spec.get("model"), token=spec.get("token"), device=device,
                                compute_type=spec.get("compute_type"), config=spec.get("options"),
                                threads=self.threads)

    def run_batch(self, items: list[dict]) -> list[Any]:
        # Pieces differ in length and the decoders keep state per utterance: one at a time, and one
        # bad piece must not fail the others.

        out: list[Any] = []
        for item in items:
            try:
                out.append(transcribe_chunk(self.model, item["audio"], offset=float(item.get("offset", 0.0)),
                                            language=item.get("language")))
            except Exception as exc:  # noqa: BLE001 - one chunk's failure is that chunk's result, not the batch's
                out.append(exc)
        return out

    def describe(self) -> dict:
        return {"backend": self.model.name, "model_version": self.model.model_version,
                "parameters_on": [self.model.device]}


def backend_spec(settings: Settings, backend: str | None = None) -> dict:
    """The pool's spec for ``backend`` (default ``TRANSCRIPTION_BACKEND``); InvalidInput when unknown."""
    backend = (backend or settings.transcription_backend).lower()
    spec: dict = {"backend": backend}
    if backend == "faster-whisper":
        spec["model"] = settings.transcription_model
        spec["token"] = settings.hf_token
        spec["compute_type"] = settings.transcription_compute_type
    elif backend != "pocketsphinx":
        raise InvalidInput(f"unknown transcription backend {backend!r} (choose pocketsphinx or faster-whisper).")
    return spec


def transcription_pool(settings: Settings, backend: str | None = None) -> ModelPool:
    """The cluster's transcription pool for ``backend`` (default ``TRANSCRIPTION_BACKEND``).

    Like every model pool its actors reserve no CPU (see :mod:`raysys.actors.pool`): two always-on
    replicas never keep a task they serve, or a report task beside them, from being placed.
    """
    return get_pool(settings, "transcription", TranscriptionActor, backend_spec(settings, backend))


def transcribe_audio(settings: Settings, audio_path: str | Path | bytes, *, layout: str = "auto",
                     backend: str | None = None, language: str | None = None,
                     progress: Callable[[float, str], None] | None = None, chunk_seconds: float | None = None,
                     pool: ModelPool | None = None) -> dict:
    """Words of ``audio_path`` (a path or the file's bytes). Ray must be initialised.

    ``layout`` is ``auto``/``mono``/``stereo`` as for diarization: stereo calls are transcribed per
    channel (words carry ``channel`` 0 = agent, 1 = customer); mono ones as one mix (``channel`` None).
    ``chunk_seconds`` is the piece length (default per backend, :data:`~raysys.models.transcription.CHUNK_SECONDS`).
    ``language`` None uses ``TRANSCRIPTION_LANGUAGE`` (empty: the backend detects it). ``pool`` replaces the
    cluster's pool for ``backend`` (a pool made with its own spec, e.g. decoder options).

    Returns ``{"words": [{"word", "start", "end", "confidence", "channel"}], "language", "duration",
    "layout", "backend", "model_version", "chunks", "rtf", "elapsed"}``.

    Raises:
        InvalidInput: bad, empty or corrupt audio, bad layout (TooLarge beyond MAX_AUDIO_SECONDS).
        ModelUnavailable: the backend's model cannot be loaded.
    """
    t0 = time.perf_counter()
    audio, _ = load_audio(audio_path, mono=False, max_seconds=settings.max_audio_seconds)
    chosen = choose_layout(audio, layout)
    channels = [(0, audio[0]), (1, audio[1])] if chosen == "stereo" else [(None, audio.mean(axis=0))]
    duration = audio.shape[1] / SAMPLE_RATE
    language = language or settings.transcription_language
    spec = pool.spec if pool is not None else backend_spec(settings, backend)
    chunk_seconds = chunk_seconds or CHUNK_SECONDS.get(spec["backend"], 20.0)
    items: list[tuple[int | None, dict]] = []
    for channel, wav in channels:
        for a, b in split_at_silences(wav, target_s=chunk_seconds, max_s=max(chunk_seconds * 1.5, 5.0),
                                      min_s=min(5.0, chunk_seconds / 2)):
            piece = np.ascontiguousarray(wav[a:b], dtype=np.float32)
            items.append((channel, {"audio": piece, "offset": a / SAMPLE_RATE, "language": language}))
    pool = pool or transcription_pool(settings, backend)
    facts = pool.ready()[0]
    results = _run_parallel(pool, [item for _, item in items], progress)
    words: list[dict] = []
    languages: dict[str, float] = {}
    for (channel, _), res in zip(items, results, strict=True):
        words.extend({**w, "channel": channel} for w in res["words"])
        if res.get("language"):
            languages[res["language"]] = languages.get(res["language"], 0.0) + res["seconds"]
    words.sort(key=lambda w: (w["start"], w["end"]))
    elapsed = time.perf_counter() - t0
    log.info("transcribed %s: %d words in %d chunks, %.1fs audio, rtf %.3f (%s)", _label(audio_path), len(words),
             len(items), duration, elapsed / duration if duration else 0.0, facts.get("backend"))
    return {"words": words, "language": max(languages, key=languages.get) if languages else (language or ""),
            "duration": round(duration, 3), "layout": chosen, "backend": facts.get("backend"),
            "model_version": facts.get("model_version"), "chunks": len(items),
            "rtf": round(elapsed / duration, 4) if duration else 0.0, "elapsed": round(elapsed, 3)}


def _run_parallel(pool: ModelPool, items: list[dict], progress: Callable[[float, str], None] | None) -> list[dict]:
    """Send every piece at once, round robin over the pool's replicas; results in the pieces' order.

    Each replica queues what it gets and decodes one piece at a time, so all replicas stay busy.
    """
    picked = [pool.pick() for _ in items]
    for index_, handle in {i: h for i, h in picked}.items():  # placed and loaded, within ACTOR_START_TIMEOUT
        deadline.wait_started(handle, f"{pool.prefix}-{index_}", pool.needs(), pool.start_timeout)
    refs = [handle.submit.remote(item) for (_, handle), item in zip(picked, items, strict=True)]
    index = {ref: i for i, ref in enumerate(refs)}
    out: list[Any] = [None] * len(refs)
    pending, done_seconds = list(refs), 0.0
    total_seconds = sum(len(i["audio"]) for i in items) / SAMPLE_RATE or 1.0
    while pending:
        # A deadline on progress: some piece must come back within MODEL_CALL_TIMEOUT (a wedged actor
        # fails the job with ServiceTimeout instead of holding it, and an HTTP slot, for ever).
        ready, pending = ray.wait(pending, num_returns=1, timeout=pool.call_timeout)
        if not ready:
            raise ServiceTimeout(f"transcription actors {pool.prefix}-* returned no piece within "
                                 f"{pool.call_timeout:.0f} s ({len(pending)} of {len(refs)} pieces pending)")
        for ref in ready:
            try:
                res = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - unwrapped and re-raised as its cause
                cause = unwrap(exc)
                if isinstance(cause, RaysysError | ValueError):
                    raise cause from None
                if isinstance(exc, ray.exceptions.RayActorError):
                    raise ModelUnavailable(f"a transcription actor died: {exc}") from None
                raise
            out[index[ref]] = res
            done_seconds += res["seconds"]
        if progress is not None:
            progress(done_seconds / total_seconds, f"transcribed {done_seconds:.0f}/{total_seconds:.0f} s of audio")
    return out


def _label(source: str | Path | bytes) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes | bytearray) else str(source)
