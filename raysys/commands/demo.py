"""CLI: `raysys demo` — the main job, end to end, on the embedded default stack.

1. `raysys up` (Redis, PostgreSQL + pgvector, chDB, a Ray head with the dashboard)
2. an intent catalogue for the demo tenant, trained into a classifier
3. QueueBridge actors on the three queues
4. a demo tenant with a week of synthetic calls, and one recorded call with no transcript: a real
   two-speaker recording (read utterances, raysys/assets/SOURCES.md) whose words are its own
5. a policy document pushed through the `ingest` queue, then searched
6. call analytics pushed through the `analytics` queue (the recording: transcription, diarization,
   emotion, intent, summary, metrics), the transcript printed next to the recording's reference, one
   turn that reads out a card and a phone number printed as stored (PII redacted, issue 17), the
   day aggregated, the daily report produced on the `reports` queue
7. one on-demand request over HTTP (Ray Serve) with an API key
8. the results and the dashboard address printed
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from contextlib import suppress
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path

import httpx
import soundfile as sf

from raysys import synthetic
from raysys.analytics.agent_report import scorecard_text
from raysys.analytics.intents import IntentModel
from raysys.config import Settings
from raysys.queue.client import Client
from raysys.runtime import init_ray
from raysys.serve import deploy
from raysys.stack import LocalStack
from raysys.storage.postgres import Call, Turn, open_db
from raysys.synthetic import INTENTS

TENANT = "demo"
PII_TURN = "Sure, the card is 4111 1111 1111 1111 and my mobile is oh seven seven double oh nine double oh one two three."


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole story on the embedded default stack and print the results")
    p.add_argument("--calls", type=int, default=60, help="synthetic calls for the demo tenant")
    p.add_argument("--down", action="store_true",
                   help="stop the embedded stack at the end (default: leave it, the bridges and the HTTP API up)")
    p.set_defaults(func=cmd_demo)


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


def cmd_demo(args, settings: Settings) -> int:
    from raysys.queue.bridge import bridge_handles, start_bridges  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    t_start = time.monotonic()
    _step(1, "embedded stack")
    stack = LocalStack(settings)
    state = stack.up()
    settings = settings.resolved()
    init_ray(settings)

    _step(2, "intent catalogue for the demo tenant, trained on sentence embeddings")
    print("  ", _train_intents(settings))

    _step(3, f"queue bridges on {', '.join(settings.queues)}")
    # Detached, so they keep serving the queues after the demo (reused when the demo runs again).
    bridges = bridge_handles() or start_bridges(settings, queues=list(settings.queues), detached=True)
    print(f"   {len(bridges)} bridge(s) consuming")
    client = Client(settings)

    _step(4, f"demo tenant '{TENANT}': {args.calls} synthetic calls over 7 days and one recorded call")
    uploads = Path(settings.data_dir) / "uploads"
    docs = Path(settings.data_dir) / "documents"
    uploads.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    assets = resources.files("raysys") / "assets"
    audio = uploads / "demo_call.wav"
    with resources.as_file(assets / "demo_call.wav") as src:
        shutil.copyfile(src, audio)
    policy = docs / "demo_policy.md"
    with resources.as_file(assets / "demo_policy.md") as src:
        shutil.copyfile(src, policy)
    today = datetime.now(UTC).date()
    ds = synthetic.generate(tenants=1, calls=args.calls, days=7, seed=42, end=today, tenant_prefix="x")
    calls = []
    for sc in ds.calls:
        sc.call.tenant_id = TENANT
        sc.call.id = sc.call.id.replace("_x_001_", "_demo_")
        calls.append(sc)
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    # The recorded call arrives as audio only (no platform transcript): analytics transcribes it.
    recorded = Call(id="call_demo_recorded", tenant_id=TENANT, customer_id="cust_demo", agent_id="agent_007",
                    started_at=started, answered_at=started + timedelta(seconds=1),
                    ended_at=started + timedelta(seconds=32), hold_seconds=0.0, acw_seconds=20.0,
                    audio_path=str(audio), resolved=True)

    pii_call = next((sc for sc in calls if sc.call.started_at.date() == today), None)

    async def seed() -> None:
        async with open_db(settings, max_size=10) as db:
            await db.upsert_tenant(TENANT, "Demo Contact Centre", ["ops@demo.example"])
            await db.upsert_calls([sc.call for sc in calls] + [recorded])
            for sc in calls:
                await db.replace_turns(TENANT, sc.call.id, sc.turns)
            if pii_call is not None:  # issue 17: a customer reads out card and phone; stored redacted
                last = pii_call.turns[-1]
                await db.replace_turns(TENANT, pii_call.call.id, [*pii_call.turns, Turn(
                    len(pii_call.turns), "customer", last.end_s + 0.5, last.end_s + 6.0, PII_TURN)])
            await db.replace_turns(TENANT, recorded.id, [])  # a re-run starts from the audio again

    asyncio.run(seed())
    # The week before today as facts in the warehouse (what earlier analytics runs would have left), so
    # the report's 7-day trend has a history; today's calls go through the analytics queue below.
    from raysys.actors.warehouse import Warehouse  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    history = [synthetic.call_fact(sc) for sc in calls if sc.call.started_at.date() < today]
    print(f"   {Warehouse(settings).insert_call_facts(history)} call facts of the past 6 days in the warehouse")

    _step(5, "ingest a policy document through the `ingest` queue, then search it")
    res = client.send_task("workers.tasks.ingest_document", kwargs={
        "document_id": "policy_cards", "tenant_id": TENANT, "source_path": str(policy)})
    print("   ingest_document:", _short(res.get(timeout=600)))
    from raysys.ingest.pipeline import search  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    question = "what do I do when a customer's card was stolen?"
    hit = search(settings, TENANT, question, top_k=1)[0]
    print(f"   search {question!r}\n     -> [{hit.score:.2f}] {hit.heading}: {hit.text[:110]}...")

    _step(6, "post-call analytics through the `analytics` queue")
    t0 = time.monotonic()
    res = client.send_task("workers.tasks.process_call_analytics", args=[recorded.id])
    analytics = res.get(timeout=900)
    print(f"   recorded call ({time.monotonic() - t0:.1f} s):", _short(analytics, 900))
    print(f"   transcribed: {analytics.get('transcribed')}, turn source: {analytics.get('turn_source')}, "
          f"intent: {analytics.get('intent')}")
    _print_transcript(settings, recorded.id)
    today_ids = [sc.call.id for sc in calls if sc.call.started_at.date() == today]
    pending = [client.send_task("workers.tasks.process_call_analytics", args=[cid]) for cid in today_ids]
    done = sum(1 for r in pending if r.get(timeout=900) is not None)
    print(f"   {done} more calls of today analysed")
    if pii_call is not None:
        _print_redacted(settings, pii_call.call.id, len(pii_call.turns))
    days = [today - timedelta(days=d) for d in range(6, -1, -1)]
    aggs = [client.send_task("workers.tasks.aggregate_daily_metrics",
                             kwargs={"date": day.isoformat(), "tenant_id": TENANT}) for day in days]
    agg = [a.get(timeout=600) for a in aggs][-1]
    print(f"   aggregate_daily_metrics for {days[0]} .. {days[-1]}; today:", _short(agg))
    _print_scorecard(settings, today)
    report = client.send_task("workers.tasks.generate_daily_report",
                              kwargs={"tenant_id": TENANT, "date": today.isoformat()}).get(timeout=600)
    print("   generate_daily_report:", _short(report))

    _step(7, "one on-demand request over HTTP (Ray Serve)")
    http_result = _http_demo(settings, audio)
    print("  ", _short(http_result, 600))

    _step(8, "done")
    dashboard = state.get("urls", {}).get("dashboard")
    print(f"   Ray dashboard:  {dashboard or '(external cluster: ' + str(settings.ray_address) + ')'}")
    files = report.get("files", {}) if isinstance(report, dict) else {}
    print(f"   report:         {files.get('html') or report}")
    print(f"   data directory: {settings.data_dir}")
    print(f"   total time:     {time.monotonic() - t_start:.0f} s")
    import ray  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    if args.down:
        _stop_serve()
        ray.shutdown()
        stack.down()
    else:
        ray.shutdown()
        print("   the stack, the bridges and the HTTP API keep running; stop them with: ./dev raysys down")
    return 0


def _print_scorecard(settings: Settings, day: date) -> None:
    """The busiest agent's scorecard of ``day`` (GET /v1/metrics/agents has every agent's)."""
    from raysys.actors.warehouse import Warehouse  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    rows = Warehouse(settings).agent_metrics(TENANT, day, day)
    if rows:
        best = max(rows, key=lambda r: (r["calls"], r["agent_id"]))
        print(f"   scorecard of the busiest of {len(rows)} agents today:")
        for line in scorecard_text(best):
            print("     " + line)


def _print_redacted(settings: Settings, call_id: str, index: int) -> None:
    """The PII turn the demo added, as stored after analytics, and the call's redaction count."""

    async def fetch() -> tuple:
        async with open_db(settings) as db:
            return await db.get_turns(TENANT, call_id), await db.get_analytics(TENANT, call_id)

    turns, row = asyncio.run(fetch())
    stored = next((t.text for t in turns if t.turn_index == index), "")
    print(f"   PII redaction ({call_id}): said  {PII_TURN!r}\n"
          f"   {'':{len(call_id) + 17}}stored {stored!r} ({row.get('pii_redactions')} redacted: "
          f"{row.get('pii_redaction_counts')})")


def _print_transcript(settings: Settings, call_id: str) -> None:
    """The turns analytics derived from the recording, each next to the reference words spoken there."""

    reference = json.loads((resources.files("raysys") / "assets" / "demo_call_reference.json").read_text())

    async def turns() -> list:
        async with open_db(settings, max_size=10) as db:
            return await db.get_turns(TENANT, call_id)

    derived = asyncio.run(turns())
    print(f"   transcript derived from the audio ({len(derived)} turns, {derived[0].model_version if derived else '-'})"
          " next to the reference:")
    for t in derived:
        ref = [r for r in reference["turns"] if min(r["end"], t.end_s) - max(r["start"], t.start_s) > 0]
        print(f"     {t.start_s:5.1f}-{t.end_s:5.1f} {t.speaker_role:<8} heard: {t.text}")
        for r in ref:
            print(f"     {'':11} {r['role']:<8} said:  {r['text'].lower()}")


def _train_intents(settings: Settings) -> str:
    """Train the tenant's intent classifier from the synthetic catalogue (text, category)."""
    from raysys.actors.embedding import encoder  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

    texts, labels = [], []
    for intent, phrasings in INTENTS.items():
        for phrase in phrasings:
            for template in ("{}", "Hi, {}.", "Hello, {}, can you help?"):
                texts.append(template.format(phrase))
                labels.append(intent)
    model = IntentModel.train(texts, labels, encoder(settings), threshold=0.3)
    out = Path(settings.intent_model_dir) / TENANT
    model.save(out)
    return f"{len(set(labels))} intents, {len(texts)} examples -> {out}"


def _http_demo(settings: Settings, audio: Path) -> dict:
    base = deploy(settings)

    async def key() -> str:
        async with open_db(settings, max_size=10) as db:
            return (await db.create_api_key(TENANT, "demo"))[1]

    secret = asyncio.run(key())
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base, headers=headers, timeout=600) as http:
        with audio.open("rb") as f:
            r = http.post("/v1/diarize", files={"file": (audio.name, f, "audio/wav")})
        print(f"   POST {base}/v1/diarize -> {r.status_code}")
        body = r.json()
        # The recording's first utterance (5.5 s) through POST /v1/transcribe.

        wav, rate = sf.read(audio, dtype="float32")
        clip = io.BytesIO()
        sf.write(clip, wav[: int(5.5 * rate)], rate, format="WAV")
        t = http.post("/v1/transcribe", files={"file": ("first_turn.wav", clip.getvalue(), "audio/wav")})
        heard = " | ".join(f"{x['role']}: {x['text']}" for x in t.json().get("turns", [])) if t.is_success else t.text
        print(f"   POST {base}/v1/transcribe -> {t.status_code}: {heard}")
    return {"num_speakers": body.get("num_speakers"), "segments": len(body.get("segments", [])),
            "openapi": f"{base}/docs"}


def _stop_serve() -> None:
    with suppress(Exception):
        from ray import serve  # noqa: PLC0415 - loads Ray, and the CLI imports every command module to build its parser

        serve.shutdown()


def _short(value, limit: int = 300) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
