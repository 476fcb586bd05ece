"""Cluster deployment: manifests and configs parse and agree, `serve build`/`serve deploy` work, and on a
two-node cluster (one node declaring a GPU) the model actors land on the GPU node and tasks elsewhere.

The two-node cluster and the dedicated `ray start --head` run in their own processes: this pytest
process already owns the session's ``ray.init``. Only the processes those tests start are stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import new_database, shared_data
from waiting import wait_until

from raysys.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "CELERY_", "POSTGRES_", "REDIS_"))}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYANNOTE_METRICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


# --- manifests -------------------------------------------------------------------------------------------


def test_launcher_config_has_a_cpu_head_and_a_gpu_worker_type():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(types[n]["max_workers"] >= types[n]["min_workers"] for n in gpu_types)
    assert any("--num-gpus=0" in c for c in cfg["head_start_ray_commands"])
    assert cfg["max_workers"] >= max(types[n]["max_workers"] for n in gpu_types)


def _raycluster_spec() -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text()) if d]
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1"
    return rc["spec"]


def test_kuberay_raycluster_has_a_gpu_worker_group():
    spec = _raycluster_spec()
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    assert spec["enableInTreeAutoscaling"] is True
    pvc = yaml.safe_load((CLUSTER / "kuberay" / "pvc.yaml").read_text())
    claim = pvc["metadata"]["name"]
    for group in (spec["headGroupSpec"], gpu):
        volumes = group["template"]["spec"]["volumes"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in volumes)


def test_rayservice_embeds_the_serve_config_and_the_same_cluster():
    svc = yaml.safe_load((CLUSTER / "kuberay" / "rayservice.yaml").read_text())
    assert svc["kind"] == "RayService" and svc["apiVersion"] == "ray.io/v1"
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    assert svc["spec"]["rayClusterConfig"] == _raycluster_spec()


def test_serve_config_validates_and_points_at_the_app():
    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    (app,) = schema.applications
    assert app.import_path == "raysys.serve.entry:app"
    (dep,) = app.deployments
    assert dep.name == "raysys-api"
    auto = cfg["applications"][0]["deployments"][0]["autoscaling_config"]
    assert 1 <= auto["min_replicas"] <= auto["initial_replicas"] <= auto["max_replicas"]
    assert auto["target_ongoing_requests"] > 0
    env = cfg["applications"][0]["runtime_env"]["env_vars"]
    assert float(env["DIARIZATION_NUM_GPUS"]) > 0 and float(env["EMOTION_NUM_GPUS"]) > 0
    assert not any(k in env for k in ("POSTGRES_URL", "CELERY_BROKER_URL", "HF_TOKEN")), "no secrets in the file"


def test_serve_build_writes_a_config_for_the_app(tmp_path):
    out = tmp_path / "built.yaml"
    env = _env(POSTGRES_URL="postgresql://u@127.0.0.1:1/db", CELERY_BROKER_URL="redis://127.0.0.1:1/0",
               RAYSYS_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([str(BIN / "serve"), "build", "raysys.serve.entry:app", "-o", str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = yaml.safe_load(out.read_text())
    (app,) = built["applications"]
    assert app["import_path"] == "raysys.serve.entry:app"
    (dep,) = app["deployments"]
    assert dep["name"] == "raysys-api" and dep["autoscaling_config"]["max_replicas"] >= 2
    assert dep["ray_actor_options"]["num_cpus"] == 0.25


# --- serve deploy on a dedicated head ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def head():
    """A dedicated `ray start --head` (dashboard on, token auth on); stopped by its own pids, never `ray stop`."""
    from raysys.stack import ray_pids, start_ray_head, terminate

    temp_dir = Path("/tmp") / f"rs-head-{uuid.uuid4().hex[:6]}"
    # Ray 2.60 turns token auth on when a token exists; say so explicitly, for the head and its clients.
    # Job entrypoints run `python` from the head's PATH: the project's venv, as under ./dev.
    env = _env(RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    dashboard = free_port()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        address, sid = start_ray_head(temp_dir, free_port(), dashboard, num_cpus=2)
    try:
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        terminate(ray_pids(temp_dir, sid), timeout=15)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_serve_deploy_of_cluster_serve_yaml(tmp_path, head, redis_server, pg_server):
    """`serve deploy cluster/serve.yaml` on a fresh `ray start --head`: the API answers with a tenant's key."""
    from raysys.storage.postgres import Database

    pg_url = new_database(pg_server, "deploy")

    async def key() -> str:
        db = await Database.open(pg_url, max_size=1)
        try:
            return (await db.create_api_key("deploy_tenant"))[1]
        finally:
            await db.close()

    secret = asyncio.run(key())
    cfg = yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    port = free_port()
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    app = cfg["applications"][0]
    app["runtime_env"]["env_vars"].update({
        "RAYSYS_DATA_DIR": str(tmp_path / "data"), "CELERY_BROKER_URL": redis_server["url"], "POSTGRES_URL": pg_url,
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}", "DIARIZATION_NUM_GPUS": "0", "EMOTION_NUM_GPUS": "0",
        "EMBEDDING_NUM_GPUS": "0",
    })
    auto = app["deployments"][0]["autoscaling_config"]
    auto.update({"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2})
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = _env(RAY_AUTH_MODE="token")
    proc = subprocess.run([str(BIN / "serve"), "deploy", str(config), "--address", head["dashboard"]],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 240, 1.0, message="the deployed API to answer /healthz")
    tasks = httpx.get(f"http://127.0.0.1:{port}/v1/tasks", headers={"X-API-Key": secret}, timeout=30)
    assert tasks.status_code == 200 and any(t["name"] == "raysys.ping" for t in tasks.json())
    assert httpx.get(f"http://127.0.0.1:{port}/v1/tasks", timeout=30).status_code == 401
    status = subprocess.run([str(BIN / "serve"), "status", "--address", head["dashboard"]],
                            env=env, capture_output=True, text=True, timeout=60)
    assert "raysys-api" in status.stdout and "HEALTHY" in status.stdout, status.stdout[-2000:]
    subprocess.run([str(BIN / "serve"), "shutdown", "-y", "--address", head["dashboard"]], env=env,
                   capture_output=True, timeout=120)


def _run_job(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """`ray job submit ...`; retried while the fresh head's dashboard agent is not up yet."""
    deadline = time.monotonic() + 90
    while True:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout + proc.stderr
        if "No available agent to submit job" not in out or time.monotonic() > deadline:
            return proc.returncode, out
        time.sleep(2)


def _summary(output: str) -> dict:
    lines = [ln for ln in output.splitlines() if "SUMMARY {" in ln]
    assert lines, output[-4000:]
    return json.loads(lines[-1].split("SUMMARY ", 1)[1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_job_submit_backfill_and_directory_ingestion(tmp_path, head, redis_server, pg_server):
    """The documented `ray job submit ... -- python -m raysys.jobs.<job>` commands, against a real head."""
    from raysys import synthetic
    from raysys.storage.postgres import Database

    pg_url = new_database(pg_server, "deploy")
    ds = synthetic.generate(tenants=1, calls=4, days=2, seed=3)
    tenant = ds.tenants[0]
    calls = [sc.call for sc in ds.calls]
    for call in calls:
        call.audio_path = None  # text analytics only: the models are tested elsewhere

    async def seed() -> None:
        db = await Database.open(pg_url, max_size=1)
        try:
            await db.upsert_tenant(tenant)
            await db.upsert_calls(calls)
            for sc in ds.calls:
                await db.replace_turns(tenant, sc.call.id, sc.turns)
        finally:
            await db.close()

    asyncio.run(seed())
    docs = tmp_path / "data" / "documents" / tenant
    (docs / "faq").mkdir(parents=True)
    (docs / "faq" / "cards.md").write_text("# Cards\n\nBlock a lost card in the app under Cards > Block.\n")
    (docs / "fees.txt").write_text("Transfers abroad cost one percent of the amount.\n")
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))   # not a document: skipped
    runtime_env = json.dumps({"env_vars": {
        "RAYSYS_DATA_DIR": str(tmp_path / "data"), "CELERY_BROKER_URL": redis_server["url"], "POSTGRES_URL": pg_url,
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}", "EMBEDDING_NUM_GPUS": "0"}})
    days = sorted({c.started_at.date() for c in calls})
    env = _env(RAY_AUTH_MODE="token")
    submit = [str(BIN / "ray"), "job", "submit", "--address", head["dashboard"], "--working-dir", ".",
              "--runtime-env-json", runtime_env, "--"]

    rc, out = _run_job([*submit, "python", "-m", "raysys.jobs.backfill", "--tenant", tenant, "--start", str(days[0]),
                        "--end", str(days[-1]), "--log-every", "2"], env, timeout=400)
    summary = _summary(out)
    assert summary["total"] == len(calls) and summary["succeeded"] == len(calls) and summary["failed"] == 0, out[-4000:]
    assert f"progress {len(calls)}/{len(calls)}" in out
    assert rc == 0, out[-3000:]

    rc, out = _run_job([*submit, "python", "-m", "raysys.jobs.ingest_dir", str(docs), "--tenant", tenant], env,
                       timeout=300)
    summary = _summary(out)
    assert summary["total"] == 2 and summary["ingested"] == 2 and summary["skipped"] == 1, out[-4000:]
    assert summary["chunks"] >= 2 and "progress 2/2" in out
    assert rc == 0, out[-3000:]


# --- placement on a two-node cluster -------------------------------------------------------------------------

PLACEMENT_SCRIPT = textwrap.dedent('''
    import json, sys
    import ray
    from ray.cluster_utils import Cluster

    def register_probe():
        # Runs in every worker of this job: a task registered like the real ones (num_gpus=0).
        import ray
        from raysys.tasks.registry import task

        @task("tests.where", queue="analytics")
        def where(ctx):
            return ray.get_runtime_context().get_node_id()

    data_dir, wav = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="raysys", log_to_driver=False,
             runtime_env={"worker_process_setup_hook": register_probe})
    try:
        from raysys.actors.diarization import diarize_file
        from raysys.actors.emotion import analyze_file
        from raysys.config import Settings
        from raysys.tasks import execute
        from raysys.tasks import registry

        register_probe()
        settings = Settings.from_env({}, data_dir=data_dir, diarization_num_gpus=0.5, emotion_num_gpus=0.25,
                                     embedding_num_gpus=0.25)
        diar = diarize_file(settings, wav)
        emo = analyze_file(settings, wav, segments=diar["segments"])
        tasks = ray.get([execute.submit(settings, "tests.where") for _ in range(3)])
        actors = {}
        for info in ray._private.state.actors().values():
            if info.get("State") == "ALIVE":
                actors[info.get("Name") or info.get("ActorClassName")] = {
                    "class": info.get("ActorClassName"), "node": info["Address"]["NodeID"]}
        print("RESULT " + json.dumps({
            "gpu_node": gpu_node.node_id, "head_node": cluster.head_node.node_id, "tasks": tasks,
            "actors": actors, "segments": len(diar["segments"]), "emotion_segments": len(emo["segments"]),
        }))
    finally:
        ray.shutdown()
        cluster.shutdown()
''')


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_model_actors_land_on_the_gpu_node_and_tasks_still_run(tmp_path):
    import soundfile as sf

    audio, sr = sf.read(str(shared_data("diarization", "sample.wav")), dtype="float32")
    wav = tmp_path / "data" / "uploads" / "short.wav"
    wav.parent.mkdir(parents=True)
    sf.write(str(wav), audio[6 * sr: 14 * sr], sr)  # speech starts at 6.6 s
    script = tmp_path / "placement.py"
    script.write_text(PLACEMENT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data"), str(wav)], env=_env(),
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["gpu_node"] != result["head_node"]
    models = {name: a for name, a in result["actors"].items()
              if any(k in (a["class"] or "") for k in ("Diarization", "Emotion"))}
    assert {"Diarization", "Emotion"} <= {k for a in models.values() for k in ("Diarization", "Emotion")
                                           if k in a["class"]}, result["actors"]
    assert all(a["node"] == result["gpu_node"] for a in models.values()), result
    # Model actors reserve no CPU (no fan-out may starve them), so CPU tasks may share the GPU node: they
    # ran, on the cluster's nodes.
    assert len(result["tasks"]) == 3 and set(result["tasks"]) <= {result["head_node"], result["gpu_node"]}, result
    assert result["segments"] > 0 and result["emotion_segments"] > 0
