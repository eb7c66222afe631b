"""Finding the bundled default config.

A wheel carries the default config inside the package (see pyproject.toml); a source
checkout has it at the repository root, beside the package.
"""

from __future__ import annotations

from pathlib import Path

_MARKER = "states.yaml"


def bundled_config() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_bundled", here.parent):
        if (candidate / _MARKER).is_file():
            return candidate
    raise FileNotFoundError("the bundled default config is missing from this installation")


def find_config(explicit: str | Path | None, env: str | None, cwd: Path) -> Path:
    """--config DIR, else $WEBINAR_FLOWS_CONFIG, else the current directory if it holds a
    config, else the bundled default."""
    if explicit:
        return Path(explicit)
    if env:
        return Path(env)
    if (cwd / _MARKER).is_file():
        return cwd
    return bundled_config()
