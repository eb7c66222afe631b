"""`webinar-flows deliveries`: push deliveries, their attempts and last answers; retry, enable."""

from __future__ import annotations

import click

from ..context import AppContext, Failed, command, pass_app
from ..options import config_options
from ..output import print_json


@command()
@click.option("--failed", is_flag=True, help="Only the items that failed (set aside).")
@click.option("--consumer", default=None, help="Only this consumer's items.")
@click.option("--retry", "retry_id", default=None, metavar="ID", help="Send the failed item ID again.")
@click.option("--retry-all", is_flag=True, help="Send every failed item again.")
@click.option("--enable", "enable", default=None, metavar="CONSUMER",
              help="Deliver again to a consumer a 410 answer disabled.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@config_options
@pass_app
def deliveries(app: AppContext, failed: bool, consumer: str | None, retry_id: str | None, retry_all: bool,
               enable: str | None, limit: int) -> None:
    """List push deliveries as JSON Lines (id, consumer, type, subject, status, attempts, last
    answer), oldest first; or act on them with --retry ID, --retry-all or --enable CONSUMER.

    Consumers with a url in the keys file get their items from `serve` or `deliver`; a disabled
    consumer's line comes first. See docs/consuming.md.
    """
    if sum(bool(x) for x in (retry_id, retry_all, enable)) > 1:
        raise click.UsageError("--retry, --retry-all and --enable are used one at a time")
    with app.engine(create=False) as engine:
        if enable:
            if engine.enable_consumer(enable):
                click.echo(f"enabled delivery to {enable}", err=True)
            else:
                click.echo(f"delivery to {enable} was not disabled: nothing changed", err=True)
            return
        if retry_id or retry_all:
            count = engine.retry_deliveries(retry_id, consumer)
            if retry_id and count == 0:
                raise Failed(f"error: no failed delivery with id {retry_id!r}")
            click.echo(f"{count} failed delivery(ies) will be sent again", err=True)
            return
        for name in [consumer] if consumer else sorted(engine.config.consumers):
            state = engine.delivery_state(name)
            if state["disabled"]:
                print_json({"consumer": name, "status": "disabled", "reason": state["disabled_reason"]})
        for row in engine.deliveries(consumer, failed=failed, limit=limit):
            print_json(row)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(deliveries)
