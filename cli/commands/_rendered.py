"""What the commands that render the config (`docs`, `graph`) share: load it, write or check a file."""

from __future__ import annotations

from pathlib import Path

import click

from engine import Config

from ..main import Failed, _settings
from ._shared import load_or_fail


def load(ctx: click.Context, config_dir: Path | None) -> Config:
    """The checked config the command was pointed at; exit 1 with every problem when it is invalid."""
    return load_or_fail(_settings(ctx, config_dir, None)[0])


def write(path: Path, content: str | bytes) -> None:
    """Write a rendered file (text with LF line ends, so it is the same on every platform)."""
    try:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="\n")
    except OSError as exc:
        raise Failed(f"error: cannot write {path}: {exc.strerror}") from None


def command(name: str, config_dir: Path | None, output: Path, extra: str = "") -> str:
    """The command line that regenerates `output`, for messages."""
    config = f" --config {config_dir}" if config_dir else ""
    return f"webinar-flows {name}{config}{extra} --output {output}"


def check(path: Path, expected: str, regenerate: str) -> None:
    """Exit 1 unless `path` holds exactly `expected` (CRLF line ends are taken as LF)."""
    try:
        current = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except FileNotFoundError:
        raise Failed(f"error: {path} does not exist; generate it: {regenerate}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Failed(f"error: cannot read {path}: {exc}") from None
    if current != expected:
        raise Failed(f"error: {path} is out of date with the config; regenerate it: {regenerate}")


def emit(text: str, *, output: Path | None, check_file: Path | None, regenerate: str) -> None:
    """Where a rendering goes: checked against --check FILE, written to --output FILE, or printed."""
    if check_file:
        check(check_file, text, regenerate)
    elif output:
        write(output, text)
    else:
        click.echo(text, nl=False)
