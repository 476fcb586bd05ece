"""``workers.tasks.generate_daily_report(tenant_id, date=None)`` (queue ``reports``).

Builds the tenant's report for the day (default yesterday, UTC): HTML with charts and CSV files saved
under ``<data dir>/reports/<tenant>/<day>/``, then e-mailed through ``SMTP_URL`` from
``REPORT_SENDER`` to the tenant's ``report_recipients`` with the charts inline and the CSVs attached.
The report has the day's agent scorecards too (:mod:`raysys.analytics.agent_report`). If the day (or
its agents) has not been aggregated yet it is aggregated first. An SMTP failure is retried.

One e-mail per tenant and day: a marker ``{p}raysys:report-mailed:<tenant>:<day>`` is claimed in Redis
before sending (``SET NX``, a few minutes) and kept for a week once the mail went out, so a retry or a
second run of the job (a redelivery after a crash, a duplicate enqueue) saves the report again but does
not e-mail it again. To send a day's report again on purpose, delete that key first.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import time
from datetime import timedelta
from typing import Any

import redis

from raysys.actors.warehouse import Warehouse
from raysys.analytics import mail
from raysys.analytics.aggregation import days_to_recompute, parse_day
from raysys.analytics.report import CALL_FIELDS, build_report, save_report
from raysys.config import Settings
from raysys.constants import REPORT_MAILED_PREFIX, REPORT_MAILED_TTL
from raysys.errors import InvalidInput, Retry
from raysys.storage.postgres import open_db, run_sync
from raysys.tasks.registry import TaskContext, task

log = logging.getLogger(__name__)
MAX_CALL_ROWS = 200_000  # per-call CSV and histograms; larger days are sampled by time order
SENDING_SECONDS = 300    # a claim to send lasts this long (a run that died while sending frees the day after it)


class _MailMarker:
    """The per tenant-and-day marker that keeps a report from being e-mailed twice (see the module docstring)."""

    def __init__(self, settings: Settings, tenant_id: str, day: str) -> None:
        self.client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
        self.key = f"{settings.key_prefix}{REPORT_MAILED_PREFIX}{tenant_id}:{day}"

    def sent(self) -> dict | None:
        """What was recorded when the mail went out, or None."""
        raw = self.client.get(self.key)
        if raw is None or raw == b"sending":
            return None
        return json.loads(raw)

    def claim(self) -> bool:
        """Take the day's sending; False if another run holds it or the mail went out already."""
        return bool(self.client.set(self.key, "sending", nx=True, ex=SENDING_SECONDS))

    def done(self, task_id: str, recipients: list[str]) -> None:
        self.client.set(self.key, json.dumps({"task_id": task_id, "at": time.time(), "recipients": recipients}),
                        ex=REPORT_MAILED_TTL)

    def release(self) -> None:
        self.client.delete(self.key)

    def close(self) -> None:
        self.client.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


@task("workers.tasks.generate_daily_report", queue="reports")
def generate_daily_report(ctx: TaskContext, tenant_id: str, date: Any = None) -> dict[str, Any]:
    """Render, save and e-mail one tenant's daily report.

    Returns ``{"tenant_id", "day", "files": {...}, "emailed": bool, "already_emailed_by": job id or None,
    "recipients": [...], "total_calls"}`` (``already_emailed_by``: an earlier run e-mailed this report).
    Raises NotFound for an unknown tenant, InvalidInput for a bad date, Retry when SMTP fails.
    """
    settings = ctx.settings
    if not isinstance(tenant_id, str) or not tenant_id:
        raise InvalidInput("tenant_id must be a non-empty string")
    day = parse_day(date)

    async def tenant_row():
        async with open_db(settings) as db:
            return await db.get_tenant(tenant_id)  # NotFound for an unknown tenant

    tenant = run_sync(tenant_row())
    wh = Warehouse(settings)
    rows = wh.daily_metrics(tenant_id, day - timedelta(days=6), day)
    if not any(r["day"] == day for r in rows):
        first, last = days_to_recompute(day, settings.fcr_window_days)
        wh.aggregate_days(first, last, settings.fcr_window_days, tenant_id)
        rows = wh.daily_metrics(tenant_id, day - timedelta(days=6), day)
    agent_rows = _agent_rows(settings, tenant_id, day, rows)
    ctx.progress(0.3, "loading calls")
    calls = wh.calls_of_day(tenant_id, day, CALL_FIELDS, MAX_CALL_ROWS)
    ctx.progress(0.5, "rendering")
    report = build_report(tenant_id, day, rows, calls, agent_rows)
    directory = settings.reports_dir / _safe(tenant_id) / day.isoformat()
    files = save_report(report, directory)
    recipients = list(tenant.get("report_recipients") or [])
    emailed, reason, already = False, "", None
    if not settings.smtp_url:
        reason = "SMTP_URL is not set"
    elif not recipients:
        reason = "the tenant has no report recipients"
    else:
        ctx.progress(0.8, "sending")
        emailed, already = True, _send_once(settings, ctx.task_id, tenant_id, day.isoformat(), report, recipients)
    if reason:
        log.info("report for %s %s saved, not e-mailed: %s", tenant_id, day, reason)
    return {"tenant_id": tenant_id, "day": day.isoformat(), "directory": str(directory), "files": files,
            "emailed": emailed, "not_emailed_reason": reason or None, "recipients": recipients,
            "already_emailed_by": already,
            "total_calls": int(report.metrics.get("total_calls", 0)), "calls_in_csv": len(calls),
            "agents": len(report.agents)}


def _agent_rows(settings: Settings, tenant_id: str, day: Any, daily_rows: list[dict]) -> list[dict]:
    """The tenant's agent scorecards of the report's seven days; the day's are aggregated first when it
    has calls but no agent rows (a day aggregated before the scorecards existed)."""
    wh = Warehouse(settings)
    rows = wh.agent_metrics(tenant_id, day - timedelta(days=6), day)
    has_calls = any(r["day"] == day and r["total_calls"] for r in daily_rows)
    if has_calls and not any(r["day"] == day for r in rows):
        first, last = days_to_recompute(day, settings.fcr_window_days)
        wh.aggregate_agents(first, last, settings.fcr_window_days, tenant_id)
        rows = wh.agent_metrics(tenant_id, day - timedelta(days=6), day)
    return rows


def _send_once(settings: Settings, task_id: str, tenant_id: str, day: str, report: object,
               recipients: list[str]) -> str | None:
    """E-mail the report unless this tenant's report of ``day`` was e-mailed already. Returns None when it
    sent it now, else the id of the job that sent it (``""`` if unknown).

    Raises:
        Retry: SMTP failed (the claim is released), or another run is sending this very report now.
    """
    marker = _MailMarker(settings, tenant_id, day)
    try:
        if not marker.claim():
            sent = marker.sent()
            if sent is not None:
                log.info("report for %s %s was e-mailed already (job %s); not sending it again", tenant_id, day,
                         sent.get("task_id"))
                return str(sent.get("task_id") or "")
            raise Retry(RuntimeError(f"the report for {tenant_id} {day} is being sent by another run"), countdown=60)
        message = mail.build_message(report, settings.report_sender, recipients)
        try:
            mail.send(settings.smtp_url, message)
        except (smtplib.SMTPException, OSError) as exc:
            marker.release()
            raise Retry(exc, countdown=60) from exc
        except BaseException:
            marker.release()
            raise
        marker.done(task_id, recipients)
        return None
    finally:
        marker.close()
