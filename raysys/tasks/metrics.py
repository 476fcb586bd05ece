"""``workers.tasks.aggregate_daily_metrics(date=None, tenant_id=None)`` (queue ``analytics``).

Recomputes ``daily_metrics`` in ClickHouse for the target day (default: yesterday, UTC) and for the
``FCR_WINDOW_DAYS`` days before it, whose first-contact resolution a call on the target day can still
change, and the agents' scorecards of the same days (see :mod:`raysys.storage.aggregation`);
running it again for the same day replaces the rows.
"""

from __future__ import annotations

from typing import Any

from raysys.actors.warehouse import Warehouse
from raysys.analytics.aggregation import days_to_recompute, parse_day
from raysys.constants import ORCHESTRATION_CPUS
from raysys.errors import InvalidInput
from raysys.tasks.registry import TaskContext, task


@task("workers.tasks.aggregate_daily_metrics", queue="analytics", num_cpus=ORCHESTRATION_CPUS)
def aggregate_daily_metrics(ctx: TaskContext, date: Any = None, tenant_id: str | None = None) -> dict[str, Any]:
    """Aggregate one day (and re-aggregate the FCR window before it), for one tenant or all.

    Returns ``{"day", "recomputed": [first, last], "tenants": n, "agents": n, "metrics": [{tenant_id,
    total_calls, aht_mean, aht_p90, fcr, fcr_final, csat_proxy, top_intents}]}`` for the target day
    (``agents``: the per-agent scorecard rows of that day, see :mod:`raysys.storage.agent_metrics`).
    """
    settings = ctx.settings
    day = parse_day(date)
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise InvalidInput("tenant_id must be a non-empty string or null")
    first, last = days_to_recompute(day, settings.fcr_window_days)
    wh = Warehouse(settings)
    agents = wh.aggregate_daily(first, last, settings.fcr_window_days, tenant_id)
    metrics = wh.day_metrics(day, tenant_id)
    return {"day": day.isoformat(), "recomputed": [first.isoformat(), last.isoformat()],
            "tenants": len(metrics), "agents": agents, "metrics": metrics}
