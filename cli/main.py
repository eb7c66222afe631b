"""The `webinar-flows` command line: parse, call the engine API, print JSON.

Results go to stdout as JSON, messages to stderr. Exit codes: 0 success (rejected events
are data, not failures), 1 the run failed (invalid config, database error, missing route),
2 a usage error. Shared options are in `options`, settings and the error mapping in
`context`, printing in `output`; this module holds the group and the four core commands.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import click

from engine import ConfigError, Engine, Problem, load_config

from .context import (
    CONTEXT,
    AppContext,
    ClosedOutput,
    Command,
    Failed,
    is_output_error,
    output_failed,
    pass_app,
    problems_text,
)
from .lines import NoBar, check_stdin, open_inputs, read_lines
from .options import (
    RouteKeyArgs,
    at_time,
    batch_options,
    config_option,
    config_options,
    db_option,
    format_option,
    key_options,
)
from .output import describe_key, print_json

__all__ = ["CONTEXT", "Failed", "cli", "main"]


class _Group(click.Group):
    """The command group; a governance command's module is imported when it is first asked for."""

    command_class = Command

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .commands import COMMANDS

        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from .commands import COMMANDS

        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"{__package__}.commands.{COMMANDS[cmd_name]}").register(self)
        return self.commands.get(cmd_name)


@click.group(cls=_Group, context_settings=CONTEXT)
@config_options
@click.version_option(package_name="webinar-flows", prog_name="webinar-flows")
def cli() -> None:
    """A rule-based scenario engine for webinar client events, driven by YAML.

    Architects describe the events, who may emit them, the rules and the client route in
    a config directory (events.yaml, emitters.yaml, rules/, states.yaml) and check it
    with `validate`. Services pipe CloudEvents through `process`; operators read routes
    with `route` and run explicit evaluations with `evaluate`. Everything is kept in one
    database (a SQLite file, or PostgreSQL with --db postgresql://...) that several
    processes may share.
    """


@cli.command()
@config_option
@db_option("Accepted like everywhere, not used: validate reads no database.")
@format_option(["text", "json"], "text: FILE:LINE:COL: SEVERITY CODE: message on stderr; json: one document on stdout.")
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also check this keys file against the config: its mode, TOML, emitters and secrets.")
@pass_app
def validate(app: AppContext, fmt: str, keys_file: Path | None) -> None:
    """Check a config: YAML, each file's schema, references and the spec's boundaries.

    Exit 0 with a one-line summary on stdout when there is no error (warnings go to
    stderr); exit 1 with every problem otherwise. --db is accepted like everywhere but not
    used: validate reads no database. With --keys, the keys file `serve` would use is
    checked too, each problem reported as an error of that file.
    """
    config = app.config_path()
    try:
        loaded = load_config(config)
        problems, ok = list(loaded.problems), True
    except ConfigError as exc:
        loaded, problems, ok = None, exc.problems, False
    if keys_file is not None and loaded is not None:
        from service.keys import check_keys

        try:
            keys_text = keys_file.read_bytes().decode("utf-8", "replace")
        except OSError:
            keys_text = ""
        found = sorted((_keys_problem(keys_file, keys_text, text) for text in check_keys(keys_file, loaded)),
                       key=lambda p: (p.line, p.column))
        problems, ok = problems + found, not found
    problems = sorted(problems, key=lambda p: p.severity != "error")  # errors first, each kind in its order
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if fmt == "json":
        print_json({"valid": ok, "config": str(config), "config_hash": loaded.hash if loaded else None,
                    "errors": errors, "warnings": warnings, "problems": [p.as_dict() for p in problems],
                    "events": {name: spec.status for name, spec in loaded.events.items()} if loaded else None})
    elif problems:
        click.echo(problems_text(problems), err=True)
    if not ok or loaded is None:
        if fmt == "text":
            click.echo(f"{config}: invalid: {errors} error(s), {warnings} warning(s)", err=True)
        click.get_current_context().exit(1)
    if fmt == "text":
        click.echo(f"{config}: valid ({len(loaded.events)} events, {len(loaded.emitters)} emitters, "
                   f"{len(loaded.rules)} rules, {len(loaded.route.states)} states, "
                   f"{len(loaded.route.transitions)} transitions; {warnings} warning(s); "
                   f"config hash {loaded.hash[:12]})")


def _keys_problem(path: Path, keys_text: str, text: str) -> Problem:
    from service.keys import problem_position

    prefix = f"{path}: "
    message = text[len(prefix):] if text.startswith(prefix) else text
    line, column = problem_position(keys_text, message)
    return Problem(str(path), line, column, "error", "invalid_keys_file", message)


# -- process ---------------------------------------------------------------------------------------

OUTAGE_WAIT_S = 60.0  # docs/storage.md: process retries the batch it was committing for up to 60 s

def _summary(counts: dict[str, int]) -> str:
    return f"{counts['accepted']} accepted, {counts['duplicate']} duplicate, {counts['rejected']} rejected"


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@config_options
@batch_options("Events per commit. A result line is written only after its event is committed.",
               "A line longer than this is rejected as too_large without being parsed.")
@click.option("--synchronous", type=click.Choice(["NORMAL", "FULL"], case_sensitive=False), default="NORMAL",
              show_default=True, help="SQLite durability: NORMAL survives a process crash; FULL also survives "
                                      "power loss (an fsync per commit).")
@pass_app
def process(app: AppContext, files: tuple[str, ...], batch_size: int, max_event_bytes: int, synchronous: str) -> None:
    """Process CloudEvents, one JSON object per line, from FILES or stdin ('-').

    Writes one JSON result line per input line, in input order: line, id, type, status
    (accepted | duplicate | rejected), reason, errors, emitted, actions, route. Blank lines
    are skipped but counted. A summary goes to stderr. Rejections are data: the exit code
    is 0 unless the run itself failed.
    """
    check_stdin(files)
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    total = sum(os.path.getsize(f) for f in files if f != "-" and os.path.isfile(f))
    show_bar = sys.stderr.isatty() and total > 0
    with app.engine(max_event_bytes=max_event_bytes, synchronous=synchronous.upper()) as engine:
        engine.outage_wait = OUTAGE_WAIT_S  # a shared database restarting: retry the batch, then exit 1
        app.on_failure(lambda: f"{_summary(counts)} before the failure")
        with click.progressbar(length=total, file=sys.stderr, label="processing") if show_bar else NoBar() as bar:
            for origin, name, stream in open_inputs(files):
                _run_stream(engine, origin, name, stream, batch_size, max_event_bytes, counts, bar)
    click.echo(_summary(counts), err=True)


def _run_stream(engine: Engine, origin: str | None, name: str, stream: BinaryIO, batch_size: int, max_bytes: int,
                counts: dict[str, int], bar: Any) -> None:
    items = ((raw, origin, number) for number, raw in read_lines(stream, max_bytes, name))
    done = 0
    for results in engine.iter_batches(items, batch_size):
        for result in results:  # committed: counted before any of it is written (a closed pipe stops the writing)
            counts[result["status"]] += 1
        for result in results:
            print_json({"file": origin, **result} if origin is not None else result)
        sys.stdout.flush()
        if stream.seekable():
            position = stream.tell()
            bar.update(position - done)
            done = position


# -- evaluate and route ---------------------------------------------------------------------------------

@cli.command()
@key_options("One lead; without it, every lead with facts on the webinar.", "The webinar to evaluate.")
@click.option("--at", callback=at_time, default=None, help="Evaluation time, RFC 3339 (default: now, UTC).")
@config_options
@pass_app
def evaluate(app: AppContext, key: RouteKeyArgs, at: str | None) -> None:
    """Run an explicit evaluation: the rules that fire `on: {evaluation: true}`.

    One JSON line per route: its key fields (lead_id, webinar_id with the default config),
    the evaluation result (attended: true | false | null) and the events it emitted.
    --webinar (every key field but the first) is needed; without --lead (the first field)
    every lead with facts on the webinar is evaluated. Evaluating again at the same --at
    derives nothing new.
    """
    config = app.config()
    scope = key.resolve(config, need="scope")
    with app.engine(config, create=False) as engine:
        for line in engine.evaluate(at=at, **scope):
            print_json(line)


@cli.command()
@key_options("The lead.", "The webinar.")
@config_options
@pass_app
def route(app: AppContext, key: RouteKeyArgs) -> None:
    """Show one lead's route on one webinar: state, screen, config hash and history.

    A route is named by every field of the config's route key: --lead and --webinar with
    the default key, --key FIELD=VALUE for any other. History is oldest first, one entry
    per route change. Exit 1 when no route exists.
    """
    config = app.config()
    wanted = key.resolve(config, need="all")
    with app.engine(config, create=False) as engine:
        found = engine.route(**wanted)
    if found is None:
        raise Failed(f"error: no route for {describe_key(wanted)}")
    print_json(found)


def main() -> None:
    if sys.stdout is None:  # started with descriptor 1 closed
        sys.stdout = ClosedOutput()  # type: ignore[assignment]
    try:
        try:
            cli(prog_name="webinar-flows")
        finally:  # what is still buffered fails here, not in the interpreter's exit, which can only warn
            sys.stdout.flush()
    except OSError as exc:  # from a command outside `Command` (the keys group's), or that last flush
        if not is_output_error(exc):
            raise
        failed = output_failed(exc)
        failed.show()
        sys.exit(failed.exit_code)


if __name__ == "__main__":
    main()
