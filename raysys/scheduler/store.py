"""The scheduler's Redis state: the leader lease, slot claims, per-schedule state and the event log.

Keys (``{p}`` is ``settings.key_prefix``; all under :data:`raysys.constants.SCHED_PREFIX`):

- ``{p}raysys:sched:lease``            JSON ``{token, holder, expires, since}``: the active scheduler.
                                       ``expires`` is a unix time on the leader's clock; a standby takes
                                       the lease once its own clock passes it (clocks must agree to well
                                       under the lease, as NTP gives). A real TTL of ten leases removes
                                       the key of a scheduler long gone.
- ``{p}raysys:sched:slot:<job id>``    JSON claim of one job of one slot, created with ``SET NX`` only by
                                       the lease holder: ``{state: claimed|sent, token, at, job}``.
                                       Expires after the grace window plus a week.
- ``{p}raysys:sched:state:<name>``     hash: ``cursor`` (every slot at or before it is handled), ``last_slot``,
                                       ``last_job_id``, ``last_run_at``, ``next_run``, ``runs``, ``skips``,
                                       ``manual_runs``, ``last_error``, ``last_skip``.
- ``{p}raysys:sched:events``           stream of ``fired``/``skipped``/``recovered``/``manual``/``leader``/
                                       ``error`` events (capped near 10,000), which ``raysys beat`` tails.

Every multi-key change is one Lua script or one MULTI transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from raysys.constants import (
    CONSUMERS_KEY,
    DEAD_SUFFIX,
    DELAYED_KEY,
    INFLIGHT_PREFIX,
    PRIORITY_SEP,
    PRIORITY_STEPS,
    RESULT_KEY_PREFIX,
    SCHED_PREFIX,
)

EVENTS_MAXLEN = 10_000
SLOT_RETENTION = 7 * 86_400.0  # a claim outlives the grace window by a week


class NotLeader(RuntimeError):
    """This scheduler does not hold the lease (any more); it must not claim or send."""


@dataclass(frozen=True)
class Job:
    """One message a slot enqueues. ``job_id`` derives from the slot id, so it is the same every time."""

    job_id: str
    schedule: str
    slot: str                      # local ISO time of the slot, or "manual"
    task: str
    queue: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None  # unix time; None: never

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["args"] = list(self.args)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**{**d, "args": tuple(d.get("args", ()))})


class Keys:
    """Key names for one key prefix."""

    def __init__(self, prefix: str = "") -> None:
        base = f"{prefix}{SCHED_PREFIX}"
        self.prefix = prefix
        self.lease = f"{base}lease"
        self.events = f"{base}events"
        self._slot = f"{base}slot:"
        self._state = f"{base}state:"
        self.inflight_prefix = f"{prefix}{INFLIGHT_PREFIX}"  # + <consumer>:<list> (the bridge's layout)
        self.consumers = f"{prefix}{CONSUMERS_KEY}"
        self.delayed = f"{prefix}{DELAYED_KEY}"

    def slot(self, job_id: str) -> str:
        return self._slot + job_id

    def state(self, name: str) -> str:
        return self._state + name


# --- Lua scripts ---------------------------------------------------------------------------------------------

# KEYS[1] lease key
# ARGV[1] token  ARGV[2] holder (host:pid)  ARGV[3] now  ARGV[4] new expiry  ARGV[5] garbage TTL (ms)
# Extends the lease when ARGV[1] holds it, takes it when it is free or lapsed (on the caller's clock).
# Returns {1, "extended"|"acquired"} or {0, holder, expires}.
LEASE_LUA = """
local raw = redis.call('GET', KEYS[1])
local now = tonumber(ARGV[3])
local since = ARGV[3]
local how = 'acquired'
if raw then
  local cur = cjson.decode(raw)
  if cur.token == ARGV[1] then
    how = 'extended'
    since = cur.since
  elseif tonumber(cur.expires) > now then
    return {0, cur.holder, tostring(cur.expires)}
  end
end
local value = cjson.encode({token = ARGV[1], holder = ARGV[2], expires = ARGV[4], since = since})
redis.call('SET', KEYS[1], value, 'PX', ARGV[5])
return {1, how}
"""

# KEYS[1] lease key
# ARGV[1] token
# Deletes the lease only when ARGV[1] holds it (a clean stop hands over at once). Returns 1 or 0.
RELEASE_LUA = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw).token == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] lease key  KEYS[2] slot claim key
# ARGV[1] token  ARGV[2] now  ARGV[3] claim JSON  ARGV[4] claim TTL (s)
# Claims the slot with SET NX, but only for the current lease holder (a deposed leader cannot claim).
# Returns {"claimed"}, {"not-leader"} or {"exists", <current claim JSON>}.
CLAIM_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'not-leader'} end
local cur = cjson.decode(raw)
if cur.token ~= ARGV[1] or tonumber(cur.expires) <= tonumber(ARGV[2]) then return {'not-leader'} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then return {'claimed'} end
return {'exists', redis.call('GET', KEYS[2])}
"""

# KEYS[1] lease key  KEYS[2] the queue list
# ARGV[1] token  ARGV[2] now  ARGV[3] the message
# The fenced send: LPUSH the job only while the caller holds the lease, in one step, so a leader that
# stalled past its lease after its last check cannot put a second copy of a slot's job on the queue.
# Returns "sent" or "not-leader".
SEND_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'not-leader' end
local cur = cjson.decode(raw)
if cur.token ~= ARGV[1] or tonumber(cur.expires) <= tonumber(ARGV[2]) then return 'not-leader' end
redis.call('LPUSH', KEYS[2], ARGV[3])
return 'sent'
"""

# KEYS[1] lease key  KEYS[2] slot claim key
# ARGV[1] token  ARGV[2] now  ARGV[3] the claim JSON the caller read  ARGV[4] the new claim JSON
# Compare-and-set of a claim by the lease holder, to take over one a dead scheduler left unfinished.
# Returns "ok", "not-leader" or "changed".
TAKEOVER_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'not-leader' end
local cur = cjson.decode(raw)
if cur.token ~= ARGV[1] or tonumber(cur.expires) <= tonumber(ARGV[2]) then return 'not-leader' end
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 'changed' end
redis.call('SET', KEYS[2], ARGV[4], 'KEEPTTL')
return 'ok'
"""

# KEYS[1] result key (celery-task-meta-<id>)  KEYS[2] delayed zset  KEYS[3] consumers hash
# KEYS[4..] lists a message may sit in: first the ARGV[3] lists it is consumed from (the queue and its
#           priority lists), then its dead letters and every in-flight list a SCAN found
# ARGV[1] needle: the job id as JSON writes it (with its quotes)  ARGV[2] in-flight key prefix
# ARGV[3] how many of KEYS[4..] are consumed lists
# Is job ARGV[1] anywhere (queued, delayed, in flight, dead, or has a result)? One atomic snapshot, so
# a message moving between lists is seen in one of them. The in-flight lists of consumers registered
# since the SCAN (``<prefix><consumer>:<list>``, the bridge's layout) are read here too.
# Returns the key where it was found, or false.
FIND_JOB_LUA = """
local needle = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then return KEYS[1] end
local function in_list(key)
  if redis.call('TYPE', key).ok ~= 'list' then return false end
  local n = redis.call('LLEN', key)
  local i = 0
  while i < n do
    for _, item in ipairs(redis.call('LRANGE', key, i, i + 999)) do
      if string.find(item, needle, 1, true) then return true end
    end
    i = i + 1000
  end
  return false
end
for i = 4, #KEYS do
  if in_list(KEYS[i]) then return KEYS[i] end
end
local consumed = tonumber(ARGV[3])
for _, consumer in ipairs(redis.call('HKEYS', KEYS[3])) do
  for i = 4, 3 + consumed do
    local key = ARGV[2] .. consumer .. ':' .. KEYS[i]
    if in_list(key) then return key end
  end
end
if redis.call('TYPE', KEYS[2]).ok == 'zset' then
  local n = redis.call('ZCARD', KEYS[2])
  local i = 0
  while i < n do
    for _, item in ipairs(redis.call('ZRANGE', KEYS[2], i, i + 999)) do
      if string.find(item, needle, 1, true) then return KEYS[2] end
    end
    i = i + 1000
  end
end
return false
"""


class Store:
    """The scheduler's view of Redis: lease, claims, state and events, for one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "") -> None:
        self.r = client
        self.keys = Keys(prefix)
        self._lease = client.register_script(LEASE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._send = client.register_script(SEND_LUA)
        self._takeover = client.register_script(TAKEOVER_LUA)
        self._find = client.register_script(FIND_JOB_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> Store:
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30), prefix)

    # lease -------------------------------------------------------------------------------------------------

    def lease(self, token: str, holder: str, now: float, lease_seconds: float) -> tuple[bool, str]:
        """Take or extend the lease; (held, "acquired"|"extended"|<current holder>)."""
        gc_ms = int(max(lease_seconds * 10, 300) * 1000)
        res = self._lease(keys=[self.keys.lease], args=[token, holder, repr(now), repr(now + lease_seconds), gc_ms])
        if int(res[0]) == 1:
            return True, res[1]
        return False, res[1]

    def release(self, token: str) -> bool:
        return bool(self._release(keys=[self.keys.lease], args=[token]))

    def leader(self) -> dict[str, Any] | None:
        raw = self.r.get(self.keys.lease)
        return json.loads(raw) if raw else None

    # claims -------------------------------------------------------------------------------------------------

    def claim(self, token: str, now: float, job: Job, ttl: float) -> tuple[str, dict[str, Any] | None, str | None]:
        """SET NX the job's claim (lease holder only): ("claimed"|"exists"|"not-leader", claim, raw)."""
        value = json.dumps({"state": "claimed", "token": token, "at": now, "job": job.to_dict()})
        res = self._claim(keys=[self.keys.lease, self.keys.slot(job.job_id)],
                          args=[token, repr(now), value, max(1, int(ttl))])
        if res[0] == "exists":
            return "exists", json.loads(res[1]), res[1]
        return res[0], None, None

    def send(self, token: str, now: float, list_key: str, message: bytes) -> bool:
        """Push ``message`` onto ``list_key`` if ``token`` holds the lease at ``now``; False if it does not."""
        reply = self._send(keys=[self.keys.lease, list_key], args=[token, repr(now), message])
        return (reply.decode() if isinstance(reply, bytes) else reply) == "sent"

    def takeover(self, token: str, now: float, job_id: str, old_raw: str) -> str:
        claim = json.loads(old_raw)
        new = json.dumps({**claim, "state": "claimed", "token": token, "at": now, "taken_from": claim.get("token")})
        return self._takeover(keys=[self.keys.lease, self.keys.slot(job_id)], args=[token, repr(now), old_raw, new])

    def find_job(self, job: Job) -> str | None:
        """Where a message or result of ``job`` exists in Redis, or None (it was never enqueued)."""
        consumed = [job.queue, *(f"{job.queue}{PRIORITY_SEP}{s}" for s in PRIORITY_STEPS if s)]
        lists = [*consumed, job.queue + DEAD_SUFFIX]
        lists += list(self.r.scan_iter(match=self.keys.inflight_prefix + "*", count=1000))
        found = self._find(keys=[RESULT_KEY_PREFIX + job.job_id, self.keys.delayed, self.keys.consumers, *lists],
                           args=[json.dumps(job.job_id), self.keys.inflight_prefix, len(consumed)])
        return found or None

    def mark_sent(self, job: Job, token: str, now: float, *, lag: float, how: str = "fired",
                  detail: str = "") -> None:
        """Record that ``job`` is on its queue: the claim says ``sent``, the state and the log say so too."""
        slot_key = self.keys.slot(job.job_id)
        value = json.dumps({"state": "sent", "token": token, "at": now, "job": job.to_dict()})
        pipe = self.r.pipeline(transaction=True)
        pipe.set(slot_key, value, xx=True, keepttl=True)
        pipe.hset(self.keys.state(job.schedule), mapping={
            "last_slot": job.slot, "last_job_id": job.job_id, "last_run_at": repr(now), "last_lag": repr(lag),
        })
        pipe.hincrby(self.keys.state(job.schedule), "runs", 1)
        self._event(pipe, how, now, schedule=job.schedule, slot=job.slot, job_id=job.job_id, task=job.task,
                    queue=job.queue, lag=f"{lag:.3f}", detail=detail)
        pipe.execute()

    # state --------------------------------------------------------------------------------------------------

    def read_state(self, name: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.state(name))

    def read_states(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        names = list(names)
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(self.keys.state(n))
        return dict(zip(names, pipe.execute(), strict=True))

    def advance(self, name: str, cursor: float, next_run: float | None, now: float,
                skipped: list[tuple[str, str]] = ()) -> None:
        """Move ``name``'s cursor and log the slots skipped on the way, atomically."""
        key = self.keys.state(name)
        pipe = self.r.pipeline(transaction=True)
        mapping = {"cursor": repr(cursor)}
        if next_run is not None:
            mapping["next_run"] = repr(next_run)
        pipe.hset(key, mapping=mapping)
        if skipped:
            pipe.hincrby(key, "skips", len(skipped))
            pipe.hset(key, "last_skip", f"{skipped[-1][0]} ({skipped[-1][1]})")
            for slot, reason in skipped[:20]:
                self._event(pipe, "skipped", now, schedule=name, slot=slot, detail=reason)
            if len(skipped) > 20:
                self._event(pipe, "skipped", now, schedule=name, slot=f"{skipped[20][0]}..{skipped[-1][0]}",
                            detail=f"{len(skipped) - 20} more slots: {skipped[-1][1]}")
        pipe.execute()

    def note_error(self, name: str, now: float, message: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.state(name), "last_error", f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))} "
                                                       f"{message}")
        self._event(pipe, "error", now, schedule=name, detail=message)
        pipe.execute()

    def note_manual(self, job: Job, now: float) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(self.keys.state(job.schedule), "manual_runs", 1)
        self._event(pipe, "manual", now, schedule=job.schedule, slot=job.slot, job_id=job.job_id, task=job.task,
                    queue=job.queue)
        pipe.execute()

    def event(self, kind: str, now: float, **fields: Any) -> None:
        self._event(self.r, kind, now, **fields)

    def _event(self, target: Any, kind: str, now: float, **fields: Any) -> None:
        body = {"event": kind, "at": repr(now), **{k: str(v) for k, v in fields.items() if v is not None}}
        target.xadd(self.keys.events, body, maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, last_id: str = "0-0", count: int = 100, block_ms: int | None = None) -> list[tuple[str, dict]]:
        """Events after ``last_id`` (``"$"``: only new ones), waiting up to ``block_ms`` for one."""
        res = self.r.xread({self.keys.events: last_id}, count=count, block=block_ms)
        return [(eid, body) for _stream, items in (res or []) for eid, body in items]

    def last_event_id(self) -> str:
        items = self.r.xrevrange(self.keys.events, count=1)
        return items[0][0] if items else "0-0"
