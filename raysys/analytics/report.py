"""The daily report: charts (matplotlib), an HTML page and CSV files for one tenant and day.

Inputs are the tenant's ``daily_metrics`` rows for the last seven days (the report's day last) and the
day's ``call_facts`` rows. :func:`build_report` renders everything in memory; :func:`save_report`
writes it under a directory. The HTML names its images through a function, so the same page shows
files on disk (``charts/volume_by_hour.png``) and inline e-mail images (``cid:...``).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from raysys.analytics import agent_report

CHARTS = ("volume_by_hour", "aht", "sentiment", "top_intents", "trend")
CHART_TITLES = {
    "volume_by_hour": "Call volume by hour (UTC)",
    "aht": "Average handling time (talk + hold + after-call work)",
    "sentiment": "Customer sentiment (CSAT proxy)",
    "top_intents": "Top intents",
    "trend": "Last 7 days",
}
METRIC_FIELDS = ("day", "total_calls", "aht_mean", "aht_p90", "fcr", "fcr_final", "csat_proxy", "top_intent")
CALL_FIELDS = ("call_id", "started_at", "customer_id", "agent_id", "channel", "intent", "resolved",
               "talk_seconds", "hold_seconds", "acw_seconds", "aht_seconds", "sentiment_mean",
               "silence_seconds", "overlap_seconds", "interruptions")


@dataclass
class Report:
    tenant_id: str
    day: date
    metrics: dict[str, Any]                 # the day's daily_metrics row ({} when there were no calls)
    trend: list[dict[str, Any]]             # one row per day of the last seven, oldest first (gaps filled)
    charts: dict[str, bytes] = field(default_factory=dict)      # name -> PNG
    csv_files: dict[str, bytes] = field(default_factory=dict)   # filename -> CSV
    agents: list[dict[str, Any]] = field(default_factory=list)  # the day's agent scorecards, busiest first
    agent_trend: dict[str, list] = field(default_factory=dict)  # agent -> row or None per day of the last 7

    @property
    def subject(self) -> str:
        return f"Daily contact-centre report: {self.tenant_id}, {self.day.isoformat()}"

    def html(self, src: Callable[[str], str] = lambda name: f"charts/{name}.png") -> str:
        return _render_html(self, src)


def _fill_trend(rows: Sequence[dict[str, Any]], day: date, days: int = 7) -> list[dict[str, Any]]:
    by_day = {r["day"]: r for r in rows}
    out = []
    for k in range(days - 1, -1, -1):
        d = day - timedelta(days=k)
        r = by_day.get(d) or {"day": d, "total_calls": 0, "aht_mean": 0.0, "aht_p90": 0.0, "fcr": 0.0,
                              "fcr_final": 0, "csat_proxy": 0.0, "top_intents": [], "calls_by_hour": [0] * 24}
        out.append(dict(r))
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib: heavy, only to draw charts

    plt.close(fig)
    return buf.getvalue()


def _charts(metrics: dict[str, Any], trend: list[dict[str, Any]], calls: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    import matplotlib  # noqa: PLC0415 - matplotlib: heavy, only to draw charts

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib: heavy, only to draw charts

    colour = "#2f6db5"
    out: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.bar(range(24), list(metrics.get("calls_by_hour") or [0] * 24), color=colour)
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlabel("hour")
    ax.set_ylabel("calls")
    ax.set_title(CHART_TITLES["volume_by_hour"])
    out["volume_by_hour"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 2.8))
    ahts = [float(c["aht_seconds"]) / 60 for c in calls]
    if ahts:
        ax.hist(ahts, bins=min(30, max(5, len(ahts) // 3)), color=colour)
    for value, style, label in ((metrics.get("aht_mean"), "-", "mean"), (metrics.get("aht_p90"), "--", "p90")):
        if value:
            ax.axvline(float(value) / 60, color="#c0392b", linestyle=style, label=f"{label} {float(value) / 60:.1f} min")
    ax.set_xlabel("minutes")
    ax.set_ylabel("calls")
    ax.set_title(CHART_TITLES["aht"])
    if metrics.get("aht_mean"):
        ax.legend()
    out["aht"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 2.8))
    sentiments = [float(c["sentiment_mean"]) for c in calls]
    ax.hist(sentiments, bins=20, range=(-1, 1), color=colour)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("sentiment (-1 negative … 1 positive)")
    ax.set_ylabel("calls")
    ax.set_title(CHART_TITLES["sentiment"])
    out["sentiment"] = _png(fig)

    fig, ax = plt.subplots(figsize=(7, 2.8))
    top = list(metrics.get("top_intents") or [])
    ax.barh([str(t[0]) for t in reversed(top)], [int(t[1]) for t in reversed(top)], color=colour)
    ax.set_xlabel("calls")
    ax.set_title(CHART_TITLES["top_intents"])
    out["top_intents"] = _png(fig)

    fig, axes = plt.subplots(2, 2, figsize=(8, 4.5), sharex=True)
    labels = [r["day"].strftime("%a %d") for r in trend]
    series = (("total_calls", "calls", 1), ("aht_mean", "AHT mean (min)", 1 / 60), ("fcr", "FCR (%)", 100),
              ("csat_proxy", "CSAT proxy", 1))
    for ax, (key, title, scale) in zip(axes.flat, series, strict=True):
        # A day without calls has no AHT, FCR or sentiment: a gap in the line, not a misleading zero.
        values = [float(r.get(key) or 0) * scale if (key == "total_calls" or r.get("total_calls")) else float("nan")
                  for r in trend]
        if key == "total_calls":
            ax.bar(labels, values, color=colour)
        else:
            ax.plot(labels, values, marker="o", color=colour)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.suptitle(CHART_TITLES["trend"])
    fig.tight_layout()
    out["trend"] = _png(fig)
    return out


def _csv(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> bytes:
    buf = io.StringIO()
    # CRLF (RFC 4180): Python 3.11's writer quotes a field holding a character of the line terminator,
    # so with CRLF a stray carriage return inside a cell is quoted instead of breaking the row.
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k)) for k in fields})
    return buf.getvalue().encode()


# A spreadsheet runs a text cell that starts with one of these as a formula (CSV injection: a customer
# or agent name "=HYPERLINK(...)" would become a link); OWASP's advice is a leading apostrophe.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """One CSV cell: numbers formatted, dates in ISO form, text that a spreadsheet would run guarded."""
    if isinstance(v, str):
        return "'" + v if v.startswith(FORMULA_START) else v
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return "" if v is None else v


def build_report(tenant_id: str, day: date, daily_rows: Sequence[dict[str, Any]],
                 calls: Sequence[dict[str, Any]], agent_rows: Sequence[dict[str, Any]] = ()) -> Report:
    """Charts, HTML and CSVs (``metrics.csv``: seven days; ``calls.csv``: the day's calls; ``agents.csv``:
    the day's agent scorecards from ``agent_rows``, the ``agent_daily_metrics`` rows of the seven days, when
    the day has any)."""
    trend = _fill_trend(daily_rows, day)
    metrics = next((r for r in daily_rows if r["day"] == day), {})
    for r in trend:
        r["top_intent"] = r["top_intents"][0][0] if r.get("top_intents") else ""
    report = Report(tenant_id=tenant_id, day=day, metrics=dict(metrics), trend=trend)
    report.charts = _charts(metrics, trend, calls)
    report.csv_files = {"metrics.csv": _csv(trend, METRIC_FIELDS),
                        "calls.csv": _csv(sorted(calls, key=lambda c: str(c.get("started_at"))), CALL_FIELDS)}
    report.agents, report.agent_trend = agent_report.split_rows(agent_rows, day)
    report.charts.update(agent_report.charts(report.agents, report.agent_trend, _png))
    if report.agents:
        report.csv_files["agents.csv"] = _csv(agent_report.csv_rows(report.agents), agent_report.AGENT_FIELDS)
    return report


def save_report(report: Any, directory: str | Path) -> dict[str, str]:
    """Write ``report.html``, the CSVs and ``charts/*.png`` under ``directory``; return their paths.

    ``report`` is any report with ``charts`` (name -> PNG), ``csv_files`` (name -> bytes) and ``html()``:
    the daily :class:`Report` and the model-audit report are saved alike."""
    directory = Path(directory)
    (directory / "charts").mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for name, png in report.charts.items():
        p = directory / "charts" / f"{name}.png"
        p.write_bytes(png)
        paths[f"chart:{name}"] = str(p)
    for name, data in report.csv_files.items():
        (directory / name).write_bytes(data)
        paths[name] = str(directory / name)
    (directory / "report.html").write_text(report.html(), encoding="utf-8")
    paths["html"] = str(directory / "report.html")
    return paths


def _fmt_minutes(seconds: Any) -> str:
    return f"{float(seconds or 0) / 60:.1f} min"


def _render_html(report: Report, src: Callable[[str], str]) -> str:
    e = html.escape
    m = report.metrics
    if m:
        fcr_note = "" if m.get("fcr_final") else " (provisional: the repeat-contact window is still open)"
        kpis = [("Total calls", f"{int(m['total_calls']):,}"), ("AHT mean", _fmt_minutes(m["aht_mean"])),
                ("AHT p90", _fmt_minutes(m["aht_p90"])), ("FCR", f"{float(m['fcr']) * 100:.1f} %{fcr_note}"),
                ("CSAT proxy (mean sentiment)", f"{float(m['csat_proxy']):+.2f}")]
    else:
        kpis = [("Total calls", "0")]
    kpi_rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in kpis)
    intents = "\n".join(f"<tr><td>{e(str(name))}</td><td>{int(n):,}</td></tr>" for name, n in m.get("top_intents") or [])
    trend_rows = "\n".join(
        f"<tr><td>{r['day'].isoformat()}</td><td>{int(r['total_calls']):,}</td><td>{_fmt_minutes(r['aht_mean'])}</td>"
        f"<td>{float(r['fcr']) * 100:.1f} %</td><td>{float(r['csat_proxy']):+.2f}</td></tr>" for r in report.trend)
    charts = "\n".join(f'<h2>{e(CHART_TITLES[name])}</h2>\n<img src="{e(src(name))}" alt="{e(CHART_TITLES[name])}">'
                       for name in CHARTS if name in report.charts)
    agents = agent_report.render_html(report.agents, report.agent_trend, list(report.charts), src)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(report.subject)}</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:auto}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img{{max-width:100%}}
.spark{{color:#2f6db5}}</style></head>
<body>
<h1>Daily report — {e(report.tenant_id)} — {report.day.isoformat()}</h1>
<table class="kpis">
{kpi_rows}
</table>
<h2>Top intents</h2>
<table class="intents"><tr><th>intent</th><th>calls</th></tr>
{intents}
</table>
<h2>Last 7 days</h2>
<table class="trend"><tr><th>day</th><th>calls</th><th>AHT mean</th><th>FCR</th><th>CSAT proxy</th></tr>
{trend_rows}
</table>
{agents}{charts}
<p>Per-call data and the seven-day metrics are in the attached CSV files.</p>
</body></html>
"""
