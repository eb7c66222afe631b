"""The quarantine commands: `rejections` lists (or, with --purge, deletes) stored rejections;
`reprocess` runs them again under the current config."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from engine import REJECTION_REASONS, Engine
from engine.governance.quarantine import (
    STATES,
    Selection,
    iter_rejections,
    iter_reprocess,
)
from engine.governance.quarantine import purge as purge_rejections

from ..context import AppContext, command, pass_app
from ..options import at_time, batch_options, config_options, format_option
from ..output import print_json, table

_SELECTION = [
    click.option("--reason", "reasons", multiple=True, type=click.Choice(REJECTION_REASONS),
                 help="Only rejections with this reason (repeat for several)."),
    click.option("--emitter", "sources", multiple=True, metavar="SOURCE",
                 help="Only rejections whose envelope named this source (repeat for several)."),
    click.option("--type", "types", multiple=True, metavar="EVENT",
                 help="Only rejections of this event type (repeat for several)."),
    click.option("--since", callback=at_time, default=None, metavar="TIME",
                 help="Only rejections last seen at or after this time (RFC 3339)."),
    click.option("--until", callback=at_time, default=None, metavar="TIME",
                 help="Only rejections last seen at or before this time (RFC 3339)."),
]


def _selection_options(f: Callable) -> Callable:
    for option in reversed(_SELECTION):
        f = option(f)
    return f


@command()
@_selection_options
@click.option("--state", type=click.Choice(STATES), default="open", show_default=True,
              help="open: still in the quarantine; resolved: admitted by a reprocess (kept, not deleted); all.")
@format_option(["text", "json"], "text: a table; json: one object per line, with the raw bytes.")
@click.option("--purge", is_flag=True,
              help="Delete the selected rejections instead of listing them; needs a filter or --all.")
@click.option("--all", "everything", is_flag=True,
              help="With --purge and no filter: every rejection in --state.")
@config_options
@pass_app
def rejections(app: AppContext, reasons: tuple[str, ...], sources: tuple[str, ...], types: tuple[str, ...],
               since: str | None, until: str | None, state: str, fmt: str, purge: bool, everything: bool) -> None:
    """List the quarantine: stored rejections, oldest first, with their reason and errors.

    Filters narrow the list (--reason, --emitter, --type, --since/--until on when each was last
    seen); values of one filter are alternatives. --format json writes one object per line:
    seq, reason, errors, source, id, type, raw_size, sha256, truncated, first/last seen,
    config_hash, resolved_at, resolved_by_input, and raw (text when the bytes are UTF-8, else
    base64, as raw_encoding says).

    Nothing is deleted unless --purge is given; then the selected rejections are deleted and
    their count goes to stderr. A purge needs an explicit filter (or --state resolved), or
    --all for every rejection in --state.
    """
    selection = Selection(state=state, reasons=reasons, sources=sources, types=types, since=since, until=until)
    if everything and not purge:
        raise click.UsageError("--all is only for --purge")
    with app.engine(create=False) as engine:
        if purge:
            removed = purge_rejections(engine, selection, everything=everything)
            click.echo(f"purged {removed} rejection(s)", err=True)
        else:
            _list(engine, selection, fmt)


def _list(engine: Engine, selection: Selection, fmt: str) -> None:
    entries = iter_rejections(engine, selection, raw=fmt == "json")
    count = 0
    if fmt == "json":
        for count, entry in enumerate(entries, 1):
            print_json(entry)
    else:
        rows = [_row(e, selection.state != "open") for e in entries]
        count = len(rows)
        if rows:
            header = ["SEQ", "LAST SEEN", "REASON", "SOURCE", "TYPE", "ID", "BYTES", "FIRST ERROR"]
            if selection.state != "open":
                header.append("RESOLVED BY INPUT")
            click.echo(table([header, *rows]))
    click.echo(f"{count} rejection(s) ({selection.state})", err=True)


def _row(entry: dict[str, Any], resolved: bool) -> list[str]:
    first = entry["errors"][0] if entry["errors"] else None
    error = f"{first['path'] or '/'}: {first['message']}" if first else ""
    size = f"{entry['raw_size']}{' (truncated)' if entry['truncated'] else ''}"
    row = [str(entry["seq"]), entry["last_seen_at"], entry["reason"], _cut(entry["source"], 32),
           _cut(entry["type"], 40), _cut(entry["id"], 36), size, _cut(error, 80)]
    if resolved:
        row.append("" if entry["resolved_by_input"] is None else f"#{entry['resolved_by_input']}")
    return row


def _cut(value: str | None, width: int) -> str:
    text = "-" if value is None else " ".join(value.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@command()
@_selection_options
@config_options
@batch_options("Rejections per commit. A result line is written only after its event is committed.",
               "The size limit, as for process.")
@pass_app
def reprocess(app: AppContext, reasons: tuple[str, ...], sources: tuple[str, ...], types: tuple[str, ...],
              since: str | None, until: str | None, batch_size: int, max_event_bytes: int) -> None:
    """Run the quarantine's rejections again under the current config (e.g. after an emitter
    was approved in emitters.yaml), oldest first; the filters are those of `rejections`.

    Each goes through the pipeline exactly as `process` would take it (input log, dedupe, rules,
    route) and gives one result line with the fields of `process`, plus `rejection` (its seq).
    One that is accepted, or is now a duplicate of a fact, leaves the quarantine (marked
    resolved, kept); one rejected again stays with its new reason. Truncated (too_large)
    rejections kept only their first 64 KiB: they cannot be reprocessed and are left as they are.
    A summary goes to stderr.
    """
    selection = Selection(reasons=reasons, sources=sources, types=types, since=since, until=until)
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0, "left": 0}
    with app.engine(create=False, max_event_bytes=max_event_bytes) as engine:
        app.on_failure(lambda: f"{_summary(counts)} before the failure")
        for batch in iter_reprocess(engine, selection, batch_size=batch_size):
            for result in batch:
                _count(result, counts)
                print_json(result)
            sys.stdout.flush()
    click.echo(_summary(counts), err=True)


def _count(result: dict[str, Any], counts: dict[str, int]) -> None:
    if any(e.get("code") == "not_reprocessable" for e in result["errors"]):
        counts["left"] += 1
        click.echo(f"rejection {result['rejection']} ({result['reason']}) cannot be reprocessed: "
                   f"{result['errors'][0]['message']}", err=True)
    else:
        counts[result["status"]] += 1


def _summary(counts: dict[str, int]) -> str:
    admitted = counts["accepted"] + counts["duplicate"]
    text = (f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, {counts['rejected']} rejected; "
            f"{admitted} left the quarantine")
    return text + (f"; {counts['left']} truncated, not reprocessable" if counts["left"] else "")


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(rejections)
    group.add_command(reprocess)
