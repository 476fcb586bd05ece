"""Analytics benchmark: call analytics for a 5-minute two-speaker call; daily aggregation over 1,000 and
1,000,000 calls. Prints raysys' figures beside the seed Celery service's published table.

    ./dev bench analytics [--skip-call] [--skip-million] [--intents]

The call is built from real utterances of two speakers (../shared/data/speech), alternated with short
pauses and a few overlaps to 300 s, as a mono file and as a stereo file (agent left, customer right).
It is analysed by ``process_call_analytics`` on a local Ray cluster with embedded PostgreSQL and chDB,
once to load the models and then three times (median reported). Aggregation runs
``aggregate_daily_metrics`` on chDB through the Warehouse actor: 1,000 synthetic calls
(raysys.synthetic) and 1,000,000 calls generated inside ClickHouse, spread over the day and the FCR
window before it, so the run that recomputes those eight days reads all of them.
``bench_agents`` times the tenant rows alone, the per-agent scorecards alone and both (as
the task runs them) on 1,000,000 calls, wall and CPU time, beside the README's earlier tenant-only figure.
``--intents`` also measures Banking77 held-out accuracy (stratified 80/20 split).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
SR = 16_000
# The README's 1,000,000-call (8 days) aggregation before the agents were added: tenant rows only, wall,
# quiet AVX2 EPYC.
PREVIOUS_TENANT_ONLY_S = 0.41

AGENT_LINES = ["Thank you for calling, how can I help you today?", "Let me look into that for you.",
               "I can see the duplicate charge on your account.", "I have refunded it, it takes three days.",
               "Is there anything else I can help with?"]
CUSTOMER_LINES = ["Hi, I was charged twice for the same order.", "It was last Tuesday, the same amount twice.",
                  "Okay, so when will I get the money back?", "Great, thanks for sorting it out.", "No, that's all."]


def build_call(seconds: float, out_dir: Path) -> tuple[Path, Path, list]:
    """(mono wav, stereo wav, turns) of a two-speaker call of ``seconds`` from real utterances."""
    import numpy as np
    import soundfile as sf

    from raysys.storage.postgres import Turn

    def load(prefix):
        return [sf.read(p, dtype="float32")[0] for p in sorted((DATA / "speech").glob(f"{prefix}_*.wav"))]

    agent, customer = load("spk1"), load("spk2")
    total = int(seconds * SR)
    left, right = np.zeros(total, np.float32), np.zeros(total, np.float32)
    turns, t, k = [], 0.3, 0
    while True:
        role, clips, track = ("agent", agent, left) if k % 2 == 0 else ("customer", customer, right)
        clip = clips[(k // 2) % len(clips)]
        start = int(t * SR)
        if start + len(clip) > total:
            break
        track[start:start + len(clip)] += clip
        end = t + len(clip) / SR
        lines = AGENT_LINES if role == "agent" else CUSTOMER_LINES
        turns.append(Turn(len(turns), role, round(t, 3), round(end, 3), lines[(k // 2) % len(lines)]))
        # Mostly a pause; every seventh turn the next speaker starts 0.4 s early (overlap).
        t = end - 0.4 if k % 7 == 6 else end + 0.25 + 0.5 * ((k * 37) % 10) / 10
        k += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    mono, stereo = out_dir / "call_mono.wav", out_dir / "call_stereo.wav"
    sf.write(mono, np.clip(left + right, -1, 1), SR)
    sf.write(stereo, np.stack([left, right], axis=1), SR)
    return mono, stereo, turns


def cpu_description() -> str:
    """The CPU the figures come from: model name, logical CPUs and the flags that decide the encoders' speed
    (bfloat16 autocast needs AMX or AVX512-BF16; without them the speaker encoder runs in float32)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    have = " ".join(f"{f}{'+' if f in flags else '-'}" for f in wanted)
    return f"{model}, {os.cpu_count()} logical CPUs, {have}"


def bench_call(settings, ctx_cls, seconds: float) -> dict[str, float]:
    from raysys.storage.postgres import Call, Database
    from raysys.tasks.analytics import process_call_analytics

    mono, stereo, turns = build_call(seconds, Path(settings.allowed_roots[0]) / "bench")
    start = datetime(2025, 3, 10, 9, tzinfo=UTC)

    async def seed():
        db = await Database.open(settings.postgres_url)
        await db.upsert_tenant("bench")
        calls = [Call(id=f"bench_{name}", tenant_id="bench", customer_id="c1", started_at=start,
                      answered_at=start, ended_at=start + timedelta(seconds=seconds), audio_path=str(path),
                      audio_layout=name) for name, path in (("mono", mono), ("stereo", stereo))]
        await db.upsert_calls(calls)
        for c in calls:
            await db.replace_turns("bench", c.id, turns)
        await db.close()

    asyncio.run(seed())
    ctx = ctx_cls(settings=settings, task_id="bench")
    out = {}
    for name in ("mono", "stereo"):
        process_call_analytics(ctx, f"bench_{name}")  # loads the models
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            res = process_call_analytics(ctx, f"bench_{name}")
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
        print(f"  {name}: {[round(x, 2) for x in times]} s; speakers {res['num_speakers']}, "
              f"stages {res['timings']}", flush=True)
    return out


GEN_SQL = """
INSERT INTO call_facts (tenant_id, call_id, day, started_at, customer_id, agent_id, channel, intent, resolved,
    talk_seconds, hold_seconds, acw_seconds, aht_seconds, sentiment_mean, sentiment_start, sentiment_end,
    num_speakers, version)
SELECT {t:String}, concat('c', toString(number)), toDate(ts), ts,
    concat('cust', toString(cityHash64(number) % {customers:UInt64})), concat('a', toString(number % 300)), 'voice',
    ['billing_dispute', 'card_lost', 'password_reset', 'delivery_status', 'cancel_subscription', 'refund_request',
     'upgrade_plan', 'technical_issue', 'address_change', 'complaint'][1 + cityHash64(number, 1) % 10],
    cityHash64(number, 2) % 10 < 8, 120 + cityHash64(number, 3) % 400, cityHash64(number, 5) % 60, 45,
    165 + cityHash64(number, 3) % 400 + cityHash64(number, 5) % 60, (toInt64(cityHash64(number, 4) % 200) - 100) / 100,
    0, 0, 2, 1
FROM (SELECT number, toDateTime64({start:DateTime64(3)}, 3, 'UTC')
                     + toIntervalMillisecond(intDiv(number * {span:UInt64}, {n:UInt64})) AS ts
      FROM numbers({n:UInt64}))
"""


def bench_aggregation(settings, ctx_cls, million: bool) -> dict[str, float]:
    from raysys import synthetic
    from raysys.actors.warehouse import Warehouse
    from raysys.tasks.metrics import aggregate_daily_metrics

    ctx = ctx_cls(settings=settings, task_id="bench")
    warehouse = Warehouse(settings)
    out = {}
    day = date(2025, 3, 10)
    ds = synthetic.generate(tenants=1, calls=1000, days=1, seed=1, end=day, tenant_prefix="agg1k")
    warehouse.insert_call_facts([synthetic.call_fact(c) for c in ds.calls])
    cases = [("1,000 calls (one day)", ds.tenants[0], None)]
    if million:
        for label, tenant, days in (("1,000,000 calls (one day)", "agg1m_1d", 1),
                                    ("1,000,000 calls (8 days recomputed)", "agg1m_8d", 8)):
            t0 = time.perf_counter()
            warehouse.command(GEN_SQL, {
                "t": tenant, "customers": 300_000, "n": 1_000_000, "span": days * 86_400_000,
                "start": datetime.combine(day - timedelta(days=days - 1), datetime.min.time())})
            print(f"  generated {label} in {time.perf_counter() - t0:.1f} s", flush=True)
            cases.append((label, tenant, None))
    for label, tenant, _ in cases:
        aggregate_daily_metrics(ctx, date=day.isoformat(), tenant_id=tenant)  # warm the query path
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            res = aggregate_daily_metrics(ctx, date=day.isoformat(), tenant_id=tenant)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
        m = res["metrics"][0]
        print(f"  {label}: {[round(x, 3) for x in times]} s; day total {m['total_calls']}, FCR {m['fcr']:.3f}, "
              f"AHT p90 {m['aht_p90']:.0f} s", flush=True)
    return out


AGENT_GEN_SQL = """
INSERT INTO call_facts (tenant_id, call_id, day, started_at, customer_id, agent_id, channel, intent, resolved,
    talk_seconds, hold_seconds, acw_seconds, aht_seconds, sentiment_mean, sentiment_start, sentiment_end,
    num_speakers, silence_seconds, overlap_seconds, interruptions, agent_talk_share, agent_interruptions,
    customer_sentiment_start, customer_sentiment_end, escalated, version)
SELECT {t:String}, concat('c', toString(number)), toDate(ts), ts,
    concat('cust', toString(cityHash64(number) % 300000)), concat('a', toString(number % 300)), 'voice',
    ['billing_dispute', 'card_lost', 'password_reset', 'delivery_status', 'cancel_subscription', 'refund_request',
     'upgrade_plan', 'technical_issue', 'address_change', 'complaint'][1 + cityHash64(number, 1) % 10],
    cityHash64(number, 2) % 10 < 8, 120 + cityHash64(number, 3) % 400, cityHash64(number, 5) % 60, 45,
    165 + cityHash64(number, 3) % 400 + cityHash64(number, 5) % 60, s, s - 0.2, s + 0.1, 2,
    cityHash64(number, 6) % 40, (cityHash64(number, 7) % 50) / 10, cityHash64(number, 8) % 4,
    if(number % 7 = 0, NULL, 0.3 + (cityHash64(number, 9) % 40) / 100), cityHash64(number, 10) % 3,
    if(number % 11 = 0, NULL, s - 0.3), if(number % 11 = 0, NULL, s + 0.1),
    if(number % 13 = 0, NULL, toUInt8(cityHash64(number, 11) % 20 = 0)), 1
FROM (SELECT number, (toInt64(cityHash64(number, 4) % 200) - 100) / 100 AS s,
             toDateTime64({start:DateTime64(3)}, 3, 'UTC') + toIntervalMillisecond(intDiv(number * 691200000, 1000000)) AS ts
      FROM numbers(1000000))
"""


def bench_agents(work: Path, day: date) -> dict[str, tuple[float, float]]:
    """1,000,000 calls over the 8 days one run recomputes, every scorecard column filled, 300 agents: the
    tenant rows alone, the agent rows alone and both (what ``aggregate_daily_metrics`` runs),
    on an in-process chDB so that the CPU time (all of chDB's threads, ``time.process_time``) is measured
    beside the wall time. Median of three after a warm-up."""
    from raysys.analytics.aggregation import days_to_recompute
    from raysys.storage.warehouse import Warehouse

    wh = Warehouse(f"chdb://{work / 'chdb-agents'}")
    t0 = time.perf_counter()
    wh.command(AGENT_GEN_SQL, {"t": "agents1m", "start": datetime.combine(day - timedelta(days=7), datetime.min.time())})
    print(f"  generated 1,000,000 calls of 300 agents (8 days) in {time.perf_counter() - t0:.1f} s", flush=True)
    first, last = days_to_recompute(day, 7)
    steps = {"tenant rows only": lambda: wh.aggregate_days(first, last, 7, "agents1m"),
             "agent rows only": lambda: wh.aggregate_agents(first, last, 7, "agents1m"),
             "both": lambda: wh.aggregate_daily(first, last, 7, "agents1m")}
    out: dict[str, tuple[float, float]] = {}
    for label, run in steps.items():
        samples = []
        for k in range(4):
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            if k:  # the first run warms the query path
                samples.append((time.perf_counter() - w0, time.process_time() - c0))
        out[label] = (statistics.median(x[0] for x in samples), statistics.median(x[1] for x in samples))
        print(f"  1,000,000 calls, {label}: wall {[round(x[0], 3) for x in samples]} s, "
              f"CPU {[round(x[1], 3) for x in samples]} s", flush=True)
    a1 = wh.agent_metrics("agents1m", day, day, "a1")[0]
    print(f"  agent a1 on {day}: {a1['calls']} calls, AHT {a1['aht_mean']:.0f} s, FCR {a1['fcr']:.3f}, "
          f"escalations {a1['escalations']}/{a1['escalations_known']}", flush=True)
    wh.close()
    return out


def bench_intents() -> float:
    import csv
    from collections import defaultdict

    from raysys.actors.embedding import TextEncoder
    from raysys.analytics.intents import IntentModel

    rows = list(csv.DictReader((DATA / "intents" / "banking77" / "train.csv").open(newline="")))
    by_cat = defaultdict(list)
    for r in rows:
        by_cat[r["category"]].append((r["text"], r["category"]))
    train, test = [], []
    for examples in by_cat.values():
        for k, row in enumerate(examples):
            (test if k % 5 == 4 else train).append(row)
    enc = TextEncoder()
    t0 = time.perf_counter()
    model = IntentModel.train([t for t, _ in train], [c for _, c in train], enc.encode)
    preds = model.predict([t for t, _ in test], enc.encode)
    acc = sum(p == c for (p, _), (_, c) in zip(preds, test, strict=True)) / len(test)
    print(f"  banking77: trained on {len(train)}, tested on {len(test)} (every 5th example of each intent): "
          f"accuracy {acc:.4f} in {time.perf_counter() - t0:.0f} s", flush=True)
    return acc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-call", action="store_true")
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--intents", action="store_true")
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"shared data {DATA} is not present; nothing to benchmark", file=sys.stderr)
        return 1
    import ray
    import torch

    from raysys.config import Settings
    from raysys.constants import RAY_NAMESPACE
    from raysys.stack import start_postgres, stop_postgres
    from raysys.tasks.registry import TaskContext

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="raysys-bench-analytics-"))
    pid, pg_url = start_postgres(work / "pg")
    settings = Settings.from_env({}, data_dir=str(work / "data"), postgres_url=pg_url,
                                 clickhouse_url=f"chdb://{work / 'chdb'}", allowed_roots=(str(work / "audio"),))
    # Three model actors hold one logical CPU each (diarization, emotion, embedding); leave room for tasks.
    ray.init(num_cpus=max(4, os.cpu_count() or 2), namespace=RAY_NAMESPACE, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    results: dict[str, str] = {}
    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    try:
        if not args.skip_call:
            print(f"call analytics, {args.seconds:.0f} s two-speaker call:", flush=True)
            try:
                call = bench_call(settings, TaskContext, args.seconds)
                results["call"] = f"{call['mono']:.2f} s mono, {call['stereo']:.2f} s stereo"
            except ModuleNotFoundError as exc:
                results["call"] = f"not measured ({exc})"
        print("daily aggregation:", flush=True)
        agg = bench_aggregation(settings, TaskContext, not args.skip_million)
        agents = {} if args.skip_million else bench_agents(work, date(2025, 3, 10))
        if args.intents:
            results["intents"] = f"{bench_intents() * 100:.1f} %"
    finally:
        ray.shutdown()
        stop_postgres(pid)
    print()
    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f} at the end")
    print("| Task | seed (Celery) / before | raysys (this machine, CPU) | target |")
    print("|---|---|---|---|")
    if "call" in results:
        print(f"| Call Analytics, {args.seconds / 60:.0f}-min 2-speaker call | 5-10s | {results['call']} | < 3 s |")
    for label, seconds in agg.items():
        seed = "10-30s" if label.startswith("1,000 calls") else "—"
        target = "" if label.startswith("1,000 calls") else "< 1 s"
        print(f"| Daily Aggregation, {label} | {seed} | {seconds:.3f} s | {target} |")
    for label, (wall, cpu) in agents.items():
        before = f"{PREVIOUS_TENANT_ONLY_S} s (tenant rows only, quiet AVX2 EPYC)" if label.startswith("tenant") else "—"
        print(f"| Daily Aggregation, 1,000,000 calls (8 days), {label}, in-process chDB | {before} | wall {wall:.3f} s, "
              f"CPU {cpu:.3f} s (median of 3; load average {os.getloadavg()[0]:.1f}) | < 1 s |")
    if "intents" in results:
        print(f"| Intents, Banking77 held-out 20 % | — | {results['intents']} accuracy | ≥ 90 % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
