"""The builtin, fully offline speaker diarization: silero-vad → resemblyzer → clustering → overlap.

Both models ship their weights inside their wheels, so this runs on any machine with no download.

1. **Speech regions.** silero-vad speech probabilities every 32 ms on loudness-normalised audio,
   computed as silero's sequence model does (the frame-independent STFT and conv encoder on
   thousands of frames per call, only its LSTM cell sequential, as one ``nn.LSTM`` call; equal to
   frame-by-frame streaming to 1e-5 and 12x less CPU), hysteresis thresholds (onset/offset);
   detections shorter than ``vad_min_speech`` (0.15 s, under
   a syllable; silero's own default is 0.25 s) are dropped as clicks and breaths before short gaps
   are filled and regions padded — otherwise one 0.1 s blip grows, by padding and gap filling, into
   half a second of false speech glued to the next word. When that finds nothing but a frame
   reaches ``vad_fallback_onset`` (0.2), a second pass at that onset keeps the confident peaks: far-
   field laughter and murmurs (AMI trn01) score 0.2-0.35 where noise, hum and clicks stay under 0.05,
   and a recording with speech must not come back with no speaker.
2. **Speaker embeddings.** the audio is scaled so that its speech (the VAD's regions) has an RMS of
   ``level_dbfs`` (-24 dBFS): resemblyzer's input is linear mel power, so without this its similarities,
   and with them the speaker count, followed the recording level (the sample 6 dB quieter was one
   speaker). Then resemblyzer's LSTM speaker encoder on 1.5 s windows every 0.75 s over the speech
   frames only (silence is cut out first, so each window holds speech) — resemblyzer's own rate (1.6 s
   partials, 1.3 per second): every frame is seen by two windows. A 0.25 s hop (six windows per frame)
   cost three times the encoder work for the same DER on the shared files (trn00-09 mean 37.4 % vs
   37.0 % with the previous clustering, sample 8.6 % vs 8.8 %); the encoder is the diarizer's cost
   (float32 on CPUs without AMX / AVX512-BF16: ~97 % of it). Batched 64 windows at a time, under
   bfloat16 autocast where the CPU has AMX / AVX512-BF16 (half the CPU time; embeddings within cosine
   0.996 of float32, identical DER on the shared files); int8 dynamic quantisation of the LSTM was
   tried and was neither faster on AVX2 nor faithful. The log-free mel spectrogram resemblyzer expects
   is computed with ``torch.stft`` in 10-minute pieces (no librosa warm-up per call, flat memory).
3. **Clustering and the speaker count.** average-linkage agglomerative clustering of the window
   embeddings (cosine), cut where clusters stop being more similar than ``ahc_threshold`` (0.70).
   Then, smallest first, a cluster is merged into its nearest when it holds under
   ``min_cluster_seconds`` (1.5 s) of speech, or under ``min_cluster_share`` (10 %) of the windows while
   its centroid is within ``distinct_sim`` (0.65) of another (a split of a far-field voice: those sit
   at 0.73-0.85, distinct voices at 0.55-0.65). Last, two clusters whose centroids are more similar
   than the windows are, on average, to their own centroid are merged: one voice split in two halves
   (a within-versus-between test that needs no fixed level). Then a cluster heard in one turn only
   (its windows consecutive), under ``one_turn_share`` (25 %) of the windows and within
   ``one_turn_sim`` (0.80) of another cluster, is merged into it: one voice whose recording changed for
   one utterance (two of five single-voice LibriSpeech calls were split so, centroids 0.85 apart — as
   close as the sample's two real voices, 0.86, so no similarity level alone separates them); a minor
   party with one turn sits at 0.55-0.65, and AMI's one-long-turn voices (trn08) hold over 29 % of
   their excerpt's windows. The count stays within
   ``min_speakers``..``max_speakers`` (``num_speakers`` fixes both); a count above the natural one is
   reached by k-means instead. Centroids are then refined by a few k-means steps. Beyond
   ``max_cluster_windows`` windows an evenly spaced subsample is clustered and every window takes the
   nearest centroid, so hours of audio need no n² matrix. (``method="spectral"``: eigen-gap spectral
   clustering instead.) Tried and not kept: a share alone (20 %: every minor voice lost, a third
   party's 11 s in a 70 s call included), a length alone (kept the 2-4 s splits AMI excerpts are full
   of), auto-tuned spectral clustering (NME-SC, Park et al. 2019: 7-8 speakers on the sample and on
   trn04/05/08 at small p, 1 on trn06/09 at large p).
4. **Frame labels.** every 20 ms speech frame scores each speaker by the mean cosine similarity of
   the windows that cover it; the best speaker wins, runs shorter than ``min_turn`` are absorbed.
5. **Overlapped speech.** three heuristic cues can mark a second active speaker: a short turn (up
   to ``overlap_sandwich`` s) of one speaker inside another's with no silence around it and the
   outer speaker still scoring within ``sandwich_margin`` (a back-channel or interruption); frames
   whose second-best speaker scores within ``overlap_margin`` of the best; a fixed
   ``overlap_change`` around silence-free speaker changes. All three are **off by default**: on the
   shared AMI excerpts and sample they recovered less missed overlap than they added false alarms
   (see bench/diarization.py). On those files no frame-level cue we measured (score gap, similarity
   to the own centroid, loudness, distance to a speaker change) was right about overlap more than
   about 60 % of the time, and a cue must beat 50 % (and name the right second speaker) to pay.
   Overlapped speech is therefore scored as missed speech.

Limits: resemblyzer embeddings need about a second of speech, so turns shorter than ~0.5 s are
often merged into a neighbour, and a voice with under 1.5 s of speech, or under 10 % of it and close
to another voice, is merged into the nearest one. On far-field meeting audio resemblyzer's
similarities between different voices (0.75-0.86 between centroids) overlap those between halves of
one voice, so the count there is right on 8 of the 10 AMI excerpts but the DER is not lower.
With one speaker per frame and this VAD, even perfect speaker labels would leave a mean DER of 31.7 %
on trn00-09 (18.2 % with a perfect VAD): trn08/trn09 are 44-48 % / 30 % overlapped speech, and
silero-vad scores trn07's and trn01's far-field speech under 0.4 (bench/diarization.py prints this
floor per file).
Far-field, noisy or music-laden audio lowers both the VAD and the embedding quality; silero-vad
does not count laughter or murmurs as speech (AMI references do). The level and the clustering
thresholds were chosen on a grid over the shared files and 20 synthetic 1-4 voice calls
(raysys.models.mixtures): over thresholds 0.68-0.72, shares 0.10-0.20 and distinct levels 0.65-0.70
the trn00-09 count stays at 6-8 of 10 (8 at 0.70-0.72 with shares 0.10 or 0.20) and the synthetic
count at 18-19 of 20, falling to 16-17 at distinct levels 0.60 or 0.75; the one-turn rule gives the
same results (trn00-09 8/10 and mean DER 40.9 %, synthetic 20/20, sample 8.8 %) at every share
0.22-0.28 and similarity 0.78-0.84 tried. The result does not depend on the recording's own level
(the bench prints the sample at -12 and +6 dB).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import librosa.filters
import numpy as np
import torch
from resemblyzer import VoiceEncoder

from raysys.constants import SAMPLE_RATE
from raysys.models import speaker_clustering
from raysys.models.precision import autocast_for, pick_precision
from raysys.models.speech_detection import SpeechDetector, rms

EMBED_BATCH = 64  # resemblyzer windows per forward call
MEL_HOP = 160  # samples per resemblyzer mel frame (10 ms)
MEL_WIN = 400
MEL_BANDS = 40


@dataclass(frozen=True)
class BuiltinParams:
    """Tunable knobs of the builtin diarizer (defaults tuned on the shared sample and AMI excerpts)."""

    vad_onset: float = 0.4
    vad_offset: float = 0.25
    vad_fill_gap: float = 0.5  # seconds of non-speech bridged inside a region
    vad_pad: float = 0.1  # seconds added on each side of a region
    vad_min_region: float = 0.1
    vad_min_speech: float = 0.15  # raw (unpadded) detections shorter than this are dropped as blips
    vad_fallback_onset: float = 0.2  # nothing found: a second pass keeps peaks this confident (noise < 0.05)
    window: float = 1.5  # embedding window (seconds of speech)
    hop: float = 0.75  # embedding hop (seconds of speech): resemblyzer's own rate, 2 windows per frame
    frame: float = 0.02  # output resolution (seconds)
    max_speakers: int = 8
    method: str = "ahc"  # "ahc" (average-linkage, cosine threshold) or "spectral" (eigen-gap)
    ahc_threshold: float = 0.70  # clusters whose mean similarity stays above this merge
    level_dbfs: float | None = -24.0  # speech brought to this RMS level before the speaker encoder (None: as is)
    min_cluster_share: float = 0.1  # a smaller cluster is merged unless it is a distinct voice
    min_cluster_seconds: float = 1.5  # a cluster with less speech than this is always merged
    distinct_sim: float = 0.65  # a small cluster whose centroid is below this to all others is kept
    one_turn_share: float = 0.25  # a one-turn cluster under this share of the windows ...
    one_turn_sim: float = 0.80  # ... and this close to another cluster is the same voice
    eig_threshold: float = 1.5  # eigen-gap ratio needed to prefer more than one speaker
    single_speaker_sim: float = 0.72  # mean affinity above which the audio is one speaker
    min_turn: float = 0.5
    overlap_margin: float = 0.0  # second speaker within this similarity of the first → overlap
    overlap_min_sim: float = 0.6
    overlap_sandwich: float = 0.0  # a turn this short between two turns of one speaker overlaps them
    sandwich_margin: float = 0.03  # ... when the outer speaker still scores within this of the inner
    overlap_change: float = 0.0  # seconds each side of a silence-free speaker change marked overlap
    max_cluster_windows: int = 3000  # more windows than this (12.5 min of speech): cluster a subsample


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a boolean array."""
    if not len(mask):
        return []
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


class BuiltinDiarizer:
    """silero-vad + resemblyzer diarization in this process. Thread-safe (one call at a time)."""

    name = "builtin"

    def __init__(self, device: str = "cpu", params: BuiltinParams | None = None, precision: str = "auto") -> None:
        """``precision``: the speaker encoder's autocast dtype — "auto" (bfloat16 where the device has a
        fast path: AMX / AVX512-BF16 CPUs, CUDA; else float32), "float32", "bfloat16" or "float16"."""
        self.params = params or BuiltinParams()
        self.device = device
        self.vad = SpeechDetector()  # stays on CPU (a tiny, sequential model)
        self.encoder = VoiceEncoder(device=device, verbose=False).eval()
        self.precision = pick_precision(device, precision)
        self.autocast = lambda: autocast_for(device, self.precision)
        self.mel_fb = torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=MEL_WIN, n_mels=MEL_BANDS)).float()
        self.window = torch.hann_window(MEL_WIN)
        self.lock = threading.Lock()
        self.model_version = f"silero-vad {self.vad.version} + resemblyzer 0.1.4"

    # --- stages -------------------------------------------------------------------------------------

    def speech_probs(self, wav: np.ndarray) -> np.ndarray:
        """silero-vad speech probability per 32 ms frame (:meth:`SpeechDetector.speech_probs`)."""
        return self.vad.speech_probs(wav)

    def speech_regions(self, probs: np.ndarray, duration: float) -> list[tuple[float, float]]:
        """Speech regions ``[(start, end)]`` in seconds (:meth:`SpeechDetector.speech_regions`, this
        diarizer's parameters)."""
        return self.vad.speech_regions(probs, duration, self.params)

    def mel(self, wav: np.ndarray, chunk_frames: int = 60_000):
        """Mel power (frames, 40), as librosa.feature.melspectrogram; in 10-minute pieces (long audio)."""
        x = torch.from_numpy(np.array(wav, dtype=np.float32))  # a copy: Ray hands over read-only arrays
        x = torch.nn.functional.pad(x, (MEL_WIN // 2, MEL_WIN // 2))  # what center=True, "constant" does
        n = (len(x) - MEL_WIN) // MEL_HOP + 1
        out = []
        for f0 in range(0, n, chunk_frames):
            f1 = min(n, f0 + chunk_frames)
            piece = x[f0 * MEL_HOP:(f1 - 1) * MEL_HOP + MEL_WIN]
            spec = torch.stft(piece, MEL_WIN, MEL_HOP, MEL_WIN, self.window, center=False,
                              return_complex=True).abs() ** 2
            out.append((self.mel_fb @ spec).T)
        return torch.cat(out).contiguous() if out else torch.zeros((0, MEL_BANDS))

    def embed_windows(self, mel, speech_frames: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Embeddings of windows sliding over the speech frames; returns (embeddings, frames of each)."""
        p = self.params
        win = int(round(p.window * SAMPLE_RATE / MEL_HOP))
        hop = int(round(p.hop * SAMPLE_RATE / MEL_HOP))
        n = len(speech_frames)
        if n == 0:
            return np.zeros((0, 256), np.float32), []
        if n <= win:
            starts = [0]
            win = n
        else:
            starts = list(range(0, n - win + 1, hop))
            if starts[-1] + win < n:
                starts.append(n - win)
        speech_mel = mel[torch.from_numpy(speech_frames)]
        out = []
        with torch.no_grad(), self.autocast():
            # Batches built one at a time (long audio stays small); 64 windows per batch keep the LSTM's
            # activations in cache: 30 % less CPU than 256 in bfloat16, a little less in float32.
            for i in range(0, len(starts), EMBED_BATCH):
                batch = torch.stack([speech_mel[s:s + win] for s in starts[i:i + EMBED_BATCH]]).to(self.device)
                out.append(self.encoder(batch).float().cpu())
        emb = torch.cat(out).numpy()
        return emb.astype(np.float32), [speech_frames[s:s + win] for s in starts]

    # --- clustering ---------------------------------------------------------------------------------

    def cluster(self, emb: np.ndarray, num_speakers: int | None, min_speakers: int, max_speakers: int,
                seconds_per_window: float | None = None) -> np.ndarray:
        """Cluster labels (0..k-1) per window of ``emb`` (unit-norm rows): :func:`speaker_clustering.cluster`."""
        return speaker_clustering.cluster(self.params, emb, num_speakers, min_speakers, max_speakers,
                                          seconds_per_window)

    # --- the whole chain ----------------------------------------------------------------------------

    def diarize(self, wav: np.ndarray, sample_rate: int = SAMPLE_RATE, *, num_speakers: int | None = None,
                min_speakers: int | None = None, max_speakers: int | None = None) -> list[dict]:
        """Speaker turns of mono 16 kHz ``wav``: ``[{"start", "end", "speaker"}]`` sorted by start.

        Overlapped speech appears as overlapping turns of two speakers. Silent audio gives ``[]``.
        """
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the builtin diarizer needs {SAMPLE_RATE} Hz audio, got {sample_rate}")
        with self.lock:
            return self._diarize(np.asarray(wav, dtype=np.float32), num_speakers, min_speakers or 1,
                                 max_speakers or self.params.max_speakers)

    def _diarize(self, wav: np.ndarray, num_speakers, min_speakers, max_speakers) -> list[dict]:
        p = self.params
        duration = len(wav) / SAMPLE_RATE
        if duration < 0.1:
            return []
        self.timings = {}
        t0 = time.perf_counter()
        probs = self.speech_probs(wav)
        regions = self.speech_regions(probs, duration)
        t1 = time.perf_counter()
        self.timings["vad"] = t1 - t0
        if not regions:
            return []
        mel = self.mel(self._level(wav, regions))
        n_mel = mel.shape[0]
        is_speech = np.zeros(n_mel, dtype=bool)
        for a, b in regions:
            is_speech[int(a * SAMPLE_RATE / MEL_HOP):int(np.ceil(b * SAMPLE_RATE / MEL_HOP))] = True
        speech_frames = np.flatnonzero(is_speech)
        emb, frames = self.embed_windows(mel, speech_frames)
        t2 = time.perf_counter()
        self.timings["embed"] = t2 - t1
        labels = self.cluster(emb, num_speakers, min_speakers, max_speakers)
        k = int(labels.max()) + 1
        cents = speaker_clustering.centroids(emb, labels)
        t3 = time.perf_counter()
        self.timings["cluster"] = t3 - t2

        # Frame scores: mean similarity to each centroid of the windows covering a mel frame.
        sims = emb @ cents.T  # (windows, k)
        score = np.zeros((n_mel, k), np.float32)
        count = np.zeros(n_mel, np.float32)
        for w, fr in enumerate(frames):
            score[fr] += sims[w]
            count[fr] += 1
        covered = count > 0
        score[covered] /= count[covered, None]
        # Down-sample to the output resolution.
        step = max(1, int(round(p.frame * SAMPLE_RATE / MEL_HOP)))
        n_out = (n_mel + step - 1) // step
        pad = n_out * step - n_mel
        score_o = np.pad(score, ((0, pad), (0, 0))).reshape(n_out, step, k).mean(axis=1)
        speech_o = np.pad(is_speech, (0, pad)).reshape(n_out, step).mean(axis=1) >= 0.5
        best = np.argmax(score_o, axis=1)
        best = self._smooth(best, speech_o, int(round(p.min_turn / p.frame)))

        self.debug = {"score": score_o, "best": best, "speech": speech_o}
        active = np.zeros((n_out, k), dtype=bool)
        active[speech_o, best[speech_o]] = True
        if k > 1:
            self._mark_overlap(active, score_o, best, speech_o)
        t4 = time.perf_counter()
        self.timings["assign"] = t4 - t3

        segments = []
        for spk in range(k):
            for a, b in _runs(active[:, spk]):
                start, end = a * p.frame, min(duration, b * p.frame)
                if end - start >= 0.05:
                    segments.append({"start": round(start, 3), "end": round(end, 3), "speaker": spk})
        # Name speakers by first appearance: SPEAKER_00, SPEAKER_01, ...
        order: dict[int, str] = {}
        for s in sorted(segments, key=lambda s: s["start"]):
            order.setdefault(s["speaker"], f"SPEAKER_{len(order):02d}")
        for s in segments:
            s["speaker"] = order[s["speaker"]]
        return sorted(segments, key=lambda s: (s["start"], s["speaker"]))

    def _level(self, wav: np.ndarray, regions: list[tuple[float, float]]) -> np.ndarray:
        """``wav`` scaled so that its speech has an RMS of ``level_dbfs``: resemblyzer's input is linear mel
        power, so without this its similarities, and the speaker count, follow the recording level."""
        target = self.params.level_dbfs
        if target is None:
            return wav
        speech = np.concatenate([wav[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] for a, b in regions])
        level = rms(speech)
        if level <= 1e-7:
            return wav
        return wav * np.float32(10 ** (target / 20) / level)

    @staticmethod
    def _smooth(best: np.ndarray, speech: np.ndarray, min_len: int) -> np.ndarray:
        """Absorb speaker runs shorter than ``min_len`` frames (inside a speech region) into a neighbour."""
        best = best.copy()
        for a, b in _runs(speech):
            seg = best[a:b]
            changed = True
            while changed:
                changed = False
                runs = []
                start = 0
                for i in range(1, len(seg) + 1):
                    if i == len(seg) or seg[i] != seg[start]:
                        runs.append((start, i))
                        start = i
                if len(runs) <= 1:
                    break
                shortest = min(range(len(runs)), key=lambda r: runs[r][1] - runs[r][0])
                s, e = runs[shortest]
                if e - s >= min_len:
                    break
                left = seg[s - 1] if s > 0 else None
                right = seg[e] if e < len(seg) else None
                if left is None:
                    seg[s:e] = right
                elif right is None:
                    seg[s:e] = left
                else:
                    ls = runs[shortest - 1][1] - runs[shortest - 1][0]
                    rs = runs[shortest + 1][1] - runs[shortest + 1][0]
                    seg[s:e] = left if ls >= rs else right
                changed = True
            best[a:b] = seg
        return best

    def _mark_overlap(self, active: np.ndarray, score: np.ndarray, best: np.ndarray, speech: np.ndarray) -> None:
        p = self.params
        order = np.argsort(-score, axis=1)
        second = order[:, 1]
        first_s = score[np.arange(len(score)), best]
        second_s = score[np.arange(len(score)), second]
        second = np.where(second == best, order[:, 0], second)
        second_s = score[np.arange(len(score)), second]
        mixed = speech & (first_s - second_s < p.overlap_margin) & (second_s > p.overlap_min_sim)
        active[np.flatnonzero(mixed), second[mixed]] = True
        # A short turn inside another speaker's turn, with no silence either side: a back-channel or
        # interruption, which in conversation overlaps the turn it cuts into.
        max_run = int(round(p.overlap_sandwich / p.frame))
        for a, b in _runs(speech):
            seg = best[a:b]
            edges = [0, *(np.flatnonzero(seg[1:] != seg[:-1]) + 1).tolist(), len(seg)]
            for r in range(1, len(edges) - 2):
                s0, e0 = edges[r], edges[r + 1]
                if e0 - s0 <= max_run and seg[s0 - 1] == seg[e0]:
                    outer = seg[s0 - 1]
                    frames = np.arange(a + s0, a + e0)
                    gap = score[frames, best[frames]] - score[frames, outer]
                    if float(np.mean(gap)) < p.sandwich_margin:
                        active[frames, outer] = True
        # Speaker changes with no silence between them: both speakers around the change.
        half = int(round(p.overlap_change / p.frame))
        if half > 0:
            for i in np.flatnonzero((best[1:] != best[:-1]) & speech[1:] & speech[:-1]) + 1:
                a, b = max(0, i - half), min(len(best), i + half)
                seg = speech[a:b]
                active[a:b, best[i - 1]] |= seg
                active[a:b, best[i]] |= seg
