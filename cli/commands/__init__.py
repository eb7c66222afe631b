"""The contract-governance commands, one module each; `register` adds them to the group."""

from __future__ import annotations

import click

from . import diff, docs, explain, graph, quarantine, replay, schema


def register(group: click.Group) -> None:
    for module in (docs, graph, schema, diff, quarantine, replay, explain):
        module.register(group)
