"""Emotion benchmark: speaker-independent cross-validation on EmoDB, trained model vs today's heuristic.

Protocol (fixed before looking at any test fold's figure, and the same for every fold):
- EmoDB's 10 speakers, sorted, in 5 fixed pairs (03+08, 09+10, 11+12, 13+14, 15+16). Each fold trains
  the shipped recipe (:mod:`raysys.models.emotion_training`: same features, same augmentation, same
  C) on the clips of the other 8 speakers and scores the 2 held-out speakers; no speaker is ever in
  both parts, and nothing (scaling included) is fitted on the held-out speakers.
- Two test conditions: the clips as recorded ("full band") and through a simulated phone line
  (8 kHz, 300-3400 Hz band-pass, G.711 mu-law; :func:`raysys.models.emotion_features.telephone`).
- Arousal ROC AUC: P(high arousal) against high = anger, joy, fear; low = neutral, boredom, sadness
  (disgust left out, as it sits between). UAR: four-class unweighted average recall (mean of the
  per-label recalls) on the clips whose emotion has a label (neutral, anger, joy, sadness: "UAR-4"),
  and with boredom counted as neutral too ("UAR+bored"). Figures are pooled over the 5 folds' test
  predictions (mean of per-fold figures in brackets).
- The heuristic (bench/emotion_heuristic.py, the code that shipped before) scored two ways: each clip
  on its own, as ``POST /v1/emotion`` sees a short clip, and each fold's test clips as the segments
  of one recording (its loudness reference is then the other clips).
- Real-time factor: CPU seconds of ``classify`` on every clip's audio / audio seconds, one thread.
- English sanity check (no emotion labels; read, neutral speech): the share labelled neutral and the
  mean arousal on ../shared/data/speech, asr/read and asr/telephone_sim.
Design note: the feature set and C were chosen while these figures were visible during development
(one researcher, no separate development corpus), so they are somewhat optimistic for EmoDB; the
English sanity check and other corpora are the guard against that.

    .venv/bin/python bench/emotion.py
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DATA = ROOT.parent / "shared" / "data"
EMODB = DATA / "emotion" / "emodb"
TARGET_AUC, TARGET_UAR = 0.85, 0.60


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def uar(y: list[str], pred: list[str]) -> float:
    labels = sorted(set(y))
    return float(np.mean([np.mean([p == lab for t, p in zip(y, pred, strict=True) if t == lab]) for lab in labels]))


def metrics(emotions: list[str], arousal: np.ndarray, labels: list[str]) -> dict[str, float]:
    from raysys.models.emotion_training import AROUSAL_OF, LABEL_OF

    a = [i for i, e in enumerate(emotions) if e in AROUSAL_OF]
    four = [i for i, e in enumerate(emotions) if e in LABEL_OF and e != "L"]
    bored = [i for i, e in enumerate(emotions) if e in LABEL_OF]
    return {"auc": auc(np.array([AROUSAL_OF[emotions[i]] for i in a]), arousal[a]),
            "uar4": uar([LABEL_OF[emotions[i]] for i in four], [labels[i] for i in four]),
            "uar_bored": uar([LABEL_OF[emotions[i]] for i in bored], [labels[i] for i in bored])}


def main() -> int:
    if not EMODB.is_dir():
        print(f"skipped: EmoDB not found at {EMODB}")
        return 0
    from emotion_heuristic import HeuristicEmotion, heuristic_scores

    from raysys.audio import load_audio
    from raysys.models import emotion_training as recipe
    from raysys.models.emotion import LABELS, BuiltinEmotion
    from raysys.models.emotion_features import telephone

    load = os.getloadavg()[0]
    clips = recipe.emodb_clips(EMODB)
    t0 = time.perf_counter()
    feats = recipe.featurize(clips)
    print(f"EmoDB: {len(clips)} clips, {len({c.speaker for c in clips})} speakers; features for every training condition "
          f"in {time.perf_counter() - t0:.0f} s")
    speakers = sorted({c.speaker for c in clips})
    folds = [speakers[i:i + 2] for i in range(0, len(speakers), 2)]
    emotions = [c.emotion for c in clips]
    spk = np.array([c.speaker for c in clips])
    audio = [load_audio(c.path)[0] for c in clips]
    phone = [telephone(w) for w in audio]

    pooled = {k: {"arousal": np.zeros(len(clips)), "labels": [""] * len(clips)}
              for k in ("model/full", "model/telephone", "per-file/full", "per-file/telephone",
                        "one-call/full", "one-call/telephone")}
    per_fold: dict[str, list[dict]] = {k: [] for k in pooled}
    with tempfile.TemporaryDirectory() as tmp:
        for test in folds:
            train = [i for i, s in enumerate(spk) if s not in test]
            held = [i for i, s in enumerate(spk) if s in test]
            weights = recipe.fit({c: f[train] for c, f in feats.items()}, [clips[i] for i in train])
            path = Path(tmp) / "fold.json"
            path.write_text(json.dumps(weights))
            model = BuiltinEmotion(weights=path)
            for cond, wavs in (("full", audio), ("telephone", phone)):
                probs, arousal = model.score_features(feats[cond][held])
                h_file = heuristic_scores([wavs[i] for i in held], together=False)
                h_call = heuristic_scores([wavs[i] for i in held], together=True)
                for key, (ar, labs) in ((f"model/{cond}", (arousal, [LABELS[j] for j in probs.argmax(axis=1)])),
                                        (f"per-file/{cond}", h_file), (f"one-call/{cond}", h_call)):
                    for k, i in enumerate(held):
                        pooled[key]["arousal"][i] = ar[k]
                        pooled[key]["labels"][i] = labs[k]
                    per_fold[key].append(metrics([emotions[i] for i in held], np.asarray(ar), list(labs)))

    print(f"\nSpeaker-independent 5-fold CV (train 8 speakers, test 2); targets AUC >= {TARGET_AUC}, "
          f"UAR-4 >= {TARGET_UAR}")
    print(f"{'':34s} {'arousal AUC':>18s} {'UAR-4':>16s} {'UAR+bored':>16s}")
    names = {"model": "trained builtin (this)", "per-file": "heuristic, one clip per call",
             "one-call": "heuristic, fold as one call"}
    for key in pooled:
        kind, cond = key.split("/")
        m = metrics(emotions, pooled[key]["arousal"], pooled[key]["labels"])
        mean = {k: np.mean([f[k] for f in per_fold[key]]) for k in m}
        print(f"{names[kind] + ', ' + cond:34s} {m['auc']:8.3f} ({mean['auc']:.3f}) {m['uar4']:7.3f} ({mean['uar4']:.3f})"
              f" {m['uar_bored']:7.3f} ({mean['uar_bored']:.3f})")
    for cond in ("full", "telephone"):
        labs = pooled[f"model/{cond}"]["labels"]
        print(f"\nconfusion, trained model, {cond} (rows: truth; cols: {', '.join(LABELS)})")
        for e in ("N", "L", "W", "F", "T", "A", "E"):
            row = [sum(1 for i, x in enumerate(emotions) if x == e and labs[i] == lab) for lab in LABELS]
            print(f"  {recipe.EMOTION_NAMES[e]:10s} {row}")

    # Real-time factor on the clips' audio (features + heads), CPU time of this process, one thread.
    shipped = BuiltinEmotion()
    seconds = sum(len(w) for w in audio) / 16000
    shipped.classify(audio[:4])
    c0 = time.process_time()
    w0 = time.perf_counter()
    for i in range(0, len(audio), 32):  # the actor's batch size
        shipped.classify(audio[i:i + 32])
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0

    c0 = time.process_time()
    HeuristicEmotion().classify(audio)
    h_cpu = time.process_time() - c0
    print(f"\nreal-time factor over {seconds:.0f} s of audio: trained {cpu / seconds:.4f} CPU "
          f"({wall / seconds:.4f} wall, load average {load:.1f} on {os.cpu_count()} CPUs); "
          f"heuristic {h_cpu / seconds:.4f} CPU; target <= 0.005")

    print("\nEnglish read speech (neutral, never seen in training): share labelled neutral, mean arousal, "
          "share with arousal > 0.5")
    for name in ("speech", "asr/read", "asr/telephone_sim"):
        files = sorted((DATA / name).glob("*.wav"))
        if not files:
            continue
        wavs = [load_audio(p)[0] for p in files]
        out = shipped.classify(wavs)
        ar = np.array([r["arousal"] for r in out])
        h_ar, _ = heuristic_scores(wavs, together=False)
        print(f"  {name:18s} n={len(files):3d}  trained: neutral {np.mean([r['label'] == 'neutral' for r in out]):.2f},"
              f" arousal {ar.mean():.2f}, high {np.mean(ar > 0.5):.2f}   heuristic (per file): arousal "
              f"{np.mean(h_ar):.2f}, high {np.mean(np.asarray(h_ar) > 0.5):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
