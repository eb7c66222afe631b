"""`webinar-flows deliver`: push delivery on its own, without `serve` (service/delivery.py)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from ..context import AppContext, Failed, command, pass_app
from ..options import config_options

ENV_SCHEDULE = "WEBINAR_FLOWS_RETRY_SCHEDULE"


def parse_schedule(text: str | None) -> tuple[float, ...] | None:
    """A retry schedule: comma-separated waits in seconds after attempts 1, 2, ... (None: the default)."""
    if not text:
        return None
    try:
        waits = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated seconds, e.g. 5,300,1800") from None
    if any(w < 0 for w in waits):
        raise click.BadParameter("waits cannot be negative")
    return waits


@command()
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The keys file with the consumers' url and secrets (default: $WEBINAR_FLOWS_KEYS, else "
                   "$CREDENTIALS_DIRECTORY/keys.toml).")
@click.option("--once", is_flag=True, help="Stop when nothing is deliverable now (items waiting for a retry stay).")
@click.option("--retry-schedule", envvar=ENV_SCHEDULE, default=None, metavar="SECONDS,...",
              help="Waits after attempts 1, 2, ... before an item fails [default: Standard Webhooks' "
                   "5,300,1800,7200,18000,36000,36000; env: WEBINAR_FLOWS_RETRY_SCHEDULE].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for a consumer's answer.")
@config_options
@pass_app
def deliver(app: AppContext, keys_file: Path | None, once: bool, retry_schedule: str | None, timeout: float) -> None:
    """POST each outbox item to the consumers with a url in the keys file, until SIGTERM (exit 0).

    Each item is a structured CloudEvent signed with Standard Webhooks (webhook-id = the item's
    id). 2xx: done; 429, 5xx, timeouts, refused connections: retried (Retry-After honoured), later
    items of the same route key wait; 410: the consumer is disabled (deliveries --enable); other
    4xx or attempts exhausted: the item fails (deliveries --failed, --retry). Any number of
    deliverers and `serve`s may run on one database. See docs/consuming.md.
    """
    from service.delivery import Deliverer
    from service.keys import KeysFileError, find_keys_file, load_keys

    schedule = parse_schedule(retry_schedule)
    config = app.config()
    path = find_keys_file(keys_file)
    if path is None:
        raise Failed("error: no keys file: give --keys FILE or set $WEBINAR_FLOWS_KEYS "
                     "([consumers.NAME] url and secrets)")
    try:
        keys = load_keys(path, config, ingest=False)
    except KeysFileError as exc:
        raise Failed(f"{exc}\nerror: the keys file {path} cannot be used") from None
    if not keys.push:
        raise Failed(f"error: {path} names no consumer with a url ([consumers.NAME] url = ..., secrets = [...])")
    db = app.db_path()
    with app.engine(config):  # the database opens (and migrates) here, or the run fails now with its message
        pass
    stop = threading.Event()

    def interrupted(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    from engine import Engine

    options: dict[str, Any] = {} if schedule is None else {"schedule": schedule}
    deliverer = Deliverer(lambda: Engine.open(config=config, db=db), keys.push, timeout=timeout, **options)
    try:
        deliverer.run(stop, once=once)
    finally:
        deliverer.stop(timeout=0)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(deliver)
