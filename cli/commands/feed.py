"""The `feed` command: a consumer's outbox items as JSON Lines, and its cursor."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import click

from engine.api import consumer_of

from ..context import AppContext, command, pass_app
from ..options import config_options
from ..output import print_json

FOLLOW_POLL_SECONDS = 0.25


@command()
@click.argument("consumer")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Print at most N items (default: every item available now).")
@click.option("--follow", is_flag=True, help="Go on printing items as they commit, until interrupted.")
@click.option("--no-ack", "no_ack", is_flag=True, help="Print without moving the consumer's cursor.")
@click.option("--reset", is_flag=True,
              help="Print nothing and move the cursor back to the beginning: the next feed repeats every item, "
                   "with the same ids.")
@config_options
@pass_app
def feed(app: AppContext, consumer: str, limit: int | None, follow: bool, no_ack: bool, reset: bool) -> None:
    """Print CONSUMER's next outbox items, one CloudEvent per line, and move its cursor past them.

    The items are what the scenario decided that CONSUMER receives (consumers.yaml): derived
    events and `action.<kind>` items, in commit order for each route key, each with a stable
    id. The cursor moves only once the lines are written, so an item is printed again if the
    run dies before that: dedupe by id. A consumer the config does not declare is exit 1.
    """
    if reset and (follow or no_ack or limit is not None):
        raise click.UsageError("--reset takes no other option")
    config = app.config()
    consumer_of(config, consumer)  # an undeclared consumer is named as such, whatever --db says
    with app.engine(config, create=False) as engine:  # a mistyped --db is an error, not a new empty database
        if reset:
            engine.ack(consumer, "")
            return
        stop = _interruptible() if follow else None
        left, read_to = limit, None  # read_to: with --no-ack, how far this run has read
        while True:
            batch = 500 if left is None else min(left, 500)
            items, cursor = engine.feed(consumer, batch, cursor=read_to)
            for item in items:
                print_json(item)
            sys.stdout.flush()
            if no_ack:
                read_to = cursor
            else:
                engine.ack(consumer, cursor)
            if left is not None:
                left -= len(items)
                if left <= 0:
                    return
            if len(items) < batch:
                if not follow:
                    return
                if stop is not None and stop.wait():
                    return


class _Stop:
    """A wait between polls that SIGINT or SIGTERM ends (the run then exits 0)."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.stopped = True

    def wait(self) -> bool:
        deadline = time.monotonic() + FOLLOW_POLL_SECONDS
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.stopped


def _interruptible() -> _Stop:
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stop


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(feed)
