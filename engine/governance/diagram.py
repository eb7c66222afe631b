"""Drawing the route machine: Mermaid `stateDiagram-v2` text, Graphviz dot text, or an image.

The drawing is done by the diagrams extension of `transitions`, on a machine built from the
same route spec as the running machine (`route.RouteMachine`), so the picture shows what a
route does. This module only labels it (each state with its screen
and reminders, each edge with its trigger) and post-processes the backend's output where it
falls short: a valid Mermaid title, no unused styles, Mermaid-safe state ids, final states, an
initial marker and no stray graph attributes in dot.

A `'*'` source is drawn as the machine runs it: one edge from every declared state,
including a self-loop on the destination, labelled `TRIGGER (*)`.

A config with a consumers.yaml also shows who reads the outbox: in Mermaid a note beside the
initial state, in dot a cluster of note-shaped nodes, each naming a consumer and the item types
it receives (`action.<kind>` and derived events). Without consumers the drawing is the route alone.
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

from transitions import State
from transitions.extensions.diagrams import GraphMachine

from ..errors import EngineError
from ..model import Config, ConsumerSpec, StateSpec

FORMATS = ("mermaid", "dot")
IMAGE_FORMATS = ("svg", "png", "pdf")
WILDCARD_MARK = " (*)"
_INITIAL_NODE = "__initial__"  # state names start with a letter, so this never clashes
_CONSUMERS_CLUSTER = "cluster___consumers__"
CONSUMERS_TITLE = "Outbox consumers"
# Words the Mermaid state-diagram lexer reads as keywords when they stand as a state id.
_MERMAID_RESERVED = frozenset({"state", "note", "class", "classdef", "scale", "direction", "end", "hide",
                               "as", "acctitle", "accdescr", "statediagram"})


class GraphvizNotFound(EngineError):
    """An image was asked for, but Graphviz (the `dot` program or the `graphviz` package) is missing."""


class _LabelledState(State):
    """A state that carries a display label, which the diagrams extension draws instead of the name."""

    def __init__(self, name: str, label: str | None = None, **kwargs: Any):
        super().__init__(name, **kwargs)
        self.label = label


class _DiagramMachine(GraphMachine):
    state_cls = _LabelledState


def render_diagram(config: Config, fmt: str = "mermaid") -> str:
    """The route machine of `config` as text: `mermaid` (stateDiagram-v2) or `dot` (Graphviz)."""
    if fmt == "mermaid":
        return _mermaid(config)
    if fmt == "dot":
        return _digraph(config).source
    raise ValueError(f"unknown diagram format {fmt!r} (known: {', '.join(FORMATS)})")


def render_image(config: Config, fmt: str = "svg") -> bytes:
    """The route machine drawn by Graphviz's `dot` as `svg`, `png` or `pdf` bytes."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r} (known: {', '.join(IMAGE_FORMATS)})")
    if shutil.which("dot") is None:
        raise GraphvizNotFound("drawing an image needs Graphviz's 'dot' program, which is not on PATH: "
                               "install Graphviz (apt-get install graphviz, or brew install graphviz)")
    return _digraph(config).pipe(format=fmt)


def _state_lines(state: StateSpec) -> list[str]:
    """What a drawn state shows: its name, then its screen and reminders."""
    lines = [state.name]
    if state.screen:
        lines.append(f"screen: {state.screen}")
    lines += [f"reminder: {reminder}" for reminder in state.reminders]
    return lines


def consumer_line(consumer: ConsumerSpec) -> str:
    """What the drawing says of a consumer: its name and the outbox item types it receives."""
    received = [f"action.{kind}" for kind in consumer.actions] + list(consumer.events)
    return f"{consumer.name}: {', '.join(received) or 'nothing'}"


def _machine(config: Config, ids: dict[str, str], newline: str, engine: str) -> _DiagramMachine:
    route = config.route
    states = [{"name": ids[s.name], "label": newline.join(_state_lines(s))} for s in route.states.values()]
    transitions = [
        {"trigger": t.trigger, "dest": ids[t.dest],
         "source": "*" if t.sources == ("*",) else [ids[s] for s in t.sources],
         "label": t.trigger + (WILDCARD_MARK if t.sources == ("*",) else "")}
        for t in route.transitions
    ]
    return _DiagramMachine(model=None, states=states, transitions=transitions, initial=ids[route.initial],
                           auto_transitions=False, graph_engine=engine, title=_title(config))


def _title(config: Config) -> str:
    return "Route by " + " + ".join(config.route.key)


def _graph(machine: _DiagramMachine, config: Config) -> Any:
    # A fresh graph of the machine itself, with no model: no state is styled as the active one.
    return machine.graph_cls(machine).get_graph(title=_title(config))


def _mermaid_ids(config: Config) -> dict[str, str]:
    """State name -> a Mermaid-safe id: word characters only, no keyword, unique."""
    ids: dict[str, str] = {}
    for name in config.route.states:
        base = re.sub(r"\W", "_", name)
        if base.lower() in _MERMAID_RESERVED or base.lower().startswith("default"):
            base = "s_" + base
        candidate, n = base, 2
        while candidate in ids.values():
            candidate, n = f"{base}_{n}", n + 1
        ids[name] = candidate
    return ids


def _mermaid(config: Config) -> str:
    ids = _mermaid_ids(config)
    lines = _graph(_machine(config, ids, "<br/>", "mermaid"), config).source.splitlines()
    if lines[:1] == ["---"] and lines[2:3] == ["---"]:
        lines[1] = "title: " + json.dumps(_title(config))  # the backend writes a bare title: not YAML front matter
    used = {line.split()[-1] for line in lines if line.strip().startswith("Class ")}
    lines = [line.rstrip() for line in lines
             if not (line.strip().startswith("classDef ") and line.split()[1] not in used)]
    lines += [f"  {ids[name]} --> [*]" for name, state in config.route.states.items() if state.final]
    if config.consumers:
        lines += ["", f"  note right of {ids[config.route.initial]}", f"    {CONSUMERS_TITLE}"]
        lines += [f"    {consumer_line(c)}" for c in config.consumers.values()]
        lines += ["  end note"]
    return "\n".join(lines) + "\n"


def _digraph(config: Config) -> Any:
    try:
        import graphviz  # noqa: F401  (the transitions graphviz backend needs it; it falls back silently)
    except ImportError:
        raise GraphvizNotFound("dot output needs the 'graphviz' Python package: pip install graphviz") from None
    ids = {name: name for name in config.route.states}
    graph = _graph(_machine(config, ids, r"\l", "graphviz"), config)
    for attribute in ("directed", "strict"):  # the backend's machine attributes, which dot does not know
        graph.graph_attr.pop(attribute, None)
    for name, state in config.route.states.items():
        if state.final:
            graph.node(name, peripheries="2")
    graph.node(_INITIAL_NODE, label="", shape="point", width="0.15", style="filled", fillcolor="black")
    graph.edge(_INITIAL_NODE, config.route.initial)
    if config.consumers:
        with graph.subgraph(name=_CONSUMERS_CLUSTER) as cluster:
            cluster.attr(label=CONSUMERS_TITLE, style="dashed")
            for consumer in config.consumers.values():
                cluster.node(f"consumer:{consumer.name}", label=consumer_line(consumer), shape="note")
    return graph
