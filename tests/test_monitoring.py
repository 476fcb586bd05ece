"""Monitoring: the alert rules and the Grafana dashboard parse and name only metrics that raysys exports.

- The rule file, the dashboard and the KubeRay manifest parse; every PromQL expression parses
  (promql-parser); the KubeRay PrometheusRule and dashboard ConfigMap are what ``sync_kuberay.py`` writes.
- After real jobs on a real cluster (tests/monitoring_driver.py: success, failure, retry, dead letter,
  expiry, a scheduler that fires, skips and fails, a model actor call) the metrics endpoint of Ray's
  metrics agent is scraped as Prometheus would (Ray's service-discovery file) and every metric the rules
  and the dashboard use must be there with every label they group by, filter on or show.
- ``RAYSYS_LOG_FORMAT=json``: one JSON object per line with the job's fields; the default stays readable.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from raysys import logs
from raysys.stack import free_port, ray_pids, start_ray_head, terminate

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "cluster" / "monitoring"
RULES = MONITORING / "raysys-alerts.yml"
DASHBOARD = MONITORING / "grafana" / "raysys-dashboard.json"
# Ray's own node metrics that exist only on nodes with a GPU (the dashboard's GPU panels); none here.
GPU_ONLY = {"ray_node_gpus_utilization", "ray_node_gram_used"}


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, tuple[str, str]]:
    """Panel title -> (expression, legend) for every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} [{target['refId']}]"] = (target["expr"], target.get("legendFormat", ""))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
            assert match, var["definition"]
            out[f"variable {var['name']}"] = (f"{match[1]}", "{{" + match[2] + "}}")
    return out


def used(expr: str, legend: str = "") -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression reads: selectors, matchers, by/without, legend fields."""
    metrics: set[str] = set()
    labels: set[str] = set(re.findall(r"{{\s*\$?labels\.(\w+)\s*}}|{{(\w+)}}", legend) and
                           [a or b for a, b in re.findall(r"{{\s*\$?labels\.(\w+)\s*}}|{{(\w+)}}", legend)])

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            metrics.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return metrics, labels


def test_rules_dashboard_and_kuberay_manifest_parse_and_agree():
    rules = rule_expressions()
    assert len(rules) >= 10
    for name, expr in rules.items():
        metrics, _ = used(expr)
        assert metrics and all(m.startswith("ray_") for m in metrics), (name, metrics)
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    panels = dashboard_expressions()
    assert len(panels) >= 20
    for expr, _ in panels.values():
        used(expr.replace("$queue", ".*"))  # parses, with Grafana's variable filled in
    for required in ("raysys_jobs_succeeded", "raysys_job_run_seconds_bucket", "raysys_job_wait_seconds_bucket",
                     "raysys_queue_depth", "raysys_jobs_dead_lettered", "raysys_jobs_retried", "raysys_jobs_in_flight",
                     "raysys_model_batch_seconds_bucket", "ray_node_gpus_utilization",
                     "raysys_scheduler_next_run_timestamp", "raysys_scheduler_last_tick_timestamp"):
        assert any(required in expr for expr, _ in panels.values()), f"the dashboard shows no {required}"

    sys.path.insert(0, str(MONITORING))
    try:
        import sync_kuberay
    finally:
        sys.path.remove(str(MONITORING))
    manifest = (ROOT / "cluster" / "kuberay" / "monitoring.yaml").read_text()
    assert manifest == sync_kuberay.render(), "run `python cluster/monitoring/sync_kuberay.py`"
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(manifest)}
    assert docs["PrometheusRule/raysys-alerts"]["spec"]["groups"] == groups
    assert json.loads(docs["ConfigMap/raysys-grafana-dashboard"]["data"]["raysys-dashboard.json"]) == \
        json.loads(DASHBOARD.read_text())
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())["spec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 8080} in head["ports"]
    assert {e["name"] for e in head["env"]} >= {"RAY_GRAFANA_HOST", "RAY_PROMETHEUS_HOST"}
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == [RULES.name]
    assert prometheus["scrape_configs"][0]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


def scrape(temp: Path) -> dict[str, set[str]]:
    """Every metric family the cluster's metrics agents export now: sample name -> label names seen."""
    seen: dict[str, set[str]] = {}
    for sd in temp.glob("prom_metrics_service_discovery.json"):
        for target in json.loads(sd.read_text())[0]["targets"]:
            try:
                text = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read().decode()
            except OSError:
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    seen.setdefault(sample.name, set()).update(sample.labels)
    return seen


@pytest.mark.slow
def test_every_metric_the_rules_and_the_dashboard_use_is_exported_after_real_jobs(tmp_path, redis_url):
    wanted: dict[str, tuple[set[str], set[str]]] = {}
    for name, expr in rule_expressions().items():
        wanted[f"rule {name}"] = used(expr)
    for title, (expr, legend) in dashboard_expressions().items():
        wanted[f"panel {title}"] = used(expr.replace("$queue", ".*"), legend)
    names = {m for metrics, _ in wanted.values() for m in metrics} - GPU_ONLY

    temp = Path(f"/tmp/raysys-mon-{os.getpid()}-{time.monotonic_ns() % 10**8}")
    address, sid = start_ray_head(temp, free_port(), free_port(), num_cpus=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYSYS_", "CELERY_", "POSTGRES", "CLICKHOUSE"))}
    env.update(RAY_ADDRESS=address, RAY_AUTH_MODE="token", CELERY_BROKER_URL=redis_url,
               RAYSYS_DATA_DIR=str(tmp_path / "data"), RAYSYS_TASK_MODULES="queue_tasks",
               RAYSYS_HEARTBEAT_SECONDS="0.5", RETRY_BACKOFF_MAX="1", RAYSYS_LOG_FORMAT="json",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
    driver = subprocess.Popen([sys.executable, str(ROOT / "tests" / "monitoring_driver.py")], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    driven = threading.Event()
    ok_job: list[str] = []

    def read_driver() -> None:
        for line in driver.stdout:
            if line.startswith("DRIVEN "):
                ok_job.append(line.split()[1])
                driven.set()

    threading.Thread(target=read_driver, daemon=True).start()
    try:
        deadline = time.monotonic() + 420

        def driver_done() -> bool:
            assert driven.is_set() or driver.poll() is None, f"the driver failed:\n{driver.stderr.read()[-4000:]}"
            return driven.is_set()

        wait_until(driver_done, timeout=420, interval=0.5, message="the driver to run its jobs")
        # Ray's agents export what the processes reported (every few seconds): poll for the whole set.
        last: dict[str, dict] = {}

        def all_exported() -> bool:
            last["exported"] = scrape(temp)
            return names <= last["exported"].keys()

        try:
            wait_until(all_exported, timeout=max(1.0, deadline - time.monotonic()), interval=3.0,
                       message="every metric the rules and panels use to be exported")
        except AssertionError:
            raise AssertionError(f"not exported: {sorted(names - last['exported'].keys())}") from None
        exported = last["exported"]
        for what, (metrics, labels) in wanted.items():
            for metric in metrics - GPU_ONLY:
                lacking = labels - exported[metric] - {"le"} if not metric.endswith("_bucket") else \
                    labels - exported[metric]
                assert not lacking, f"{what}: {metric} is exported without the labels {sorted(lacking)}"

        # RAYSYS_LOG_FORMAT=json reached the bridges: their job lines (in Ray's worker logs) are JSON objects.
        lines = [json.loads(line) for path in temp.glob("session_*/logs/worker-*") for line in
                 path.read_text(errors="replace").splitlines() if line.startswith("{") and ok_job[0] in line]
        done = [entry for entry in lines if entry.get("transition") == "succeeded"]
        assert done and done[0]["task"] == "tests.add" and done[0]["queue"] == "ingest", (lines, [
            (p.name, line) for p in temp.glob("session_*/logs/*") if p.is_file()
            for line in p.read_text(errors="replace").splitlines() if ok_job[0] in line][:10])
        assert done[0]["elapsed"] >= 0 and done[0]["logger"].startswith("raysys.")
    finally:
        if driver.poll() is None:
            driver.stdin.close()
            try:
                driver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                driver.kill()
        terminate(ray_pids(temp, sid), timeout=15)
        shutil.rmtree(temp, ignore_errors=True)


def test_json_log_lines_carry_the_job_fields_and_the_default_stays_readable():
    stream = io.StringIO()
    logger = logging.getLogger("raysys.test.jsonlogs")
    logs.setup(logging.INFO, "json", logger=logger.name, stream=stream)
    logger.info("job %s succeeded", "j1", extra=logs.job_fields("j1", "tests.add", "ingest", "succeeded",
                                                                 elapsed=0.25, tenant="acme", retries=0))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("job failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "job j1 succeeded" and first["level"] == "INFO"
    assert {k: first[k] for k in ("job_id", "task", "queue", "tenant", "transition", "elapsed", "retries")} == \
        {"job_id": "j1", "task": "tests.add", "queue": "ingest", "tenant": "acme", "transition": "succeeded",
         "elapsed": 0.25, "retries": 0}
    assert first["ts"].endswith("+00:00") and "run_time" not in first
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]

    readable = io.StringIO()
    logs.setup(logging.INFO, "text", logger=logger.name, stream=readable)  # reconfigures, adds no handler
    logger.info("job %s succeeded", "j2", extra=logs.job_fields("j2", "tests.add", "ingest", "succeeded"))
    assert re.fullmatch(r"\S+ \S+ INFO raysys\.test\.jsonlogs: job j2 succeeded\n", readable.getvalue())
    assert len([h for h in logger.handlers if getattr(h, "_raysys", False)]) == 1
    with pytest.raises(ValueError, match="RAYSYS_LOG_FORMAT"):
        logs.log_format("xml")
