"""Speech to text: one interface, two backends, chunking at silences, and words → speaker turns.

- ``pocketsphinx`` (default, offline): CMU PocketSphinx 5 with the US-English acoustic model, the
  language model and the CMU dictionary that ship inside its PyPI wheel. Fast on a CPU, no download;
  fair on clear read speech, weak on spontaneous and telephone speech (its LM is generic read English).
- ``faster-whisper``: Whisper on CTranslate2 (``TRANSCRIPTION_MODEL``: a local folder holding a
  converted model, or a hub id such as ``Systran/faster-whisper-small`` with ``HF_TOKEN`` from the
  environment). int8 on CPU, float16 on GPU; detects the language unless one is given.

Every backend returns ``{"words": [{"word", "start", "end", "confidence"}], "language", "text"}`` for a
16 kHz mono float32 waveform; times are seconds from the start of that waveform.

Long recordings are cut at silences (:func:`split_at_silences`) so the pieces can be decoded in
parallel; :func:`words_to_turns` assigns words to diarized speakers (or channels) and groups them into
turns. Nothing here knows Ray.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raysys.audio import is_silent
from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput, ModelUnavailable

BACKENDS = ("pocketsphinx", "faster-whisper")
# Piece length a long recording is cut to (at silences): PocketSphinx's search slows down and drifts on long
# utterances; Whisper works on 30 s windows.
CHUNK_SECONDS = {"pocketsphinx": 12.0, "faster-whisper": 25.0}

# PocketSphinx decoder settings over the wheel's defaults (bench/asr.py measured the alternatives on
# ../shared/data/asr/read; the README has the figures).
POCKETSPHINX_CONFIG: dict[str, Any] = {"maxhmmpf": 3000}  # at most 3,000 active HMMs a frame (default 30,000)
# Filler and silence tokens PocketSphinx puts in its segmentation; they are not words.
_NOT_WORDS = {"<s>", "</s>", "<sil>", "[NOISE]", "[BREATH]", "[COUGH]", "[SMACK]", "[UH]", "[UM]", "<unk>"}


class Transcriber(Protocol):
    name: str
    model_version: str
    device: str

    def transcribe(self, wav: np.ndarray, *, language: str | None = None) -> dict: ...


# --- backends ---------------------------------------------------------------------------------------------


class PocketsphinxTranscriber:
    """PocketSphinx with the model inside its wheel. ``config`` overrides decoder settings (beam, lw, ...)."""

    name = "pocketsphinx"

    def __init__(self, config: dict[str, Any] | None = None, device: str = "cpu") -> None:
        import pocketsphinx  # noqa: PLC0415 - pocketsphinx: heavy, only in the transcription actor

        self.device = "cpu"  # PocketSphinx has no GPU path
        self.options = {**POCKETSPHINX_CONFIG, **(config or {})}
        cfg = pocketsphinx.Config(loglevel="FATAL", **self.options)
        for key in ("hmm", "lm", "dict"):
            if not Path(cfg[key]).exists():
                raise ModelUnavailable(f"pocketsphinx model file {cfg[key]} is missing from its installation.")
        self.decoder = pocketsphinx.Decoder(cfg)
        self.frate = int(cfg["frate"])
        self.model_version = f"pocketsphinx-{_version('pocketsphinx')}:en-us"

    def transcribe(self, wav: np.ndarray, *, language: str | None = None) -> dict:
        """Words of ``wav`` (16 kHz mono float32). Only English; another ``language`` raises InvalidInput."""
        if language not in (None, "", "en"):
            raise InvalidInput(f"the pocketsphinx backend transcribes English only, not {language!r}.")
        pcm = (np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16)
        words: list[dict] = []
        # Digital silence makes the decoder guess a word; there is nothing to hear in it.
        if len(pcm) >= SAMPLE_RATE // 10 and not is_silent(np.asarray(wav, dtype=np.float32)):
            dec = self.decoder
            dec.start_utt()
            dec.process_raw(pcm.tobytes(), full_utt=True)
            dec.end_utt()
            # get_prob() runs the lattice's forward-backward pass; after it each segment's ``prob`` is the
            # word's posterior probability (before it, 0 for every word).
            has_hyp = dec.hyp() is not None
            if has_hyp:
                dec.get_prob()
            for seg in dec.seg() if has_hyp else ():
                token = seg.word
                if token in _NOT_WORDS or token.startswith("++"):
                    continue
                word = token.split("(", 1)[0]  # "read(2)" is the dictionary's second pronunciation
                confidence = float(min(1.0, max(0.0, seg.prob)))
                words.append({"word": word, "start": round(seg.start_frame / self.frate, 3),
                              "end": round((seg.end_frame + 1) / self.frate, 3), "confidence": round(confidence, 4)})
        return {"words": words, "language": "en", "text": " ".join(w["word"] for w in words)}


class FasterWhisperTranscriber:
    """Whisper through faster-whisper. ``model`` is a local CTranslate2 folder or a hub id.

    Raises ModelUnavailable when the model cannot be loaded (missing folder, hub unreachable).
    """

    name = "faster-whisper"

    def __init__(self, model: str, *, token: str | None = None, device: str = "cpu", compute_type: str | None = None,
                 cpu_threads: int = 0, options: dict[str, Any] | None = None) -> None:
        try:
            from faster_whisper import WhisperModel  # noqa: PLC0415 - faster_whisper: heavy, only in the transcription actor
        except ImportError as exc:
            raise ModelUnavailable(f"faster-whisper is not installed: {exc}") from exc
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.compute_type = compute_type or ("float16" if self.device == "cuda" else "int8")
        # Extra WhisperModel.transcribe arguments (beam_size, temperature, ...); the defaults are faster-whisper's.
        self.options = {"beam_size": 5, **(options or {})}
        local = Path(model).expanduser()
        try:
            self.model = WhisperModel(str(local) if local.is_dir() else model, device=self.device,
                                      compute_type=self.compute_type, cpu_threads=cpu_threads,
                                      local_files_only=local.is_dir(), use_auth_token=token or None)
        except Exception as exc:  # noqa: BLE001 - missing folder, bad files, no network: one clear error
            where = "folder" if local.is_dir() else "model (not a local folder; hub id?)"
            raise ModelUnavailable(f"faster-whisper {where} {model!r} could not be loaded: {exc}") from exc
        self.model_version = f"faster-whisper-{_version('faster-whisper')}:{local.name if local.is_dir() else model}"

    def transcribe(self, wav: np.ndarray, *, language: str | None = None) -> dict:
        """Words of ``wav`` (16 kHz mono float32); ``language`` None detects it."""
        audio = np.ascontiguousarray(wav, dtype=np.float32)
        if len(audio) < SAMPLE_RATE // 10 or is_silent(audio):
            return {"words": [], "language": language or "", "text": ""}
        # Pieces arrive cut at silences and decoded independently: no text carried over between them.
        kwargs = {"condition_on_previous_text": False, "vad_filter": False, **self.options}
        segments, info = self.model.transcribe(audio, language=language or None, word_timestamps=True, **kwargs)
        words = []
        for seg in segments:
            for w in seg.words or ():
                text = w.word.strip()
                if text:
                    words.append({"word": text, "start": round(float(w.start), 3), "end": round(float(w.end), 3),
                                  "confidence": round(float(w.probability), 4)})
        return {"words": words, "language": info.language, "text": " ".join(w["word"] for w in words)}


def make_transcriber(backend: str, *, model: str | None = None, token: str | None = None, device: str = "cpu",
                     compute_type: str | None = None, config: dict[str, Any] | None = None,
                     threads: int = 0) -> Transcriber:
    """Load a transcription backend.

    ``model`` is the faster-whisper folder or hub id; ``config`` overrides PocketSphinx decoder settings or
    adds faster-whisper ``transcribe`` arguments (``beam_size``, ``temperature``, ...); ``threads`` caps
    CTranslate2's CPU threads (0: its default).
    Raises InvalidInput (unknown backend) or ModelUnavailable (the model cannot be loaded).
    """
    if backend == "pocketsphinx":
        try:
            return PocketsphinxTranscriber(config=config, device=device)
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure is ModelUnavailable
            raise ModelUnavailable(f"pocketsphinx could not load: {exc}") from exc
    if backend == "faster-whisper":
        if not model:
            raise ModelUnavailable("the faster-whisper backend needs TRANSCRIPTION_MODEL (a local folder or hub id).")
        return FasterWhisperTranscriber(model, token=token, device=device, compute_type=compute_type,
                                        cpu_threads=threads, options=config)
    raise InvalidInput(f"unknown transcription backend {backend!r} (choose {', '.join(BACKENDS)}).")


def transcribe_chunk(model: Transcriber, wav: np.ndarray, *, offset: float = 0.0, language: str | None = None
                     ) -> dict:
    """Transcribe one piece of a recording; word times are shifted by ``offset`` seconds.

    Returns ``{"words", "language", "seconds", "elapsed"}``.
    """
    t0 = time.perf_counter()
    out = model.transcribe(wav, language=language)
    words = [{**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)} for w in out["words"]]
    return {"words": words, "language": out.get("language", ""), "seconds": len(wav) / SAMPLE_RATE,
            "elapsed": time.perf_counter() - t0}


# --- chunking ---------------------------------------------------------------------------------------------------


def split_at_silences(wav: np.ndarray, *, target_s: float = 20.0, max_s: float = 30.0, min_s: float = 5.0,
                      frame_s: float = 0.03) -> list[tuple[int, int]]:
    """Cut ``wav`` into pieces of about ``target_s`` (never over ``max_s``) at its quietest moments.

    An energy VAD: the cut goes in the middle of the quietest stretch (0.3 s of frames) between
    ``min_s`` and ``max_s`` after the previous cut, preferring those near ``target_s``, so no cut falls
    inside a word unless a piece of ``max_s`` has no pause at all. Returns ``[(start, end)]`` sample
    indices covering the whole waveform in order.
    """
    n = len(wav)
    if n <= int(max_s * SAMPLE_RATE):
        return [(0, n)] if n else []
    hop = int(frame_s * SAMPLE_RATE)
    n_frames = n // hop
    frames = np.asarray(wav[:n_frames * hop], dtype=np.float64).reshape(n_frames, hop)
    energy = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)
    smooth = np.convolve(energy, np.ones(10) / 10, mode="same")  # 0.3 s: a pause, not a stop consonant
    cuts = [0]
    per_s = 1.0 / frame_s
    while n - cuts[-1] > max_s * SAMPLE_RATE:
        first = cuts[-1] // hop
        lo, hi = first + int(min_s * per_s), min(n_frames, first + int(max_s * per_s))
        window = smooth[lo:hi]
        # Quietest frame, with a small pull towards target_s so pieces stay even.
        pull = np.abs(np.arange(lo, hi) - (first + target_s * per_s)) / per_s * 0.3
        best = lo + int(np.argmin(window + pull))
        cuts.append(best * hop + hop // 2)
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


# --- words → turns ------------------------------------------------------------------------------------------


MAX_TURN_GAP_S = 2.0  # a pause this long inside one speaker's speech starts a new turn


def assign_speakers(words: list[dict], segments: list[dict]) -> list[dict]:
    """Each word with the ``speaker`` (and ``channel``) of the diarized segment it overlaps most.

    A word tagged with a ``channel`` (stereo calls transcribe each channel alone) keeps it and only
    looks at that channel's segments. A word that overlaps no segment goes to the nearest one; with
    no segments at all its speaker is ``None``.
    """
    out = []
    for w in words:
        channel = w.get("channel")
        pool = [s for s in segments if channel is None or s.get("channel") in (None, channel)] or segments
        best, best_key = None, None
        for s in pool:
            overlap = min(w["end"], s["end"]) - max(w["start"], s["start"])
            mid = (w["start"] + w["end"]) / 2
            distance = 0.0 if overlap > 0 else min(abs(mid - s["start"]), abs(mid - s["end"]))
            key = (overlap > 0, overlap if overlap > 0 else -distance)
            if best_key is None or key > best_key:
                best, best_key = s, key
        speaker = str(best["speaker"]) if best is not None else None
        out.append({**w, "speaker": speaker,
                    "channel": channel if channel is not None else (best.get("channel") if best else None)})
    return out


def words_to_turns(words: list[dict], segments: list[dict], roles: dict[str, str] | None = None, *,
                   max_gap: float = MAX_TURN_GAP_S) -> list[dict]:
    """Group words into speaker turns.

    ``words`` are ``[{"word", "start", "end", "confidence", "channel"?}]`` in any order; ``segments``
    the diarization (``[{"start", "end", "speaker", "channel"?}]``); ``roles`` maps a speaker label to
    ``agent``/``customer``/``unknown`` (labels missing from it are ``unknown``). Consecutive words of
    one speaker make one turn until another speaker talks or a pause exceeds ``max_gap``.

    Returns ``[{"speaker", "role", "channel", "start", "end", "text", "confidence", "words"}]`` in time
    order; ``confidence`` is the mean of the words'.
    """
    roles = roles or {}
    tagged = sorted(assign_speakers(words, segments), key=lambda w: (w["start"], w["end"]))
    turns: list[dict] = []
    for w in tagged:
        last = turns[-1] if turns else None
        if last is not None and last["speaker"] == w["speaker"] and w["start"] - last["end"] <= max_gap:
            last["words"].append(w)
            last["end"] = max(last["end"], w["end"])
            continue
        turns.append({"speaker": w["speaker"], "role": roles.get(str(w["speaker"]), "unknown"),
                      "channel": w.get("channel"), "start": w["start"], "end": w["end"], "words": [w]})
    for t in turns:
        t["text"] = " ".join(x["word"] for x in t["words"])
        t["confidence"] = round(float(np.mean([x.get("confidence", 0.0) for x in t["words"]])), 4)
        t["words"] = [{k: x[k] for k in ("word", "start", "end", "confidence")} for x in t["words"]]
        t["start"], t["end"] = round(t["start"], 3), round(t["end"], 3)
    return turns


# --- helpers -------------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"

