"""Synthetic multi-speaker "calls" built from single-speaker recordings, to check speaker counting.

The shared corpora hold few multi-speaker recordings with a reference (one 2-speaker sample, ten 30 s
AMI excerpts). To check that the diarizer's speaker count holds for one to four speakers on voices
it was never tuned on, :func:`build_mixture` joins whole utterances of ``k`` speakers (LibriSpeech
read speech: the speaker is the first field of the file name, ``<speaker>-<chapter>-<utt>.wav``) into
one mono recording with pauses between turns and, optionally, a short overlap at some speaker changes,
a per-speaker level, telephone band (8 kHz) and background noise, and returns the reference turns.

The reference turns are the utterances' extents, so pauses inside an utterance count as speech (a
little missed speech in the DER of any diarizer) and the collar covers the clips' leading silences.
Every choice comes from a seeded ``numpy`` generator: the same arguments give the same samples.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raysys.constants import SAMPLE_RATE


@dataclass
class Mixture:
    """A built recording: ``audio`` (mono float32, 16 kHz) and its reference ``turns``."""

    name: str
    audio: np.ndarray
    turns: list[dict] = field(default_factory=list)  # {"start", "end", "speaker"}

    @property
    def speakers(self) -> list[str]:
        return sorted({t["speaker"] for t in self.turns})

    def speech_seconds(self) -> dict[str, float]:
        """Seconds of speech per reference speaker (overlaps counted for both)."""
        out: dict[str, float] = defaultdict(float)
        for t in self.turns:
            out[t["speaker"]] += t["end"] - t["start"]
        return dict(out)


def librispeech_speakers(folder: str | Path, min_seconds: float = 15.0) -> dict[str, list[Path]]:
    """``{speaker: [wav, ...]}`` of the LibriSpeech-named files in ``folder`` (``<spk>-<chapter>-<utt>.wav``)
    with at least ``min_seconds`` of audio per speaker; sorted, so the result does not depend on the disk."""
    import soundfile as sf  # noqa: PLC0415 - test and bench mixtures only: the diarizer never loads it

    by_speaker: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(Path(folder).glob("*.wav")):
        parts = path.stem.split("-")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            by_speaker[parts[0]].append(path)
    return {s: files for s, files in sorted(by_speaker.items())
            if sum(sf.info(str(f)).duration for f in files) >= min_seconds}


def _load(path: Path) -> np.ndarray:
    from raysys.audio import load_audio  # noqa: PLC0415 - as above

    return load_audio(path)[0].astype(np.float32)


def _telephone(x: np.ndarray) -> np.ndarray:
    """Down to 8 kHz and back: the 300-3400 Hz band a phone line keeps (the 8 kHz call a contact centre records)."""
    from scipy.signal import resample_poly  # noqa: PLC0415 - scipy.signal: only when a source needs resampling

    return resample_poly(resample_poly(x, 1, 2), 2, 1)[:len(x)].astype(np.float32)


def build_mixture(name: str, clips: dict[str, list[Path]], *, seed: int, turns_per_speaker: int | list[int] = 3,
                  pause: tuple[float, float] = (0.2, 0.9), overlap_share: float = 0.0, overlap: float = 0.4,
                  level_db: float = 0.0, telephone: bool = False, snr_db: float | None = None) -> Mixture:
    """Join utterances of the speakers in ``clips`` ({speaker: files}) into one recording.

    ``turns_per_speaker`` (one number, or one per speaker in ``clips`` order) utterances of each speaker
    are dealt out in a random order with no speaker twice in a row where it can be avoided, separated by
    a pause drawn from ``pause`` seconds; at a share ``overlap_share`` of the speaker changes the next
    turn starts ``overlap`` s before the previous one ends instead. Each speaker is scaled by a random
    gain within ±``level_db``; ``telephone`` band-limits the result to 8 kHz; ``snr_db`` adds white noise.
    Returns a :class:`Mixture`; raises ValueError when a speaker has fewer files than turns asked.
    """
    rng = np.random.default_rng(seed)
    speakers = list(clips)
    counts = [turns_per_speaker] * len(speakers) if isinstance(turns_per_speaker, int) else list(turns_per_speaker)
    pending: dict[str, list[Path]] = {}
    for spk, n in zip(speakers, counts, strict=True):
        files = list(clips[spk])
        if len(files) < n:
            raise ValueError(f"speaker {spk} has {len(files)} file(s), {n} turn(s) asked")
        pending[spk] = [files[i] for i in rng.permutation(len(files))[:n]]
    gains = {s: float(10 ** (rng.uniform(-level_db, level_db) / 20)) for s in speakers}
    order: list[str] = []
    left = dict(zip(speakers, counts, strict=True))
    while any(left.values()):
        choices = [s for s in speakers if left[s] and (not order or s != order[-1])] or [s for s in speakers if left[s]]
        weights = np.array([left[s] for s in choices], dtype=float)  # the busiest speaker first: no long tail
        spk = choices[int(rng.choice(len(choices), p=weights / weights.sum()))]
        order.append(spk)
        left[spk] -= 1
    pieces: list[tuple[int, np.ndarray]] = []
    turns: list[dict] = []
    t = float(rng.uniform(0.3, 1.0))
    for i, spk in enumerate(order):
        clip = _load(pending[spk].pop()) * gains[spk]
        start = t
        if i and spk != order[i - 1] and rng.random() < overlap_share:
            start = max(turns[-1]["start"] + 0.5, turns[-1]["end"] - overlap)
        pieces.append((int(round(start * SAMPLE_RATE)), clip))
        end = start + len(clip) / SAMPLE_RATE
        turns.append({"start": round(start, 3), "end": round(end, 3), "speaker": spk})
        t = max(t, end) + float(rng.uniform(*pause))
    total = int(round((t + 0.5) * SAMPLE_RATE))
    audio = np.zeros(total, np.float32)
    for offset, clip in pieces:
        audio[offset:offset + len(clip)] += clip
    if telephone:
        audio = _telephone(audio)
    if snr_db is not None:
        speech = np.concatenate([c for _, c in pieces])
        noise_rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2))) * 10 ** (-snr_db / 20)
        audio = audio + rng.normal(0, noise_rms, len(audio)).astype(np.float32)
    peak = float(np.abs(audio).max())
    if peak > 0.99:
        audio *= 0.99 / peak
    return Mixture(name, audio.astype(np.float32), turns)


def validation_set(folder: str | Path, per_count: int = 5, seed: int = 2026) -> list[Mixture]:
    """``per_count`` mixtures each of 1, 2, 3 and 4 speakers from the LibriSpeech files in ``folder``.

    Speakers are drawn at random (no speaker twice in one mixture). The variants cycle so that every
    count gets each condition: plain; uneven (one speaker has a single turn, a minor voice); short
    overlaps at 30 % of the changes; telephone band with ±6 dB speaker levels; noise at 20 dB SNR.
    Empty when ``folder`` holds too few speakers.
    """
    speakers = librispeech_speakers(folder)
    names = list(speakers)
    if len(names) < 4:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for k in (1, 2, 3, 4):
        for j in range(per_count):
            chosen = [names[i] for i in rng.choice(len(names), size=k, replace=False)]
            clips = {s: speakers[s] for s in chosen}
            variant = j % 5
            kwargs: dict = {"seed": int(rng.integers(1 << 31))}
            if variant == 1 and k > 1:
                kwargs["turns_per_speaker"] = [3] * (k - 1) + [1]
            elif variant == 2:
                kwargs["overlap_share"] = 0.3
            elif variant == 3:
                kwargs.update(telephone=True, level_db=6.0)
            elif variant == 4:
                kwargs["snr_db"] = 20.0
            label = ["plain", "uneven", "overlap", "phone", "noise"][variant]
            out.append(build_mixture(f"syn{k}-{j}-{label}", clips, **kwargs))
    return out
