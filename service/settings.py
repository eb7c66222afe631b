"""What the service runs with, loaded and checked before it listens.

A service that starts and then fails its first request is worse than one that refuses to
start: so the config, the keys file and the limits are all read here, up front, and any
problem is a `SettingsError` whose message the operator can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine import (
    DEFAULT_MAX_EVENT_BYTES,
    Config,
    ConfigError,
    find_config,
    load_config,
)

from .keys import HOW_TO_CREATE, Keys, KeysFileError, find_keys_file, load_keys

MAX_BATCH_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 100


class SettingsError(Exception):
    """The service cannot start; the message says why and names the file at fault."""


@dataclass(frozen=True)
class Settings:
    """Everything `create_app` needs. Limits have the defaults docs/service.md gives."""

    config: Config
    db: Path | str  # a SQLite file, or a PostgreSQL URL (text)
    keys: Keys
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES  # one event (structured or binary body)
    max_batch_bytes: int = MAX_BATCH_BYTES
    max_batch_events: int = MAX_BATCH_EVENTS
    queue_events: int = 5000  # events waiting for the writer before new requests get 503
    commit_events: int = 500  # events in one transaction at most
    body_timeout: float = 10.0  # seconds for a whole request body to arrive
    synchronous: str = "FULL"  # a 200 tells the emitter it may drop its copy: survive power loss too
    tolerance: int = 300  # seconds between a signature's timestamp and the server's clock
    max_header_bytes: int = 16 * 1024  # the request line and headers
    deliver: bool = True  # push to the consumers with a url in a background thread (service/delivery.py)
    retry_schedule: tuple[float, ...] | None = None  # None: Standard Webhooks' schedule
    writer: str = "process"  # the writer's engine in a process of its own ("thread": beside the loop)


def _database(db: Path | str) -> Path | str:
    """A PostgreSQL URL stays text (a Path would fold its //); anything else is a SQLite file."""
    return db if isinstance(db, str) and db.startswith(("postgresql://", "postgres://")) else Path(db)


def load_settings(config_dir: Path, db: Path | str, keys_file: Path | None, **limits: object) -> Settings:
    """The config at `config_dir` and the keys file checked against it; SettingsError otherwise."""
    try:
        config = load_config(config_dir)
    except ConfigError as exc:
        problems = "\n".join(str(p) for p in exc.problems)
        raise SettingsError(f"{problems}\nerror: the config in {config_dir} is invalid; run "
                            f"'webinar-flows validate --config {config_dir}'") from None
    if keys_file is None:
        raise SettingsError("error: no keys file: give --keys FILE, set $WEBINAR_FLOWS_KEYS or "
                            f"$CREDENTIALS_DIRECTORY (keys.toml); {HOW_TO_CREATE}")
    try:
        keys = load_keys(keys_file, config)
    except KeysFileError as exc:
        raise SettingsError(f"{exc}\nerror: the keys file {keys_file} cannot be used") from None
    return Settings(config=config, db=_database(db), keys=keys, **limits)  # type: ignore[arg-type]


def settings_from_environment() -> Settings:
    """Settings from $WEBINAR_FLOWS_CONFIG, $WEBINAR_FLOWS_DB and the keys file lookup, for an
    ASGI server other than `webinar-flows serve` (see service.app.app_from_environment)."""
    config = find_config(None, os.environ.get("WEBINAR_FLOWS_CONFIG"), Path.cwd())
    db = _database(os.environ.get("WEBINAR_FLOWS_DB") or "webinar-flows.db")
    return load_settings(config, db, find_keys_file(None))
