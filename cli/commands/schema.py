"""The `schema` command (not built yet)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
