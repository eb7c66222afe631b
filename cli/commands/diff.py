"""The `diff` command: what a config change breaks, for emitters and for consumers."""

from __future__ import annotations

from pathlib import Path

import click

from engine.governance.compat import MODES, Change, diff, violates

from ..context import AppContext, command, pass_app
from ..options import config_option, db_option, format_option
from ..output import print_json

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def _line(change: Change, mode: str) -> str:
    verdict = "BREAKING" if change.breaking_in(mode) else "SAFE"
    note = ""
    if change.breaking_for:
        allowed = "" if change.breaking_in(mode) else f"; allowed in {mode} mode"
        note = f" [breaks {', '.join(change.breaking_for)}{allowed}]"
    return f"{verdict:<8}  {change.kind}  {change.where}: {change.detail}{note}"


def _summary(changes: list[Change], mode: str) -> str:
    verdict = "violated" if violates(changes, mode) else "kept"
    if not changes:
        return f"no changes; {mode} compatibility: {verdict}"
    breaking = sum(c.breaking_in(mode) for c in changes)
    parties = ", ".join(f"{sum(p in c.breaking_for for c in changes)} for {p}" for p in ("emitters", "consumers"))
    return (f"{len(changes)} change(s): {breaking} breaking in {mode} mode, {len(changes) - breaking} safe "
            f"(breaking {parties}); {mode} compatibility: {verdict}")


@command()
@click.argument("old", type=_DIR)
@click.argument("new", type=_DIR, required=False)
@config_option
@click.option("--mode", type=click.Choice(list(MODES)), default="backward", show_default=True,
              help="backward: NEW takes everything OLD took (breaks no emitter); forward: readers on OLD take "
                   "everything NEW produces (breaks no consumer); full: both.")
@format_option(["text", "json"], "text: one line per change and a summary; json: a list of {kind, where, detail, "
                                 "breaking_for, breaking_in_mode}.")
@db_option("A database whose stored routes are counted for each removed state (without it, routes are assumed "
           "to sit in a removed state). Only an explicit --db is read.")
@pass_app
def diff_command(app: AppContext, old: Path, new: Path | None, mode: str, fmt: str) -> None:
    """Compare two configs, OLD and NEW, and say what the change breaks.

    NEW defaults to the config in force (--config, $WEBINAR_FLOWS_CONFIG, the current
    directory, the bundled default). Every change is classified as breaking or safe
    for emitters (who send events) and for consumers (who read what the engine accepts,
    derives and routes), in the manner of Confluent Schema Registry's compatibility
    modes. Exit 1 when the chosen mode is violated or a config is invalid, 0 otherwise.
    """
    if new is not None and app.config_dir is not None:
        raise click.UsageError("give NEW or --config, not both")
    before = app.config(old, "the OLD config")
    after = app.config(new or app.config_path(), "the NEW config")
    changes = diff(before, after, db=app.db)
    if fmt == "json":
        print_json([c.as_dict(mode) for c in changes])
    else:
        for change in changes:
            click.echo(_line(change, mode))
        click.echo(_summary(changes, mode))
    if violates(changes, mode):
        click.get_current_context().exit(1)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(diff_command, name="diff")
