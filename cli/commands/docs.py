"""The `docs` command: the whole contract rendered from the config as one Markdown page."""

from __future__ import annotations

from pathlib import Path

import click

from engine.governance.document import render_markdown

from ..context import AppContext, command, pass_app
from ..options import config_option, db_option, file_options
from ..output import emit_file


@command()
@config_option
@db_option("Accepted like everywhere, not used: docs reads no database.")
@file_options("Write the document to FILE instead of stdout.",
              "Write nothing; exit 1 when FILE differs from what the config renders (for CI).")
@pass_app
def docs(app: AppContext, output: Path | None, check: Path | None) -> None:
    """Render the contract as Markdown: events, emitters, rules, route and spec boundaries.

    Events come with their status, description and a table of payload fields (type,
    required, allowed values, description); emitters as an emitter x event matrix with
    internal services marked; rules as plain sentences with their conditions and field
    mapping; the route as a table, a Mermaid diagram and each state's screen and
    reminders; then what `validate` refuses. The output is deterministic and names the
    config hash, so a repository can commit it and keep it current with --check.
    """
    text = render_markdown(app.config())
    emit_file(text, output, check, app.regenerate("docs", check))


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(docs)
