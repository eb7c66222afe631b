"""The options several commands share, declared once.

--config and --db go on the group and on each command (`webinar-flows --db X route` and
`webinar-flows route --db X` both work); their values land in the run's `AppContext`.
--lead, --webinar and --key name a route key: --lead V and --webinar V are short for
--key lead_id=V and --key webinar_id=V; the fields are checked against the config's
`key:` once it is loaded (`RouteKeyArgs.resolve`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import click

from engine import DEFAULT_BATCH_SIZE, DEFAULT_MAX_EVENT_BYTES, Config, normalise_time

from .context import app_of

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _apply(*options: Decorator) -> Decorator:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _store(attribute: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(app_of(ctx), attribute, value)

    return callback


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", type=click.Path(file_okay=False, path_type=Path), default=None,
                        expose_value=False, callback=_store("config_dir"),
                        help="Config directory (default: $WEBINAR_FLOWS_CONFIG, else the current directory if it "
                             "holds states.yaml, else the bundled default).")(f)


class DatabaseParam(click.ParamType):
    """--db: a postgresql:// or postgres:// URL kept as text, else a SQLite file path."""

    name = "path|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path | str:
        if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
            return value
        return click.Path(dir_okay=False, path_type=Path).convert(value, param, ctx)


def db_option(help: str = "SQLite database file or postgresql:// URL (default: $WEBINAR_FLOWS_DB, else "
                          "./webinar-flows.db).") -> Decorator:
    return click.option("--db", type=DatabaseParam(), default=None,
                        expose_value=False, callback=_store("db"), help=help)


config_options = _apply(config_option, db_option())


def format_option(choices: Sequence[str], help: str, default: str | None = None) -> Decorator:
    """--format, bound to the parameter `fmt`; the default is the first choice unless told."""
    default = default if default is not None else choices[0]
    return click.option("--format", "fmt", type=click.Choice(list(choices)), default=default,
                        show_default=default is not None, help=help)


def batch_options(batch_help: str, bytes_help: str) -> Decorator:
    """--batch-size and --max-event-bytes (process, reprocess, replay)."""
    return _apply(
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
                     help=batch_help),
        click.option("--max-event-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_EVENT_BYTES,
                     show_default=True, help=bytes_help))


def at_time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback: an RFC 3339 date-time as UTC, or a usage error."""
    if value is None:
        return None
    try:
        return normalise_time(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an RFC 3339 date-time such as 2026-01-31T18:00:00Z") from None


# -- the route key -----------------------------------------------------------------------------------

SHORTHANDS = {"lead_id": "--lead", "webinar_id": "--webinar"}


def _option_for(field: str) -> str:
    return SHORTHANDS.get(field) or f"--key {field}=VALUE"


@dataclass(frozen=True)
class RouteKeyArgs:
    """The route key fields given on the command line, as (field, value, option) in order."""

    given: tuple[tuple[str, str, str], ...]

    def resolve(self, config: Config, *, need: str) -> dict[str, str]:
        """The given fields, checked against the config's route key, in the key's order.

        need="all": every key field (a route, a story); need="scope": every field but the
        first, which when left out means all of its values (an evaluation: --webinar and,
        optionally, --lead), and at least one field."""
        fields = config.route.key
        values: dict[str, str] = {}
        for name, value, option in self.given:
            if name not in fields:
                raise click.UsageError(f"{option}: the config's route key has no field {name!r}; "
                                       f"its fields are ({', '.join(fields)})")
            if name in values:
                raise click.UsageError(f"{name} given twice ({option})")
            values[name] = _typed(config, name, value, option)
        required = fields if need == "all" or len(fields) == 1 else fields[1:]
        missing = [f for f in required if f not in values]
        if missing:
            what = "every route key field" if need == "all" else f"the route key field(s) {', '.join(required)}"
            raise click.UsageError(f"give {what}: missing {', '.join(_option_for(f) for f in missing)} "
                                   f"(the route key is ({', '.join(fields)}))")
        return {f: values[f] for f in fields if f in values}


def _typed(config: Config, name: str, value: str, option: str) -> Any:
    try:
        return config.key_value(name, value)
    except ValueError as exc:
        raise click.UsageError(f"{option}: {exc}") from None


def _key_pair(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not FIELD=VALUE")
        pairs.append((name.strip(), value))
    return tuple(pairs)


def key_options(lead_help: str, webinar_help: str) -> Decorator:
    """--lead, --webinar and --key FIELD=VALUE, passed to the command as `key: RouteKeyArgs`."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(f)
        def wrapper(*args: Any, lead: str | None, webinar: str | None, keys: tuple[tuple[str, str], ...],
                    **kwargs: Any) -> Any:
            given = [("lead_id", lead, "--lead")] if lead is not None else []
            given += [("webinar_id", webinar, "--webinar")] if webinar is not None else []
            given += [(name, value, f"--key {name}={value}") for name, value in keys]
            return f(*args, key=RouteKeyArgs(tuple(given)), **kwargs)

        return _apply(
            click.option("--lead", default=None, help=f"{lead_help} Short for --key lead_id=VALUE."),
            click.option("--webinar", default=None, help=f"{webinar_help} Short for --key webinar_id=VALUE."),
            click.option("--key", "keys", multiple=True, metavar="FIELD=VALUE", callback=_key_pair,
                         help="A field of the config's route key (states.yaml `key:`) and its value; repeat for "
                              "each field."),
        )(wrapper)

    return decorate


# -- rendered files ------------------------------------------------------------------------------------

_FILE = click.Path(dir_okay=False, path_type=Path)


def file_options(output_help: str, check_help: str) -> Decorator:
    """--output/-o FILE and --check FILE (exclusive), passed as `output` and `check`."""
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(f)
        def wrapper(*args: Any, output: Path | None, check: Path | None, **kwargs: Any) -> Any:
            if output and check:
                raise click.UsageError("--output and --check are exclusive")
            return f(*args, output=output, check=check, **kwargs)

        return _apply(click.option("--output", "-o", type=_FILE, default=None, help=output_help),
                      click.option("--check", type=_FILE, default=None, help=check_help))(wrapper)

    return decorate
