"""raysys' scheduler (Celery beat's replacement): cron schedules enqueued once per slot.

- :mod:`raysys.scheduler.schedules` definitions: the seed service's defaults and ``RAYSYS_SCHEDULE_FILE``
- :mod:`raysys.scheduler.slots`     croniter slots as instants, DST rules (missing: skipped, repeated: once)
- :mod:`raysys.scheduler.store`     Redis: lease, ``SET NX`` slot claims, state, event log (Lua scripts)
- :mod:`raysys.scheduler.engine`    the Ray-free, clock-injectable tick: lease, catch-up, claim, send
- :mod:`raysys.scheduler.actor`     the detached, named SchedulerActor and its Ray metrics

Layer 6, beside serve and jobs (none imports another): may import the queue and every layer below;
imported by commands.
"""
