"""Audio decoding: formats, rates, channels, and every kind of bad input gets one clear error."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import soundfile as sf

from raysys.audio import is_silent, is_stereo_call, load_audio
from raysys.errors import InvalidInput, TooLarge, UnsupportedMedia


def tone(seconds: float, rate: int, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.5 * np.roll(x, 37)], axis=1)


@pytest.mark.parametrize("fmt,rate", [("WAV", 16000), ("WAV", 44100), ("FLAC", 8000), ("OGG", 48000)])
def test_formats_and_rates_decode_to_16k_float32(tmp_path, fmt, rate):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(1.5, rate), rate, format=fmt)
    samples, sr = load_audio(path)
    assert sr == 16000 and samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - 24000) <= 16
    # The tone survives resampling: its energy is where it was.
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 220) < 3


def test_bytes_and_channels_kept_when_asked(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(1.0, 22050, channels=2), 22050, format="FLAC")
    stereo, sr = load_audio(buf.getvalue(), mono=False)
    assert stereo.shape == (2, 16000) and sr == 16000
    mono, _ = load_audio(buf.getvalue())
    assert mono.shape == (16000,)
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-5)


def test_silent_audio_is_valid_and_silent(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    samples, _ = load_audio(path)
    assert is_silent(samples) and samples.shape == (16000,)


@pytest.mark.parametrize("content,message", [
    (b"", "empty"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 10, "not readable"),
    (b"this is a text file, not audio" * 20, "not audio"),
])
def test_bad_bytes_raise_invalid_input(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message):
        load_audio(path)
    if content:
        with pytest.raises(InvalidInput):
            load_audio(content)


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(InvalidInput, match="path or bytes"):
        load_audio(12345)  # type: ignore[arg-type]


def test_too_long_is_refused_before_resampling(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(3.0, 8000), 8000)
    with pytest.raises(TooLarge, match="more than the 2 s allowed"):
        load_audio(path, max_seconds=2)
    assert len(load_audio(path, max_seconds=5)[0]) == 48000


def test_rate_too_low_and_non_finite_samples(tmp_path):
    low = tmp_path / "low.wav"
    sf.write(low, tone(1.0, 2000), 2000)
    with pytest.raises(InvalidInput, match="sample rate of 2000"):
        load_audio(low)
    nan = tmp_path / "nan.wav"
    x = tone(0.5, 16000)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with pytest.raises(InvalidInput, match="NaN"):
        load_audio(nan)


@pytest.mark.skipif(shutil.which("ffmpeg") is not None, reason="FFmpeg is installed here; M4A would decode")
def test_m4a_without_ffmpeg_is_unsupported(tmp_path):
    path = tmp_path / "call.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 200)
    with pytest.raises(UnsupportedMedia, match="FFmpeg is not installed"):
        load_audio(path)


def test_stereo_call_detection():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16000) * 0.1, rng.normal(size=16000) * 0.1
    assert is_stereo_call(np.stack([a, b]))
    assert not is_stereo_call(np.stack([a, a * 0.9]))  # mono saved as stereo
    assert not is_stereo_call(np.stack([a, np.zeros_like(a)]))  # one dead channel
    assert not is_stereo_call(a[None])


def _silent_flac(path, seconds: int, rate: int = 8000, unknown_length: bool = False):
    """``seconds`` of digital silence as FLAC (a few KB per minute); optionally with "length unknown"."""
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        minute = np.zeros(rate * 60, dtype="int16")
        for _ in range(seconds // 60):
            f.write(minute)
    if unknown_length:  # STREAMINFO's 36-bit total-samples field set to 0, as a live stream writes it
        raw = bytearray(path.read_bytes())
        at = 8 + 10
        bits = int.from_bytes(raw[at:at + 8], "big") & ~((1 << 36) - 1)
        raw[at:at + 8] = bits.to_bytes(8, "big")
        path.write_bytes(bytes(raw))
    return path


def _peak_bytes(fn):
    """Peak Python/numpy allocation while ``fn`` runs (numpy reports its buffers to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_long_compressed_audio_is_refused_from_its_header_without_decoding_it(tmp_path):
    """An hour of silence is ~100 KB of FLAC but 115 MB of samples: refused before a sample is decoded."""
    path = _silent_flac(tmp_path / "hour.flac", 3600)
    assert path.stat().st_size < 200_000

    def load():
        for source in (path, path.read_bytes()):  # uploads are decoded from memory too
            with pytest.raises(TooLarge, match="3600 s, more than the 60 s allowed"):
                load_audio(source, max_seconds=60)

    assert _peak_bytes(load) < 4 * 1024 * 1024  # the whole hour would be 115 MB of float32


def test_audio_whose_header_leaves_the_length_open_is_refused_before_decoding(tmp_path):
    """A FLAC written as a stream (length 0 = unknown) could only be measured by decoding it: refused."""
    path = _silent_flac(tmp_path / "stream.flac", 3600, unknown_length=True)
    assert sf.info(str(path)).frames > 10**15  # libsndfile reports "unknown" as a huge count

    def load():
        with pytest.raises(InvalidInput, match="does not state its length"):
            load_audio(path, max_seconds=60)

    assert _peak_bytes(load) < 4 * 1024 * 1024


def test_channels_and_rate_are_checked_from_the_header(tmp_path):
    many = tmp_path / "many.wav"
    sf.write(many, np.zeros((800, 17), dtype="float32"), 8000, format="WAV")
    with pytest.raises(InvalidInput, match="17 channels"):
        load_audio(many)
    fast = tmp_path / "fast.wav"
    sf.write(fast, np.zeros(1000, dtype="float32"), 768_000, format="WAV")
    with pytest.raises(InvalidInput, match="768000 Hz"):
        load_audio(fast)
    ok = tmp_path / "ok.flac"
    sf.write(ok, tone(2.0, 8000, channels=2), 8000, format="FLAC")
    stereo, _ = load_audio(ok, mono=False, max_seconds=2.5)  # within the limit: decoded whole, blocks joined
    assert stereo.shape == (2, 32000)
