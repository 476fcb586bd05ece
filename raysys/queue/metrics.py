"""The bridge's Ray metrics: job counters, run-time histograms, queue depth and in-flight gauges.

Exported through Ray's metrics agent (Prometheus format) with the ``ray_`` prefix; the alert rules and
the dashboard in ``cluster/monitoring/`` name them.
"""

from __future__ import annotations

from collections import Counter, defaultdict


class BridgeMetrics:
    """Ray metrics, aggregated locally and pushed once a second (per-job calls would cost too much)."""

    def __init__(self, bridge: str) -> None:
        from ray.util import metrics  # noqa: PLC0415

        keys = ("queue", "task")
        self.counters = {
            name: metrics.Counter(f"raysys_jobs_{name}", description=f"jobs {name}", tag_keys=keys)
            for name in ("received", "succeeded", "failed", "retried", "dead_lettered", "revoked")
        }
        self.run_time = metrics.Histogram(
            "raysys_job_run_seconds", description="job run time", tag_keys=keys,
            boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 1800])
        self.depth = metrics.Gauge("raysys_queue_depth", description="messages waiting", tag_keys=("queue",))
        self.in_flight = metrics.Gauge("raysys_jobs_in_flight", description="jobs claimed and not acked",
                                       tag_keys=("queue", "bridge"))
        self.bridge = bridge
        self.pending: dict[tuple[str, str, str], int] = defaultdict(int)
        self.times: list[tuple[str, str, float]] = []
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
        if len(self.times) < 5000:
            self.times.append((queue, task, seconds))

    def push(self, depths: dict[str, int] | None, in_flight: dict[str, int]) -> None:
        pending, self.pending = self.pending, defaultdict(int)
        for (name, queue, task), n in pending.items():
            self.counters[name].inc(n, tags={"queue": queue, "task": task})
        times, self.times = self.times, []
        for queue, task, seconds in times:
            self.run_time.observe(seconds, tags={"queue": queue, "task": task})
        for queue, n in (depths or {}).items():
            self.depth.set(n, tags={"queue": queue})
        for queue, n in in_flight.items():
            self.in_flight.set(n, tags={"queue": queue, "bridge": self.bridge})
