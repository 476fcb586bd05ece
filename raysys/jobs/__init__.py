"""Batch work for `ray job submit`: backfills and directory ingestion (``python -m raysys.jobs.<name>``)."""
