"""The model audit report: every audited model's figures over its recent runs, as charts, HTML and CSV.

Input: ``model_audits`` rows of the last runs (``Warehouse.model_audit_history``), the newest run named.
One chart per model and metric (value per run; the marker's colour names the model version; a red
cross marks a run flagged as a regression against the run before it), a table of the newest run, and
``audits.csv`` with every row charted. Written by ``audit_models`` after each run.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raysys.analytics.report import _csv, _png, save_report

REGRESSION_ROW = ' class="regression"'
METRIC_TITLES = {"der": "diarization error rate (lower is better)", "accuracy": "accuracy",
                 "uar": "unweighted average recall", "macro_f1": "macro-F1"}
CSV_FIELDS = ("run_at", "run_id", "model", "version", "metric", "value", "baseline", "regression", "rtf")


@dataclass
class AuditReport:
    run_id: str
    latest: list[dict[str, Any]]                                   # the named run's rows
    series: dict[str, list[dict[str, Any]]]                        # "model:metric" -> rows, oldest first
    charts: dict[str, bytes] = field(default_factory=dict)         # "model_metric" -> PNG
    csv_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def regressions(self) -> list[str]:
        return [f"{r['model']}:{r['metric']}" for r in self.latest if int(r.get("regression") or 0)]

    def html(self) -> str:
        return _render(self)


def _chart(key: str, rows: Sequence[dict[str, Any]]) -> bytes:
    import matplotlib  # noqa: PLC0415 - matplotlib: heavy, only to draw charts

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib: heavy, only to draw charts

    model, metric = key.split(":", 1)
    fig, ax = plt.subplots(figsize=(7, 2.6))
    xs = list(range(len(rows)))
    ax.plot(xs, [float(r["value"]) for r in rows], color="#999999", linewidth=1, zorder=1)
    palette = ("#2f6db5", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d")
    versions = list(dict.fromkeys(str(r["version"]) for r in rows))
    for k, version in enumerate(versions):
        pts = [(x, float(r["value"])) for x, r in zip(xs, rows, strict=True) if str(r["version"]) == version]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=palette[k % len(palette)], zorder=2,
                   label=version[:48])
    bad = [(x, float(r["value"])) for x, r in zip(xs, rows, strict=True) if int(r.get("regression") or 0)]
    if bad:
        ax.scatter([p[0] for p in bad], [p[1] for p in bad], marker="x", s=90, color="#c0392b", zorder=3,
                   label="regression")
    ax.set_xticks(xs)
    ax.set_xticklabels([r["run_at"].strftime("%m-%d %H:%M") if hasattr(r["run_at"], "strftime") else str(r["run_at"])
                        for r in rows], rotation=45, fontsize=7, ha="right")
    ax.set_title(f"{model}: {METRIC_TITLES.get(metric, metric)}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def build(history: Sequence[dict[str, Any]], run_id: str) -> AuditReport:
    """Charts, HTML and CSV in memory from ``history`` rows (any order) and the newest ``run_id``."""
    rows = sorted(history, key=lambda r: (str(r["run_at"]), r["model"], r["metric"]))
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        series[f"{r['model']}:{r['metric']}"].append(r)
    report = AuditReport(run_id=run_id, latest=[r for r in rows if r["run_id"] == run_id], series=dict(series))
    report.charts = {key.replace(":", "_"): _chart(key, rs) for key, rs in report.series.items()}
    report.csv_files = {"audits.csv": _csv(rows, CSV_FIELDS)}
    return report


def save(report: AuditReport, directory: str | Path) -> dict[str, str]:
    """Write ``report.html``, ``audits.csv`` and ``charts/*.png`` under ``directory``; return their paths."""
    return save_report(report, directory)


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{float(v):.4f}"


def _render(report: AuditReport) -> str:
    e = html.escape
    rows = "\n".join(
        f"<tr{REGRESSION_ROW if int(r.get('regression') or 0) else ''}><td>{e(r['model'])}</td>"
        f"<td>{e(str(r['version']))}</td><td>{e(r['metric'])}</td><td>{_fmt(r['value'])}</td>"
        f"<td>{_fmt(r.get('baseline'))}</td><td>{'yes' if int(r.get('regression') or 0) else 'no'}</td>"
        f"<td>{float(r.get('rtf') or 0):.4f}</td></tr>" for r in report.latest)
    charts = "\n".join(f'<img src="charts/{e(name)}.png" alt="{e(name)}">' for name in report.charts)
    flagged = (f'<p class="alert">Regressions: {e(", ".join(report.regressions))}</p>' if report.regressions
               else "<p>No regression against the previous audit of each model.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model audit {e(report.run_id)}</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:auto}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img{{max-width:100%}}
tr.regression td, p.alert{{color:#c0392b;font-weight:bold}}</style></head>
<body>
<h1>Model audit — run {e(report.run_id)}</h1>
{flagged}
<table class="latest"><tr><th>model</th><th>version</th><th>metric</th><th>value</th><th>previous</th>
<th>regression</th><th>real-time factor</th></tr>
{rows}
</table>
<h2>Recent runs</h2>
{charts}
<p>Every charted row is in audits.csv.</p>
</body></html>
"""
