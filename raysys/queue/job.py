"""What the bridge's stages pass each other: a claimed :class:`Job` and the :class:`Outcome` of its run.

claim -> run -> settle: the claim stage makes a Job of each admitted message, the run stage returns an
Outcome for it (never raises), and the settle stage turns the two into the Redis operations of the job's
transition (:mod:`raysys.queue.settle`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from raysys import logs
from raysys.queue import results
from raysys.queue.messages import Message
from raysys.tasks.registry import TaskSpec

LIGHT = ("light", "")  # the slot a light job's claim counted against; a heavy one's is ("heavy", queue)


@dataclass
class Job:
    """A claimed, admitted message and what the bridge knows of its run."""

    msg: Message
    spec: TaskSpec
    source: str               # the list it was claimed from
    inflight: str             # the in-flight list holding it
    slot: tuple[str, str]     # LIGHT or ("heavy", queue): what its claim counted against
    claimed: float = field(default_factory=time.time)
    started: float | None = None
    light_tries: int = 0
    stop: asyncio.Event | None = None  # a heavy job's while it runs: revoke with terminate sets it (its task is killed)
    runner: Any = None        # the ThreadRunner running this light job's batch, and its place in it
    index: int = 0
    terminated: bool = False  # revoked with terminate=True while running
    chord_recorded: bool = False   # a chord header part's success is counted in Redis (its result and ack follow)
    chord_error: str | None = None  # ... and its body could not be published: the body's ChordError reason

    @property
    def id(self) -> str:
        return self.msg.id


class Kind(enum.Enum):
    """How a run ended."""

    OK = "ok"            # returned a value
    RETRY = "retry"      # may run again (the task's retries, backoff or its own countdown)
    FAIL = "fail"        # final: no retry can help
    OUTAGE = "outage"    # a service the job needs is unreachable (:func:`raysys.errors.is_outage`):
    #                      retried on the infrastructure-outage policy, not on the task's retries


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one run, as the run stage reports it (picklable: it comes back from Ray tasks and actors)."""

    kind: Kind
    run_time: float
    value_json: str = "null"        # OK: the value, JSON-encoded once where it was computed
    exc_meta: dict | None = None    # otherwise: the error as Celery's result backend writes it
    traceback: str = ""
    countdown: float | None = None  # RETRY: the countdown the task asked for (``Retry(countdown=...)``)
    max_retries: int | None = None  # RETRY: the max_retries the task asked for
    published: bool = False         # OK: its runner stored and published the SUCCESS already (the plan only acks)

    @classmethod
    def ok(cls, run_time: float, value_json: str) -> Outcome:
        return cls(Kind.OK, run_time, value_json)

    @classmethod
    def fail(cls, run_time: float, exc: BaseException, traceback: str = "") -> Outcome:
        """A final failure with ``exc`` (its traceback only when given: limits and kills have none)."""
        return cls(Kind.FAIL, run_time, exc_meta=results.exception_meta(exc), traceback=traceback)

    @classmethod
    def retry(cls, run_time: float, exc: BaseException, traceback: str = "", countdown: float | None = None,
              max_retries: int | None = None) -> Outcome:
        return cls(Kind.RETRY, run_time, exc_meta=results.exception_meta(exc), traceback=traceback,
                   countdown=countdown, max_retries=max_retries)


log = logging.getLogger("raysys.queue.bridge")


def log_job(msg: Message, transition: str, elapsed: float, run_time: float | None = None,
            level: int = logging.INFO) -> None:
    """The one log line per job transition: id, task, try, queue, what happened, elapsed (and run) time."""
    if log.isEnabledFor(level):
        run = f" run={run_time:.4f}s" if run_time is not None else ""
        log.log(level, "job %s %s try=%d queue=%s %s elapsed=%.4fs%s", msg.id, msg.task, msg.retries, msg.queue,
                transition, elapsed, run,
                extra=logs.job_fields(msg.id, msg.task, msg.queue, transition.split(" ", 1)[0].rstrip(":"),
                                      elapsed=elapsed, run_time=run_time, retries=msg.retries,
                                      tenant=logs.tenant_of(msg.args, msg.kwargs)))
