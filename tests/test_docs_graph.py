"""`docs` and `graph`: the contract as Markdown and the route machine as a diagram, kept in sync.

Every expectation is read off the loaded config, so the tests hold for any config, and the
committed renderings (docs/contract.md, docs/route.mmd, the README diagram) are checked current.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine import Config, load_config
from engine.config.locate import bundled_config
from engine.governance.diagram import render_diagram
from engine.governance.document import render_markdown

ROOT = Path(__file__).resolve().parent.parent
README_START, README_END = "<!-- route-diagram:start -->", "<!-- route-diagram:end -->"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(bundled_config())


# ---------------------------------------------------------------- helpers

def section(markdown: str, heading: str) -> str:
    """The text under `heading` (a whole heading line) up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = markdown.index(heading + "\n") + len(heading)
    nxt = re.search(rf"^#{{1,{level}}} ", markdown[start:], re.M)
    return markdown[start:start + nxt.start()] if nxt else markdown[start:]


def table(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text` as rows keyed by header."""
    all_lines = text.splitlines()
    first = next(i for i, ln in enumerate(all_lines) if ln.startswith("|"))
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), all_lines[first:]))
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def expected_edges(cfg: Config) -> set[tuple[str, str, str]]:
    """(source, trigger, dest) of every transition, '*' expanded to every declared state."""
    return {(s, t.trigger, t.dest) for t in cfg.route.transitions
            for s in (cfg.route.states if t.sources == ("*",) else t.sources)}


def mermaid_edges(text: str) -> set[tuple[str, str, str]]:
    edges = set()
    for src, dst, label in re.findall(r"^\s*(\w+) --> (\w+): (.+)$", text, re.M):
        edges |= {(src, trigger.removesuffix(" (*)"), dst) for trigger in label.split(" | ")}
    return edges


def mermaid_states(text: str) -> dict[str, list[str]]:
    return {sid: label.split("<br/>") for label, sid in re.findall(r'^\s*state "([^"]*)" as (\w+)$', text, re.M)}


def state_lines(cfg: Config, name: str) -> list[str]:
    state = cfg.route.states[name]
    return [name] + ([f"screen: {state.screen}"] if state.screen else []) + [f"reminder: {r}" for r in state.reminders]


def dot_edges(text: str) -> set[tuple[str, str, str]]:
    edges = set()
    for src, dst, label in re.findall(r'^\s*"?([\w.-]+)"? -> "?([\w.-]+)"? \[label="?([^"\]]*)"?\]$', text, re.M):
        edges |= {(src, trigger.removesuffix(" (*)"), dst) for trigger in label.split(" | ")}
    return edges


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def wildcard_and_final(config_copy: Path) -> Config:
    """The default config with one '*' transition and one final state."""
    edit(config_copy / "states.yaml", "{trigger: client_webinar_left, source: in_webinar, dest: left}",
         "{trigger: client_webinar_left, source: '*', dest: left}")
    edit(config_copy / "states.yaml", "    screen: post_webinar_thanks\n", "    screen: post_webinar_thanks\n    final: true\n")
    return load_config(config_copy)


# ---------------------------------------------------------------- docs

def test_docs_mention_every_event_field_emitter_state_and_rule(run_cli, config):
    result = run_cli("docs")
    assert result.exit_code == 0, result.output
    doc = result.stdout
    assert config.hash in doc
    summary = {row["event"]: row for row in table(section(doc, "## Events"))}
    for name, event in config.events.items():
        assert summary[f"`{name}`"]["status"] == event.status
        part = section(doc, f"### `{name}`")
        assert event.description in part
        fields = {row["field"]: row for row in table(part)}
        props = event.payload["properties"]
        assert set(fields) == {f"`{f}`" for f in props}
        for field, schema in props.items():
            row = fields[f"`{field}`"]
            assert row["required"] == ("yes" if field in event.payload.get("required", []) else "no")
            if "description" in schema:
                assert row["description"] == schema["description"]
            for value in schema.get("enum", []):
                assert f'`"{value}"`' in row["allowed values"]
            if "format" in schema:
                assert schema["format"] in row["type"]
    emitters = {row["emitter"]: row for row in table(section(doc, "## Emitters"))}
    for name, emitter in config.emitters.items():
        assert emitters[f"`{name}`"]["kind"] == emitter.kind
        assert emitters[f"`{name}`"]["internal"] == ("**yes**" if emitter.internal else "no")
    states = {row["state"].split(" ")[0]: row for row in table(section(doc, "### States"))}
    for name, state in config.route.states.items():
        row = states[f"`{name}`"]
        assert row["screen"] == (f"`{state.screen}`" if state.screen else "—")
        assert all(f"`{r}`" in row["reminders on entering"] for r in state.reminders)
    for rule in config.rules:
        assert f"### `{rule.id}`" in doc


def test_docs_matrix_has_every_emitter_and_event_with_its_status(run_cli, config):
    doc = run_cli("docs").stdout
    matrix = table(section(doc, "### Emitter × event matrix"))
    assert [row["event"] for row in matrix] == [f"`{e}`" for e in config.events]
    for emitter in config.emitters.values():
        column = f"`{emitter.name}`" + (" (internal)" if emitter.internal else "")
        for row in matrix:
            assert row[column] == emitter.events.get(row["event"].strip("`"), "—")


def test_docs_rules_are_sentences_with_conditions_and_mapping(run_cli, config):
    doc = run_cli("docs").stdout
    for rule in config.rules:
        part = section(doc, f"### `{rule.id}`")
        trigger = f"When `{rule.on_event}` is accepted" if rule.on_event else "When an explicit evaluation runs"
        assert trigger in part
        assert f"emit `{rule.emit_event}` as `{rule.emit_source}`" in part
        for ref in rule.has:
            assert f"a `{ref.event}` fact" in part
        for ref in rule.lacks:
            assert f"no `{ref.event}` fact" in part
        for field, value in (w for ref in rule.has + rule.lacks for w in ref.where):
            assert f"`{field}` = `{json.dumps(value)}`" in part
        mapping = {row["field"]: row["value"] for row in table(part)} if rule.fields else {}
        for fm in rule.fields:
            assert fm.field.join("``") in mapping
            if fm.source:
                assert f"`{fm.source}`" in mapping[f"`{fm.field}`"]
    # the default's completion rule, word for word
    assert ("When `client_webinar_completed` is accepted, if no `client_webinar_attendance_classified` fact "
            "with `attended` = `true` exists, emit `client_webinar_attendance_classified` as "
            "`attendance-classifier` with:") in doc


def test_docs_state_the_spec_boundaries(run_cli, config):
    from engine.config.checks import FORBIDDEN_WORDS
    from engine.config.load import CALLBACK_KEYS, TIME_KEYS

    part = section(run_cli("docs").stdout, "## Spec boundaries")
    for word in FORBIDDEN_WORDS | TIME_KEYS | CALLBACK_KEYS:
        assert f"`{word}`" in part
    for code in ("time_logic", "callback_refused", "forbidden_vocabulary", "trigger_not_input",
                 "internal_event_external_emitter", "remote_ref", "ref_outside_config", "rule_cycle"):
        assert f"`{code}`" in part
    for event in config.input_events():
        assert f"`{event}`" in part


def test_docs_output_and_check(run_cli, tmp_path):
    stdout = run_cli("docs").stdout
    assert run_cli("docs", "--output", "contract.md").exit_code == 0
    assert (tmp_path / "contract.md").read_text(encoding="utf-8") == stdout
    fresh = run_cli("docs", "--check", "contract.md")
    assert (fresh.exit_code, fresh.stdout, fresh.stderr) == (0, "", "")
    (tmp_path / "contract.md").write_text(stdout.replace("## Rules", "## Rulez"), encoding="utf-8")
    stale = run_cli("docs", "--check", "contract.md")
    assert stale.exit_code == 1
    assert "contract.md" in stale.stderr and "regenerate" in stale.stderr
    assert "webinar-flows docs --output contract.md" in stale.stderr
    missing = run_cli("docs", "--check", "nowhere.md")
    assert missing.exit_code == 1 and "nowhere.md" in missing.stderr
    assert run_cli("docs", "--output", "a.md", "--check", "contract.md").exit_code == 2


def test_docs_check_accepts_crlf_line_ends(run_cli, tmp_path):
    (tmp_path / "contract.md").write_bytes(run_cli("docs").stdout.replace("\n", "\r\n").encode())
    assert run_cli("docs", "--check", "contract.md").exit_code == 0


def test_docs_follow_the_config(run_cli, config_copy, tmp_path):
    default = run_cli("docs").stdout
    assert run_cli("docs", "--config", str(config_copy)).stdout == default  # same bytes, same hash, same page
    (tmp_path / "contract.md").write_text(default, encoding="utf-8")
    edit(config_copy / "emitters.yaml", "emitters:\n", "emitters:\n  registration-form:\n    kind: form\n"
                                                      "    events: {client_webinar_registered: planned}\n")
    edit(config_copy / "states.yaml", "screen: webinar_room", "screen: webinar_lobby")
    changed = run_cli("docs", "--config", str(config_copy))
    assert changed.exit_code == 0
    doc = changed.stdout
    assert doc != default
    assert load_config(config_copy).hash in doc and str(config_copy) not in doc
    matrix = {row["event"]: row for row in table(section(doc, "### Emitter × event matrix"))}
    assert matrix["`client_webinar_registered`"]["`registration-form`"] == "planned"
    assert "input from `registration-form` (planned)" in section(doc, "### `client_webinar_registered`")
    assert "`webinar_lobby`" in doc and "`webinar_room`" not in doc
    stale = run_cli("docs", "--config", str(config_copy), "--check", "contract.md")
    assert stale.exit_code == 1
    assert f"webinar-flows docs --config {config_copy} --output contract.md" in stale.stderr


def test_docs_and_graph_refuse_an_invalid_config(run_cli, config_copy):
    edit(config_copy / "states.yaml", "dest: registered}", "dest: nowhere}")
    for command in ("docs", "graph"):
        result = run_cli(command, "--config", str(config_copy))
        assert result.exit_code == 1
        assert "unknown_state" in result.stderr and "invalid" in result.stderr and result.stdout == ""


def test_committed_contract_is_current(run_cli, config):
    committed = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
    assert committed == render_markdown(config), "docs/contract.md is stale: webinar-flows docs --output docs/contract.md"
    assert run_cli("docs", "--check", str(ROOT / "docs" / "contract.md")).exit_code == 0


# ---------------------------------------------------------------- graph

def test_mermaid_has_every_transition_state_screen_and_reminder(run_cli, config):
    result = run_cli("graph")
    assert result.exit_code == 0
    text = result.stdout
    assert "stateDiagram-v2" in text.splitlines()
    assert mermaid_edges(text) == expected_edges(config)
    states = mermaid_states(text)
    assert set(states) == set(config.route.states)
    for name in config.route.states:
        assert states[name] == state_lines(config, name)
    assert f"[*] --> {config.route.initial}" in text
    assert text == render_diagram(config, "mermaid") and text == run_cli("graph", "--format", "mermaid").stdout


def test_mermaid_expands_wildcards_and_marks_final_states(run_cli, config_copy):
    cfg = wildcard_and_final(config_copy)
    text = run_cli("graph", "--config", str(config_copy)).stdout
    assert mermaid_edges(text) == expected_edges(cfg)
    for state in cfg.route.states:
        assert re.search(rf"^\s*{state} --> left: (.* \| )?client_webinar_left \(\*\)", text, re.M)
    assert "form_submitted --> [*]" in text
    doc = run_cli("docs", "--config", str(config_copy)).stdout
    moves = {row["trigger"]: row for row in table(section(doc, "### Transitions"))}
    assert moves["`client_webinar_left`"]["from"] == "any state (`*`)"
    assert "`form_submitted` (final)" in doc


def test_mermaid_ids_are_safe_for_any_state_name(config_copy):
    edit(config_copy / "states.yaml", "name: left\n", "name: left-the.room\n")
    edit(config_copy / "states.yaml", "dest: left}", "dest: left-the.room}")
    edit(config_copy / "states.yaml", "[new, registered, left]", "[new, registered, left-the.room]")
    edit(config_copy / "states.yaml", "[new, registered, in_webinar, left]", "[new, registered, in_webinar, left-the.room]")
    text = render_diagram(load_config(config_copy), "mermaid")
    assert 'state "left-the.room<br/>screen: webinar_rejoin<br/>reminder: rejoin_webinar" as left_the_room' in text
    assert "in_webinar --> left_the_room: client_webinar_left" in text


def test_dot_is_a_digraph_with_every_edge(run_cli, config_copy):
    cfg = wildcard_and_final(config_copy)
    result = run_cli("graph", "--config", str(config_copy), "--format", "dot")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    assert dot_edges(text) == expected_edges(cfg)
    assert f"__initial__ -> {cfg.route.initial}" in text
    for name in cfg.route.states:
        assert "\\l".join(state_lines(cfg, name)) + "\\l" in text
    assert "form_submitted [peripheries=2]" in text


@needs_dot
def test_dot_output_is_accepted_by_graphviz(run_cli):
    text = run_cli("graph", "--format", "dot").stdout
    done = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "" and "<svg" in done.stdout


def test_graph_output_files(run_cli, tmp_path, config):
    assert run_cli("graph", "--output", "route.mmd").exit_code == 0
    assert (tmp_path / "route.mmd").read_text(encoding="utf-8") == render_diagram(config, "mermaid")
    assert run_cli("graph", "--output", "route.dot").exit_code == 0
    assert (tmp_path / "route.dot").read_text(encoding="utf-8") == render_diagram(config, "dot")
    assert run_cli("graph", "--format", "dot", "--output", "route.txt").exit_code == 0
    assert (tmp_path / "route.txt").read_text(encoding="utf-8") == render_diagram(config, "dot")
    mismatch = run_cli("graph", "--format", "dot", "--output", "route.mmd")
    assert mismatch.exit_code == 2 and "does not match" in mismatch.stderr
    assert run_cli("graph", "--format", "mermaid", "--output", "route.svg").exit_code == 2
    assert run_cli("graph", "--check", "route.mmd").exit_code == 0
    assert run_cli("graph", "--check", "route.dot").exit_code == 0
    (tmp_path / "route.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    stale = run_cli("graph", "--check", "route.mmd")
    assert stale.exit_code == 1 and "route.mmd" in stale.stderr and "regenerate" in stale.stderr


def test_graph_image_without_graphviz_says_how_to_install(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr("engine.governance.diagram.shutil.which", lambda name: None)
    result = run_cli("graph", "--output", "route.svg")
    assert result.exit_code == 1
    assert "apt-get install graphviz" in result.stderr and "route.mmd" in result.stderr
    assert not (tmp_path / "route.svg").exists()


@needs_dot
@pytest.mark.parametrize(("name", "magic"), [("route.svg", b"<?xml"), ("route.png", b"\x89PNG")])
def test_graph_image_with_graphviz(run_cli, tmp_path, name, magic):
    result = run_cli("graph", "--output", name)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_committed_route_diagram_is_current(run_cli, config):
    assert (ROOT / "docs" / "route.mmd").read_text(encoding="utf-8") == render_diagram(config, "mermaid")
    assert run_cli("graph", "--check", str(ROOT / "docs" / "route.mmd")).exit_code == 0


@pytest.mark.parametrize("name", ["README.md", "docs/cli/graph.md"])
def test_diagram_between_markers_is_current(config, name):
    text = (ROOT / name).read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        pytest.skip(f"{name} has no route-diagram markers yet")
    between = text.split(README_START, 1)[1].split(README_END, 1)[0]
    expected = "```mermaid\n" + render_diagram(config, "mermaid") + "```"
    assert between.strip() == expected, f"the route diagram in {name} is stale: paste docs/route.mmd between the markers"
