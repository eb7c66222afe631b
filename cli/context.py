"""Where a command's settings come from, and the one place engine errors become exit codes.

`AppContext` holds what --config and --db said (on the group or on the command: the
command's own wins) and resolves the rest: the config is --config, else
$WEBINAR_FLOWS_CONFIG, else the current directory when it holds states.yaml, else the
bundled default (`engine.find_config`); the database is --db, else $WEBINAR_FLOWS_DB, else
./webinar-flows.db.

`Command` is the class of every command of the package. Its `invoke` maps what escapes a
command: `UsageError` -> exit 2 with the command's usage; `ConfigError`, `StoreError` and any
other `EngineError` -> exit 1 with the message (`Failed`). Commands raise engine errors freely
and catch them only to say more.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from engine import (
    Config,
    ConfigError,
    Engine,
    EngineError,
    UsageError,
    find_config,
    load_config,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Failed(click.ClickException):
    """A run that failed; the message is printed as is and the exit code is 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(self.message, err=True)


def problems_text(problems: list) -> str:
    return "\n".join(str(p) for p in problems)


def invalid_config(exc: ConfigError, where: Path | None, what: str = "the config") -> Failed:
    """Exit 1 with every problem of an invalid config and how to see them again."""
    if where is None:
        return Failed(f"{problems_text(exc.problems)}\nerror: {what} is invalid ({len(exc.errors)} error(s))")
    return Failed(f"{problems_text(exc.problems)}\nerror: {what} in {where} is invalid "
                  f"({len(exc.errors)} error(s)); run 'webinar-flows validate --config {where}'")


@dataclass
class AppContext:
    """The settings of one run (shared by the group's and the command's click contexts)."""

    config_dir: Path | None = None  # --config as given, on the group or the command
    db: Path | str | None = None  # --db as given (a str: a PostgreSQL URL)
    notes: list[Callable[[], str]] = field(default_factory=list)  # more to say when the run fails

    def config_path(self) -> Path:
        return find_config(self.config_dir, os.environ.get("WEBINAR_FLOWS_CONFIG"), Path.cwd())

    def db_path(self) -> Path | str:
        """--db, else $WEBINAR_FLOWS_DB, else ./webinar-flows.db; a PostgreSQL URL stays text."""
        given = self.db or os.environ.get("WEBINAR_FLOWS_DB") or "webinar-flows.db"
        return given if isinstance(given, str) and given.startswith(("postgresql://", "postgres://")) else Path(given)

    def config(self, path: Path | None = None, what: str = "the config") -> Config:
        """The checked config at `path` (default: the one in force); exit 1 with every problem."""
        path = path or self.config_path()
        try:
            return load_config(path)
        except ConfigError as exc:
            raise invalid_config(exc, path, what) from None

    @contextmanager
    def engine(self, config: Config | None = None, *, create: bool = True, **kwargs: Any) -> Iterator[Engine]:
        """An engine on the config in force (or `config`) and the database; closed afterwards.

        `create=False` for commands that only read: a database that does not exist is then
        an error instead of a new empty file."""
        engine = Engine.open(config=config or self.config(), db=self.db_path(), create=create, **kwargs)
        try:
            yield engine
        finally:
            engine.close()

    def regenerate(self, name: str, target: Path | None, extra: str = "") -> str:
        """The command line that writes `target` again (for --check messages); "" without one."""
        if target is None:
            return ""
        config = f" --config {self.config_dir}" if self.config_dir else ""
        return f"webinar-flows {name}{config}{extra} --output {target}"

    def on_failure(self, note: Callable[[], str]) -> None:
        """Add a line, computed when the run fails, after the error message (e.g. counts so far)."""
        self.notes.append(note)


pass_app = click.make_pass_decorator(AppContext, ensure=True)


def app_of(ctx: click.Context) -> AppContext:
    return ctx.ensure_object(AppContext)


class Command(click.Command):
    """A command whose engine errors become exit codes here and nowhere else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx) from None
        except ConfigError as exc:
            raise _noted(ctx, invalid_config(exc, None)) from None
        except EngineError as exc:
            raise _noted(ctx, Failed(f"error: {exc}")) from None
        except Failed as exc:
            raise _noted(ctx, exc) from None
        except OSError as exc:
            # `webinar-flows ... | head` (the reader went away), `> /dev/full`, a closed descriptor:
            # say so once (`process` adds what it committed); what was not written is not
            # acknowledged (`feed` moves its cursor only after its lines are written)
            if not is_output_error(exc):
                raise
            raise _noted(ctx, output_failed(exc)) from None


_OUTPUT_ERRORS = frozenset({errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF})


def is_output_error(exc: OSError) -> bool:
    return exc.errno in _OUTPUT_ERRORS


def output_failed(exc: OSError) -> Failed:
    """The failure of a command whose standard output cannot be written; the rest of its output
    is dropped, as Python's documentation advises for a closed pipe."""
    _drop_output()
    if isinstance(exc, BrokenPipeError):
        return Failed("error: standard output was closed before the command ended (the reader of the pipe "
                      "went away); nothing more was written")
    return Failed(f"error: standard output cannot be written ({exc.strerror}); nothing more was written")


def _drop_output() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    if isinstance(sys.stdout, ClosedOutput):  # its flush at exit would fail again
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends


class ClosedOutput:
    """Standard output when the process started with descriptor 1 closed (Python then sets
    sys.stdout to None, and a print would vanish silently): every write fails with EBADF, which
    `Command` reports, so nothing is acknowledged as printed."""

    def write(self, data: Any) -> int:
        raise OSError(errno.EBADF, "standard output is closed")

    def flush(self) -> None:  # nothing was written, so nothing is lost: a command that prints nothing runs
        pass

    def fileno(self) -> int:
        return 1

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> ClosedOutput:
        return self


def _noted(ctx: click.Context, failed: Failed) -> Failed:
    notes = app_of(ctx).notes
    if notes:
        failed.message += "".join(f"\n{note()}" for note in notes)
        notes.clear()
    return failed


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Command]:
    """`click.command` with this package's `Command` class."""
    return click.command(*args, cls=Command, **kwargs)
