"""Which days a daily aggregation run recomputes, and the run itself through any warehouse command.

The SQL and what each column means live in :mod:`raysys.storage.aggregation` (``daily_metrics`` per
tenant and day, ``agent_daily_metrics`` per agent, from ``call_facts``). A run for a day
recomputes the ``FCR_WINDOW_DAYS`` days before it too: a call on that day can still lower their FCR.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from raysys.errors import InvalidInput
from raysys.storage.aggregation import TOP_INTENTS, aggregate

__all__ = ["TOP_INTENTS", "aggregate_days", "days_to_recompute", "parse_day"]


def days_to_recompute(day: date, window_days: int) -> tuple[date, date]:
    """(first, last) day whose FCR a run for ``day`` can change: the window before it and the day itself."""
    return day - timedelta(days=window_days), day


def parse_day(value: Any) -> date:
    """``None`` -> yesterday (UTC); a ``YYYY-MM-DD`` string, an ISO datetime or a date. InvalidInput otherwise."""
    if value is None or value == "":
        return datetime.now(UTC).date() - timedelta(days=1)
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10]) if len(value) >= 10 else date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidInput(f"date must be YYYY-MM-DD, got {value!r}")


def aggregate_days(command: Callable[[str, dict[str, Any]], Any], first: date, last: date, *, window_days: int,
                   tenant_id: str | None = None, today: date | None = None, agents: bool = False) -> dict[str, Any]:
    """Recompute ``daily_metrics`` for ``first..last`` (one tenant or all); with ``agents`` the agents' rows
    too.

    ``command(sql, params)`` runs a statement on the warehouse (``Warehouse.command`` of
    :mod:`raysys.storage.warehouse` or, on a cluster, of :mod:`raysys.actors.warehouse`). Calls up to
    ``window_days`` after ``last`` are read too, so a backfill sees the repeat contacts that followed.
    """
    aggregate(command, first, last, window_days=window_days, tenant_id=tenant_id, today=today, agents=agents)
    return {"first": first.isoformat(), "last": last.isoformat(), "tenant_id": tenant_id,
            "window_days": window_days}
