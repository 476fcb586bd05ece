"""The daily report's per-agent section: a scorecard table with 7-day sparklines, two small charts and
``agents.csv``.

Inputs are the tenant's ``agent_daily_metrics`` rows of the report's last seven days (see
:mod:`raysys.storage.agent_metrics`). The table's sparklines are Unicode block characters (they survive
every mail client and cost nothing to draw); the charts are PNGs drawn the way the rest of the report
draws them (:func:`raysys.analytics.report._png`), named ``agent_aht`` and ``agent_trends``.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Any

AGENT_CHARTS = ("agent_aht", "agent_trends")
AGENT_CHART_TITLES = {
    "agent_aht": "Average handling time by agent (talk, hold, after-call work)",
    "agent_trends": "Agents over the last 7 days",
}
AGENT_FIELDS = (
    "day", "agent_id", "calls", "aht_mean", "aht_p90", "talk_mean", "hold_mean", "acw_mean", "fcr", "fcr_final",
    "sentiment_start", "sentiment_end", "sentiment_change", "customer_sentiment_start", "customer_sentiment_end",
    "customer_sentiment_change", "customer_sentiment_calls", "talk_share", "agent_interruptions", "interruptions",
    "silence_mean", "overlap_mean", "escalations", "escalations_known", "escalation_rate", "top_intents",
)
CHART_AGENTS = 12   # the busiest agents in the charts (the table and the CSV have every agent)
_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per value, scaled between the series' min and max; a gap (``·``) for None."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not present:
        return "·" * len(values)
    lo, hi = min(present), max(present)
    out = []
    for v in values:
        if v is None or math.isnan(float(v)):
            out.append("·")
        else:
            out.append(_BLOCKS[0 if hi == lo else round((float(v) - lo) / (hi - lo) * (len(_BLOCKS) - 1))])
    return "".join(out)


def split_rows(rows: Sequence[dict[str, Any]], day: date, days: int = 7) -> tuple[list[dict], dict[str, list]]:
    """(the day's rows by calls, busiest first; agent id -> one row or None per day of the last ``days``)."""
    today = sorted((r for r in rows if r["day"] == day), key=lambda r: (-int(r["calls"]), str(r["agent_id"])))
    by_agent: dict[str, dict[date, dict]] = defaultdict(dict)
    for r in rows:
        by_agent[str(r["agent_id"])][r["day"]] = r
    window = [day - timedelta(days=k) for k in range(days - 1, -1, -1)]
    trend = {a: [by_agent[a].get(d) for d in window] for a in (str(r["agent_id"]) for r in today)}
    return today, trend


def _series(trend: Sequence[dict | None], key: str, scale: float = 1.0) -> list[float | None]:
    return [None if r is None or r.get(key) is None else float(r[key]) * scale for r in trend]


def csv_rows(today: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The day's rows for ``agents.csv``; top intents as ``name:count`` joined by spaces."""
    return [{**r, "top_intents": " ".join(f"{n}:{c}" for n, c in r.get("top_intents") or [])} for r in today]


def charts(today: Sequence[dict[str, Any]], trend: dict[str, list], png: Callable[[Any], bytes]) -> dict[str, bytes]:
    """``agent_aht`` (stacked talk/hold/ACW minutes) and ``agent_trends`` (calls, AHT, FCR, customer sentiment
    lines per agent) for the :data:`CHART_AGENTS` busiest agents; {} when the day had no agent rows."""
    if not today:
        return {}
    import matplotlib  # noqa: PLC0415 - matplotlib: only when charts are drawn (its backend is set first)

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after the backend is chosen

    top = list(today[:CHART_AGENTS])
    names = [str(r["agent_id"]) for r in reversed(top)]
    out: dict[str, bytes] = {}
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.28 * len(top)))
    left = [0.0] * len(top)
    for key, label, colour in (("talk_mean", "talk", "#2f6db5"), ("hold_mean", "hold", "#e0a030"),
                               ("acw_mean", "after-call work", "#7f8c8d")):
        values = [float(r[key]) / 60 for r in reversed(top)]
        ax.barh(names, values, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("minutes per call")
    ax.set_title(AGENT_CHART_TITLES["agent_aht"], fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    out["agent_aht"] = png(fig)

    series = (("calls", "calls", 1.0), ("aht_mean", "AHT (min)", 1 / 60), ("fcr", "FCR (%)", 100.0),
              ("customer_sentiment_end", "customer sentiment at end", 1.0))
    fig, axes = plt.subplots(len(top), len(series), figsize=(8, 0.5 + 0.45 * len(top)), squeeze=False)
    for i, r in enumerate(top):
        agent = str(r["agent_id"])
        for j, (key, title, scale) in enumerate(series):
            ax = axes[i][j]
            values = [float("nan") if v is None else v for v in _series(trend[agent], key, scale)]
            ax.plot(range(len(values)), values, color="#2f6db5", linewidth=1.2, marker=".", markersize=3)
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(agent, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(AGENT_CHART_TITLES["agent_trends"], fontsize=10)
    out["agent_trends"] = png(fig)
    return out


def _pct(v: Any) -> str:
    return "–" if v is None else f"{float(v) * 100:.0f} %"


def _signed(v: Any) -> str:
    return "–" if v is None else f"{float(v):+.2f}"


def render_html(today: Sequence[dict[str, Any]], trend: dict[str, list], chart_names: Sequence[str],
                src: Callable[[str], str]) -> str:
    """The per-agent section of the report's HTML (an empty string when the day had no agent rows)."""
    if not today:
        return ""
    e = html.escape
    rows = []
    for r in today:
        t = trend.get(str(r["agent_id"]), [])
        cs = (f"{_signed(r.get('customer_sentiment_start'))} → {_signed(r.get('customer_sentiment_end'))}"
              if r.get("customer_sentiment_calls") else "–")
        esc = f"{int(r['escalations'])}/{int(r['escalations_known'])}" if r.get("escalations_known") else "–"
        intents = ", ".join(str(n) for n, _ in r.get("top_intents") or [])
        cells = [
            e(str(r["agent_id"])), f"{int(r['calls']):,} <span class=spark>{sparkline(_series(t, 'calls'))}</span>",
            f"{float(r['aht_mean']) / 60:.1f} min <span class=spark>{sparkline(_series(t, 'aht_mean'))}</span>",
            f"{float(r['talk_mean']) / 60:.1f} / {float(r['hold_mean']) / 60:.1f} / {float(r['acw_mean']) / 60:.1f}",
            f"{_pct(r['fcr'])} <span class=spark>{sparkline(_series(t, 'fcr'))}</span>",
            f"{_signed(r['sentiment_start'])} → {_signed(r['sentiment_end'])}", cs, _pct(r.get("talk_share")),
            f"{float(r.get('agent_interruptions_per_call') or 0):.2f}", f"{float(r['silence_mean']):.0f} s",
            f"{float(r['overlap_mean']):.1f} s", esc, e(intents),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = ("agent", "calls (7 days)", "AHT (7 days)", "talk / hold / ACW (min)", "FCR (7 days)",
            "sentiment start → end", "customer sentiment start → end", "agent talk share",
            "agent interruptions per call", "silence per call", "overlap per call", "escalations", "top intents")
    images = "\n".join(f'<h3>{e(AGENT_CHART_TITLES[n])}</h3>\n<img src="{e(src(n))}" alt="{e(AGENT_CHART_TITLES[n])}">'
                       for n in AGENT_CHARTS if n in chart_names)
    return (f'<h2>Agents ({len(today)})</h2>\n<table class="agents"><tr>'
            + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>\n" + "\n".join(rows) + "\n</table>\n"
            + "<p>Sparklines: the agent's last 7 days, oldest first (· a day without calls). "
              "Every agent's figures are in agents.csv.</p>\n" + images + "\n")


def scorecard_text(row: dict[str, Any]) -> list[str]:
    """One agent's day as a few lines of plain text (the demo prints it)."""
    cs = (f"{_signed(row.get('customer_sentiment_start'))} -> {_signed(row.get('customer_sentiment_end'))} "
          f"({int(row['customer_sentiment_calls'])} calls)" if row.get("customer_sentiment_calls") else "–")
    esc = (f"{int(row['escalations'])} of {int(row['escalations_known'])} known" if row.get("escalations_known")
           else "unknown")
    return [
        f"agent {row['agent_id']} on {row['day']}: {int(row['calls'])} calls, FCR {_pct(row['fcr'])}"
        + ("" if row.get("fcr_final") else " (provisional)"),
        f"AHT {float(row['aht_mean']) / 60:.1f} min (p90 {float(row['aht_p90']) / 60:.1f}) = talk "
        f"{float(row['talk_mean']) / 60:.1f} + hold {float(row['hold_mean']) / 60:.1f} + ACW "
        f"{float(row['acw_mean']) / 60:.1f} min",
        f"sentiment {_signed(row['sentiment_start'])} -> {_signed(row['sentiment_end'])}; customer {cs}",
        f"talk share {_pct(row.get('talk_share'))}, interruptions by the agent "
        f"{float(row.get('agent_interruptions_per_call') or 0):.2f}/call, silence {float(row['silence_mean']):.0f} s, "
        f"overlap {float(row['overlap_mean']):.1f} s per call; escalations {esc}",
        "top intents: " + (", ".join(f"{n} ({c})" for n, c in row.get("top_intents") or []) or "–"),
    ]
