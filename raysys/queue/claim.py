"""The claim stage: take messages from Redis as slots free up, admit them, keep count of what is held.

1. **Claim** (:mod:`raysys.queue.redis`): one Lua script moves as many messages as there are free slots from
   the lists, in Celery's priority order, into this consumer's in-flight lists; when nothing is waiting, one
   ``BLMOVE`` per queue (a *waiter*) blocks for the next message (only while a slot is free). Light jobs have
   ``light_capacity`` slots per bridge, heavy jobs ``concurrency`` per queue: the backlog stays in Redis.
2. **Admit**: decode (Celery protocol v2 or the native envelope), look the task up, check its arguments;
   refused messages get a FAILURE result (when an id is readable), a ``<queue>.dead`` entry and a log line
   (a refused chord header part also fails its body, :func:`raysys.queue.chord.check_part`).
   Expired jobs get REVOKED, a future ``eta`` goes to the delayed set, and a job whose SUCCESS is already
   stored (or that runs here already) is acked without running again. The rest go to the run stage.

A claim whose reply a dropped connection lost leaves messages in our in-flight lists that we never saw: after
any claim error claiming pauses and :meth:`ClaimStage.reconcile` gives back whatever the lists hold beyond
what ``held`` counts (every message claimed and not yet acked in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError

from raysys.errors import Refused, UnknownTask
from raysys.queue import chord, messages, results, settle
from raysys.queue.job import LIGHT, Job
from raysys.tasks.registry import lookup

log = logging.getLogger("raysys.queue.bridge")

POLL_SECONDS = 0.1        # idle re-check of every list (priority lists, missed wake-ups)
BLOCK_SECONDS = 1.0       # BLMOVE timeout of the per-queue waiters


class ClaimStage:
    """Claiming and admission for one bridge (``core``: its :class:`~raysys.queue.bridge.BridgeCore`)."""

    def __init__(self, core: Any, light_capacity: int) -> None:
        self.core = core
        self.concurrency = core.concurrency
        self.light_capacity = light_capacity
        self.n_light = 0
        self.n_heavy: dict[str, int] = dict.fromkeys(core.queues, 0)
        # (in-flight list, raw) -> copies this bridge claimed and has not seen acked in Redis yet; whatever
        # else sits in its in-flight lists was claimed by a call whose reply a dropped connection lost.
        self.held: Counter[tuple[str, bytes]] = Counter()
        self.claims_active = 0      # BLMOVEs in progress (the reconciliation waits for them)
        # Set when the last claim script found nothing; clear until the first claim has run and while claims
        # find messages (more may be waiting), so the waiters block only on queues the claim loop found empty
        # (it takes a backlog, in order).
        self.claims_idle = asyncio.Event()
        self.need_reconcile = False
        self.reconciling = False
        self.light_names: list[str] = []

    def acked(self, acks: list[tuple[str, bytes]]) -> None:
        """A batch holding these acks was applied: Redis no longer holds them in flight."""
        held = self.held
        for key in acks:
            n = held.get(key, 0) - 1
            if n > 0:
                held[key] = n
            else:
                held.pop(key, None)

    def free(self) -> tuple[int, dict[str, int]]:
        light = self.light_capacity - self.n_light
        heavy = {q: self.concurrency - n for q, n in self.n_heavy.items()}
        return light, heavy

    async def claim_loop(self) -> None:
        while not self.core.stopping:
            self.core.wake.clear()
            if self.need_reconcile:
                await self.reconcile()
                continue
            light, heavy = self.free()
            got = []
            if light > 0 or any(v > 0 for v in heavy.values()):
                try:
                    got = await self.core.broker.claim(light, heavy, self.light_names)
                    self.core.writes_back()
                    if got:
                        self.claims_idle.clear()
                    else:
                        self.claims_idle.set()
                except (RedisError, OSError) as exc:
                    if write_refused(exc):  # the script's first LMOVE was refused: it moved nothing
                        await self.core.memory_full_wait(exc)
                        continue
                    self.need_reconcile = True  # the script may have run and its reply been lost
                    await self.core.redis_down(exc)
                    continue
            if got:
                for source, light_guess, raw in got:
                    self._count_claim(source, light_guess, raw)
                asyncio.get_running_loop().create_task(self.admit(got))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.core.wake.wait(), POLL_SECONDS)

    async def waiter(self, queue: str) -> None:
        """Block on the queue's main list while a slot is free, so an idle bridge reacts at once.

        A blocked waiter reserves no slot: the claim loop may fill every free slot meanwhile (the priority
        lists must not starve while a waiter sits on the main list), so a bridge holds at most one message
        per waiter above its slots; the heavy semaphore still caps what runs at once.
        """
        conn = self.core.broker.connect(socket_timeout=BLOCK_SECONDS + 5)
        try:
            while not self.core.stopping:
                light, heavy = self.free()
                if not self.claims_idle.is_set():  # the claim loop takes a backlog (in order): block once it is through
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.claims_idle.wait(), POLL_SECONDS)
                    continue
                if light < 1 or heavy[queue] < 1 or self.need_reconcile or self.reconciling:
                    await asyncio.sleep(POLL_SECONDS)
                    continue
                self.claims_active += 1
                try:
                    raw, known = await self.core.broker.block_claim(queue, BLOCK_SECONDS, conn)
                except (RedisError, OSError) as exc:
                    raw, known = None, {}
                    if write_refused(exc):  # refused before it moved anything
                        await self.core.memory_full_wait(exc)
                    else:
                        self.need_reconcile = True  # BLMOVE may have moved a message whose reply was lost
                        await self.core.redis_down(exc)
                finally:
                    self.claims_active -= 1
                if raw is not None:
                    light_guess = task_name(raw) in self.light_names
                    self._count_claim(queue, light_guess, raw)
                    asyncio.get_running_loop().create_task(self.admit([(queue, light_guess, raw)], known))
                    if self.n_light + sum(self.n_heavy.values()) > 1:
                        self.core.wake.set()  # busy: more may be waiting, let the claim loop take a batch
                    else:
                        await asyncio.sleep(0)  # idle: admit it (up to its first Redis call) before blocking again
        finally:
            with contextlib.suppress(Exception):
                await conn.aclose()

    def _count_claim(self, source: str, light: bool, raw: bytes) -> None:
        self.held[(self.core.broker.inflight[source], raw)] += 1
        if light:
            self.n_light += 1
        else:
            self.n_heavy[self.core.broker.list_queue[source]] += 1

    async def reconcile(self) -> None:
        """After a claim whose reply was lost: give back what sits in our in-flight lists unknown to us.

        Claims pause meanwhile (the claim loop runs this; waiters wait), so every message this bridge took
        and knows of is counted in ``held`` until the ack that removes it from Redis has been applied.
        """
        self.reconciling = True
        try:
            while self.claims_active:
                await asyncio.sleep(0.02)
            contents = await self.core.broker.inflight_contents()
            moved = 0
            for source, raws in contents.items():
                inflight = self.core.broker.inflight[source]
                for raw, n in Counter(raws).items():
                    for _ in range(n - self.held.get((inflight, raw), 0)):
                        moved += await self.core.broker.requeue_one(source, raw)
            self.need_reconcile = False
            self.core.redis_back()
            if moved:
                log.warning("bridge %s: %d claimed messages lost their claim's reply; they are back on their "
                            "queues", self.core.name, moved)
                self.core.wake.set()
        except (RedisError, OSError) as exc:
            await self.core.redis_down(exc)
        finally:
            self.reconciling = False

    def release(self, slot: tuple[str, str]) -> None:
        """Free a slot; wake the claim loop only where it has something to do: the last claim found messages
        (a backlog) or every slot of this kind was taken (the waiters stand aside then). An idle bridge's
        waiters already block on the main lists (the claim loop still polls every list each POLL_SECONDS),
        and a claim script per finished job only competed with the next job for Redis and the loop."""
        kind, queue = slot
        if kind == "light":
            full = self.n_light >= self.light_capacity
            self.n_light -= 1
        else:
            full = self.n_heavy[queue] >= self.concurrency
            self.n_heavy[queue] -= 1
        if full or not self.claims_idle.is_set():
            self.core.wake.set()

    async def admit(self, items: list[tuple[str, bool, bytes]], known: dict[str, bytes | None] | None = None) -> None:
        """Admit claimed messages and hand them to the run stage. ``known``: stored results already read for
        some ids (a waiter's claim reads its message's in the same round trip); the others are read here."""
        now = time.time()
        to_run: list[Job] = []
        for source, light_guess, raw in items:
            queue = self.core.broker.list_queue[source]
            inflight = self.core.broker.inflight[source]
            slot = LIGHT if light_guess else ("heavy", queue)
            try:
                job = self._admit_one(raw, queue, source, inflight, slot, now)
            except Refused as exc:
                self.core.commit(settle.refused(exc, queue, source, inflight, raw, slot, self.core.env))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug here must not strand the message in flight
                log.exception("bridge %s: cannot admit a message from %s", self.core.name, source)
                err = messages.refused(f"internal error admitting the message: {type(exc).__name__}: {exc}",
                                       messages.sniff_id(raw), exc_cls=results.DecodeError)
                self.core.commit(settle.refused(err, queue, source, inflight, raw, slot, self.core.env))
                continue
            if job is not None:
                to_run.append(job)
        self.core.flush_event.set()
        if not to_run:
            return
        ids = [j.id for j in to_run]
        if known and all(i in known for i in ids):
            stored = [known[i] for i in ids]
        else:
            stored = await self.core.broker.results(ids)
        for job, meta in zip(to_run, stored, strict=True):
            if results.is_success(meta):
                self.core.commit(settle.dropped(job, "skipped: SUCCESS already stored"))
                continue
            if job.id in self.core.jobs:
                # The same id delivered again while it runs here (a producer's retry, a duplicated push):
                # one run decides the one result.
                self.core.commit(settle.dropped(job, "skipped: a job with this id is already running here",
                                                logging.WARNING))
                continue
            self.core.jobs[job.id] = job
            self.core.run.submit(job)
        self.core.flush_event.set()
        self.core.run.kick()

    def _admit_one(self, raw: bytes, queue: str, source: str, inflight: str, slot: tuple[str, str],
                   now: float) -> Job | None:
        """Decode and check one message; settle it at once (revoked, expired, delayed) or return its Job.

        Raises:
            Refused: the message can never run (its FAILURE and dead letter are the caller's).
        """
        settings = self.core.settings
        msg = messages.decode(raw, queue, max_bytes=settings.max_message_bytes, tz=settings.timezone)
        if msg.chord is not None:  # a header part that can never be counted fails its body
            chord.check_part(msg)
        try:
            spec = lookup(msg.task)
        except UnknownTask:
            raise messages.refused(f"unknown task {msg.task!r}", msg.id, msg.task,
                                   error=results.NotRegistered(msg.task), chord_body=msg.chord) from None
        try:
            spec.check_arguments(msg.args, msg.kwargs)
        except TypeError as exc:
            raise messages.refused(f"wrong arguments for {msg.task}: {exc}", msg.id, msg.task,
                                   error=TypeError(str(exc)), chord_body=msg.chord) from None
        self.core.metrics.count("received", queue, spec.name)
        if msg.id in self.core.revoked:
            self.core.commit(settle.revoked(msg, spec.name, inflight, slot, "revoked", self.core.env))
            return None
        if msg.expires is not None and msg.expires <= now:
            self.core.commit(settle.revoked(msg, spec.name, inflight, slot, "expired", self.core.env))
            return None
        if msg.eta is not None and msg.eta > now + 0.002:
            self.core.commit(settle.delayed(msg, source, inflight, raw, slot, self.core.env), msg)
            return None
        return Job(msg, spec, source, inflight, slot)


def write_refused(exc: BaseException) -> bool:
    """Whether Redis refused a command or script at its first write (out of memory under ``maxmemory``, a
    read-only replica): such a call changed nothing, so there is nothing to reconcile."""
    text = str(exc)
    return isinstance(exc, (OutOfMemoryError, ReadOnlyError)) or "OOM command not allowed" in text or (
        "READONLY" in text)


def task_name(raw: bytes) -> str | None:
    """The task name of a Celery v2 message, read without decoding it (which slot to count it against)."""
    i = raw.find(b'"task": "')
    if i < 0:
        return None
    j = raw.find(b'"', i + 9)
    return raw[i + 9:j].decode("utf-8", "replace") if j > 0 else None
