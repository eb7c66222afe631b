"""The exceptions callers handle, and the problem records a config check produces.

A bad event is never an exception: it is a rejection returned as data. Exceptions are
kept for what a caller must act on: a config that cannot be loaded, a store that
cannot be used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    """One finding of the config check, located in its file."""

    file: str
    line: int
    column: int
    severity: str  # "error" | "warning"
    code: str
    message: str
    path: str = ""  # JSON Pointer inside the file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity} {self.code}: {self.message}"

    def as_dict(self) -> dict:
        return asdict(self)


class EngineError(Exception):
    """Base of every exception the engine raises on purpose."""


class ConfigError(EngineError):
    """The config has at least one error; `problems` holds every finding, warnings too."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        lines = "\n".join(str(p) for p in errors[:20])
        more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"invalid config: {len(errors)} error(s)\n{lines}{more}")

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


class StoreError(EngineError):
    """The database cannot be opened, read or written; the message names the file.

    The subclasses say why, for a caller that answers differently (a server: busy is 503,
    full is 507); each is a StoreError, so `except StoreError` still catches them all.
    """


class StoreBusy(StoreError):
    """Another process held the database (its lock) longer than the busy timeout."""


class StoreConflict(StoreBusy):
    """Another process's transaction collided with this one (a deadlock, a serialisation failure,
    a lock wait over its timeout); this one was rolled back whole and may simply run again."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached now (a dropped connection, a restart, too many
    connections); nothing of the failed transaction was applied unless its commit had landed."""


class StoreReadOnly(StoreError):
    """The database or its directory cannot be written (permissions, a read-only file system)."""


class StoreFull(StoreError):
    """A write failed: the disk (or a file size limit) is full, or the I/O itself failed."""


class NotADatabase(StoreError):
    """The file is not a database of this project: another application's, or corrupt."""


class DatabaseMissing(StoreError):
    """The database (or its directory) does not exist, and was not to be created."""


class UsageError(EngineError):
    """An API call was made with arguments that do not fit the config (e.g. a wrong route key)."""
