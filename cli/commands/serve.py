"""`webinar-flows serve`: being written (issue 10)."""

import click


def register(group: click.Group) -> None:
    """Nothing yet."""
