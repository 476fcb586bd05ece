"""Diarization benchmark: DER and real-time factor, builtin vs pyannote (random weights: speed only).

Files: ../shared/data/diarization/sample.wav (+ sample.rttm) and trn00-trn09 (+ debug.train.rttm).
DER from pyannote.metrics with overlapped speech scored (skip_overlap=False) at collars 0.25 s and 0 s
(pyannote's collar is the total width around each reference boundary), over the whole 0-30 s of
each file. RTF = processing seconds / audio seconds, one torch thread, models loaded once, after a
warm-up call; printed as wall time and as this process's CPU time (the contention-free figure on a
shared machine, where other work inflates the wall time; the load average is printed beside it).
Peers: a first builtin prototype reached 9.1 % on sample.wav and a 49.5 % mean DER on trn00-trn09
(it ignored overlapped speech); targets: <= 10 %, < 49.5 %, RTF <= 0.02. A last line diarizes
sample.wav 12 and 6 dB quieter and 6 dB louder (the result must not depend on the level).

What changed the figures (mean per-file DER@0.25 on trn00-09 / sample.wav):
  50.1 % / 9.7 %  before: trn02 scored 143 % (0.7 s of speech, plus 0.6 s of false alarm)
  36.7 % / 9.7 %  VAD detections under 0.15 s dropped before padding and gap filling (trn02: 6 %)
  (no change)      known speaker count: same tree cut, then merges/k-means (num_speakers=2 on the
                   sample went from 48 % to 9.7 %; the automatic path is unchanged)
  39.4 % / 8.8 %  issue 14: embedding hop 0.25 -> 0.75 s (resemblyzer's own rate: a third of the encoder
                   work); VAD second pass (trn01: no speaker -> one); count from the data (length and
                   share rules, distinct voices kept, split voices merged): trn00-09 count exact
                   (speakers with >= 2 s) 6/10 -> 8/10, zero-speaker files 1 -> 0; synthetic 1-4 voice
                   calls 17/20 -> 18/20 (minor voices now found, two single voices split)
  42.1 % / 8.8 %  (count exact 8/10 by the 2 s rule, 4/10 every speaker; CPU RTF 0.019 -> 0.007)
                   minimum share 0.2 -> 0.1 with the distinct-voice rule (a third party with 11 s of a
                   70 s call was lost at 0.2); the AMI DER rises (trn05, trn09 get a third cluster)
                   and stays above the 30 % target: most of the error is overlapped or far-field
                   speech the VAD misses (trn07-09), which no cluster rule recovers.
  40.9 % / 8.8 %  a voice heard in one turn only, under 25 % of the windows and within 0.80 of another
                   cluster, is merged (trn05: 3 -> 2 speakers, 24.5 % -> 12.5 %); synthetic calls 18/20
                   -> 20/20 (no single voice split), mean DER 9.5 % -> 8.1 %; count exact still 8/10.
                   The "floor" columns: perfect speaker labels, one speaker at a time, with a perfect
                   VAD (mean 18.2 %) and within the speech our VAD finds (31.7 %): the < 30 % target
                   needs overlapped-speech detection (trn08/09) or a VAD that hears trn01/07's far-field
                   speech (silero scores it under 0.4), not better clustering.
Tried in this round and not kept (trn00-09 mean / sample, synthetic count): VAD onset 0.2-0.4 x
offset 0.1-0.25 x pad 0.1-0.25 (best 40.2 % but sample 25.6 % and count 6/10; at pad 0.1 none below
41.8 %); overlap cue "second speaker within m" at m = 0.02/0.03/0.04 (AMI unchanged, sample 7.8/5.8/
8.4 %, synthetic DER up); embedding hop 1.25 / 1.5 s or windows 1.0-2.0 s to cut encoder work
(count 4-7/10, sample up to 49 %, synthetic 15-19/20: the cluster rules count windows); every other
window encoded and the others interpolated (AMI 37.5 % but count 3/10, sample.wav one speaker, 48.6 %).
Tried and not kept (numbers in raysys/models/builtin_diarization.py and the session report): lower
or adaptive VAD thresholds (trn01's "speech" is laughter and murmurs that silero scores ~0; lower
thresholds add false alarms elsewhere), webrtcvad (10-25 s of false alarms per file), level
normalisation before the encoder (sample or trn05/06 break at every threshold), other windows,
thresholds, minimum cluster shares and spectral clustering (each broke sample.wav or single-speaker
files), overlap cues (none above ~60 % precision; sample.wav's DER rose). Forcing the true speaker
count raises the DER on 6 of the 9 scoreable excerpts: the missing speakers talk for under 2 s or
only over others.

    .venv/bin/python bench/diarization.py                 # builtin on all, pyannote on sample.wav
    .venv/bin/python bench/diarization.py --pyannote-all  # pyannote on every file (slow on CPU)
    .venv/bin/python bench/diarization.py --no-pyannote --no-synthetic   # the shared files only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "diarization"
READ = DATA.parent / "asr" / "read"
PEER_SAMPLE = 0.091
PEER_TRN_MEAN = 0.495


def der_of(reference, segments, uri):
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    hyp = Annotation(uri=uri)
    for i, s in enumerate(segments):
        hyp[Segment(s["start"], s["end"]), i] = s["speaker"]
    uem = Segment(0, 30.0)
    out = {}
    for collar in (0.25, 0.0):
        metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
        comp = metric.compute_components(reference, hyp, uem=uem)
        out[collar] = comp
    return out


def rate(comp) -> float:
    return (comp["confusion"] + comp["missed detection"] + comp["false alarm"]) / max(comp["total"], 1e-9)


def one_speaker_floor(reference, segments, uri) -> tuple[float, float]:
    """DER@0.25 of perfect speaker labels given one speaker at a time: (with a perfect VAD, within the
    speech this diarizer found). Each moment of reference speech goes to the speaker whose turn started
    first; what a one-speaker-per-frame diarizer could reach at best, its labels all right."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    found = Timeline([Segment(s["start"], s["end"]) for s in segments]).support()
    ref = reference.crop(Segment(0, 30.0))
    ideal, within, used, i = Annotation(uri=uri), Annotation(uri=uri), Timeline(), 0
    for seg, _, label in sorted(ref.itertracks(yield_label=True), key=lambda t: t[0].start):
        for piece in (Timeline([seg]).extrude(used.support()) if len(used) else Timeline([seg])):
            ideal[piece, i] = label
            for part in Timeline([piece]).crop(found):
                within[part, i] = label
                i += 1
            i += 1
        used.add(seg)
    metric = DiarizationErrorRate(collar=0.25, skip_overlap=False)
    return metric(reference, ideal, uem=Segment(0, 30.0)), metric(reference, within, uem=Segment(0, 30.0))


def speakers_2s(reference, min_seconds: float = 2.0) -> int:
    """Reference speakers with at least ``min_seconds`` of speech, at least one (a file with any speech)."""
    return max(1, sum(1 for label in reference.labels() if reference.label_duration(label) >= min_seconds))


def synthetic_table(builtin) -> None:
    """The synthetic calls (raysys.models.mixtures.validation_set): 1-4 LibriSpeech voices per call."""
    import numpy as np
    from pyannote.core import Annotation, Segment

    from raysys.models.mixtures import validation_set

    if not READ.exists():
        print(f"synthetic calls: {READ} is absent; skipped.")
        return
    mixes = validation_set(READ)
    print()
    print("synthetic calls: LibriSpeech voices joined by raysys.models.mixtures.validation_set (checked beside "
          "trn00-09 when the thresholds were chosen)")
    header = f"{'call':18} {'secs':>5} {'ref':>4} {'ref2s':>5} {'found':>5} | {'DER@.25':>7} {'RTF':>7}"
    print(header)
    print("-" * len(header))
    by_count: dict[int, list] = {}
    for m in mixes:
        ref = Annotation(uri=m.name)
        for i, t in enumerate(m.turns):
            ref[Segment(t["start"], t["end"]), i] = t["speaker"]
        duration = len(m.audio) / 16000
        t0 = time.perf_counter()
        segs = builtin.diarize(m.audio)
        rtf = (time.perf_counter() - t0) / duration
        hyp = Annotation(uri=m.name)
        for i, s in enumerate(segs):
            hyp[Segment(s["start"], s["end"]), i] = s["speaker"]
        from pyannote.metrics.diarization import DiarizationErrorRate

        der = DiarizationErrorRate(collar=0.25, skip_overlap=False)(ref, hyp, uem=Segment(0, duration))
        nspk, ref_2s = len({s["speaker"] for s in segs}), speakers_2s(ref)
        by_count.setdefault(len(m.speakers), []).append((nspk == ref_2s, der))
        print(f"{m.name:18} {duration:5.0f} {len(m.speakers):>4} {ref_2s:>5} {nspk:>4}{'=' if nspk == ref_2s else ' '} | "
              f"{der:7.1%} {rtf:7.4f}")
    print("-" * len(header))
    for k, rows in sorted(by_count.items()):
        print(f"{k} speaker(s): count exact {sum(ok for ok, _ in rows)}/{len(rows)}, mean DER@0.25 "
              f"{np.mean([d for _, d in rows]):.1%}")
    rows = [r for v in by_count.values() for r in v]
    print(f"all: count exact {sum(ok for ok, _ in rows)}/{len(rows)}, mean DER@0.25 {np.mean([d for _, d in rows]):.1%}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pyannote-all", action="store_true", help="run the random pyannote pipeline on every file")
    parser.add_argument("--no-pyannote", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic 1-4 speaker calls")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"bench/diarization: {DATA} is absent; nothing to measure.")
        return 0

    import torch
    from pyannote.database.util import load_rttm

    from raysys.audio import load_audio
    from raysys.models.builtin_diarization import BuiltinDiarizer

    torch.set_num_threads(1)
    refs = load_rttm(DATA / "sample.rttm")
    refs.update(load_rttm(DATA / "debug.train.rttm"))
    names = ["sample"] + [f"trn{i:02d}" for i in range(10)]
    audio = {n: load_audio(DATA / f"{n}.wav")[0] for n in names}

    builtin = BuiltinDiarizer()
    torch.set_num_threads(1)
    builtin.diarize(audio["sample"][:16000 * 5])  # warm-up

    pyannote = None
    if not args.no_pyannote:
        from raysys.models.pyannote_backend import PyannoteDiarizer
        from raysys.models.random_checkpoints import build_pyannote_pipeline

        folder = build_pyannote_pipeline(Path(tempfile.mkdtemp(prefix="bench-pyannote-")) / "pipeline",
                                         chunk_seconds=10.0, step=0.1)
        pyannote = PyannoteDiarizer(str(folder))
        pyannote.diarize(audio["sample"][:16000 * 10])

    print(f"torch threads: {torch.get_num_threads()}  (pyannote: random weights, DER meaningless, speed only)")
    header = (f"{'file':7} {'ref':>5} {'ref2s':>5} {'found':>5} | {'builtin DER@.25':>15} {'DER@0':>7} {'miss':>5} {'FA':>5} {'conf':>5} "
              f"{'RTF':>7} {'cpuRTF':>7} | {'floor':>5} {'ourVAD':>6} | {'pyannote RTF':>12}")
    print(header)
    print("-" * len(header))
    totals = {0.25: [], 0.0: []}
    rtfs = []
    cpu_rtfs = []
    py_rtfs = []
    load_before = os.getloadavg()[0]
    per_file = {0.25: [], 0.0: []}
    found: dict[str, tuple[int, int, int]] = {}
    floors: list[tuple[float, float]] = []
    for n in names:
        wav = audio[n]
        duration = len(wav) / 16000
        t0, c0 = time.perf_counter(), time.process_time()
        segs = builtin.diarize(wav)
        rtf = (time.perf_counter() - t0) / duration
        cpu_rtf = (time.process_time() - c0) / duration
        comps = der_of(refs[n], segs, n)
        py = ""
        if pyannote is not None and (n == "sample" or args.pyannote_all):
            t0 = time.perf_counter()
            pyannote.diarize(wav)
            prtf = (time.perf_counter() - t0) / duration
            py_rtfs.append(prtf)
            py = f"{prtf:12.3f}"
        c = comps[0.25]
        nspk = len({s["speaker"] for s in segs})
        ref_all, ref_2s = len(refs[n].labels()), speakers_2s(refs[n])
        found[n] = (ref_all, ref_2s, nspk)
        mark = "=" if nspk == ref_2s else " "
        floor, floor_vad = one_speaker_floor(refs[n], segs, n)
        print(f"{n:7} {ref_all:>5} {ref_2s:>5} {nspk:>4}{mark} | {rate(c):15.1%} {rate(comps[0.0]):7.1%} "
              f"{c['missed detection']:5.1f} {c['false alarm']:5.1f} {c['confusion']:5.1f} {rtf:7.4f} {cpu_rtf:7.4f} | "
              f"{floor:5.1%} {floor_vad:6.1%} | {py:>12}")
        rtfs.append(rtf)
        cpu_rtfs.append(cpu_rtf)
        if n != "sample":
            for collar in (0.25, 0.0):
                totals[collar].append(comps[collar])
                per_file[collar].append(rate(comps[collar]))
            floors.append((floor, floor_vad))

    def pooled(collar):
        comps = totals[collar]
        err = sum(c["confusion"] + c["missed detection"] + c["false alarm"] for c in comps)
        return err / sum(c["total"] for c in comps)

    import numpy as np

    print("-" * len(header))
    sample_der = der_of(refs["sample"], builtin.diarize(audio["sample"]), "sample")
    print(f"sample.wav DER@0.25: builtin {rate(sample_der[0.25]):.1%}   peer prototype {PEER_SAMPLE:.1%}   "
          f"target <= 10%")
    print(f"trn00-09 mean of per-file DER@0.25: builtin {np.mean(per_file[0.25]):.1%}  (DER@0: "
          f"{np.mean(per_file[0.0]):.1%})   peer prototype {PEER_TRN_MEAN:.1%}")
    print(f"trn00-09 mean DER@0.25 of perfect labels, one speaker at a time (the floor without overlap detection): "
          f"{np.mean([f for f, _ in floors]):.1%}; within the speech our VAD found: {np.mean([v for _, v in floors]):.1%}")
    trn = [v for k, v in found.items() if k != "sample"]
    print(f"trn00-09 speaker count exact: {sum(f == r for _, r, f in trn)}/{len(trn)} counting speakers with >= 2 s "
          f"(at least one), {sum(f == a for a, _, f in trn)}/{len(trn)} counting every speaker; files with speech "
          f"and no speaker found: {sum(f == 0 for _, _, f in trn)}   targets >= 8/10, 0   (before: 6/10, 1/10, 1)")
    print(f"trn00-09 pooled DER@0.25 (total error / total speech): builtin {pooled(0.25):.1%}  "
          f"(DER@0: {pooled(0.0):.1%})")
    print(f"RTF builtin: mean {np.mean(rtfs):.4f}, max {np.max(rtfs):.4f} (wall);  CPU time: mean "
          f"{np.mean(cpu_rtfs):.4f}, max {np.max(cpu_rtfs):.4f}   target <= 0.02   "
          f"(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs)")
    for db in (-12, -6, 6):
        louder = np.clip(audio["sample"] * 10 ** (db / 20), -1, 1)
        segs = builtin.diarize(louder)
        print(f"sample.wav at {db:+d} dB: DER@0.25 {rate(der_of(refs['sample'], segs, 'sample')[0.25]):.1%}, "
              f"{len({s['speaker'] for s in segs})} speaker(s)")
    if not args.no_synthetic:
        synthetic_table(builtin)
    if py_rtfs:
        print(f"RTF pyannote (random weights, CPU): mean {np.mean(py_rtfs):.3f} over {len(py_rtfs)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
