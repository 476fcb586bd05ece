"""Logging for every raysys process: readable lines by default, one JSON object per line for log aggregation.

``RAYSYS_LOG_FORMAT=json`` (or ``Settings.log_format``) switches every raysys process — the CLI, the queue
bridges, the scheduler, batch jobs — to JSON lines: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, and the job's fields when the line is about a job (``job_id``, ``task``, ``queue``,
``tenant``, ``transition``, ``elapsed``, ``run_time``, ``retries``, ``bridge``), plus ``exc`` with the
traceback when there is one. Loki, Elasticsearch/Fluent Bit, CloudWatch and Datadog ingest such lines as
they are. The default stays the readable ``time LEVEL logger: message``.

Code that logs about a job passes the fields as ``extra``: ``log.info("...", extra=job_fields(...))``;
the readable format ignores them, the JSON format writes them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any

READABLE = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# The fields a job's log lines carry, in the order JSON lines show them.
JOB_FIELDS = ("job_id", "task", "queue", "tenant", "transition", "elapsed", "run_time", "retries", "bridge",
              "schedule")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; job fields from ``extra``; never raises on odd values."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = round(value, 6) if isinstance(value, float) else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_format(configured: str | None = None) -> str:
    """The format to use: ``configured``, else ``RAYSYS_LOG_FORMAT``, else ``text``; unknown values are an error."""
    value = (configured or os.environ.get("RAYSYS_LOG_FORMAT") or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"RAYSYS_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def log_format_or_text() -> str:
    """``RAYSYS_LOG_FORMAT`` when valid, else ``text``: for processes that set logging up before they read
    their settings (the settings then report a bad value as a configuration error)."""
    try:
        return log_format()
    except ValueError:
        return "text"


def formatter(fmt: str | None = None) -> logging.Formatter:
    return JsonFormatter() if log_format(fmt) == "json" else logging.Formatter(READABLE)


def setup(level: int = logging.INFO, fmt: str | None = None, *, logger: str = "", stream: Any = None) -> None:
    """Send ``logger``'s records (the root logger by default) to ``stream`` (stderr) in the chosen format.

    Idempotent: a handler this function added before is reconfigured, not duplicated (Ray actors and
    jobs may call it more than once per process).
    """
    target = logging.getLogger(logger)
    handler = next((h for h in target.handlers if getattr(h, "_raysys", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler._raysys = True  # type: ignore[attr-defined]
        target.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    handler.setFormatter(formatter(fmt))
    target.setLevel(level)


def job_fields(job_id: str, task: str, queue: str, transition: str, *, elapsed: float | None = None,
               run_time: float | None = None, retries: int | None = None, tenant: str | None = None,
               bridge: str | None = None) -> dict[str, Any]:
    """The ``extra`` of a log line about a job."""
    return {"job_id": job_id, "task": task, "queue": queue, "transition": transition, "elapsed": elapsed,
            "run_time": run_time, "retries": retries, "tenant": tenant, "bridge": bridge}


def tenant_of(args: Any, kwargs: Any) -> str | None:
    """The tenant a job is for, when its arguments say (``tenant_id``/``tenant`` keyword), else None."""
    if isinstance(kwargs, dict):
        for key in ("tenant_id", "tenant"):
            value = kwargs.get(key)
            if isinstance(value, str) and value:
                return value
    return None
