"""The task registry, the execution module and the tasks (Celery names kept).

Layer 4: may import ingest, analytics, actors, models, storage and the foundation; imported by the
queue, serve, scheduler, jobs and commands. A task module imports from this package only
:mod:`raysys.tasks.registry` and :mod:`raysys.tasks.execute`.
"""
