"""The `graph` command: the route machine as a Mermaid or Graphviz diagram, or an image."""

from __future__ import annotations

from pathlib import Path

import click

from engine.governance.diagram import (
    FORMATS,
    IMAGE_FORMATS,
    GraphvizNotFound,
    render_diagram,
    render_image,
)

from ..context import AppContext, Failed, command, pass_app
from ..options import config_option, db_option, file_options
from ..output import emit_file, write_file

_TEXT_SUFFIXES = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot"}


def _kind(fmt: str | None, output: Path | None) -> str:
    """What to produce: a text format of FORMATS or an image format, from --format and the file suffix."""
    suffix = output.suffix.lower() if output else ""
    implied = _TEXT_SUFFIXES.get(suffix) or (suffix[1:] if suffix[1:] in IMAGE_FORMATS else None)
    if implied in IMAGE_FORMATS and fmt == "mermaid":
        raise click.UsageError(f"{output} is an image, drawn by Graphviz from the dot form: drop --format "
                               "mermaid, or write Mermaid text to a .mmd file")
    if implied in FORMATS and fmt and fmt != implied:
        raise click.UsageError(f"--format {fmt} does not match the suffix of {output} ({implied})")
    return implied or fmt or "mermaid"


@command()
@config_option
@db_option("Accepted like everywhere, not used: graph reads no database.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Text to write: mermaid (stateDiagram-v2, rendered by GitHub) or dot (Graphviz). "
                   "Default: from the --output suffix, else mermaid.")
@file_options("Write to FILE instead of stdout: .mmd/.mermaid for Mermaid, .dot/.gv for dot, "
              ".svg/.png/.pdf for an image drawn by Graphviz (needs the 'dot' program).",
              "Write nothing; exit 1 when FILE differs from the diagram the config renders (for CI).")
@pass_app
def graph(app: AppContext, fmt: str | None, output: Path | None, check: Path | None) -> None:
    """Draw the route machine: states with their screens and reminders, transitions labelled by event.

    Mermaid (the default) is a stateDiagram-v2 that GitHub renders in Markdown; dot is
    for Graphviz. Both are drawn by the diagrams extension of the `transitions` library
    from the same transitions the engine runs. A '*' source is drawn as the machine runs
    it: an edge from every state, labelled 'EVENT (*)'. Edges between the same two
    states are merged, their events joined by ' | '.
    """
    kind = _kind(fmt, output or check)
    if check and kind in IMAGE_FORMATS:
        raise click.UsageError("--check compares text: give a .mmd or .dot file")
    config = app.config()
    try:
        if kind in IMAGE_FORMATS and output:  # an image kind comes only from the --output suffix
            write_file(output, render_image(config, kind))
            return
        text = render_diagram(config, kind)
    except GraphvizNotFound as exc:
        raise Failed(f"error: {exc}\n(or write text instead: --output route.mmd for Mermaid)") from None
    extra = f" --format {kind}" if check and check.suffix.lower() not in _TEXT_SUFFIXES else ""
    emit_file(text, output, check, app.regenerate("graph", check, extra))


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(graph)
