"""The `schema` command: the contract exported as JSON Schema files or an AsyncAPI 3.0 document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from engine.governance.export import asyncapi, event_schemas

from ..context import AppContext, Failed, command, pass_app
from ..options import config_option, db_option, format_option
from ..output import write_file

_YAML_SUFFIXES = (".yaml", ".yml")


def _dump(document: Any, as_yaml: bool) -> str:
    if as_yaml:
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _write_dir(directory: Path, schemas: dict[str, dict[str, Any]]) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Failed(f"error: cannot create {directory}: {exc.strerror}") from None
    for name, schema in schemas.items():
        write_file(directory / f"{name}.schema.json", _dump(schema, False))
    click.echo(f"wrote {len(schemas)} schema file(s) to {directory}", err=True)

DEFAULT_TITLE = "webinar-flows event contract"


@command()
@config_option
@db_option("Accepted like everywhere, not used: schema reads no database.")
@format_option(["json-schema", "asyncapi"],
               "json-schema: one JSON Schema per event; asyncapi: one AsyncAPI 3.0 document.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="json-schema only: write <event>.schema.json files into this directory (created if missing).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the document to this file instead of stdout (YAML when it ends in .yaml or .yml).")
@click.option("--yaml", "as_yaml", is_flag=True, help="Write YAML instead of JSON (not with --output-dir).")
@click.option("--base-uri", default=None, metavar="URI",
              help="json-schema only: prefix of each schema's $id, e.g. https://example.com/schemas/ (default: "
                   "none, so the $id is the bare file name, resolved against wherever the file is published).")
@click.option("--title", default=None, metavar="TEXT",
              help=f"asyncapi only: the document's info.title (default: {DEFAULT_TITLE!r}).")
@pass_app
def schema(app: AppContext, fmt: str, output_dir: Path | None,
           output: Path | None, as_yaml: bool, base_uri: str | None, title: str | None) -> None:
    """Export the event contract for other tools.

    json-schema (default): a JSON Schema (draft 2020-12) per event describing the whole
    CloudEvents envelope of that event: type fixed to the event name, data the payload
    schema with every $ref expanded, and $schema, $id, title, description, x-status,
    x-identity and x-emitters. With --output-dir each goes to <event>.schema.json;
    otherwise one JSON object {event: schema} is written.

    asyncapi: an AsyncAPI 3.0 document: a channel and a message per event (status as
    x-status and a status:... tag), and a send operation per emitter and event it may
    emit, internal services marked x-internal and tagged internal.

    --db is accepted like everywhere but not used: schema reads no database.
    """
    if output_dir is not None and (fmt != "json-schema" or output is not None or as_yaml):
        raise click.UsageError("--output-dir goes with --format json-schema, without --output or --yaml")
    if title is not None and fmt != "asyncapi":
        raise click.UsageError("--title goes with --format asyncapi (a JSON Schema export has no document title)")
    if base_uri is not None and fmt != "json-schema":
        raise click.UsageError("--base-uri goes with --format json-schema (it prefixes each schema's $id)")
    config = app.config()
    if fmt == "asyncapi":
        document = asyncapi(config, title=title or DEFAULT_TITLE)
    else:
        document = event_schemas(config, base_uri=base_uri or "")
        if output_dir is not None:
            _write_dir(output_dir, document)
            return
    as_yaml = as_yaml or (output is not None and output.suffix.lower() in _YAML_SUFFIXES)
    text = _dump(document, as_yaml)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_file(output, text)
        click.echo(f"wrote {output}", err=True)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(schema)
