"""Helpers the governance commands share (the rest come from `cli.main`)."""

from __future__ import annotations

from pathlib import Path

from engine import Config, ConfigError, load_config

from ..main import Failed, _problems_text


def load_or_fail(config: Path, what: str = "the config") -> Config:
    """Load the config directory `config`, or fail (exit 1) with every problem it has."""
    try:
        return load_config(config)
    except ConfigError as exc:
        raise Failed(f"{_problems_text(exc.problems)}\nerror: {what} in {config} is invalid "
                     f"({len(exc.errors)} error(s)); run 'webinar-flows validate --config {config}'") from None
