"""CLI commands: placeholder until this family is built."""

from __future__ import annotations


def register(sub) -> None:  # noqa: ANN001
    """Add this family's sub-commands to the `raysys` parser."""
