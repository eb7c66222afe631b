"""What the commands write: JSON lines on stdout, text tables, and rendered files (written or checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from .context import Failed


def print_json(obj: Any) -> None:
    """One JSON document on one line, UTF-8, compact (orjson: about 8x faster than json, which
    matters at one line per event). What orjson refuses (an integer beyond 64 bits, a lone
    surrogate) goes through the standard encoder, escaped to ASCII."""
    try:
        line = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        line = json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
    sys.stdout.buffer.write(line)


def table(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns two spaces apart, the first row being the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def describe_key(key: dict[str, Any]) -> str:
    """A route key for messages: `lead 'l1' on webinar 'w1'` (a field's `_id` suffix dropped)."""
    return " on ".join(f"{field.removesuffix('_id')} {value!r}" for field, value in key.items())


def key_text(key: dict[str, Any]) -> str:
    """A route key for reports: `lead_id=l1, webinar_id=w1`."""
    return ", ".join(f"{k}={v}" for k, v in key.items())


def write_file(path: Path, content: str | bytes) -> None:
    """Write a rendered file (text with LF line ends, so it is the same on every platform)."""
    try:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="\n")
    except OSError as exc:
        raise Failed(f"error: cannot write {path}: {exc.strerror}") from None


def check_file(path: Path, expected: str, regenerate: str) -> None:
    """Exit 1 unless `path` holds exactly `expected` (CRLF line ends are taken as LF)."""
    try:
        current = path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except FileNotFoundError:
        raise Failed(f"error: {path} does not exist; generate it: {regenerate}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Failed(f"error: cannot read {path}: {exc}") from None
    if current != expected:
        raise Failed(f"error: {path} is out of date with the config; regenerate it: {regenerate}")


def emit_file(text: str, output: Path | None, check: Path | None, regenerate: str = "") -> None:
    """Where a rendering goes: checked against --check FILE (`regenerate` is the command line
    that rewrites it, for the message), written to --output FILE, or printed."""
    if check:
        check_file(check, text, regenerate)
    elif output:
        write_file(output, text)
    else:
        click.echo(text, nl=False)
