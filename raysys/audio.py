"""Audio input: decode, check and resample to 16 kHz float32, the one format every model here takes.

- WAV, FLAC and OGG/Vorbis/Opus are decoded with soundfile (libsndfile, shipped in its wheel).
- MP3, M4A/AAC and anything else libsndfile cannot read are decoded with the system ``ffmpeg`` when it
  is on ``PATH``; without it they are refused with :class:`~raysys.errors.UnsupportedMedia`.
- Any sample rate is resampled to 16 kHz (soxr, high quality). Rates below 4 kHz are refused.
- Rate, channels and length are checked from the header before any sample is decoded, and decoding
  is blockwise with a cap (``max_seconds``): a few hundred KB of FLAC that holds ten hours of silence
  is refused at once instead of expanding to gigabytes.
- Corrupt, empty or over-long audio raises :class:`~raysys.errors.InvalidInput` (or
  :class:`~raysys.errors.TooLarge`) with one sentence that says what is wrong; silent audio is valid
  and decodes to zeros (the models then return an empty result).

Public API: :func:`load_audio` (``(samples, 16000)``), :func:`audio_info`, :func:`is_stereo_call`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from raysys.constants import SAMPLE_RATE
from raysys.errors import InvalidInput, TooLarge, UnsupportedMedia

FFMPEG_ONLY = {".mp3", ".m4a", ".aac", ".mp4", ".wma", ".webm", ".amr"}
MIN_RATE = 4000
MAX_RATE = 384_000
MAX_CHANNELS = 16  # a contact-centre recording has one or two; multitrack conference recorders a few more
BLOCK_FRAMES = 1 << 16
UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX frames when the header leaves the length open


@dataclass(frozen=True)
class AudioInfo:
    """What the header says: rate, channel count, duration in seconds, container format."""

    sample_rate: int
    channels: int
    duration: float
    format: str


def _name(source: str | Path | bytes) -> str:
    return "audio bytes" if isinstance(source, bytes | bytearray | memoryview) else str(source)


def _ffmpeg_decode(source: str | Path | bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode with the system ffmpeg to float32 at 16 kHz, channels kept (interleaved → (n, ch))."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise UnsupportedMedia(f"{_name(source)} is not WAV, FLAC, OGG or MP3 and FFmpeg is not installed to decode it.")
    probe_channels = 2  # ask for stereo; mono sources are duplicated and detected as mono later
    cmd = [exe, "-nostdin", "-v", "error", "-i", "pipe:0" if isinstance(source, bytes) else str(source)]
    if max_seconds is not None:
        cmd += ["-t", str(max_seconds + 1)]
    cmd += ["-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(probe_channels), "-ar", str(SAMPLE_RATE), "pipe:1"]
    try:
        proc = subprocess.run(cmd, input=source if isinstance(source, bytes) else None, capture_output=True,
                              timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise InvalidInput(f"{_name(source)}: FFmpeg took more than 10 minutes to decode it.") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidInput(f"{_name(source)} could not be decoded: {msg[-1] if msg else 'ffmpeg failed'}.")
    data = np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, probe_channels)
    if np.array_equal(data[:, 0], data[:, 1]):
        data = data[:, :1]
    return data.copy(), SAMPLE_RATE


def _decode(source: str | Path | bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """(samples as (n, channels) float32, native rate), checked from the header before any sample is decoded.

    A small compressed file can announce (or hold) hours of audio: the header's rate, channel count and
    length are checked first (a header without a length is refused), and the samples are then read
    block by block and the read stops as soon as it passes ``max_seconds``, so a header that
    understates the length cannot make the decoder expand the file without bound either.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        handle: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        handle = str(source)
    try:
        with sf.SoundFile(handle) as f:
            rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            check_header(_name(source), rate, channels, frames, max_seconds)
            cap = None if max_seconds is None else int(max_seconds * rate) + 1
            blocks: list[np.ndarray] = []
            total = 0
            for block in f.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                total += block.shape[0]
                if cap is not None and total > cap:  # more samples than the header announced
                    raise TooLarge(f"{_name(source)} lasts more than the {max_seconds:.0f} s allowed "
                                   "(MAX_AUDIO_SECONDS).")
                blocks.append(block)
    except (TooLarge, InvalidInput):
        raise
    except sf.LibsndfileError as exc:
        suffix = "" if isinstance(source, bytes | bytearray | memoryview) else Path(source).suffix.lower()
        unrecognised = "format not recognised" in str(exc).lower()
        if suffix in FFMPEG_ONLY or (unrecognised and shutil.which("ffmpeg")):
            raise _NeedFFmpeg from exc
        if unrecognised:
            raise UnsupportedMedia(f"{_name(source)} is not audio that can be decoded here (WAV, FLAC, OGG and "
                                   "MP3 are; M4A and others need FFmpeg, which is not installed).") from None
        raise InvalidInput(f"{_name(source)} is not readable audio ({exc}).") from None
    except (RuntimeError, ValueError, EOFError) as exc:  # truncated frames inside an otherwise valid file
        raise InvalidInput(f"{_name(source)} is corrupt ({exc}).") from None
    data = np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=np.float32)
    return data, rate


def check_header(name: str, rate: int, channels: int, frames: int, max_seconds: float | None) -> None:
    """Refuse what a header announces before decoding: rate, channel count and length.

    ``frames`` of :data:`UNKNOWN_FRAMES` or more means the header leaves the length open (a FLAC
    written as a live stream): refused, since its length could only be learnt by decoding it (and
    libsndfile cannot read such a file to its end anyway).

    Raises:
        InvalidInput: a rate outside [4 kHz, 384 kHz], no channels or more than :data:`MAX_CHANNELS`,
            or a length the header does not state.
        TooLarge: the announced length is over ``max_seconds``.
    """
    if not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidInput(f"{name} has a sample rate of {rate} Hz; between {MIN_RATE} and {MAX_RATE} Hz is needed.")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"{name} has {channels} channels; 1 to {MAX_CHANNELS} are accepted.")
    if frames >= UNKNOWN_FRAMES:
        raise InvalidInput(f"{name} does not state its length in its header (a stream); save it as a file "
                           "(WAV, FLAC or Ogg) and send it again.")
    if max_seconds is not None and frames / rate > max_seconds:
        raise TooLarge(f"{name} lasts {frames / rate:.0f} s, more than the {max_seconds:.0f} s allowed "
                       "(MAX_AUDIO_SECONDS).")


class _NeedFFmpeg(Exception):
    pass


def audio_info(source: str | Path | bytes) -> AudioInfo:
    """Header facts without decoding samples (soundfile formats only).

    Raises:
        InvalidInput: unreadable; UnsupportedMedia: a format soundfile cannot read.
    """
    handle = io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray | memoryview) else str(source)
    try:
        info = sf.info(handle)
    except sf.LibsndfileError as exc:
        raise UnsupportedMedia(f"{_name(source)}: {exc}") from None
    return AudioInfo(int(info.samplerate), int(info.channels), float(info.duration), str(info.format))


def load_audio(source: str | Path | bytes, *, mono: bool = True, max_seconds: float | None = None,
               ) -> tuple[np.ndarray, int]:
    """Decode ``source`` (a path or the file's bytes) to float32 samples at 16 kHz.

    Returns ``(samples, 16000)``: shape ``(n,)`` when ``mono`` (channels averaged), else
    ``(channels, n)``. Silent audio is returned as it is (zeros).

    Raises:
        InvalidInput: missing, empty, corrupt or undecodable audio, a rate outside [4 kHz, 384 kHz] or
            more than :data:`MAX_CHANNELS` channels (checked from the header, before decoding).
        TooLarge: longer than ``max_seconds``: refused from the header when it says so, else the
            decoding stops as soon as it passes the limit (it never holds more than that in memory).
        UnsupportedMedia: MP3/M4A (or another non-libsndfile format) with no FFmpeg on ``PATH``.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"audio file {path} does not exist.")
        if path.stat().st_size == 0:
            raise InvalidInput(f"audio file {path} is empty.")
    elif isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise InvalidInput("audio bytes are empty.")
        source = bytes(source)
    else:
        raise InvalidInput(f"audio must be a path or bytes, got {type(source).__name__}.")

    try:
        data, rate = _decode(source, max_seconds)
    except _NeedFFmpeg:
        data, rate = _ffmpeg_decode(source, max_seconds)

    if rate < MIN_RATE:
        raise InvalidInput(f"{_name(source)} has a sample rate of {rate} Hz; at least {MIN_RATE} Hz is needed.")
    if data.shape[0] == 0:
        raise InvalidInput(f"{_name(source)} holds no audio samples.")
    duration = data.shape[0] / rate
    if max_seconds is not None and duration > max_seconds:
        raise TooLarge(f"{_name(source)} lasts {duration:.0f} s, more than the {max_seconds:.0f} s allowed "
                       "(MAX_AUDIO_SECONDS).")
    if not np.all(np.isfinite(data)):
        raise InvalidInput(f"{_name(source)} contains invalid (NaN or infinite) samples.")

    if mono:
        data = data.mean(axis=1, keepdims=True)
    if rate != SAMPLE_RATE:
        import soxr  # noqa: PLC0415 - soxr (with librosa, not a declared dependency): only to resample

        data = soxr.resample(data, rate, SAMPLE_RATE, quality="HQ")
    out = np.ascontiguousarray(data.T, dtype=np.float32)
    np.clip(out, -1.0, 1.0, out=out)
    return (out[0] if mono else out), SAMPLE_RATE


def is_silent(samples: np.ndarray, threshold_db: float = -60.0) -> bool:
    """True when the peak level stays below ``threshold_db`` dBFS."""
    if samples.size == 0:
        return True
    peak = float(np.max(np.abs(samples)))
    return peak <= 10 ** (threshold_db / 20)


def is_stereo_call(channels: np.ndarray, *, max_correlation: float = 0.8) -> bool:
    """Whether a ``(2, n)`` recording holds two different parties (agent / customer) on its channels.

    Contact-centre recorders put each leg on its own channel: the channels then differ (low
    correlation, each silent while the other talks). A mono recording saved as stereo has (nearly)
    identical channels. A channel that is silent throughout means it is not a two-party recording.
    """
    if channels.ndim != 2 or channels.shape[0] != 2:
        return False
    left, right = channels[0].astype(np.float64), channels[1].astype(np.float64)
    if is_silent(channels[0]) or is_silent(channels[1]):
        return False
    ls, rs = left.std(), right.std()
    if ls == 0 or rs == 0:
        return False
    corr = float(np.mean((left - left.mean()) * (right - right.mean())) / (ls * rs))
    return corr < max_correlation
