"""Reading JSON Lines from a byte stream without ever holding an oversized line in memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO

from engine.intake import KEEP_HEAD_BYTES, Oversized

_CHUNK = 1 << 20


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def read_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | Oversized]]:
    """Yield (line number, bytes) per non-blank line; a line over `max_bytes` comes as
    `Oversized`, read through in chunks so memory stays bounded by the limit."""
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
    digest = hashlib.sha256()
    head = first[:KEEP_HEAD_BYTES]
    size = 0
    chunk = first
    while True:
        done = chunk.endswith(b"\n")
        body = _strip_eol(chunk) if done else chunk
        digest.update(body)
        size += len(body)
        if done:
            break
        chunk = stream.readline(_CHUNK)
        if not chunk:
            break
    return Oversized(size, digest.hexdigest(), head)
