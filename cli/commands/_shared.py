"""Kept for command modules written against the old helper (keys); new code uses
`cli.context.AppContext.config`."""

from __future__ import annotations

from pathlib import Path

from engine import Config

from ..context import AppContext


def load_or_fail(config: Path, what: str = "the config") -> Config:
    """Load the config directory `config`, or fail (exit 1) with every problem it has."""
    return AppContext().config(config, what)
