"""The `explain` command: the story of one lead on one webinar."""

from __future__ import annotations

import json
from typing import Any

import click

from engine.governance.quarantine import ORIGIN

from ..context import AppContext, Failed, command, pass_app
from ..options import RouteKeyArgs, config_options, format_option, key_options
from ..output import describe_key, key_text, print_json


@command()
@key_options("The lead.", "The webinar.")
@format_option(["text", "json"], "text: a numbered story; json: one document.")
@config_options
@pass_app
def explain(app: AppContext, key: RouteKeyArgs, fmt: str) -> None:
    """Tell the story of one lead on one webinar, step by step.

    Each input that concerns them (accepted, duplicate, or rejected when its envelope names
    them) and each evaluation, in order; for every accepted fact and evaluation, which rules
    fired (with what they emitted) and which did not and why, judged with the current config
    on the facts known at that point; each route change with its actions; then the current
    classification and route, and what an evaluation now would do. Exit 1 when nothing is
    known about that lead on that webinar.
    """
    config = app.config()
    wanted = key.resolve(config, need="all")
    with app.engine(config, create=False) as engine:
        story = engine.explain(**wanted)
    if story is None:
        raise Failed(f"error: nothing is known about {describe_key(wanted)}")
    if fmt == "json":
        print_json(story)
    else:
        click.echo(render(story))


def render(story: dict[str, Any]) -> str:
    """The story as numbered text."""
    out = [f"{key_text(story['key'])} (judged with config {story['config_hash'][:12]})", ""]
    for step in story["story"]:
        out += _step(step)
    out.append("")
    route = story["route"]
    out.append("route now: " + ("none" if route is None else route["state"]
                                + (f" (screen {route['screen']})" if route["screen"] else "")
                                + (f" - {route['problem']['message']}" if route.get("problem") else "")))
    if story["classification"] is not None:
        c = story["classification"]
        out.append(f"classification now: {c['field']} = {_value(c['value'])} ({c['event']})")
    for verdict in story["if_evaluated_now"]:
        tail = "would fire" if verdict["would_fire"] else f"would not fire: {verdict['why_not']}"
        out.append(f"an evaluation now: rule {verdict['rule']} {tail}")
    return "\n".join(out)


def _step(step: dict[str, Any]) -> list[str]:
    n = f"{step['step']:>2}. "
    pad = " " * len(n)
    if step["kind"] == "evaluation":
        lines = [f"{n}{step['at']}  evaluation #{step['evaluation']} at {step['evaluated_at']}"]
        return lines + [pad + line for line in _verdicts(step["rules"], "no evaluation rule in the current config")]
    event = step["event"]
    origin = step["origin"] or ""
    where = f", reprocessing rejection #{origin[len(ORIGIN):]}" if origin.startswith(ORIGIN) else \
        f", {origin}" if origin else ""
    where += f", line {step['line']}" if step["line"] is not None else ""
    lines = [f"{n}{step['at']}  input #{step['input']}{where}: {event['type'] or '?'} {event['id'] or '?'} "
             f"from {event['source'] or '?'}"]
    if step["status"] == "rejected":
        lines.append(f"{pad}rejected: {step['reason']}")
        lines += [f"{pad}  {e['path'] or '/'}: {e['message']}" for e in step["errors"]]
        if step["resolved"]:
            resolved = step["resolved"]
            lines.append(f"{pad}left the quarantine at {resolved['at']} (input #{resolved['by_input']})")
        return lines
    if step["status"] == "duplicate":
        return lines + [f"{pad}duplicate ({step['reason']}): nothing changed"]
    lines.append(f"{pad}accepted as fact #{step['fact']} {_compact(step['data'])}")
    lines += [pad + line for line in _verdicts(step["rules"], f"no rule is triggered by {event['type']}")]
    change = step["route_change"]
    lines.append(pad + ("route unchanged" if change is None else f"route {change['from']} -> {change['to']}"))
    if step["actions"]:
        lines.append(pad + "actions: " + "; ".join(_action(a) for a in step["actions"]))
    return lines


def _verdicts(verdicts: list[dict[str, Any]], none: str) -> list[str]:
    if not verdicts:
        return [none]
    out = []
    for v in verdicts:
        if v["fired"]:
            e = v["emitted"]
            note = f" ({v['note']})" if v.get("note") else ""
            out.append(f"rule {v['rule']} fired{note}: {e['type']} {_compact(e['data'])} (fact #{e['fact']})")
        else:
            out.append(f"rule {v['rule']} did not fire: {v['why_not']}")
    return out


def _action(action: dict[str, Any]) -> str:
    if action["type"] == "route":
        return f"route {action['from']} -> {action['to']}"
    if action["type"] == "screen":
        return f"screen {action['screen']}"
    if action["type"] == "reminder":
        return f"reminder {action['reminder']}"
    return json.dumps(action, ensure_ascii=False)


def _compact(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(", ", ": "))


def _value(value: Any) -> str:
    return "none" if value is None else json.dumps(value)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(explain)
