"""`webinar-flows keys`: being written (issue 10)."""

import click


def register(group: click.Group) -> None:
    """Nothing yet."""
