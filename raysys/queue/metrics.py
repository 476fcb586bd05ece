"""The bridge's Ray metrics: job counters, latency histograms, queue depth, in-flight and heartbeat gauges.

Exported through Ray's metrics agent in Prometheus format, named with Ray's ``ray_`` prefix (counters
also get ``_total``, histograms ``_bucket``/``_sum``/``_count``). The alert rules and the Grafana dashboard
in ``cluster/monitoring/`` use exactly these names and labels; ``tests/test_monitoring.py`` scrapes a
running cluster to hold them to it.

| metric | type | labels | what |
|---|---|---|---|
| ``raysys_jobs_<received/succeeded/failed/retried/dead_lettered/revoked>`` | counter | queue, task | job transitions |
| ``raysys_job_run_seconds`` | histogram | queue, task | run time (start to result) |
| ``raysys_job_wait_seconds`` | histogram | queue, task | time in the queue: due (sent, or its ETA) to start |
| ``raysys_queue_depth`` | gauge | queue | messages waiting |
| ``raysys_jobs_in_flight`` | gauge | queue, bridge | claimed and not acknowledged |
| ``raysys_bridge_heartbeat_timestamp`` | gauge | bridge | unix time of the bridge's last metrics push (once a second) |
| ``raysys_result_writes`` | counter | bridge, outcome | batched result/ack writes to Redis: ``ok`` or ``error`` (then retried) |
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator

from ray.util import metrics

JOB_TRANSITIONS = ("received", "succeeded", "failed", "retried", "dead_lettered", "revoked")
LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800]
MAX_SAMPLES = 5000  # latency samples kept between two pushes (beyond: dropped, the counters stay exact)
EXPORT_SLICE = 100  # Ray metric calls (about 6 us each) between two yields of :meth:`BridgeMetrics.export_steps`


class BridgeMetrics:
    """Ray metrics, aggregated locally and pushed once a second (per-job calls would cost too much)."""

    def __init__(self, bridge: str) -> None:
        keys = ("queue", "task")
        self.counters = {
            name: metrics.Counter(f"raysys_jobs_{name}", description=f"jobs {name}", tag_keys=keys)
            for name in JOB_TRANSITIONS
        }
        self.run_time = metrics.Histogram(
            "raysys_job_run_seconds", description="job run time", tag_keys=keys, boundaries=LATENCY_BUCKETS)
        self.wait_time = metrics.Histogram(
            "raysys_job_wait_seconds", description="time a job waited in its queue (due to started)",
            tag_keys=keys, boundaries=LATENCY_BUCKETS)
        self.depth = metrics.Gauge("raysys_queue_depth", description="messages waiting", tag_keys=("queue",))
        self.in_flight = metrics.Gauge("raysys_jobs_in_flight", description="jobs claimed and not acked",
                                       tag_keys=("queue", "bridge"))
        self.heartbeat = metrics.Gauge("raysys_bridge_heartbeat_timestamp",
                                       description="unix time of the bridge's last metrics push", tag_keys=("bridge",))
        self.writes = metrics.Counter("raysys_result_writes", description="batched result and acknowledgement "
                                      "writes to Redis, by outcome (ok, error)", tag_keys=("bridge", "outcome"))
        self.bridge = bridge
        self.pending: dict[tuple[str, str, str], int] = defaultdict(int)
        self.times: list[tuple[str, str, float]] = []
        self.waits: list[tuple[str, str, float]] = []
        self.pending_writes: dict[str, int] = defaultdict(int)
        # The bridge's totals (``raysys inspect stats``): every transition counted here once, in the same call
        # that counts its Ray counters.
        self.totals: Counter[str] = Counter()

    def count(self, name: str, queue: str, task: str, n: int = 1) -> None:
        """Count ``n`` jobs on the Ray counter ``raysys_jobs_<name>`` and in the totals."""
        self.pending[(name, queue, task)] += n
        self.totals[name] += n

    def transition(self, name: str, counters: tuple[str, ...], queue: str, task: str) -> None:
        """One job's transition ``name`` (the totals' key), counted once on each Ray counter of ``counters``."""
        self.totals[name] += 1
        for counter in counters:
            self.pending[(counter, queue, task)] += 1

    def note(self, name: str, n: int = 1) -> None:
        """A count of the bridge's own (no Ray counter): loop errors, refused batches, threads left behind."""
        self.totals[name] += n

    def observe(self, queue: str, task: str, seconds: float) -> None:
        """A job's run time."""
        if len(self.times) < MAX_SAMPLES:
            self.times.append((queue, task, seconds))

    def observe_wait(self, queue: str, task: str, seconds: float) -> None:
        """How long a job waited between being due and starting."""
        if len(self.waits) < MAX_SAMPLES:
            self.waits.append((queue, task, max(0.0, seconds)))

    def wrote(self, ok: bool, n: int = 1) -> None:
        """``n`` batched writes of results/acks to Redis went through (``ok``) or failed."""
        self.pending_writes["ok" if ok else "error"] += n

    def take(self) -> tuple:
        """What was counted since the last take, handed over (cheap: on the bridge's event loop)."""
        taken = (self.pending, self.times, self.waits, self.pending_writes)
        self.pending, self.times, self.waits, self.pending_writes = defaultdict(int), [], [], defaultdict(int)
        return taken

    def export_steps(self, taken: tuple, depths: dict[str, int] | None, in_flight: dict[str, int]) -> Iterator[None]:
        """Hand ``taken`` and the gauges to Ray, yielding after every ``EXPORT_SLICE`` calls.

        A busy second holds thousands of samples (tens of milliseconds of Ray calls). The bridge runs the
        steps on its event loop and lets the loop turn between two of them, so a job waits for one slice at
        most. (On a thread it waited longer: a thread holding the GIL keeps the event loop from its replies
        for up to the interpreter's switch interval, 5 ms, every time.)
        """
        pending, times, waits, writes = taken
        for (name, queue, task), n in pending.items():
            self.counters[name].inc(n, tags={"queue": queue, "task": task})
        for histogram, samples in ((self.run_time, times), (self.wait_time, waits)):
            for start in range(0, len(samples), EXPORT_SLICE):
                yield
                for queue, task, seconds in samples[start:start + EXPORT_SLICE]:
                    histogram.observe(seconds, tags={"queue": queue, "task": task})
        for queue, n in (depths or {}).items():
            self.depth.set(n, tags={"queue": queue})
        for queue, n in in_flight.items():
            self.in_flight.set(n, tags={"queue": queue, "bridge": self.bridge})
        for outcome, n in writes.items():
            self.writes.inc(n, tags={"bridge": self.bridge, "outcome": outcome})
        self.heartbeat.set(time.time(), tags={"bridge": self.bridge})

    def export(self, taken: tuple, depths: dict[str, int] | None, in_flight: dict[str, int]) -> None:
        """:meth:`export_steps` at once."""
        for _ in self.export_steps(taken, depths, in_flight):
            pass

    def push(self, depths: dict[str, int] | None, in_flight: dict[str, int]) -> None:
        self.export(self.take(), depths, in_flight)
