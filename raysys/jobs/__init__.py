"""Batch work for `ray job submit`: backfills and directory ingestion (``python -m raysys.jobs.<name>``).

Layer 6, beside serve and scheduler (none imports another): may import the queue and every layer
below; imported by commands.
"""

from __future__ import annotations

import logging
import sys

from raysys import logs
from raysys.config import ConfigError, Settings
from raysys.storage.postgres import database_url


def job_settings(job: str, settings: Settings | None = None) -> Settings | None:
    """Logging on, and the job's settings (environment + the embedded stack); None after printing why not.

    Both jobs need PostgreSQL (the calls to backfill, the index to fill).
    """
    logs.setup(logging.INFO, logs.log_format_or_text())
    try:
        settings = (settings or Settings.from_env()).resolved()
        database_url(settings)  # both jobs need PostgreSQL
    except ConfigError as exc:
        print(f"{job}: configuration error: {exc}", file=sys.stderr)
        return None
    return settings
