"""`webinar-flows send`: the reference sender for `webinar-flows serve`.

It reads JSON Lines CloudEvents, signs each request with Standard Webhooks v1 and posts it to
`{url}/v1/ingest/{key id}` (structured mode, or batched mode with `--batch N`, N > 1). One result
line per input event goes to stdout, in input order, as the server answered it; a summary goes
to stderr. The standard library only (urllib, hmac): the sender needs nothing the service's
runtime dependencies do not already bring.

Retries: 429, 503, any other 5xx and connection failures are retried with exponential backoff
(full jitter) or the server's `Retry-After`, up to --max-attempts requests per batch, each wait
capped by --max-delay. A retry is a new request (a fresh webhook-id and timestamp) carrying the
same body bytes: the server dedupes on the CloudEvents envelope (`duplicate`, `same_envelope`).
Any other 4xx is final. Exit 1 when an event could not be delivered (its line says
`"status": "undelivered"`); rejections are data, as for `process`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from service.keys import parse_secret
from service.webhooks import STRUCTURED, Answer, post, retryable, signed_headers

from ..context import CONTEXT, Failed
from ..output import print_json

BATCHED = "application/cloudevents-batch+json"
MAX_BATCH_EVENTS = 100          # the service's limit per batched request
MAX_BATCH_BYTES = 1 << 20       # 1 MiB, the service's limit for a batch body
USER_AGENT = "webinar-flows-send/1"


@dataclass
class Item:
    """One input event: where it came from and the exact bytes to send."""

    origin: str | None
    line: int
    raw: bytes
    parsed: Any  # the JSON object, or None when the line is not one (sent alone, structured)

    def head(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.origin is None else {"file": self.origin}
        out["line"] = self.line
        return out

    def attributes(self) -> dict[str, Any]:
        """id and type as the line carries them, for lines the server gave no result for."""
        if isinstance(self.parsed, dict):
            return {k: self.parsed[k] for k in ("id", "type") if isinstance(self.parsed.get(k), str)}
        return {}


def _read(files: tuple[str, ...]) -> Iterator[tuple[str | None, int, bytes]]:
    named = len(files) > 1
    for name in files or ("-",):
        origin = name if named else None
        if name == "-":
            yield from ((origin, n, line) for n, line in _lines(sys.stdin.buffer))
            continue
        try:
            handle = open(name, "rb")  # noqa: SIM115
        except OSError as exc:
            raise Failed(f"error: cannot read {name}: {exc.strerror}") from None
        with handle:
            yield from ((origin, n, line) for n, line in _lines(handle))


def _lines(stream: Any) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(stream, 1):
        line = line.rstrip(b"\r\n")
        if line.strip(b" \t"):
            yield number, line


def _items(files: tuple[str, ...]) -> Iterator[Item]:
    for origin, number, raw in _read(files):
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        yield Item(origin, number, raw, parsed if isinstance(parsed, dict) else None)


def _requests(items: Iterator[Item], batch: int) -> Iterator[tuple[list[Item], bytes, str]]:
    """Group the events into requests: structured one by one, or batches of up to `batch`
    events and 1 MiB. A line that is not a JSON object goes alone, structured, so that the
    server records it as a rejection without refusing the others with it."""
    if batch <= 1:
        for item in items:
            yield [item], item.raw, STRUCTURED
        return
    pending: list[Item] = []
    size = 2

    def flush() -> tuple[list[Item], bytes, str]:
        return pending, b"[" + b",".join(i.raw for i in pending) + b"]", BATCHED

    for item in items:
        if item.parsed is None:
            if pending:
                yield flush()
                pending, size = [], 2
            yield [item], item.raw, STRUCTURED
            continue
        if pending and (len(pending) >= batch or size + len(item.raw) + 1 > MAX_BATCH_BYTES):
            yield flush()
            pending, size = [], 2
        pending.append(item)
        size += len(item.raw) + 1
    if pending:
        yield flush()


def _problem(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _results(items: list[Item], answer: Answer) -> list[dict[str, Any]]:
    """One result line per event of a request that got a final answer."""
    if answer.status is not None and 200 <= answer.status < 300:
        doc = _problem(answer.body)
        results = doc.get("results")
        if isinstance(results, list) and len(results) == len(items) and all(isinstance(r, dict) for r in results):
            return [{**item.head(), **result} for item, result in zip(items, results, strict=True)]
        return [{**item.head(), **item.attributes(), "status": "undelivered", "http_status": answer.status,
                 "error": "the server's answer does not hold one result per event"} for item in items]
    if answer.status == 400:
        problem = _problem(answer.body)
        extra = {k: problem[k] for k in ("reason", "errors") if k in problem}
        if "reason" not in extra:
            extra["reason"] = problem.get("title") or "bad_request"
        return [{**item.head(), **item.attributes(), "status": "rejected", **extra} for item in items]
    problem = _problem(answer.body)
    error = answer.error or problem.get("title") or problem.get("detail") or f"HTTP {answer.status}"
    return [{**item.head(), **item.attributes(), "status": "undelivered", "http_status": answer.status,
             "error": error} for item in items]


def deliver(url: str, key: bytes, body: bytes, content_type: str, *, max_attempts: int, max_delay: float,
            backoff: float, timeout: float, sleep: Any = time.sleep) -> tuple[Answer, int]:
    """Post one request until it gets a final answer or the attempts run out; (answer, attempts)."""
    attempt = 0
    while True:
        attempt += 1
        answer = post(url, body, signed_headers(key, body, content_type), timeout, USER_AGENT)
        if not retryable(answer.status) or attempt >= max_attempts:
            return answer, attempt
        if answer.retry_after is not None:
            delay = min(max_delay, answer.retry_after)
        else:
            delay = random.uniform(0, min(max_delay, backoff * 2 ** (attempt - 1)))
        sleep(delay)


def _secret(secret_file: Path | None) -> bytes:
    if secret_file is not None:
        try:
            text = secret_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise Failed(f"error: cannot read the secret file {secret_file}: {exc}") from None
        where = f"the secret file {secret_file}"
    elif os.environ.get("WEBINAR_FLOWS_SECRET"):
        text, where = os.environ["WEBINAR_FLOWS_SECRET"], "$WEBINAR_FLOWS_SECRET"
    else:
        raise click.UsageError("give --secret-file FILE or set $WEBINAR_FLOWS_SECRET (a whsec_ secret; "
                               "'webinar-flows keys new' prints one)")
    try:
        return parse_secret(text.strip())
    except ValueError as exc:
        raise Failed(f"error: {where} holds no valid secret: {exc}") from None


@click.command(context_settings=CONTEXT)
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--url", required=True, help="The server's base URL, e.g. http://127.0.0.1:8080; events go to "
                                           "URL/v1/ingest/KEY_ID.")
@click.option("--key-id", required=True, help="The key's id in the server's keys file.")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file holding the key's whsec_ secret (default: $WEBINAR_FLOWS_SECRET). Never pass a "
                   "secret on the command line.")
@click.option("--batch", type=click.IntRange(1, MAX_BATCH_EVENTS), default=1, show_default=True,
              help="Events per request; above 1, batched mode (the key needs batch = true).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests per event or batch, the first included, before it counts as undelivered.")
@click.option("--max-delay", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Longest wait between two attempts, in seconds (a longer Retry-After is cut to it).")
@click.option("--backoff", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="First backoff step in seconds; it doubles per attempt (full jitter) when the server "
                   "sends no Retry-After.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for one answer; a timeout is retried like a connection failure.")
def send(files: tuple[str, ...], url: str, key_id: str, secret_file: Path | None, batch: int, max_attempts: int,
         max_delay: float, backoff: float, timeout: float) -> None:
    """Sign and post CloudEvents, one JSON object per line, from FILES or stdin ('-').

    Each request is signed with Standard Webhooks v1 (webhook-id, webhook-timestamp,
    webhook-signature) under the key's secret. Writes one JSON result line per event, in
    input order: line, then the server's result (id, type, status, reason, ...); a line the
    server refused as a bad envelope (400) reads "status": "rejected"; an event that got no
    final answer reads "status": "undelivered". 429, 503, other 5xx and connection failures
    are retried with backoff and Retry-After; other 4xx are not. Exit 1 when any event was
    not delivered.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter("an http:// or https:// base URL", param_hint="--url")
    key = _secret(secret_file)
    target = url.rstrip("/") + "/v1/ingest/" + urllib.parse.quote(key_id, safe="")
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "undelivered": 0}
    requests = retries = 0
    statuses: set[int | None] = set()
    for items, body, content_type in _requests(_items(files), batch):
        answer, attempts = deliver(target, key, body, content_type, max_attempts=max_attempts,
                                   max_delay=max_delay, backoff=backoff, timeout=timeout)
        requests += attempts
        retries += attempts - 1
        for result in _results(items, answer):
            status = result.get("status")
            counts[status if status in counts else "undelivered"] += 1
            if status not in ("accepted", "duplicate", "rejected"):
                statuses.add(answer.status)
            print_json(result)
        sys.stdout.flush()
    summary = (f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, {counts['rejected']} rejected, "
               f"{counts['undelivered']} undelivered ({requests} request(s), {retries} retried)")
    click.echo(summary, err=True)
    if counts["undelivered"]:
        hints = []
        if 401 in statuses:
            hints.append("401: unknown key id, wrong secret or a clock more than 300 s off")
        if 415 in statuses and batch > 1:
            hints.append("415: the key may not send batched mode (batch = true in the keys file)")
        if None in statuses:
            hints.append(f"no answer from {url}")
        raise Failed("error: some events were not delivered" + "".join(f"; {h}" for h in hints))


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(send, name="send")
