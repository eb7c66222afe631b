"""`webinar-flows serve`: the HTTP service (service/), run by uvicorn in one process."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..context import AppContext, Failed, command, pass_app
from ..options import config_options

_LIMITS = {"max_event_bytes", "max_batch_bytes", "max_batch_events", "queue_events", "commit_events",
           "body_timeout", "synchronous", "max_header_bytes", "deliver", "writer"}


@command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; keep the default behind a reverse proxy that terminates TLS.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on.")
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The keys file (default: $WEBINAR_FLOWS_KEYS, else $CREDENTIALS_DIRECTORY/keys.toml).")
@config_options
@click.option("--max-event-bytes", type=click.IntRange(min=1), default=None,
              help="Largest body of a single event (structured or binary mode)  [default: the engine's limit]")
@click.option("--max-batch-bytes", type=click.IntRange(min=1), default=1024 * 1024, show_default=True,
              help="Largest body of a batch.")
@click.option("--max-batch-events", type=click.IntRange(min=0), default=100, show_default=True,
              help="Most events in one batched-mode request; more is 413.")
@click.option("--queue-events", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Events waiting for the writer before new requests get 503.")
@click.option("--commit-events", type=click.IntRange(min=1), default=500, show_default=True,
              help="Most events in one transaction (group commit).")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds for a request body to arrive; a slower client is cut off (408).")
@click.option("--head-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds for a request's line and headers to arrive; a slower client is disconnected.")
@click.option("--max-header-bytes", type=click.IntRange(min=1024), default=16 * 1024, show_default=True,
              help="Largest request head (request line and headers).")
@click.option("--keep-alive", type=click.IntRange(min=1), default=5, show_default=True,
              help="Seconds an idle connection is kept open.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Concurrent connections and requests; beyond it uvicorn answers 503.")
@click.option("--synchronous", type=click.Choice(["NORMAL", "FULL"], case_sensitive=False), default="FULL",
              show_default=True, help="SQLite durability of what is answered 200: FULL survives power loss (an "
                                      "fsync per commit, which group commit shares among the requests of a "
                                      "transaction); NORMAL survives a process crash only.")
@click.option("--writer", type=click.Choice(["process", "thread"]), default="process", show_default=True,
              help="Where the writer's engine runs: a process of its own, so that HTTP and the engine use "
                   "two cores; or a thread beside the event loop (one core, one process).")
@click.option("--deliver/--no-deliver", default=True, show_default=True,
              help="Push outbox items to the consumers with a url in the keys file, in a background thread "
                   "(docs/consuming.md).")
@pass_app
def serve_command(app: AppContext, host: str, port: int, keys_file: Path | None, keep_alive: int,
                  max_connections: int, head_timeout: float, **limits: object) -> None:
    """Serve signed CloudEvents over HTTP: POST /v1/ingest/KEY_ID, GET /v1/routes/..., GET
    /v1/feed/CONSUMER (and .../ack), /healthz, /readyz, /metrics; and push outbox items to the
    consumers with a url. See docs/service.md and docs/consuming.md.

    Refuses to start (exit 1) without a valid keys file. SIGTERM or SIGINT: stop taking
    requests, commit and answer what is queued, exit 0.
    """
    from service.keys import find_keys_file
    from service.server import run
    from service.settings import SettingsError, load_settings

    config, database = app.config_path(), app.db_path()
    limits = {k: v for k, v in limits.items() if k in _LIMITS and v is not None}
    limits["synchronous"] = str(limits["synchronous"]).upper()
    try:
        from .deliver import ENV_SCHEDULE, parse_schedule

        limits["retry_schedule"] = parse_schedule(os.environ.get(ENV_SCHEDULE))
        settings = load_settings(config, database, find_keys_file(keys_file), **limits)
        run(settings, host=host, port=port, keep_alive=keep_alive, max_connections=max_connections,
            head_timeout=head_timeout)
    except SettingsError as exc:
        raise Failed(str(exc)) from None
    except OSError as exc:
        raise Failed(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(serve_command, name="serve")
