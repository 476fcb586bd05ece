"""Cron slots as instants: croniter on local wall-clock time, then one instant per wall-clock time.

croniter walks *naive* local times (pure calendar arithmetic, no DST guesswork); each is then placed
in the schedule's zone:

- a wall-clock time that does not exist (the hour skipped when clocks go forward) has no slot: it is
  skipped, not moved;
- a wall-clock time that occurs twice (the hour repeated when clocks go back) has one slot, at its
  first occurrence (``fold=0``).

A slot is identified by its local ISO time with the UTC offset (``2025-10-26T01:30:00+01:00``), which
is unique and readable; ``<schedule>:<that>`` is the slot id and the job id derives from it.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from croniter import croniter


def _exists(naive: datetime, zone: zoneinfo.ZoneInfo) -> datetime | None:
    """The aware first occurrence of local ``naive`` in ``zone``, or None when it does not exist."""
    aware = naive.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return aware if back == naive else None


def slots_after(cron: str, zone: zoneinfo.ZoneInfo, after: float) -> Iterator[datetime]:
    """Slots strictly after the instant ``after`` (unix seconds), in order, as aware local datetimes."""
    start = datetime.fromtimestamp(after, zone).replace(tzinfo=None)
    # Step back a day so that a slot in a repeated hour whose first occurrence lies after ``after`` but
    # whose wall-clock time is before ``start`` (``after`` in the first pass) is still seen.
    it = croniter(cron, start - timedelta(hours=3))
    while True:
        naive = it.get_next(datetime)
        aware = _exists(naive, zone)
        if aware is not None and aware.timestamp() > after:
            yield aware


def slots_between(cron: str, zone: zoneinfo.ZoneInfo, after: float, until: float,
                  limit: int = 100_000) -> list[datetime]:
    """Slots in ``(after, until]``, at most ``limit`` of them (the earliest)."""
    out: list[datetime] = []
    for slot in slots_after(cron, zone, after):
        if slot.timestamp() > until or len(out) >= limit:
            break
        out.append(slot)
    return out


def next_slot(cron: str, zone: zoneinfo.ZoneInfo, after: float) -> datetime:
    """The first slot strictly after ``after``."""
    return next(slots_after(cron, zone, after))


def previous_slot(cron: str, zone: zoneinfo.ZoneInfo, at: float, horizon_days: int = 400) -> datetime | None:
    """The last slot at or before ``at`` (within ``horizon_days``), or None."""
    naive = datetime.fromtimestamp(at, zone).replace(tzinfo=None) + timedelta(days=1)
    it = croniter(cron, naive)
    floor = naive - timedelta(days=horizon_days)
    while True:
        cand = it.get_prev(datetime)
        if cand < floor:
            return None
        aware = _exists(cand, zone)
        if aware is not None and aware.timestamp() <= at:
            return aware


def slot_label(slot: datetime) -> str:
    """The slot's local ISO time with its offset, seconds included."""
    return slot.isoformat(timespec="seconds")
