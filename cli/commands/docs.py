"""The `docs` command: the whole contract rendered from the config as one Markdown page."""

from __future__ import annotations

from pathlib import Path

import click

from engine.governance.document import render_markdown

from ..main import CONTEXT, _config_option
from . import _rendered

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command(context_settings=CONTEXT)
@_config_option
@click.option("--output", "-o", type=_FILE, default=None, help="Write the document to FILE instead of stdout.")
@click.option("--check", "check", type=_FILE, default=None,
              help="Write nothing; exit 1 when FILE differs from what the config renders (for CI).")
@click.pass_context
def docs(ctx: click.Context, config_dir: Path | None, output: Path | None, check: Path | None) -> None:
    """Render the contract as Markdown: events, emitters, rules, route and spec boundaries.

    Events come with their status, description and a table of payload fields (type,
    required, allowed values, description); emitters as an emitter x event matrix with
    internal services marked; rules as plain sentences with their conditions and field
    mapping; the route as a table, a Mermaid diagram and each state's screen and
    reminders; then what `validate` refuses. The output is deterministic and names the
    config hash, so a repository can commit it and keep it current with --check.
    """
    if output and check:
        raise click.UsageError("--output and --check are exclusive")
    text = render_markdown(_rendered.load(ctx, config_dir))
    regenerate = _rendered.command("docs", config_dir, check) if check else ""
    _rendered.emit(text, output=output, check_file=check, regenerate=regenerate)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(docs)
