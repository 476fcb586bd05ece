"""Writing to Redis: job transitions applied in batches, and delayed jobs moved back when due.

Every transition (a settle :class:`~raysys.queue.settle.Plan`: result, retry, dead letter, callbacks, ack)
is appended to the pending batch (:class:`~raysys.queue.redis.Ops`); the flush loop applies the batch in one
script call while the next one accumulates, so a job costs no Redis round trip of its own. A batch re-sent
after a lost reply is a no-op (its token); one Redis refuses (``maxmemory``, read-only) is kept, its jobs
stay in flight, and it goes again later. Slots are freed once their acks are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from raysys.queue import settle
from raysys.queue.claim import write_refused
from raysys.queue.redis import NotApplied, Ops

log = logging.getLogger("raysys.queue.bridge")


class Writer:
    """The pending batch of one bridge (``core``: its :class:`~raysys.queue.bridge.BridgeCore`)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.ops = self.new_ops()
        self.releases: list[tuple[str, str]] = []  # slots freed once the batch is written
        self.flushing = False
        self.last_token: str | None = None  # the previous applied batch's token, deleted by the next batch

    def new_ops(self) -> Ops:
        return Ops(self.core.settings.key_prefix, self.core.settings.dead_letter_max)

    def add(self, plan: settle.Plan) -> None:
        """Append a transition to the pending batch."""
        settle.apply(plan, self.ops)
        if plan.slot is not None:
            self.releases.append(plan.slot)

    def pending(self) -> bool:
        return bool(len(self.ops) or self.flushing)

    async def flush_loop(self) -> None:
        """Apply buffered transitions in one script call; whatever accumulates meanwhile goes next."""
        while True:
            await self.core.flush_event.wait()
            self.core.flush_event.clear()
            if not len(self.ops):
                continue
            ops, releases = self.ops, self.releases
            self.ops, self.releases = self.new_ops(), []
            self.flushing = True
            if self.last_token:
                ops.forget(self.last_token)
            try:
                refusals = 0
                while True:
                    try:
                        done = await self.core.broker.apply(ops)
                        self.core.metrics.wrote(True)
                        self.core.writes_back()
                        self.last_token = ops.token
                        break
                    except NotApplied as exc:
                        # Nothing was written (Redis at maxmemory, or read-only): the jobs stay in flight and
                        # keep their slots, so the bridge claims nothing more; the same batch goes again later.
                        refusals += 1
                        self.core.metrics.wrote(False)
                        self.core.metrics.note("batches_refused")
                        level = logging.ERROR if refusals == 1 else logging.DEBUG
                        log.log(level, "bridge %s: Redis refused a batch of %d transitions (%s); nothing was "
                                "written, its jobs stay in flight; retrying", self.core.name, len(ops), exc)
                        await asyncio.sleep(min(0.05 * 2 ** min(refusals, 6), 2.0))
                    except (RedisError, OSError) as exc:  # retried: the batch's token makes a re-run a no-op
                        self.core.metrics.wrote(False)
                        await self.core.redis_down(exc)
                if refusals:
                    log.warning("bridge %s: Redis took the batch after %d refusals", self.core.name, refusals)
                if done.skipped:
                    log.info("bridge %s: %d results not written, a SUCCESS was already stored", self.core.name,
                             done.skipped)
                if done.trimmed:
                    self.core.metrics.note("dead_letters_trimmed", done.trimmed)
                    log.warning("bridge %s: dead-letter lists full (DEAD_LETTER_MAX %d): the %d oldest entries "
                                "were dropped (%d so far)", self.core.name, self.core.settings.dead_letter_max, done.trimmed,
                                self.core.metrics.totals["dead_letters_trimmed"])
                if done.refused:
                    self.core.metrics.note("ids_refused", len(done.refused))
                    log.warning("bridge %s: not written over jobs that exist already (their ids have a result or "
                                "an owner): %s", self.core.name, ", ".join(done.refused[:20]))
                if done.errors:
                    log.error("bridge %s: %d Redis operations failed (the rest of the batch was applied): %s",
                              self.core.name, len(done.errors), "; ".join(sorted(set(done.errors)))[:1000])
                self.core.claim.acked(ops.acks)
            finally:
                self.flushing = False
            for slot in releases:
                self.core.claim.release(slot)

    async def due_loop(self) -> None:
        """Move delayed jobs (eta, countdown, retry backoff) back to their queues when due."""
        while True:
            self.core.due_event.clear()
            try:
                moved, nxt = await self.core.broker.move_due()
                self.core.redis_back()
            except (RedisError, OSError) as exc:
                await (self.core.memory_full_wait(exc) if write_refused(exc) else self.core.redis_down(exc))
                continue
            if moved:
                self.core.wake.set()
                continue
            wait = 0.5 if nxt is None else min(0.5, max(0.005, nxt - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.core.due_event.wait(), wait)
