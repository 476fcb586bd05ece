"""Maintenance tasks (queue ``reports``): session/archive/temp cleanup and model audits.

``workers.tasks.cleanup_expired_sessions()``
    1. expired sessions: each ``sessions`` row past ``expires_at`` is deleted with its Redis key. Only keys
       under ``SESSION_KEY_PREFIX`` (``session:``) are deleted (a row naming any other key, a queue or a
       result, is counted in ``redis_keys_refused`` and logged); keys go before their rows, so a crash
       in between leaves rows that point to nothing (deleted next run), never keys nobody will delete;
    2. old calls: calls that started more than ``CALL_RETENTION_DAYS`` ago are copied (call, turns and
       analytics as JSON, with a checksum) into ClickHouse ``calls_archive``, the copy is read back, and
       only calls whose archived checksum matches are deleted from PostgreSQL (turns and analytics go
       with them). A call whose archive write or read-back fails stays in PostgreSQL and is counted in
       ``archive_failed``; the next run tries again;
    3. temporary files under ``<data dir>/tmp`` older than ``TEMP_MAX_AGE_HOURS``.

``workers.tasks.audit_models()``
    diarization DER, intent accuracy, emotion unweighted average recall and accuracy, sentiment
    accuracy and macro-F1 (with speed) on the audit set (``AUDIT_DIR``, default ``<data dir>/audit``;
    layout in :mod:`raysys.analytics.audit`) into ClickHouse ``model_audits``, one row per model,
    version and metric, flagging a regression beyond ``AUDIT_REGRESSION_THRESHOLD`` against the previous
    run of the same model and metric; then renders the audit report (charts of every model's figures
    over its recent runs) under ``<data dir>/reports/model-audits/<run id>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from raysys.actors.diarization import diarize_file
from raysys.actors.embedding import encoder
from raysys.actors.emotion import analyze_file
from raysys.actors.warehouse import Warehouse
from raysys.analytics import audit, audit_report, intents, redaction_turns
from raysys.audio import load_audio
from raysys.config import Settings
from raysys.errors import InvalidInput
from raysys.storage import retention
from raysys.storage.postgres import Database, open_db, run_sync
from raysys.tasks.registry import TaskContext, task

log = logging.getLogger(__name__)
ARCHIVE_BATCH = 500
AUDIT_REPORT_RUNS = 30  # the audit report charts each model's figures over this many recent runs


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _json(v: Any) -> str:
    return json.dumps(v, default=str, sort_keys=True, separators=(",", ":"))


async def _expire_sessions(db: Database, redis_client: Any, now: datetime, key_prefix: str) -> dict[str, int]:
    """Delete expired sessions: their Redis keys under ``key_prefix`` first, then their rows.

    Returns ``{"sessions_deleted", "redis_keys_deleted", "redis_keys_refused"}``. Raises Redis and
    PostgreSQL errors (a Redis failure deletes no row: the next run tries again).
    """
    sessions = keys = refused = 0
    for tenant in await db.list_tenants():
        rows = await retention.expired_sessions(db, tenant, now)
        if not rows:
            continue
        names = [r["redis_key"] for r in rows if r["redis_key"]]
        allowed = [n for n in names if n.startswith(key_prefix)]
        if len(allowed) < len(names):
            refused += len(names) - len(allowed)
            log.warning("cleanup: %d expired sessions of %s name Redis keys outside %r; those keys are kept",
                        len(names) - len(allowed), tenant, key_prefix)
        if allowed:
            keys += int(redis_client.delete(*allowed))
        sessions += await retention.delete_sessions(db, tenant, [r["id"] for r in rows], now)
    return {"sessions_deleted": sessions, "redis_keys_deleted": keys, "redis_keys_refused": refused}


async def _archive_calls(db: Database, wh: Warehouse, cutoff: datetime,
                         settings: Settings | None = None) -> dict[str, Any]:
    archived = deleted = failed = 0
    errors: list[str] = []
    for tenant in await db.list_tenants():
        skip: list[str] = []  # calls that failed in this run are not retried until the next run
        while True:
            async with retention.old_calls(db, tenant, cutoff, skip, ARCHIVE_BATCH) as batch:
                calls = batch.calls
                if not calls:
                    break
                ids = [c["id"] for c in calls]
                # Every column of a turn but its keys: transcribed turns keep their source, model, confidence
                # and words in the archive.
                turns = {i: [{k: _jsonable(v) for k, v in t.items() if k not in ("tenant_id", "call_id")}
                             for t in batch.turns[i]] for i in ids}
                if settings is not None:  # turns of calls never analysed still carry their PII
                    policy = redaction_turns.Policy.for_tenant(settings, await db.tenant_pii(tenant))
                    turns = {cid: redaction_turns.redact_turn_dicts(rows, policy) for cid, rows in turns.items()}
                analytics = {i: {k: _jsonable(v) for k, v in a.items()} for i, a in batch.analytics.items()}
                rows, sums = [], {}
                for c in calls:
                    call_json = _json({k: _jsonable(v) for k, v in c.items()})
                    turns_json, analytics_json = _json(turns[c["id"]]), _json(analytics.get(c["id"]))
                    sums[c["id"]] = hashlib.sha256("\x00".join((call_json, turns_json, analytics_json)).encode()
                                                   ).hexdigest()
                    rows.append({"tenant_id": tenant, "call_id": c["id"], "started_at": c["started_at"],
                                 "customer_id": c["customer_id"], "call": call_json, "turns": turns_json,
                                 "analytics": analytics_json, "checksum": sums[c["id"]]})
                try:
                    wh.archive_calls(rows)
                    stored = wh.archived_checksums(tenant, ids)
                except Exception as exc:  # noqa: BLE001 - any warehouse failure keeps the calls
                    log.warning("archiving %d calls of %s failed, nothing deleted: %s", len(ids), tenant, exc)
                    errors.append(f"{tenant}: {type(exc).__name__}: {exc}"[:300])
                    failed += len(ids)
                    skip.extend(ids)
                    continue
                confirmed = [i for i in ids if stored.get(i) == sums[i]]
                unconfirmed = [i for i in ids if i not in set(confirmed)]
                if unconfirmed:
                    errors.append(f"{tenant}: {len(unconfirmed)} archived calls did not read back")
                    failed += len(unconfirmed)
                    skip.extend(unconfirmed)
                archived += len(confirmed)
                if confirmed:
                    deleted += await batch.delete(confirmed)
    return {"calls_archived": archived, "calls_deleted": deleted, "archive_failed": failed, "errors": errors}


def _clean_temp(root: Path, max_age_hours: float, now: float) -> dict[str, int]:
    files = size = 0
    if not root.is_dir():
        return {"temp_files_deleted": 0, "temp_bytes_freed": 0}
    cutoff = now - max_age_hours * 3600
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()  # a symlink is judged (and removed) itself, never followed
                if st.st_mtime < cutoff:
                    p.unlink()
                    files += 1
                    size += st.st_size
            except FileNotFoundError:
                continue
        for name in dirnames:
            p = Path(dirpath) / name
            try:
                if not p.is_symlink() and p.lstat().st_mtime < cutoff and not any(p.iterdir()):
                    p.rmdir()
            except OSError:
                continue
    return {"temp_files_deleted": files, "temp_bytes_freed": size}


def cleanup(settings: Settings, wh: Warehouse | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The work of :func:`cleanup_expired_sessions`; ``wh`` (default: the cluster's) is the warehouse."""

    wh = wh or Warehouse(settings)
    now = now or datetime.now(UTC)
    started = time.perf_counter()
    client = redis.Redis.from_url(settings.redis_url)

    async def database_part() -> dict[str, Any]:
        async with open_db(settings) as db:
            out = await _expire_sessions(db, client, now, settings.session_key_prefix)
            out.update(await _archive_calls(db, wh, now - timedelta(days=settings.call_retention_days), settings))
            return out

    try:
        result = run_sync(database_part())
    finally:
        client.close()
    result.update(_clean_temp(settings.temp_dir, settings.temp_max_age_hours, now.timestamp()))
    result["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    log.info("cleanup: %s", {k: v for k, v in result.items() if k != "errors"})
    return result


@task("workers.tasks.cleanup_expired_sessions", queue="reports")
def cleanup_expired_sessions(ctx: TaskContext) -> dict[str, Any]:
    """Expired sessions (rows and Redis keys), archive-then-delete of old calls, old temp files.

    Returns counts: sessions_deleted, redis_keys_deleted, redis_keys_refused, calls_archived, calls_deleted,
    archive_failed, temp_files_deleted, temp_bytes_freed, errors (one line per failed archive batch).
    """
    return cleanup(ctx.settings)


# --- audits -------------------------------------------------------------------------------------------------


def _regression(metric: str, value: float, baseline: float | None, threshold: float) -> bool:
    if baseline is None:
        return False
    worse = value - baseline if metric == "der" else baseline - value  # DER: lower is better
    return worse > threshold


def _emotion_rows(settings: Settings, audit_dir: Path, classify: Callable[[str], dict] | None) -> list[dict]:
    items, skipped = audit.emotion_items(audit_dir)
    if not items:
        return []
    if classify is None:
        def classify(path: str) -> dict:
            # one clip, one label: the whole clip is one segment, through the configured backend's actor
            samples, rate = load_audio(path, max_seconds=settings.max_audio_seconds)
            out = analyze_file(settings, path, segments=[{"start": 0.0, "end": len(samples) / rate,
                                                          "speaker": "clip"}])
            return {**out, "duration": len(samples) / rate}

    pairs, seconds, audio_seconds, version = [], 0.0, 0.0, ""
    for clip, label in items:
        t0 = time.perf_counter()
        try:
            out = classify(str(clip))
        except InvalidInput as exc:  # name the clip: the audit set is the operator's to fix
            raise InvalidInput(f"emotion audit clip {clip}: {exc}") from exc
        seconds += time.perf_counter() - t0
        audio_seconds += float(out.get("duration") or 0.0)
        version = f"{out.get('backend', '')}:{out.get('model_version', '')}"
        segs = out.get("segments") or []
        pairs.append((label, str(segs[0]["label"]) if segs else ""))  # a clip found silent counts as wrong
    scores = audit.emotion_recall(pairs)
    details = {**scores, "files": [c.name for c, _ in items], "skipped": skipped, "audio_seconds": audio_seconds}
    rtf = seconds / audio_seconds if audio_seconds else 0.0
    return [{"model": "emotion", "version": version, "metric": metric, "value": scores[metric], "rtf": rtf,
             "details": details} for metric in ("uar", "accuracy")]


def run_audit(settings: Settings, audit_dir: Path, wh: Warehouse | None = None,
              diarize: Callable[[str], dict] | None = None,
              classify_emotion: Callable[[str], dict] | None = None) -> dict[str, Any]:
    """The work of :func:`audit_models`.

    ``diarize(path)`` defaults to the diarization actor and ``classify_emotion(path)`` (returning
    :func:`raysys.actors.emotion.analyze_file`'s shape plus ``duration``) to the emotion actor.
    Returns ``{"run_id", "audit_dir", "results": [...], "regressions": [...], "report": {...}}``.
    Raises InvalidInput for a malformed audit set.
    """
    wh = wh or Warehouse(settings)
    run_id = uuid.uuid4().hex[:12]
    rows: list[dict[str, Any]] = []
    items = audit.diarization_items(audit_dir)
    if items:
        if diarize is None:
            def diarize(path: str) -> dict:
                return diarize_file(settings, path)

        pairs, seconds, audio_seconds, version = [], 0.0, 0.0, ""
        for wav, ref in items:
            t0 = time.perf_counter()
            hyp = diarize(str(wav))
            seconds += time.perf_counter() - t0
            audio_seconds += float(hyp.get("duration") or 0.0)
            version = f"{hyp.get('backend', '')}:{hyp.get('model_version', '')}"
            pairs.append((ref, hyp["segments"]))
        der = audit.diarization_error_rate(pairs)
        rows.append({"model": "diarization", "version": version, "metric": "der", "value": der["der"],
                     "rtf": seconds / audio_seconds if audio_seconds else 0.0,
                     "details": {**der, "files": [w.name for w, _ in items], "audio_seconds": audio_seconds}})
    model_dir = audit_dir / "intent_model" if (audit_dir / "intent_model" / intents.META_FILE).is_file() else \
        intents.model_dir_for(settings.intent_model_dir, "")
    csv_path = audit_dir / "intents.csv"
    if model_dir is not None and csv_path.is_file():
        texts, cats = intents.read_catalogue(csv_path)
        model = intents.IntentModel.load(model_dir)
        encode = encoder(settings)
        t0 = time.perf_counter()
        acc = audit.intent_accuracy(list(zip(texts, cats, strict=True)), lambda ts: model.predict(ts, encode))
        elapsed = time.perf_counter() - t0
        rows.append({"model": "intents", "version": model.version, "metric": "accuracy", "value": acc["accuracy"],
                     "rtf": 0.0, "details": {**acc, "seconds_per_text": elapsed / max(1, acc["n"]),
                                             "model_dir": str(model_dir)}})
    rows.extend(_emotion_rows(settings, audit_dir, classify_emotion))
    rows.extend(audit.audit_sentiment(audit_dir))  # always: the set raysys ships stands in for a missing one
    for r in rows:
        prev = wh.last_model_audit(r["model"], r["metric"])
        r["baseline"] = float(prev["value"]) if prev else None
        r["regression"] = int(_regression(r["metric"], r["value"], r["baseline"], settings.audit_regression_threshold))
        if r["regression"]:
            log.warning("model audit regression: %s %s %s %.4f vs %.4f (threshold %.3f)", r["model"], r["version"],
                        r["metric"], r["value"], r["baseline"], settings.audit_regression_threshold)
    wh.insert_model_audits([{**r, "run_id": run_id, "details": json.dumps(r["details"], default=str)}
                            for r in rows])
    report = audit_report.build(wh.model_audit_history(AUDIT_REPORT_RUNS), run_id)
    files = audit_report.save(report, settings.reports_dir / "model-audits" / run_id)
    return {"run_id": run_id, "audit_dir": str(audit_dir),
            "results": [{k: r[k] for k in ("model", "version", "metric", "value", "rtf", "baseline")}
                        | {"regression": bool(r["regression"])} for r in rows],
            "regressions": [f"{r['model']}:{r['metric']}" for r in rows if r["regression"]],
            "report": files}


@task("workers.tasks.audit_models", queue="reports")
def audit_models(ctx: TaskContext) -> dict[str, Any]:
    """Run the models on the audit set; store DER, accuracy and speed; flag regressions."""
    settings = ctx.settings
    audit_dir = Path(settings.audit_dir) if settings.audit_dir else Path(settings.data_dir) / "audit"
    if not audit_dir.is_dir():
        raise InvalidInput(f"no audit set at {audit_dir}: set AUDIT_DIR, or build one with "
                           "`raysys analytics audit-set --data ../shared/data --out DIR`")
    return run_audit(settings, audit_dir)
