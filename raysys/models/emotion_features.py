"""Acoustic descriptors of one speech segment for the trained emotion model, and the telephone channel.

:func:`segment_features` turns a mono 16 kHz segment into a fixed vector of descriptors that do not
depend on the recording level, the microphone's gain or the rest of the recording, so that one clip
on its own is scored the same way as one segment of a long call:

- only the 300-3400 Hz band is used (what a telephone channel passes), so full-band and 8 kHz
  telephone audio give comparable vectors;
- energies are in dB relative to the segment's own loud frames; spectra are shapes (each frame's
  log-mel minus its mean), never absolute levels;
- pitch is read from the band-limited autocorrelation (harmonics carry the periodicity when a phone
  line has removed the fundamental), in semitones.

Descriptors (see :data:`FEATURE_NAMES`): energy dynamics, pitch level/spread/movement, voicing and
periodicity strength, spectral tilt, alpha ratio, centroid and flux, 20 log-mel band shapes (mean and
spread) and their cepstra's movement, and a syllable-rate proxy. :func:`telephone` simulates the phone
channel (8 kHz, 300-3400 Hz band-pass, G.711 mu-law) for training augmentation and benchmarks.

Everything is numpy (scipy/soxr only for the channel simulation); no state, no randomness.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from raysys.constants import SAMPLE_RATE

RATE = 8000  # analysed at the telephone rate: nothing above 3.4 kHz is used anyway, and it is 4x cheaper
FRAME = 320  # 40 ms: two periods of a 60 Hz voice fit, for the autocorrelation pitch tracker
HOP = 80  # 10 ms
NFFT = 512
BAND = (300.0, 3400.0)  # the telephone band: the only part of the spectrum looked at
N_MELS = 20
F0_RANGE = (60.0, 500.0)
VOICED = 0.45  # normalised autocorrelation peak above which a frame counts as voiced
ACTIVE_DB = 35.0  # frames within this many dB of the segment's loud frames are "active" (speech)...
FLOOR_DB = 10.0  # ...and this far above the segment's noise floor (its quietest frames)
MIN_SAMPLES = FRAME + 4 * HOP

_SCALAR_NAMES = (
    "energy_std", "energy_p10", "energy_p50", "energy_delta",
    "pitch_p50", "pitch_p10", "pitch_p90", "pitch_std", "pitch_delta", "voiced_share", "periodicity",
    "tilt_mean", "tilt_std", "alpha_mean", "alpha_std", "centroid_mean", "centroid_std", "flux_mean",
    "cep_delta", "rate", "voiced_run",
)
FEATURE_NAMES = (*_SCALAR_NAMES, *(f"mel{i}_mean" for i in range(N_MELS)), *(f"mel{i}_std" for i in range(N_MELS)))
N_FEATURES = len(FEATURE_NAMES)


@lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    """The analysis window, band mask, mel filterbank and the window's own autocorrelation (built once)."""
    freqs = np.fft.rfftfreq(NFFT, 1 / RATE)
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    window = np.hanning(FRAME)
    w_ac = np.fft.irfft(np.abs(np.fft.rfft(window, NFFT)) ** 2)[:FRAME]
    w_ac = w_ac / w_ac[0]

    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    edges = 700 * (10 ** (np.linspace(mel(BAND[0]), mel(BAND[1]), N_MELS + 2) / 2595) - 1)
    fb = np.zeros((N_MELS, len(freqs)))
    for i in range(N_MELS):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[i] = np.clip(np.minimum(up, down), 0, None)
    bf = freqs[band]
    # DCT-II basis for cepstra of the band shape (c1..c12; c0 is the level and is left out).
    k = np.arange(1, 13)[:, None]
    dct = np.cos(np.pi * k * (np.arange(N_MELS)[None, :] + 0.5) / N_MELS)
    return {"freqs": freqs, "band": band, "window": window, "w_ac": np.maximum(w_ac, 1e-3), "fb": fb[:, band],
            "logf": np.log2(bf), "lowband": bf < 1000.0, "dct": dct, "bf": bf}


def _frames(wav: np.ndarray) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(wav, FRAME)[::HOP]


def segment_features(wav: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Descriptors of one mono 16 kHz segment (float32 ``[N_FEATURES]``, names in :data:`FEATURE_NAMES`).

    Args:
        wav: mono samples in [-1, 1]; any length (short or silent segments give a vector of
            defaults rather than an error).
        rate: their sample rate (default :data:`~raysys.constants.SAMPLE_RATE`); at least 8 kHz.

    Returns:
        The feature vector; the same (up to rounding) for the segment at any gain.
    """
    t = _tables()
    x = np.asarray(wav, dtype=np.float64).ravel()
    if rate != RATE and len(x):
        import soxr  # noqa: PLC0415 - soxr (with librosa, not a declared dependency): only to resample

        x = soxr.resample(x, rate, RATE, quality="MQ")
    x = x - x.mean() if len(x) else x
    peak = np.max(np.abs(x)) if len(x) else 0.0
    if peak < 1e-6:  # digital silence: nothing to hear
        return np.zeros(N_FEATURES, dtype=np.float32)
    x = x / peak  # level-free from here on
    if len(x) < MIN_SAMPLES:
        x = np.pad(x, (0, MIN_SAMPLES - len(x)))
    frames = _frames(x)
    frames = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames * t["window"], NFFT)
    power = spec.real ** 2 + spec.imag ** 2
    power[:, ~t["band"]] = 0.0  # what a phone line would not pass
    bp = power[:, t["band"]]
    energy = 10 * np.log10(bp.sum(axis=1) + 1e-10)
    loud = np.percentile(energy, 95)
    # A clip padded with room noise must not read as "quiet, flat speech": frames near the floor are not speech.
    floor = np.percentile(energy, 5)
    active = energy > max(loud - ACTIVE_DB, floor + FLOOR_DB)
    if active.sum() < 3:
        active = energy >= np.sort(energy)[-min(3, len(energy))]
    e = energy[active] - loud
    de = np.abs(np.diff(energy))
    de = de[active[1:] & active[:-1]]

    # Pitch: normalised autocorrelation of the band-limited frame, corrected for the window's own decay.
    ac = np.fft.irfft(power[active], NFFT)[:, :FRAME]
    ac = ac / np.maximum(ac[:, :1], 1e-12) / t["w_ac"]
    lo, hi = int(RATE / F0_RANGE[1]), int(RATE / F0_RANGE[0])
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    rows = np.arange(len(ac))
    strength = np.clip(ac[rows, lag], 0, 0.999)
    voiced = strength > VOICED
    # Parabolic interpolation around the peak: integer lags at 8 kHz are half a semitone apart at 250 Hz.
    left, mid, right = ac[rows, lag - 1], ac[rows, lag], ac[rows, np.minimum(lag + 1, FRAME - 1)]
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > 1e-9, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    semis = 12 * np.log2(RATE / (lag + np.clip(shift, -0.5, 0.5)) / 100.0)  # semitones re 100 Hz
    if voiced.sum() >= 3:
        sv = semis[voiced]
        p10, p50, p90 = np.percentile(sv, [10, 50, 90])
        pitch_std = float(np.std(np.clip(sv - p50, -12, 12)))
        idx = np.flatnonzero(voiced)
        consecutive = np.diff(idx) == 1
        jumps = np.abs(np.diff(sv))[consecutive]
        pitch_delta = float(np.mean(np.minimum(jumps, 4.0))) if len(jumps) else 0.0
        periodicity = float(np.mean(np.log(strength[voiced] / (1 - strength[voiced]))))
    else:
        p10 = p50 = p90 = 0.0
        pitch_std = pitch_delta = 0.0
        periodicity = 0.0

    # Spectral shape of the active frames (level-free: each frame relative to its own mean).
    pa = bp[active] + 1e-10
    logp = np.log10(pa)
    lf = t["logf"] - t["logf"].mean()
    tilt = (logp - logp.mean(axis=1, keepdims=True)) @ lf / (lf @ lf) * 10  # dB per octave
    low = pa[:, t["lowband"]].sum(axis=1)
    high = pa[:, ~t["lowband"]].sum(axis=1)
    alpha = 10 * np.log10(high / low)
    norm = pa / pa.sum(axis=1, keepdims=True)
    centroid = norm @ t["bf"] / 1000.0
    flux = np.sqrt(np.sum(np.diff(np.sqrt(norm), axis=0) ** 2, axis=1)) if len(norm) > 1 else np.zeros(1)
    mel = np.log(pa @ t["fb"].T + 1e-10)
    shape = mel - mel.mean(axis=1, keepdims=True)
    cep = shape @ t["dct"].T
    cep_delta = float(np.mean(np.abs(np.diff(cep, axis=0)))) if len(cep) > 1 else 0.0

    # Rhythm: peaks of the smoothed energy envelope (syllable nuclei proxy) per active second.
    env = np.convolve(energy, np.ones(5) / 5, mode="same")
    peaks = (env[1:-1] > env[:-2]) & (env[1:-1] >= env[2:]) & (env[1:-1] > loud - 20)
    peak_idx = np.flatnonzero(peaks)
    kept = 0
    last = -100
    for p in peak_idx:
        if p - last >= 8:  # 80 ms apart at least
            kept += 1
            last = p
    seconds = max(active.sum() * HOP / RATE, 0.25)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]]))))[::2]
    voiced_run = float(np.mean(runs)) * HOP / RATE if len(runs) else 0.0

    scalars = [
        float(np.std(e)), float(np.percentile(e, 10)), float(np.percentile(e, 50)),
        float(np.mean(de)) if len(de) else 0.0,
        p50, p10, p90, pitch_std, pitch_delta, float(voiced.mean()), periodicity,
        float(np.mean(tilt)), float(np.std(tilt)), float(np.mean(alpha)), float(np.std(alpha)),
        float(np.mean(centroid)), float(np.std(centroid)), float(np.mean(flux)),
        cep_delta, min(kept / seconds, 12.0), voiced_run,
    ]
    out = np.concatenate([scalars, shape.mean(axis=0), shape.std(axis=0)])
    return out.astype(np.float32)


def telephone(wav: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``wav`` as heard through a phone line, back at ``rate``: 8 kHz, 300-3400 Hz band-pass, G.711 mu-law.

    Deterministic (no noise is added), so training data built with it is reproducible.
    """
    import soxr  # noqa: PLC0415 - soxr: only training and benchmarks simulate the channel
    from scipy.signal import butter, sosfiltfilt  # noqa: PLC0415 - scipy: only training and benchmarks simulate the channel

    x = np.asarray(wav, dtype=np.float64)
    narrow = soxr.resample(x, rate, 8000, quality="HQ")
    sos = butter(4, [300, 3400], btype="bandpass", fs=8000, output="sos")
    narrow = sosfiltfilt(sos, narrow)
    peak = np.max(np.abs(narrow)) or 1.0
    narrow = narrow / peak * 0.7  # the line's level; mu-law keeps the relative detail
    mu = 255.0
    coded = np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / np.log1p(mu)
    coded = np.round(coded * 127) / 127  # 8-bit code words
    decoded = np.sign(coded) * ((1 + mu) ** np.abs(coded) - 1) / mu
    return soxr.resample(decoded, 8000, rate, quality="HQ").astype(np.float32)
