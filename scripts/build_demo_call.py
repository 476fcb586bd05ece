"""Build raysys/assets/demo_call.wav: a two-speaker "call" assembled from real read utterances.

The demo's recorded call must say what its analytics report, so it is made of real recordings whose
transcripts are known: the agent is LJSpeech's reader (public domain), the customer a LibriSpeech
reader (speaker 2416, CC BY 4.0). Utterances alternate agent/customer with short pauses, each scaled to
the same loudness. Writes the WAV (16 kHz mono 16-bit) and ``demo_call_reference.json`` (the turns:
role, start, end, reference text, source utterance) beside it. Deterministic.

Usage: python scripts/build_demo_call.py [--data ../shared/data/asr/read] [--out raysys/assets]
Licences and attribution: raysys/assets/SOURCES.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
GAP_S = 0.7
TARGET_DBFS = -22.0
# (role, utterance id): the agent speaks first, as agents open calls.
SCRIPT = [("agent", "LJ002-0114"), ("customer", "2416-152139-0040"), ("agent", "LJ002-0153"),
          ("customer", "2416-152139-0022"), ("agent", "LJ002-0172")]


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=root.parent / "shared" / "data" / "asr" / "read")
    ap.add_argument("--out", type=Path, default=root / "raysys" / "assets")
    args = ap.parse_args()
    texts = dict(line.rstrip("\n").split("\t", 1) for line in (args.data / "transcripts.tsv").open())
    manifest = {r[0]: r for r in (line.rstrip("\n").split("\t") for line in (args.data / "manifest.tsv").open())}
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    pieces, turns, t = [gap], [], GAP_S
    for role, uid in SCRIPT:
        wav, rate = sf.read(args.data / f"{uid}.wav", dtype="float32")
        assert rate == RATE and wav.ndim == 1, f"{uid}: expected 16 kHz mono"
        rms = float(np.sqrt(np.mean(wav ** 2)))
        wav = wav * (10 ** (TARGET_DBFS / 20) / max(rms, 1e-6))
        turns.append({"role": role, "start": round(t, 3), "end": round(t + len(wav) / RATE, 3), "text": texts[uid],
                      "utterance": uid, "subset": manifest[uid][1], "licence": manifest[uid][4],
                      "source": manifest[uid][5]})
        pieces += [wav, gap]
        t += len(wav) / RATE + GAP_S
    audio = np.clip(np.concatenate(pieces), -1.0, 1.0)
    args.out.mkdir(parents=True, exist_ok=True)
    sf.write(args.out / "demo_call.wav", audio, RATE, subtype="PCM_16")
    (args.out / "demo_call_reference.json").write_text(json.dumps({"duration": round(len(audio) / RATE, 3),
                                                                   "turns": turns}, indent=1) + "\n")
    print(f"{args.out / 'demo_call.wav'}: {len(audio) / RATE:.1f} s, {len(turns)} turns")


if __name__ == "__main__":
    main()
