"""The `replay` command: what the database's history would have become under another config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from engine.governance.replay import replay as run_replay

from ..context import AppContext, command, pass_app
from ..options import batch_options, config_options, format_option
from ..output import key_text, print_json


class _Bar:
    """A progress bar on stderr, made on the first report (when the total is known)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, file=sys.stderr, label="replaying")
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@command()
@config_options
@click.option("--scratch", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Replay into this new database file and keep it (default: a temporary file, removed).")
@click.option("--examples", type=click.IntRange(min=0), default=5, show_default=True,
              help="Examples shown per kind of difference.")
@format_option(["text", "json"], "text: a readable report; json: one document.")
@batch_options("Inputs per commit in the scratch database.",
               "The size limit of the replay (use the one the history was processed with).")
@click.option("--fail-on-change", is_flag=True,
              help="Exit 1 when the replay differs in anything (for a CI gate on a config change).")
@pass_app
def replay(app: AppContext, scratch: Path | None, examples: int, fmt: str, batch_size: int, max_event_bytes: int,
           fail_on_change: bool) -> None:
    """What if the history had run under the config --config? Replays the database's recorded
    inputs (accepted, duplicates and rejections, in their original order) and evaluations
    (interleaved by the time they were recorded) into a scratch database, and reports what
    would change: inputs newly accepted or rejected (by reason), evaluation results that
    differ (the latest per route key), and routes whose state or screen differs.

    The live database (--db) is opened read-only and never written. Replaying a database under
    the config it was processed with reports no difference. Exit 0 whatever the differences,
    unless --fail-on-change is given (then 1 when anything differs).
    """
    config = app.config(what="the config to replay under")
    bar = _Bar() if sys.stderr.isatty() else None
    try:
        report = run_replay(app.db_path(), config, scratch=scratch, examples=examples, batch_size=batch_size,
                            max_event_bytes=max_event_bytes, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if fmt == "json":
        print_json(report)
    else:
        click.echo(render(report))
    if fail_on_change and not report["identical"]:
        click.get_current_context().exit(1)


def render(report: dict[str, Any]) -> str:
    """The report as text: counts, then up to --examples examples under each difference."""
    done = report["replayed"]
    hashes = ", ".join(h[:12] for h in report["live_config_hashes"]) or "none"
    out = [f"replayed {report['db']}: {done['inputs']} input(s), {done['evaluations']} evaluation(s) "
           f"under the config in {report['config']} ({report['config_hash'][:12]})",
           f"the history was recorded under config(s) {hashes}"]
    if report["scratch"]:
        out.append(f"scratch database kept: {report['scratch']}")
    outcomes = report["outcomes"]
    out.append(f"outcomes: {outcomes['changed']} input(s) change")
    for label, part in (("newly accepted", "newly_accepted"), ("newly rejected", "newly_rejected")):
        out.append(f"  {label}: {outcomes[part]['count']}{_by(outcomes[part]['by_reason'])}")
    for t in outcomes["transitions"]:
        out.append(f"  {t['live']} -> {t['replay']}: {t['count']}")
        out += [f"    {_input(e)}" for e in t["examples"]]
    classes = report["classifications"]
    if classes is not None:
        out.append(f"classifications ({classes['event']}.{classes['field']}): {classes['count']} differ")
        out += [f"  {key_text(e['key'])}: live {_json(e['live'])}, replay {_json(e['replay'])}"
                for e in classes["examples"]]
    routes = report["routes"]
    out.append(f"routes: {routes['count']} differ")
    out += [f"  {key_text(e['key'])}: live {_route(e['live'])}, replay {_route(e['replay'])}" for e in routes["examples"]]
    gone = report["unavailable"]
    if gone["count"]:
        out.append(f"unavailable (bytes purged, or a key the config cannot name): {gone['count']}")
    out.append("no differences" if report["identical"] else "differences found")
    return "\n".join(out)


def _by(counts: dict[str, int]) -> str:
    return f" ({', '.join(f'{reason}: {n}' for reason, n in sorted(counts.items()))})" if counts else ""


def _input(example: dict[str, Any]) -> str:
    where = f" ({example['origin']})" if example["origin"] else ""
    where += f" line {example['line']}" if example["line"] is not None else ""
    key = f" [{key_text(example['key'])}]" if example["key"] else ""
    return f"input #{example['input']}{where}: {example['type'] or '?'} {example['id'] or '?'} " \
           f"from {example['source'] or '?'}{key}"


def _route(route: dict[str, Any] | None) -> str:
    if route is None:
        return "no route"
    return route["state"] + (f" ({route['screen']})" if route["screen"] else "")


def _json(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(replay)
