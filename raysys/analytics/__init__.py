"""Post-call analytics without Ray: intents, summaries, call metrics, daily aggregation SQL, reports, email.

Each module takes plain data (and, where it needs embeddings, an ``encode(texts) -> np.ndarray``
callable) so the tasks in :mod:`raysys.tasks` can run it on a Ray worker and the CLI can run it in
one process.

Layer 3, beside :mod:`raysys.ingest` (neither imports the other): may import actors, models,
storage and the foundation; imported by tasks and above.
"""
