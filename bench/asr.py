"""Speech-to-text benchmark: word error rate and real-time factor per backend, side by side.

Sets: ../shared/data/asr/read (131 read utterances; its three subsets reported apart, as its SOURCES.md
asks: LibriSpeech test-clean, Mini LibriSpeech train-clean-5 — seen in training by any LibriSpeech
model — and LJSpeech) and ../shared/data/asr/telephone_sim (20 of them band-limited to 300-3400 Hz and
mu-law companded). WER from jiwer after lower-casing and dropping punctuation (LJSpeech's normalised
transcripts have case and punctuation; LibriSpeech's have none). Each utterance is decoded on its own,
models loaded once, one thread. RTF = processing seconds / audio seconds, printed as wall time and as
this process's CPU time (the contention-free figure on a shared machine; the load average is printed).

Backends: pocketsphinx (the offline default; its settings from raysys.models.transcription, override
with --ps KEY=VALUE) and faster-whisper on a random-weight tiny Whisper built offline (speed only: its
words are noise), or on a real model folder with --whisper-model DIR (then WER too).
Targets for the offline default: WER <= 30 % on the read set, RTF <= 0.3 on 2 cores.

    .venv/bin/python bench/asr.py                         # pocketsphinx on both sets, random whisper speed
    .venv/bin/python bench/asr.py --limit 20 --ps maxhmmpf=30000 --ps beam=1e-60   # try settings
    .venv/bin/python bench/asr.py --whisper-model ~/models/faster-whisper-small
    .venv/bin/python bench/asr.py --call 300   # process_call_analytics, 5-min call: no turns vs platform turns

``--call SECONDS`` builds bench/analytics.py's two-speaker call (real utterances of ../shared/data/speech)
and times ``process_call_analytics`` on it (local Ray, embedded PostgreSQL and chDB, the default
backends) twice with the call's turns removed before each run (it transcribes) and twice with the
platform's turns (it does not), after one warm-up run that loads the models.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "asr"


def norm(text: str) -> str:
    text = text.lower().replace("-", " ")
    return " ".join(re.sub(r"[^a-z' ]", " ", text).split())


def load_set(name: str) -> list[dict]:
    folder = DATA / name
    texts = dict(line.rstrip("\n").split("\t", 1) for line in (folder / "transcripts.tsv").open())
    manifest_path = folder / "manifest.tsv" if (folder / "manifest.tsv").exists() else DATA / "read" / "manifest.tsv"
    subset = {r[0]: r[1] for r in (line.rstrip("\n").split("\t") for line in manifest_path.open()) if r[0] != "id"}
    return [{"id": p.stem, "path": p, "ref": norm(texts[p.stem]), "subset": subset.get(p.stem, "?")}
            for p in sorted(folder.glob("*.wav")) if p.stem in texts]


def run(model, items: list[dict]) -> list[dict]:
    import soundfile as sf

    out = []
    for it in items:
        wav, _ = sf.read(it["path"], dtype="float32")
        t0, c0 = time.perf_counter(), time.process_time()
        res = model.transcribe(wav)
        out.append({**it, "hyp": norm(res["text"]), "seconds": len(wav) / 16000,
                    "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0})
    return out


def summary(rows: list[dict], with_wer: bool) -> dict:
    import jiwer

    audio = sum(r["seconds"] for r in rows)
    out = {"n": len(rows), "audio_s": audio, "rtf_wall": sum(r["wall"] for r in rows) / audio,
           "rtf_cpu": sum(r["cpu"] for r in rows) / audio}
    if with_wer:
        out["wer"] = jiwer.wer([r["ref"] for r in rows], [r["hyp"] or "<empty>" for r in rows])
    return out


def groups(rows: list[dict]) -> dict[str, list[dict]]:
    g: dict[str, list[dict]] = {}
    for r in rows:
        g.setdefault(r["subset"], []).append(r)
    return {"all": rows, **dict(sorted(g.items()))}


def bench_call(seconds: float) -> int:
    import asyncio
    import statistics
    import tempfile as tf
    from datetime import UTC, datetime, timedelta

    import ray

    sys.path.insert(0, str(ROOT / "bench"))
    from analytics import build_call  # bench/analytics.py: the same 5-minute call as its analytics figure

    from raysys.config import Settings
    from raysys.constants import RAY_NAMESPACE
    from raysys.stack import start_postgres, stop_postgres
    from raysys.storage.postgres import Call, Database
    from raysys.tasks.analytics import process_call_analytics
    from raysys.tasks.registry import TaskContext

    work = Path(tf.mkdtemp(prefix="raysys-bench-asr-"))
    pid, pg_url = start_postgres(work / "pg")
    settings = Settings.from_env({}, data_dir=str(work / "data"), postgres_url=pg_url,
                                 clickhouse_url=f"chdb://{work / 'chdb'}", allowed_roots=(str(work / "audio"),))
    ray.init(num_cpus=max(4, os.cpu_count() or 2), namespace=RAY_NAMESPACE, include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        mono, _, turns = build_call(seconds, work / "audio" / "bench")
        start = datetime(2025, 3, 10, 9, tzinfo=UTC)

        async def set_turns(with_turns: bool) -> None:
            db = await Database.open(settings.postgres_url)
            await db.upsert_tenant("bench")
            await db.upsert_calls([Call(id="bench_call", tenant_id="bench", customer_id="c1", started_at=start,
                                        answered_at=start, ended_at=start + timedelta(seconds=seconds),
                                        audio_path=str(mono), audio_layout="mono")])
            await db.replace_turns("bench", "bench_call", turns if with_turns else [])
            await db.close()

        ctx = TaskContext(settings=settings, task_id="bench")
        asyncio.run(set_turns(True))
        process_call_analytics(ctx, "bench_call")  # loads the models
        figures = {}
        for label, with_turns in (("no turns (transcribed)", False), ("platform turns", True)):
            times = []
            for _ in range(2):
                asyncio.run(set_turns(with_turns))
                t0 = time.perf_counter()
                res = process_call_analytics(ctx, "bench_call")
                times.append(time.perf_counter() - t0)
                print(f"  {label}: {times[-1]:.1f} s, intent {res['intent']}, stages {res['timings']}", flush=True)
            figures[label] = statistics.median(times)
    finally:
        ray.shutdown()
        stop_postgres(pid)
    load = os.getloadavg()
    print(f"\nprocess_call_analytics, {seconds:.0f} s two-speaker mono call (median of 2; load {load[0]:.1f} on "
          f"{os.cpu_count()} CPUs):")
    for label, value in figures.items():
        print(f"  {label:<24} {value:7.1f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="every k-th utterance so that about this many run")
    ap.add_argument("--ps", action="append", default=[], help="PocketSphinx setting KEY=VALUE (repeatable)")
    ap.add_argument("--whisper-model", default=None, help="a faster-whisper model folder (default: random tiny)")
    ap.add_argument("--skip-whisper", action="store_true")
    ap.add_argument("--only", choices=("read", "telephone_sim"), default=None, help="one set only")
    ap.add_argument("--call", type=float, default=0.0, metavar="SECONDS",
                    help="instead: process_call_analytics on a call of SECONDS, without and with platform turns")
    args = ap.parse_args()
    if args.call:
        return bench_call(args.call)
    if not DATA.exists():
        print(f"skipped: {DATA} is not present on this machine")
        return 0
    import torch

    torch.set_num_threads(1)
    from raysys.models.transcription import POCKETSPHINX_CONFIG, make_transcriber

    sets = {"read": load_set("read"), "telephone_sim": load_set("telephone_sim")}
    if args.only:
        sets = {args.only: sets[args.only]}
    if args.limit:
        sets = {k: v[:: max(1, len(v) // args.limit)] for k, v in sets.items()}
    overrides = {}
    for kv in args.ps:
        key, _, value = kv.partition("=")
        overrides[key] = float(value) if re.fullmatch(r"[-+0-9.e]+", value) else value
    backends = [("pocketsphinx", make_transcriber("pocketsphinx", config=overrides),
                 {**POCKETSPHINX_CONFIG, **overrides}, True)]
    if not args.skip_whisper:
        folder, real = args.whisper_model, True
        if folder is None:
            from raysys.models.random_whisper import build_random_whisper

            folder, real = str(build_random_whisper(tempfile.mkdtemp(prefix="asr-bench-"))), False
        whisper = make_transcriber("faster-whisper", model=folder, config=None if real else
                                   {"beam_size": 1, "temperature": 0.0, "max_new_tokens": 64})
        backends.append(("faster-whisper" + ("" if real else " (random weights: speed only)"), whisper,
                         {"compute_type": whisper.compute_type}, real))
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs; one thread")
    header = f"{'backend':<44} {'set':<15} {'subset':<32} {'n':>4} {'audio s':>8} {'WER %':>7} {'RTF wall':>9} {'RTF cpu':>8}"
    lines = []
    for name, model, settings, with_wer in backends:
        model.transcribe(__import__("numpy").zeros(16000, "float32") + 1e-3)  # warm-up
        for set_name, items in sets.items():
            rows = run(model, items)
            for sub, rs in groups(rows).items():
                s = summary(rs, with_wer)
                wer = f"{100 * s['wer']:7.1f}" if with_wer else f"{'-':>7}"
                lines.append(f"{name:<44} {set_name:<15} {sub:<32} {s['n']:>4} {s['audio_s']:>8.1f} {wer} "
                             f"{s['rtf_wall']:>9.3f} {s['rtf_cpu']:>8.3f}")
            print(lines[-1], file=sys.stderr, flush=True)
        lines.append(f"{'':<44} settings: {settings}")
    print(header)
    print("\n".join(lines))
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("targets (pocketsphinx, read set): WER <= 30 %, RTF <= 0.3 on 2 cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
