"""A small pool of model actors per model, shared by every task and the Serve app.

Each model (diarization, emotion, text embedding) runs in ``<kind>_replicas`` named, detached actors
in the ``raysys`` namespace (``get_if_exists``), so whoever asks first creates them and everyone else
reuses them. Sizing knobs, per model, all in :class:`~raysys.config.Settings`:

- ``DIARIZATION_REPLICAS`` / ``EMOTION_REPLICAS`` / ``EMBEDDING_REPLICAS`` — actors in the pool
  (default 1). Requests go round robin across them.
- ``*_NUM_GPUS`` — GPUs per actor: a number (fractions allowed, e.g. 0.5 so diarization and
  emotion share a card), or ``auto`` (default): the model's share from :data:`AUTO_GPU_SHARE` when
  the cluster has GPUs, 0 (CPU) when it has none.
- CPUs: a model actor reserves **no** logical CPU. The actors are services that tasks wait on; a
  task waiting on an actor that cannot be placed because waiting tasks hold every CPU is a deadlock
  (issue 18: eight analytics tasks on a 2-CPU cluster held both CPUs while the embedding actor they
  waited for stayed PENDING_CREATION). With no CPU to reserve, an actor is placeable on any cluster
  whatever the load, and GPU actors are placed by their GPU share alone. torch in the actor uses
  :func:`resolve_threads` threads: :data:`CPUS` on GPU nodes and roomy clusters, one on small ones.
- Deadlines (:mod:`raysys.actors.deadline`): a replica must be placed and loaded within
  ``ACTOR_START_TIMEOUT`` and each call answered within ``MODEL_CALL_TIMEOUT``; past either the
  caller gets :class:`~raysys.errors.ServiceTimeout` naming the actor, its needs and the cluster's
  pending demand, never a silent hang.

Inside an actor (:class:`ModelServer`) the model is loaded once; concurrent requests are queued and
run together as one batch (up to ``max_batch`` items, gathered for ``batch_wait_s``). A model that
cannot load makes :meth:`ModelServer.ready` raise :class:`~raysys.errors.ModelUnavailable`; the
pool then kills that actor (so the next request tries a fresh load) and raises it to the caller.
Actors are restarted by Ray when their process dies (``max_restarts``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import threading
import time
from typing import Any

import ray
from ray.util import list_named_actors

from raysys.actors import deadline
from raysys.config import Settings
from raysys.constants import RAY_NAMESPACE
from raysys.errors import ModelUnavailable, RaysysError, ServiceTimeout, unwrap

log = logging.getLogger(__name__)

# GPU share per actor when the cluster has GPUs and *_NUM_GPUS is auto: every model's default pool fits on
# one card (transcription runs TRANSCRIPTION_REPLICAS=2 actors by default: 2 × 0.1).
AUTO_GPU_SHARE = {"diarization": 0.4, "emotion": 0.2, "embedding": 0.2, "transcription": 0.1}
CPUS = {"diarization": 1.0, "emotion": 1.0, "embedding": 1.0, "transcription": 1.0}
MAX_RESTARTS = 5
READY_TIMEOUT_S = 600.0


_RESOURCES: dict[str, Any] = {"at": -1e9, "totals": {}, "cluster": None}
RESOURCES_TTL = 30.0  # seconds a reading of the cluster's resources is reused (asked on every model call)


def cluster_resource(name: str) -> float:
    """The cluster's total ``name`` ("CPU", "GPU"); 0 when not connected. Read from the GCS at most every
    ``RESOURCES_TTL`` seconds per cluster: every model call builds its pool, and nodes come and go slowly."""
    now = time.monotonic()
    try:
        cluster = ray.get_runtime_context().gcs_address
        if cluster != _RESOURCES.get("cluster") or now - _RESOURCES["at"] > RESOURCES_TTL:
            _RESOURCES.update(totals=dict(ray.cluster_resources()), at=now, cluster=cluster)
    except Exception:  # noqa: BLE001 - not connected: nothing known (asked again next time)
        return 0.0
    return float(_RESOURCES["totals"].get(name, 0.0))


def resolve_num_gpus(kind: str, configured: float | None) -> float:
    """GPUs for one ``kind`` actor: the configured value, else the auto share where GPUs exist, else 0."""
    if configured is not None:
        return float(configured)
    gpus = cluster_resource("GPU")
    return min(AUTO_GPU_SHARE.get(kind, 0.25), gpus) if gpus > 0 else 0.0


def resolve_threads(kind: str, num_gpus: float) -> int:
    """torch threads for one ``kind`` actor: :data:`CPUS` with a GPU or on a cluster with CPUs to spare
    (at least 8 per model kind), else one, so the model actors leave the CPUs to the tasks beside them."""
    want = int(CPUS.get(kind, 1.0))
    if num_gpus > 0:
        return want
    total = cluster_resource("CPU")
    if total <= 0:
        return want
    return max(1, min(want, int(total / 8)))


def pool_settings(settings: Settings, kind: str) -> tuple[int, float]:
    """(replicas, num_gpus) for ``kind`` from settings and the cluster."""
    replicas = int(getattr(settings, f"{kind}_replicas"))
    return replicas, resolve_num_gpus(kind, getattr(settings, f"{kind}_num_gpus"))


class ModelMetrics:
    """A model actor's Ray metrics (``model`` label: diarization, emotion, embedding, transcription).

    ``raysys_model_batch_seconds`` (histogram): one batch on the model; ``raysys_model_requests``
    (counter, ``outcome`` ok/error): requests answered; ``raysys_model_loads`` (counter, ``outcome``,
    ``device``): model loads — more than one per replica means the actor restarted.
    """

    def __init__(self, model: str) -> None:
        from ray.util import metrics  # noqa: PLC0415 - ray's metrics exist only inside a Ray worker

        self.model = model
        self.batch = metrics.Histogram("raysys_model_batch_seconds", description="time to run one batch on a model",
                                       boundaries=[0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300], tag_keys=("model",))
        self.requests = metrics.Counter("raysys_model_requests", description="model requests answered, by outcome",
                                        tag_keys=("model", "outcome"))
        self.loads = metrics.Counter("raysys_model_loads", description="model loads (actor starts), by outcome",
                                     tag_keys=("model", "outcome", "device"))

    def loaded(self, ok: bool, device: str) -> None:
        self.loads.inc(1.0, tags={"model": self.model, "outcome": "ok" if ok else "error", "device": device})

    def ran(self, seconds: float, ok: int, failed: int) -> None:
        self.batch.observe(seconds, tags={"model": self.model})
        for outcome, n in (("ok", ok), ("error", failed)):
            if n:
                self.requests.inc(float(n), tags={"model": self.model, "outcome": outcome})


class ModelServer:
    """Base of the model actors: load once, batch concurrent requests, fail loudly when not ready.

    Subclasses implement :meth:`load` (returns the model; raise to mark it unavailable) and
    :meth:`run_batch` (a list of request items → a list of results or exceptions, same order).
    """

    max_batch = 16
    batch_wait_s = 0.005

    def __init__(self, spec: dict, threads: int = 1, num_gpus: float = 0.0) -> None:
        import torch  # noqa: PLC0415 - torch: heavy, only in a model actor's process

        torch.set_num_threads(max(1, int(threads)))
        self.threads = max(1, int(threads))
        self.spec = spec
        self.device = "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.error: str | None = None
        self.model: Any = None
        self.batches = 0
        self.items = 0
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        t0 = time.perf_counter()
        try:
            self.model = self.load(spec, self.device)
            torch.set_num_threads(max(1, int(threads)))  # some imports (silero-vad) reset it
        except Exception as exc:  # noqa: BLE001 - reported by ready(), not by a dead actor
            self.error = f"{type(exc).__name__}: {exc}"
            shown = {k: ("***" if k == "token" and v else v) for k, v in spec.items()}  # an HF token
            log.error("model %s failed to load: %s", shown, self.error)
        self.load_seconds = time.perf_counter() - t0
        self.metrics = ModelMetrics(type(self).__name__.removesuffix("Actor").lower())
        self.metrics.loaded(self.error is None, self.device)

    # --- to implement ---------------------------------------------------------------------------

    def load(self, spec: dict, device: str) -> Any:
        raise NotImplementedError

    def run_batch(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {}

    # --- actor API --------------------------------------------------------------------------------

    async def ready(self) -> dict:
        """The model's facts (backend, version, device, threads); raises ModelUnavailable if not loaded."""
        import torch  # noqa: PLC0415 - torch: heavy, only in a model actor's process

        if self.error is not None:
            raise ModelUnavailable(f"{self.spec.get('backend', self.spec)} model unavailable: {self.error}")
        return {"device": self.device, "threads": torch.get_num_threads(), "load_seconds": round(self.load_seconds, 3),
                "batches": self.batches, "items": self.items, **self.describe()}

    async def submit(self, item: Any) -> Any:
        """Queue one request; it runs in the next batch. Raises what the model raised for it."""
        if self.error is not None:
            raise ModelUnavailable(f"{self.spec.get('backend', self.spec)} model unavailable: {self.error}")
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item, future = await self._queue.get()
            batch = [(item, future)]
            deadline = asyncio.get_running_loop().time() + self.batch_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout=max(timeout, 0)) if timeout > 0
                                 else self._queue.get_nowait())
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            items = [b[0] for b in batch]
            started = time.perf_counter()
            try:
                results = await asyncio.to_thread(self.run_batch, items)
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: every caller hears it
                results = [exc] * len(batch)
            failed = sum(isinstance(r, BaseException) for r in results)
            self.metrics.ran(time.perf_counter() - started, len(results) - failed, failed)
            self.batches += 1
            self.items += len(batch)
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)


class ModelPool:
    """Named actors of one model: created on first use, shared cluster-wide, used round robin."""

    _counters: dict[str, itertools.count] = {}
    _lock = threading.Lock()

    def __init__(self, kind: str, actor_cls: type, spec: dict, *, replicas: int, num_gpus: float,
                 threads: int | None = None, start_timeout: float = READY_TIMEOUT_S,
                 call_timeout: float | None = None) -> None:
        self.kind = kind
        self.actor_cls = actor_cls
        self.spec = spec
        self.replicas = max(1, int(replicas))
        self.num_gpus = float(num_gpus)
        self.threads = int(threads if threads is not None else resolve_threads(kind, self.num_gpus))
        self.start_timeout = float(start_timeout)
        self.call_timeout = call_timeout
        key = repr(sorted(spec.items())) + f"|gpu={self.num_gpus}"
        self.prefix = f"raysys-{kind}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def names(self) -> list[str]:
        return [f"{self.prefix}-{i}" for i in range(self.replicas)]

    def handle(self, index: int):
        remote = _remote(self.actor_cls)
        return remote.options(
            name=f"{self.prefix}-{index}", namespace=RAY_NAMESPACE, get_if_exists=True, lifetime="detached",
            num_cpus=0, num_gpus=self.num_gpus, max_restarts=MAX_RESTARTS, max_task_retries=0,
            max_concurrency=64,
        ).remote(self.spec, self.threads, self.num_gpus)

    def needs(self) -> dict[str, float]:
        """What one replica asks the cluster for (for deadline messages)."""
        return {"CPU": 0.0, "GPU": self.num_gpus}

    def handles(self) -> list:
        return [self.handle(i) for i in range(self.replicas)]

    def pick(self):
        with self._lock:
            counter = self._counters.setdefault(self.prefix, itertools.count())
            index = next(counter) % self.replicas
        return index, self.handle(index)

    def ready(self, timeout: float | None = None) -> list[dict]:
        """Every replica's facts; raises ModelUnavailable (and removes the replica) when one cannot load,
        ServiceTimeout when one is not up within ``timeout`` (default the pool's start timeout)."""
        wait = self.start_timeout if timeout is None else timeout
        return [self._ready_one(i, h, wait) for i, h in enumerate(self.handles())]

    def _ready_one(self, index: int, handle, timeout: float) -> dict:
        name = f"{self.prefix}-{index}"
        try:
            return deadline.get_within(handle.ready.remote(), timeout, f"{self.kind} actor {name}")
        except ServiceTimeout:
            raise ServiceTimeout(f"{self.kind} actor {name} did not start within {timeout:.0f} s: "
                                 f"{deadline.placement_report(name, self.needs())}") from None
        except Exception as exc:  # noqa: BLE001 - any load failure kills the actor, then is reported as its cause
            cause = unwrap(exc)
            ray.kill(handle, no_restart=True)  # a fresh actor retries the load next time
            deadline.forget(name)
            if isinstance(cause, ModelUnavailable):
                raise cause from None
            raise ModelUnavailable(f"{self.kind} actor {name} is not ready: {cause}") from None

    def call(self, item: Any, timeout: float | None = None) -> Any:
        """Run one request on a replica; raises the model's error (ModelUnavailable if it cannot load).

        The replica must be placed and loaded within ``start_timeout`` (checked once per process) and
        must answer within ``timeout`` (default ``call_timeout``); else :class:`ServiceTimeout`.
        """
        index, handle = self.pick()
        name = f"{self.prefix}-{index}"
        try:
            deadline.wait_started(handle, name, self.needs(), self.start_timeout)
            return deadline.get_within(handle.submit.remote(item), timeout or self.call_timeout,
                                       f"{self.kind} actor {name}")
        except ServiceTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - unwrapped and re-raised as its cause
            cause = unwrap(exc)
            if isinstance(cause, ModelUnavailable):
                ray.kill(handle, no_restart=True)
                deadline.forget(name)
            if isinstance(cause, RaysysError | ValueError):
                raise cause from None
            if isinstance(exc, ray.exceptions.RayActorError):
                deadline.forget(name)
                raise ModelUnavailable(f"{self.kind} actor {name} died: {exc}") from None
            raise


_REMOTES: dict[type, Any] = {}


def _remote(cls: type):
    """``ray.remote(cls)``, made once per class (each call would export the class again)."""
    if cls not in _REMOTES:
        _REMOTES[cls] = ray.remote(cls)
    return _REMOTES[cls]


def get_pool(settings: Settings, kind: str, actor_cls: type, spec: dict) -> ModelPool:
    """The pool of ``kind`` actors for ``spec``, sized and given deadlines from ``settings``."""
    replicas, num_gpus = pool_settings(settings, kind)
    return ModelPool(kind, actor_cls, spec, replicas=replicas, num_gpus=num_gpus,
                     start_timeout=settings.actor_start_timeout, call_timeout=settings.model_call_timeout)


MODEL_KINDS = ("diarization", "emotion", "embedding", "transcription")


def shutdown_pools(kinds: tuple[str, ...] = MODEL_KINDS) -> list[str]:
    """Kill every model actor of ``kinds`` in the raysys namespace (frees their CPUs/GPUs); returns names.

    Pools come back on the next request. For tests, and for operators changing a model under load.
    """
    killed = []
    for entry in list_named_actors(all_namespaces=True):
        name, namespace = entry["name"], entry["namespace"]
        if namespace == RAY_NAMESPACE and any(name.startswith(f"raysys-{k}-") for k in kinds):
            try:
                ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
                killed.append(name)
            except ValueError:
                pass
    return killed
