"""Waiting on actors has deadlines: an actor that cannot be placed, or one that stops answering, fails
the caller with a ServiceTimeout that says what it waited for, instead of hanging it for ever."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray

from raysys.constants import RAY_NAMESPACE
from raysys.errors import ServiceTimeout


@ray.remote(num_cpus=0, max_concurrency=8)
class HungWarehouse:
    """Stands in for a Warehouse actor whose queries hang (a wedged chDB or ClickHouse connection)."""

    def ready(self) -> str:
        return "hung"

    def call(self, method, *args, **kwargs):
        time.sleep(600)


def test_a_model_actor_that_cannot_be_placed_fails_the_call_naming_what_it_needs(ray_cluster, tmp_path):
    from raysys.actors.diarization import diarization_pool
    from raysys.config import Settings

    # One whole GPU on a cluster without any: the actor stays PENDING_CREATION.
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"), diarization_num_gpus=1.0,
                                 actor_start_timeout=3.0)
    pool = diarization_pool(settings)
    started = time.monotonic()
    try:
        with pytest.raises(ServiceTimeout) as info:
            pool.call({"audio": np.zeros(16000, dtype=np.float32), "layout": "mono", "num_speakers": None,
                       "min_speakers": None, "max_speakers": None})
    finally:
        for name in pool.names():
            try:
                ray.kill(ray.get_actor(name, namespace=RAY_NAMESPACE), no_restart=True)
            except ValueError:
                pass
    message = str(info.value)
    assert time.monotonic() - started < 60
    assert "did not start within 3 s" in message and pool.names()[0] in message
    assert "GPU: 1" in message and "PENDING_CREATION" in message, message


def test_a_hung_warehouse_fails_the_job_with_a_timeout_and_the_bridge_keeps_serving(ray_cluster, redis_url,
                                                                                    tmp_path):
    from queue_fixtures import bridge_settings

    from raysys.actors.warehouse import warehouse_name
    from raysys.queue.bridge import start_bridges, stop_bridges
    from raysys.queue.client import Client

    settings = bridge_settings(redis_url, tmp_path / "data", clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
                               warehouse_call_timeout=2.0, max_retries=0)
    hung = HungWarehouse.options(name=warehouse_name(settings), namespace=RAY_NAMESPACE).remote()
    assert ray.get(hung.ready.remote()) == "hung"
    handles = start_bridges(settings, queues=("analytics",), concurrency=2)
    try:
        client = Client(settings)
        jobs = [client.send_task("workers.tasks.aggregate_daily_metrics", args=["2026-11-01", f"tenant_{i}"])
                for i in range(3)]
        for job in jobs:
            with pytest.raises(Exception) as info:
                job.get(timeout=120)
            assert type(info.value).__name__ == "ServiceTimeout", info.value
            assert "did not answer within 2 s" in str(info.value)
        # The bridge took every job and still serves: its slots were not pinned by the hung actor.
        assert client.send_task("raysys.ping", args=["still serving"], queue="analytics").get(timeout=60) == \
            "still serving"
    finally:
        stop_bridges(handles, timeout=5)
        ray.kill(hung, no_restart=True)
