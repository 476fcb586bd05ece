"""Schedule definitions: the seed service's Celery beat entries, overridable from a configuration file.

A :class:`Schedule` is a cron expression in a time zone plus the job it enqueues. The defaults are the
beat entries of the Celery service raysys replaces (all in UTC, as its README states them):

====================================  =========  ==========================================================
schedule (task)                        when       notes
====================================  =========  ==========================================================
``aggregate_daily_metrics``            00:00 UTC  ``date`` = the day that just ended
``generate_daily_report``              00:30 UTC  one job per tenant, after the aggregation; same ``date``
``cleanup_expired_sessions``           01:00 UTC
``audit_models``                       02:00 UTC
====================================  =========  ==========================================================

``RAYSYS_SCHEDULE_FILE`` names a TOML, JSON or YAML file that changes them or adds more::

    [scheduler]                    # optional
    lease_seconds = 30             # how long a silent leader keeps the lease
    tick_seconds = 1               # how often the scheduler looks at the clock

    [schedules.aggregate_daily_metrics]   # a default's name: only the fields given change
    cron = "15 0 * * *"

    [schedules.hourly_ping]               # a new name: cron and task are required
    cron = "0 * * * *"
    task = "raysys.ping"
    args = ["{slot}"]
    queue = "analytics"
    timezone = "Europe/London"            # default: CELERY_TIMEZONE
    grace = "10m"                         # run a missed slot this late at most (default 1h)
    catchup = "latest"                    # all | latest | none (default all)
    expires = "6h"                        # the job is REVOKED if still queued this long after its slot
    enabled = true

Strings in ``args``/``kwargs`` may use ``{slot}`` (the slot's local ISO time), ``{slot_date}``,
``{previous_date}`` (the local day before the slot), ``{schedule}`` and, for ``per_tenant``
schedules, ``{tenant_id}``. A ``per_tenant`` schedule enqueues one job per tenant: the ``tenants``
listed, or else every tenant in PostgreSQL at fire time; without a ``{tenant_id}`` placeholder the
tenant goes in ``kwargs["tenant_id"]``.

Invalid definitions raise :class:`raysys.config.ConfigError` with one sentence naming the schedule
and the field, so a scheduler refuses to start rather than silently never run a job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from croniter import croniter

from raysys.config import ConfigError, Settings
from raysys.errors import UnknownTask
from raysys.queue.client import resolve_task

log = logging.getLogger(__name__)

CATCHUP_POLICIES = ("all", "latest", "none")
DEFAULT_GRACE = 3600.0
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_TICK_SECONDS = 1.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
PLACEHOLDERS = ("slot", "slot_date", "previous_date", "schedule", "tenant_id")


@dataclass(frozen=True)
class Schedule:
    """One periodic job. Times are wall-clock times in ``timezone``; durations are seconds."""

    name: str
    cron: str
    task: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None          # None: the task's registered queue (resolved by :func:`resolve_queues`)
    grace: float = DEFAULT_GRACE      # a slot later than this is skipped and logged, never run
    catchup: str = "all"              # which missed slots within grace run: all, the latest only, none
    expires: float | None = None      # seconds after the slot after which a still-queued job is REVOKED
    enabled: bool = True
    per_tenant: bool = False
    tenants: tuple[str, ...] = ()     # per_tenant: this list; empty: PostgreSQL's tenants at fire time

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable view (for `raysys schedule list --json` and the actor's status)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["args"] = list(self.args)
        out["kwargs"] = dict(self.kwargs)
        out["tenants"] = list(self.tenants)
        return out


@dataclass(frozen=True)
class SchedulerConfig:
    """Every schedule (enabled or not) and the scheduler's own timing."""

    schedules: tuple[Schedule, ...]
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    tick_seconds: float = DEFAULT_TICK_SECONDS
    source: str = "defaults"

    @property
    def enabled(self) -> tuple[Schedule, ...]:
        return tuple(s for s in self.schedules if s.enabled)

    def get(self, name: str) -> Schedule:
        for s in self.schedules:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.schedules) or "none"
        raise KeyError(f"no schedule named {name!r} (known: {known})")

    def digest(self) -> str:
        """A fingerprint of the definitions, to tell whether a running scheduler has this configuration."""
        blob = json.dumps([s.describe() for s in self.schedules] + [self.lease_seconds, self.tick_seconds],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_schedules() -> tuple[Schedule, ...]:
    """The seed Celery service's beat entries (UTC, as its README states them)."""
    return (
        Schedule(name="aggregate_daily_metrics", cron="0 0 * * *", timezone="UTC",
                 task="workers.tasks.aggregate_daily_metrics", queue="analytics",
                 kwargs={"date": "{previous_date}"}),
        Schedule(name="generate_daily_report", cron="30 0 * * *", timezone="UTC",
                 task="workers.tasks.generate_daily_report", queue="reports",
                 kwargs={"tenant_id": "{tenant_id}", "date": "{previous_date}"}, per_tenant=True),
        Schedule(name="cleanup_expired_sessions", cron="0 1 * * *", timezone="UTC",
                 task="workers.tasks.cleanup_expired_sessions", queue="reports"),
        Schedule(name="audit_models", cron="0 2 * * *", timezone="UTC",
                 task="workers.tasks.audit_models", queue="reports"),
    )


# --- parsing ---------------------------------------------------------------------------------------------


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a string such as ``90``, ``"30s"``, ``"15m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration such as 30s, 15m or 2h, got {value!r}.")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ConfigError(f"{what} must be a duration such as 30s, 15m or 2h, got {value!r}.")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}.")
    return seconds


def _check_cron(expr: Any, what: str) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError(f"{what} must be a cron expression such as '0 0 * * *', got {expr!r}.")
    expr = " ".join(expr.split())
    if not croniter.is_valid(expr):
        raise ConfigError(f"{what} is not a valid cron expression: {expr!r}.")
    return expr


def _check_timezone(tz: Any, what: str) -> str:
    try:
        zoneinfo.ZoneInfo(str(tz))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{what} must be an IANA time zone such as UTC or Europe/London, got {tz!r}.") from None
    return str(tz)


def _check_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{what} must be true or false, got {value!r}.")


def _schedule_from_mapping(name: str, raw: Mapping[str, Any], base: Schedule | None,
                           settings: Settings) -> Schedule:
    where = f"schedule {name!r}"
    if not _NAME_RE.match(name):
        raise ConfigError(f"{where} has an invalid name (letters, digits, _ . - only, at most 100 characters).")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table of options, got {type(raw).__name__}.")
    allowed = {f.name for f in fields(Schedule)} - {"name"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where} has unknown option {unknown[0]!r} (known: {', '.join(sorted(allowed))}).")
    if base is None:
        for required in ("cron", "task"):
            if required not in raw:
                raise ConfigError(f"{where} must set {required!r}.")
        values: dict[str, Any] = {"timezone": settings.timezone}
    else:
        values = {}
    for key, value in raw.items():
        w = f"{where} option {key!r}"
        if key == "cron":
            values[key] = _check_cron(value, w)
        elif key == "task":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{w} must be a task name such as workers.tasks.audit_models, got {value!r}.")
            values[key] = value.strip()
        elif key == "timezone":
            values[key] = _check_timezone(value, w)
        elif key == "args":
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{w} must be a list, got {type(value).__name__}.")
            values[key] = tuple(value)
        elif key == "kwargs":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise ConfigError(f"{w} must be a table with string keys, got {value!r}.")
            values[key] = dict(value)
        elif key == "queue":
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{w} must be a queue name, got {value!r}.")
            values[key] = value.strip() if isinstance(value, str) else None
        elif key in ("grace", "expires"):
            values[key] = None if (key == "expires" and value in (None, "", 0)) else parse_duration(value, w)
        elif key == "catchup":
            if value not in CATCHUP_POLICIES:
                raise ConfigError(f"{w} must be one of {', '.join(CATCHUP_POLICIES)}, got {value!r}.")
            values[key] = value
        elif key in ("enabled", "per_tenant"):
            values[key] = _check_bool(value, w)
        elif key == "tenants":
            if not isinstance(value, list | tuple) or not all(isinstance(t, str) and t for t in value):
                raise ConfigError(f"{w} must be a list of tenant ids, got {value!r}.")
            values[key] = tuple(value)
    try:
        json.dumps([values.get("args", ()), values.get("kwargs", {})])
    except (TypeError, ValueError):
        raise ConfigError(f"{where} has args or kwargs that are not JSON values.") from None
    if base is None:
        return Schedule(name=name, **values)
    return replace(base, **values)


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML, JSON or YAML schedule file (by its suffix) into a mapping."""
    p = Path(path).expanduser()
    what = f"RAYSYS_SCHEDULE_FILE ({p})"
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror or exc}.") from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml  # noqa: PLC0415 - PyYAML (with Ray, not a declared dependency): only for .yaml schedule files

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{what} must end in .toml, .json, .yaml or .yml.")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - each parser has its own error type; the message is what matters
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what} is not valid {suffix.lstrip('.').upper()}: {first}.") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must hold a table with a 'schedules' section.")
    return dict(data)


def build_config(data: Mapping[str, Any], settings: Settings, source: str = "file") -> SchedulerConfig:
    """The defaults with ``data`` (a parsed schedule file) applied. Raises :class:`ConfigError`."""
    unknown = sorted(set(data) - {"scheduler", "schedules"})
    if unknown:
        raise ConfigError(f"the schedule file has an unknown section {unknown[0]!r} (known: scheduler, schedules).")
    opts = data.get("scheduler") or {}
    if not isinstance(opts, Mapping):
        raise ConfigError("the schedule file's 'scheduler' section must be a table.")
    bad = sorted(set(opts) - {"lease_seconds", "tick_seconds"})
    if bad:
        raise ConfigError(f"the schedule file's 'scheduler' section has unknown option {bad[0]!r} "
                          "(known: lease_seconds, tick_seconds).")
    lease = parse_duration(opts.get("lease_seconds", DEFAULT_LEASE_SECONDS), "scheduler option 'lease_seconds'")
    tick = parse_duration(opts.get("tick_seconds", DEFAULT_TICK_SECONDS), "scheduler option 'tick_seconds'")
    if tick <= 0 or lease < 3 * tick:
        raise ConfigError(f"scheduler option 'lease_seconds' ({lease:g}) must be at least three ticks "
                          f"(tick_seconds={tick:g}) so a live leader always renews it in time.")
    schedules = {s.name: s for s in default_schedules()}
    raw_schedules = data.get("schedules") or {}
    if isinstance(raw_schedules, list):  # YAML/JSON users may prefer a list of {name: ..., ...}
        as_map: dict[str, Any] = {}
        for item in raw_schedules:
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise ConfigError("each entry of the schedule file's 'schedules' list must be a table with a 'name'.")
            as_map[item["name"]] = {k: v for k, v in item.items() if k != "name"}
        raw_schedules = as_map
    if not isinstance(raw_schedules, Mapping):
        raise ConfigError("the schedule file's 'schedules' section must be a table of schedules.")
    for name, raw in raw_schedules.items():
        schedules[str(name)] = _schedule_from_mapping(str(name), raw, schedules.get(str(name)), settings)
    return SchedulerConfig(tuple(schedules.values()), lease_seconds=lease, tick_seconds=tick, source=source)


def resolve_queues(config: SchedulerConfig, settings: Settings) -> SchedulerConfig:
    """Give every schedule an explicit queue and check that raysys consumes it.

    A schedule without ``queue`` takes its task's registered queue (the producer client's routing); one
    that cannot be routed at all fails here with one sentence. A queue outside ``RAYSYS_QUEUES`` is only
    warned about: bridges on other nodes may consume it.
    """
    out = []
    for s in config.schedules:
        queue = s.queue
        if queue is None:
            try:
                queue = resolve_task(s.task, settings)[1]
            except UnknownTask:
                raise ConfigError(f"schedule {s.name!r} names task {s.task!r}, which no raysys task module "
                                  "registers; set its 'queue' or fix the name.") from None
        if s.enabled and queue not in settings.queues:
            # Not fatal: bridges elsewhere may consume it; the jobs wait in Redis, they are not lost.
            log.warning("schedule %s sends to queue %r, which is not in RAYSYS_QUEUES=%s", s.name, queue,
                        ",".join(settings.queues))
        out.append(replace(s, queue=queue))
    return replace(config, schedules=tuple(out))


def load_config(settings: Settings, *, resolve: bool = True) -> SchedulerConfig:
    """The schedules for ``settings``: the defaults, then ``settings.schedule_file`` when set.

    Raises:
        ConfigError: the file is missing or invalid, or a schedule cannot run; one sentence.
    """
    path = settings.schedule_file
    config = (build_config(read_file(path), settings, source=str(path)) if path
              else SchedulerConfig(default_schedules()))
    return resolve_queues(config, settings) if resolve else config
