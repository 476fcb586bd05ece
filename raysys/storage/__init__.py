"""The code that speaks SQL: PostgreSQL (asyncpg, pgvector) and the ClickHouse/chDB warehouse.

Layer 1, beside :mod:`raysys.models` (neither imports the other): may import only the foundation
(config, errors, constants, paths, audio, runtime); imported by actors and every layer above.
"""
