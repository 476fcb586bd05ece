"""The scheduling engine: which slots are due, and enqueueing each exactly once. No Ray in here.

One :meth:`Engine.tick` looks at the (injectable) clock and:

1. takes or extends the lease (:mod:`raysys.scheduler.store`); a standby stops here;
2. for each enabled schedule, walks the slots between its cursor and now: a slot later than the
   schedule's ``grace`` is skipped (and logged); the rest run according to ``catchup`` — ``all`` runs
   each, ``latest`` only the newest, ``none`` only one that is (nearly) on time;
3. runs a slot as one job per tenant or one job: claim ``<schedule>:<slot>`` with ``SET NX`` (lease
   holder only) → send through the producer client with that id as the job id → mark it sent. The
   cursor moves past a slot only when all its jobs are sent.

Why a slot runs once: only the lease holder claims, and a claim exists once. A scheduler that dies
after claiming leaves the claim in state ``claimed``; the next leader finds it there, looks for the job
in Redis (queue, priority lists, in-flight lists, delayed set, dead letters, result) in one atomic
script, and sends it only when it is nowhere — so a crash between enqueue and bookkeeping gives no
duplicate, and one between claim and enqueue loses nothing. The job id is the same whoever sends it,
and the send itself is fenced: the producer client's message is pushed by a script that checks the lease
in the same step, so a leader frozen past its lease between its last check and its send pushes nothing.
(A custom ``send`` function is fenced only by the lease check just before it.)

The first time a schedule is seen, its cursor starts at "now": a new deployment does not run history.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from raysys.config import Settings
from raysys.queue.client import Client
from raysys.scheduler.schedules import Schedule, SchedulerConfig
from raysys.scheduler.slots import next_slot, slot_label, slots_between
from raysys.scheduler.store import SLOT_RETENTION, Job, NotLeader, Store
from raysys.storage.postgres import has_database, list_tenant_ids, run_sync

log = logging.getLogger(__name__)

ON_TIME = 60.0          # catchup="none": a slot at most this late (and within grace) still counts as on time
SKIP_SCAN_LIMIT = 2_000  # slots enumerated per schedule per tick when catching up a long outage
ERROR_RETRY = 10.0       # seconds before a schedule whose tick failed is tried again

Clock = Callable[[], float]
SendFn = Callable[[Job], Any]
TenantsFn = Callable[[], list[str]]
FaultHook = Callable[[str, Job], None]


@dataclass
class TickReport:
    """What one tick did (the actor turns it into metrics; tests read it)."""

    now: float
    leader: bool
    became_leader: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _render(value: Any, env: dict[str, str]) -> Any:
    """Replace ``{slot}``-style placeholders in strings inside ``value`` (lists and dicts walked)."""
    if isinstance(value, str):
        for k, v in env.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list | tuple):
        return [_render(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, env) for k, v in value.items()}
    return value


def _mentions_tenant(value: Any) -> bool:
    if isinstance(value, str):
        return "{tenant_id}" in value
    if isinstance(value, list | tuple):
        return any(_mentions_tenant(v) for v in value)
    if isinstance(value, dict):
        return any(_mentions_tenant(v) for v in value.values())
    return False


def build_jobs(schedule: Schedule, slot: datetime, tenants: list[str] | None, *, manual_id: str | None = None
               ) -> list[Job]:
    """The jobs of one slot of ``schedule`` (one per tenant for ``per_tenant`` schedules).

    ``manual_id`` replaces the slot in job ids (a run outside the slot rule).
    """
    label = slot_label(slot)
    env = {"slot": label, "slot_date": slot.date().isoformat(),
           "previous_date": (slot.date() - timedelta(days=1)).isoformat(), "schedule": schedule.name}
    base_id = f"{schedule.name}:{manual_id or label}"
    expires_at = slot.timestamp() + schedule.expires if schedule.expires else None
    assert schedule.queue, "resolve_queues() gives every schedule a queue"
    if not schedule.per_tenant:
        return [Job(job_id=base_id, schedule=schedule.name, slot=label, task=schedule.task, queue=schedule.queue,
                    args=tuple(_render(list(schedule.args), env)), kwargs=_render(dict(schedule.kwargs), env),
                    expires_at=expires_at)]
    jobs = []
    add_kwarg = not (_mentions_tenant(schedule.args) or _mentions_tenant(dict(schedule.kwargs)))
    for tenant in tenants or []:
        tenv = {**env, "tenant_id": tenant}
        kwargs = _render(dict(schedule.kwargs), tenv)
        if add_kwarg:
            kwargs["tenant_id"] = tenant
        jobs.append(Job(job_id=f"{base_id}:{tenant}", schedule=schedule.name, slot=label, task=schedule.task,
                        queue=schedule.queue, args=tuple(_render(list(schedule.args), tenv)), kwargs=kwargs,
                        expires_at=expires_at))
    return jobs


def client_encoder(settings: Settings) -> Callable[[Job], tuple[str, bytes, str]]:
    """What the producer client would push for a job: ``(list key, message, id)``, for the fenced send."""
    client = Client(settings)

    def encode(job: Job) -> tuple[str, bytes, str]:
        expires = datetime.fromtimestamp(job.expires_at, UTC) if job.expires_at else None
        return client.encode(job.task, args=list(job.args), kwargs=dict(job.kwargs), queue=job.queue,
                             task_id=job.job_id, expires=expires)

    return encode


def postgres_tenants(settings: Settings) -> list[str]:
    """Every tenant id in PostgreSQL, now (one short connection)."""
    return run_sync(list_tenant_ids(settings))


class Engine:
    """One scheduler instance. Call :meth:`tick` every ``config.tick_seconds``; :meth:`close` on stop.

    Args:
        settings: Redis URL and key prefix, PostgreSQL for tenant lists, the producer client.
        config: the schedules (queues resolved, see :func:`raysys.scheduler.schedules.load_config`).
        clock: unix seconds now; tests pass a controlled one.
        send: enqueue one job; default the producer client's message pushed by the fenced script
            (:meth:`Store.send`; manual runs pushed as they are).
        tenants: list tenants for ``per_tenant`` schedules without a ``tenants`` list; default PostgreSQL.
        fault: test hook called as ``fault(point, job)`` at ``claimed``, ``sending`` (lease checked, not yet
            sent), ``sent`` and ``marked``; whatever it raises propagates as a crash at that point would.
        store: a :class:`Store` (default: one on ``settings.redis_url`` with ``settings.key_prefix``).
        identity: how this scheduler shows in the lease (default host:pid:token).
        token: the lease token (default random); one that survives a restart lets the restarted
            scheduler keep its lease instead of waiting for it to lapse.
    """

    def __init__(self, settings: Settings, config: SchedulerConfig, *, clock: Clock = time.time,
                 send: SendFn | None = None, tenants: TenantsFn | None = None, fault: FaultHook | None = None,
                 store: Store | None = None, identity: str | None = None, token: str | None = None) -> None:
        self.settings = settings
        self.config = config
        self.clock = clock
        self.store = store or Store.from_url(settings.redis_url, settings.key_prefix)
        self._send = send
        self._encode: Callable[[Job], tuple[str, bytes, str]] | None = None
        self._tenants = tenants
        self.fault = fault
        self.token = token or uuid.uuid4().hex
        self.holder = identity or f"{socket.gethostname()}:{os.getpid()}:{self.token[:6]}"
        self.is_leader = False
        self._cursor: dict[str, float] = {}    # schedule -> cursor, valid while we hold the lease
        self._due: dict[str, float] = {}       # schedule -> the next slot after the cursor

    # --- the loop body ------------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Take/extend the lease and, as leader, run every due slot. Never raises for one bad schedule."""
        now = self.clock()
        held, how = self.store.lease(self.token, self.holder, now, self.config.lease_seconds)
        report = TickReport(now=now, leader=held)
        if not held:
            if self.is_leader:
                log.warning("scheduler %s lost the lease to %s", self.holder, how)
            self.is_leader = False
            return report
        if not self.is_leader or how == "acquired":
            # A new term: state may have moved while someone else led, so read it again.
            self._cursor.clear()
            self._due.clear()
            report.became_leader = True
            self.store.event("leader", now, holder=self.holder)
            report.events.append({"event": "leader", "holder": self.holder})
            log.info("scheduler %s is now the leader", self.holder)
        self.is_leader = True
        for schedule in self.config.enabled:
            try:
                self._process(schedule, now, report)
            except NotLeader:
                self.is_leader = False
                report.leader = False
                log.warning("scheduler %s lost the lease during a tick", self.holder)
                break
            except Exception as exc:  # one schedule's failure must not stop the others or the loop
                message = f"{type(exc).__name__}: {exc}"
                report.errors.append(f"{schedule.name}: {message}")
                report.events.append({"event": "error", "schedule": schedule.name, "detail": message})
                log.exception("schedule %s: tick failed", schedule.name)
                try:
                    self.store.note_error(schedule.name, now, message)
                except Exception:  # Redis itself may be what failed
                    log.debug("could not record the error", exc_info=True)
                self._due[schedule.name] = now + ERROR_RETRY  # not every tick: a dead database would flood the log
        return report

    def upcoming(self) -> dict[str, float]:
        """Schedule -> unix time of its next slot, as far as this scheduler has looked (leader only)."""
        return dict(self._due)

    def close(self) -> None:
        """Hand the lease back so a standby takes over at once."""
        try:
            self.store.release(self.token)
        finally:
            self.is_leader = False

    # --- one schedule ------------------------------------------------------------------------------------

    def _cursor_of(self, schedule: Schedule, now: float) -> float:
        if schedule.name not in self._cursor:
            raw = self.store.read_state(schedule.name).get("cursor")
            if raw is None:
                cursor = now  # first sight: start from now, run no history
                self.store.advance(schedule.name, cursor, next_slot(schedule.cron, schedule.zone, now).timestamp(),
                                   now)
            else:
                cursor = float(raw)
            self._cursor[schedule.name] = cursor
        return self._cursor[schedule.name]

    def _process(self, schedule: Schedule, now: float, report: TickReport) -> None:
        due_at = self._due.get(schedule.name)
        if due_at is not None and due_at > now:
            return
        cursor = self._cursor_of(schedule, now)
        zone = schedule.zone
        due = slots_between(schedule.cron, zone, cursor, now, limit=SKIP_SCAN_LIMIT)
        skipped: list[tuple[str, str]] = []
        if len(due) >= SKIP_SCAN_LIMIT and now - due[-1].timestamp() > schedule.grace:
            # A long outage: everything before now - grace is beyond it; jump there after logging a sample.
            skipped = [(slot_label(s), f"beyond grace ({schedule.grace:g} s)") for s in due]
            cursor = max(cursor, now - schedule.grace - 1e-3)
            due = slots_between(schedule.cron, zone, cursor, now, limit=SKIP_SCAN_LIMIT)
        within = [s for s in due if now - s.timestamp() <= schedule.grace]
        if schedule.catchup == "all":
            run = within
        elif schedule.catchup == "latest":
            run = within[-1:]
        else:
            run = [s for s in within[-1:] if now - s.timestamp() <= min(schedule.grace, ON_TIME)]
        run_set = {s.timestamp() for s in run}
        for slot in due:
            ts = slot.timestamp()
            if ts not in run_set:
                late = now - ts
                reason = (f"beyond grace: {late:.0f} s late, grace {schedule.grace:g} s" if late > schedule.grace
                          else f"catchup={schedule.catchup}: {late:.0f} s late")
                skipped.append((slot_label(slot), reason))
                cursor = ts
                continue
            if skipped:  # record skips before the run, so the log reads in slot order
                self._skip(schedule.name, cursor, None, now, skipped, report)
                skipped = []
            self._fire(schedule, slot, now, report)
            cursor = ts
            self.store.advance(schedule.name, cursor, None, now)
        upcoming = next_slot(schedule.cron, zone, max(cursor, now)).timestamp()
        self._skip(schedule.name, cursor, upcoming, now, skipped, report)
        self._cursor[schedule.name] = cursor
        self._due[schedule.name] = upcoming

    def _skip(self, name: str, cursor: float, upcoming: float | None, now: float,
              skipped: list[tuple[str, str]], report: TickReport) -> None:
        """Move the cursor past ``skipped`` slots, logging each (a long outage: the first few and a count)."""
        for slot, reason in skipped[:20]:
            log.warning("schedule %s: slot %s skipped (%s)", name, slot, reason)
        if len(skipped) > 20:
            log.warning("schedule %s: %d more slots skipped, up to %s", name, len(skipped) - 20, skipped[-1][0])
        report.events.extend({"event": "skipped", "schedule": name, "slot": slot, "detail": reason}
                             for slot, reason in skipped)
        self.store.advance(name, cursor, upcoming, now, skipped)

    def _tenants_for(self, schedule: Schedule) -> list[str] | None:
        if not schedule.per_tenant:
            return None
        if schedule.tenants:
            return list(schedule.tenants)
        if self._tenants is not None:
            return list(self._tenants())
        if has_database(self.settings):
            return postgres_tenants(self.settings)
        log.warning("schedule %s is per tenant but lists no tenants and POSTGRES_URL is not set: nothing to send",
                    schedule.name)
        return []

    def _fire(self, schedule: Schedule, slot: datetime, now: float, report: TickReport) -> None:
        jobs = build_jobs(schedule, slot, self._tenants_for(schedule))
        ttl = schedule.grace + SLOT_RETENTION
        lag = now - slot.timestamp()
        for job in jobs:
            outcome, claim, raw = self.store.claim(self.token, now, job, ttl)
            if outcome == "not-leader":
                raise NotLeader(self.holder)
            if outcome == "claimed":
                self._hook("claimed", job)
                self._check_lease(now)
                self._send_job(job)
                self._hook("sent", job)
                self.store.mark_sent(job, self.token, now, lag=lag)
                self._hook("marked", job)
                log.info("schedule %s: slot %s fired job %s (%s on %s, %.1f s late)", schedule.name, job.slot,
                         job.job_id, job.task, job.queue, lag)
                report.events.append({"event": "fired", "schedule": schedule.name, "slot": job.slot,
                                      "job_id": job.job_id, "task": job.task, "queue": job.queue, "lag": lag})
            elif claim and claim.get("state") != "sent":
                self._recover(job, claim, raw, now, lag, report)
            # else: sent already (by us before a restart, or by another leader): nothing to do

    def _recover(self, job: Job, claim: dict[str, Any], raw: str, now: float, lag: float,
                 report: TickReport) -> None:
        """Finish a claim someone (a dead leader, or our own failed send) left unsent."""
        outcome = self.store.takeover(self.token, now, job.job_id, raw)
        if outcome == "not-leader":
            raise NotLeader(self.holder)
        if outcome == "changed":
            return  # it moved under us; the next tick sees the new state
        original = Job.from_dict(claim["job"])
        where = self.store.find_job(original)
        if where:
            detail = f"already enqueued (found in {where!r}); claim left by {claim.get('token', '?')[:8]}"
        else:
            self._check_lease(now)
            self._send_job(original)
            detail = f"re-sent; claim left unsent by {claim.get('token', '?')[:8]}"
        self.store.mark_sent(original, self.token, now, lag=lag, how="recovered", detail=detail)
        log.warning("schedule %s: slot %s job %s recovered: %s", job.schedule, job.slot, job.job_id, detail)
        report.events.append({"event": "recovered", "schedule": job.schedule, "slot": job.slot,
                              "job_id": job.job_id, "task": job.task, "queue": job.queue, "detail": detail})

    def _check_lease(self, now: float) -> None:
        """Fence: refuse to send when the lease has passed to someone else since this tick began."""
        lease = self.store.leader()
        if not lease or lease.get("token") != self.token or float(lease["expires"]) <= now:
            raise NotLeader(self.holder)

    def _send_job(self, job: Job, fenced: bool = True) -> None:
        self._hook("sending", job)
        if self._send is not None:
            self._send(job)
            return
        if self._encode is None:
            self._encode = client_encoder(self.settings)
        key, message, _ = self._encode(job)
        if not fenced:  # a manual run: no slot, no lease needed
            self.store.r.lpush(key, message)
        elif not self.store.send(self.token, self.clock(), key, message):  # the clock now, not the tick's
            raise NotLeader(self.holder)

    def _hook(self, point: str, job: Job) -> None:
        if self.fault is not None:
            self.fault(point, job)

    # --- outside the slot rule -----------------------------------------------------------------------------

    def run_now(self, name: str, tenants: list[str] | None = None) -> list[Job]:
        """Enqueue ``name``'s job(s) now with fresh ids, whatever the slots say (``raysys schedule run``)."""
        schedule = self.config.get(name)
        now = self.clock()
        slot = datetime.fromtimestamp(now, schedule.zone).replace(microsecond=0)
        manual = f"manual-{datetime.fromtimestamp(now, UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
        chosen = tenants if tenants else self._tenants_for(schedule)
        jobs = build_jobs(schedule, slot, chosen, manual_id=manual)
        for job in jobs:
            self._send_job(job, fenced=False)
            self.store.note_manual(job, now)
            log.info("schedule %s: manual run, job %s (%s on %s)", name, job.job_id, job.task, job.queue)
        return jobs


def describe(config: SchedulerConfig, store: Store, now: float) -> list[dict[str, Any]]:
    """Each schedule with its next and last run (for `raysys schedule list` and the actor's status)."""
    states = store.read_states(s.name for s in config.schedules)
    out = []
    for s in config.schedules:
        st = states.get(s.name, {})
        nxt = next_slot(s.cron, s.zone, now) if s.enabled else None
        last_run = float(st["last_run_at"]) if st.get("last_run_at") else None
        out.append({
            "name": s.name, "cron": s.cron, "timezone": s.timezone, "task": s.task, "queue": s.queue,
            "enabled": s.enabled, "catchup": s.catchup, "grace": s.grace, "per_tenant": s.per_tenant,
            "next_run": slot_label(nxt) if nxt else None,
            "next_run_in": round(nxt.timestamp() - now, 1) if nxt else None,
            "last_slot": st.get("last_slot"), "last_job_id": st.get("last_job_id"),
            "last_run_at": datetime.fromtimestamp(last_run, UTC).isoformat(timespec="seconds") if last_run else None,
            "runs": int(st.get("runs", 0)), "skips": int(st.get("skips", 0)),
            "manual_runs": int(st.get("manual_runs", 0)),
            "last_skip": st.get("last_skip"), "last_error": st.get("last_error"),
        })
    return out
