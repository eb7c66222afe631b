"""The inputs of `process`: files or standard input, read as JSON Lines without ever holding an
oversized line in memory."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from typing import BinaryIO

from engine.runtime.envelope import KEEP_HEAD_BYTES, Oversized

from .context import Failed

_CHUNK = 1 << 20
STDIN = "standard input"


def check_stdin(files: tuple[str, ...]) -> None:
    """Fail before anything is opened when the input is standard input and it is closed (`<&-`)."""
    if sys.stdin is None and (not files or "-" in files):
        raise Failed("error: standard input is closed; give FILES, or pipe events into it")


def open_inputs(files: tuple[str, ...]) -> Iterator[tuple[str | None, str, BinaryIO]]:
    """(origin for the result lines, name for messages, stream) per input ('-': stdin), opened in turn."""
    named = len(files) > 1
    for name in files or ("-",):
        if name == "-":
            yield ("-" if named else None), STDIN, sys.stdin.buffer
            continue
        try:
            handle = open(name, "rb")  # noqa: SIM115
        except OSError as exc:
            raise Failed(f"error: cannot read {name}: {exc.strerror}") from None
        with handle:
            yield (name if named else None), name, handle


class NoBar:
    """What stands for the progress bar when there is none."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def read_lines(stream: BinaryIO, max_bytes: int, name: str = STDIN) -> Iterator[tuple[int, bytes | Oversized]]:
    """Yield (line number, bytes) per non-blank line; a line over `max_bytes` comes as
    `Oversized`, read through in chunks so memory stays bounded by the limit. A read that
    fails (stdin open for writing only, a directory, an I/O error) is a `Failed` naming `name`."""
    try:
        yield from _read_lines(stream, max_bytes)
    except OSError as exc:
        raise Failed(f"error: cannot read {name}: {exc.strerror or exc}") from None


def _read_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | Oversized]]:
    number = 0
    while True:
        chunk = stream.readline(max_bytes + 2)
        if not chunk:
            return
        number += 1
        if chunk.endswith(b"\n") or len(chunk) < max_bytes + 2:
            line = _strip_eol(chunk)
            if line.strip(b" \t\r\n"):
                yield number, line
            continue
        yield number, _drain(stream, chunk)


def _drain(stream: BinaryIO, first: bytes) -> Oversized:
    """Read the rest of an oversized line, hashing its content (without the line end)."""
    digest = hashlib.sha256()
    head = bytearray()
    size = 0
    held = b""  # a trailing CR, kept back until we know whether LF follows
    chunk = first
    while chunk:
        data = held + chunk
        done = data.endswith(b"\n")
        if done:
            data = _strip_eol(data)
            held = b""
        elif data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        else:
            held = b""
        digest.update(data)
        size += len(data)
        if len(head) < KEEP_HEAD_BYTES:
            head += data[: KEEP_HEAD_BYTES - len(head)]
        if done:
            break
        chunk = stream.readline(_CHUNK)
    else:
        digest.update(held)  # a CR at the very end of the input is content
        size += len(held)
    return Oversized(size, digest.hexdigest(), bytes(head))
