"""consumers.yaml, the optional fifth config file: loading, hashing, checks, and its place in
docs, graph, diff and the AsyncAPI export.

The fixture config is a copy of the default config plus tests/data/consumers_example.yaml
(docs/config.md's reminder-sender and two more). The validate checks of consumers.yaml are cases of
tests/data/broken_configs.yaml; the tests here cover what the table cannot.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from engine import ConfigError, load_config
from engine.config.load import config_files
from engine.config.locate import bundled_config
from engine.model import ACTION_KINDS, Config, ConsumerSpec

EXAMPLE = Path(__file__).resolve().parent / "data" / "consumers_example.yaml"


def with_consumers(root: Path, text: str | None = None) -> Path:
    """The default config copied into `root`, with a consumers.yaml (the example unless `text`)."""
    src = bundled_config()
    root.mkdir(parents=True, exist_ok=True)
    for name in ("events.yaml", "emitters.yaml", "states.yaml"):
        shutil.copy(src / name, root / name)
    shutil.copytree(src / "rules", root / "rules")
    (root / "consumers.yaml").write_text(EXAMPLE.read_text("utf-8") if text is None else text, "utf-8")
    return root


@pytest.fixture
def consumers_dir(tmp_path: Path) -> Path:
    return with_consumers(tmp_path / "config")


@pytest.fixture
def consumers_config(consumers_dir: Path) -> Config:
    return load_config(consumers_dir)


# ---------------------------------------------------------------- loading and the hash

def test_action_kinds_are_what_the_scenario_produces():
    assert ACTION_KINDS == ("route", "screen", "reminder")


def test_consumers_load_as_specs(consumers_config: Config):
    assert consumers_config.consumers == {
        "reminder-sender": ConsumerSpec("reminder-sender", "sends the client reminders the scenario decides",
                                        ("reminder",), ("post_webinar_route",)),
        "screen-mirror": ConsumerSpec("screen-mirror",
                                      "mirrors each route change and screen on the client dashboard",
                                      ("route", "screen"), ()),
        "attendance-reporter": ConsumerSpec("attendance-reporter", "", (),
                                            ("client_webinar_attendance_classified", "post_webinar_route")),
    }
    sender = consumers_config.consumers["reminder-sender"]
    assert sender.receives("action.reminder") and sender.receives("post_webinar_route")
    assert not sender.receives("action.route") and not sender.receives("client_webinar_attendance_classified")
    assert consumers_config.problems and all(p.severity == "warning" for p in consumers_config.problems)
    assert not [p for p in consumers_config.problems if "consumers.yaml" in p.file]


def test_consumers_yaml_is_a_config_file(consumers_dir: Path, consumers_config: Config):
    names = [p.relative_to(consumers_dir).as_posix() for p in config_files(consumers_dir)]
    assert names[:4] == ["events.yaml", "emitters.yaml", "states.yaml", "consumers.yaml"]
    assert consumers_dir / "consumers.yaml" in consumers_config.files


def test_without_consumers_yaml_nothing_changes():
    """The default config has no consumers.yaml: no consumer, the file list and hash as before it
    existed (the hash is recomputed here the way loading computed it before consumers.yaml)."""
    root = bundled_config()
    assert not (root / "consumers.yaml").exists()
    config = load_config(root)
    assert config.consumers == {}
    files = [root / n for n in ("events.yaml", "emitters.yaml", "states.yaml")]
    files += sorted(p for p in (root / "rules").iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    assert list(config.files) == files
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    assert config.hash == digest.hexdigest()


def test_consumers_yaml_is_in_the_hash(tmp_path: Path):
    default = load_config(bundled_config()).hash
    first = load_config(with_consumers(tmp_path / "a")).hash
    assert first != default
    assert load_config(with_consumers(tmp_path / "b")).hash == first  # same files, same hash
    changed = EXAMPLE.read_text("utf-8").replace("actions: [reminder]", "actions: [reminder, screen]")
    assert load_config(with_consumers(tmp_path / "c", changed)).hash not in (first, default)
    (tmp_path / "c" / "consumers.yaml").unlink()
    assert load_config(tmp_path / "c").hash == default


def test_config_without_consumers_constructs_as_before(consumers_config: Config):
    """Config built by hand (other engineers' tests do) needs no consumers argument."""
    c = consumers_config
    bare = Config(root=c.root, hash=c.hash, events=c.events, emitters=c.emitters, rules=c.rules, route=c.route,
                  evaluation_result=c.evaluation_result)
    assert bare.consumers == {}


def test_consumer_names_are_not_config_keys(tmp_path: Path):
    """A consumer named like a time or callback key is a name, not time logic."""
    root = with_consumers(tmp_path / "config", "consumers:\n  timer:\n    receives: {actions: [reminder]}\n")
    assert set(load_config(root).consumers) == {"timer"}


def test_consumers_yaml_obeys_the_file_limits(tmp_path: Path):
    root = with_consumers(tmp_path / "config", "consumers: {}\n#" + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert [(p.code, Path(p.file).name, p.line) for p in info.value.errors] == \
        [("config_too_large", "consumers.yaml", 1)]


def test_consumers_yaml_is_yaml_1_2_core(tmp_path: Path):
    root = with_consumers(tmp_path / "config",
                          "consumers:\n  a: {receives: {actions: [reminder]}}\n  a: {receives: {}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert [(p.code, p.line) for p in info.value.errors] == [("duplicate_key", 3)]


def test_a_config_with_consumers_is_found_like_any(consumers_dir: Path, run_cli):
    out = run_cli("validate", "--config", str(consumers_dir))
    assert out.exit_code == 0, out.stderr
    assert "consumers.yaml" not in out.stderr


# ---------------------------------------------------------------- docs

def _section(markdown: str, heading: str) -> str:
    start = markdown.index(heading + "\n") + len(heading) + 1
    rest = markdown[start:]
    nxt = [i for i in (rest.find("\n## "), rest.find("\n### ")) if i >= 0]
    return rest[:min(nxt)] if nxt else rest


def _rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines[2:]]


def test_docs_list_each_consumer_and_what_it_receives(consumers_config: Config, consumers_dir: Path, run_cli):
    out = run_cli("docs", "--config", str(consumers_dir))
    assert out.exit_code == 0, out.stderr
    markdown = out.stdout
    assert "3 consumers." in markdown and "[Consumers](#consumers)" in markdown
    assert markdown.index("## Route") < markdown.index("## Consumers") < markdown.index("## Spec boundaries")
    consumers = _section(markdown, "## Consumers")
    assert "Route Consumer applies route and screen actions inside the engine" in consumers
    assert _rows(consumers) == [
        ["`reminder-sender`", "`reminder`", "`post_webinar_route`", "sends the client reminders the scenario decides"],
        ["`screen-mirror`", "`route`, `screen`", "—", "mirrors each route change and screen on the client dashboard"],
        ["`attendance-reporter`", "—", "`client_webinar_attendance_classified`, `post_webinar_route`", "—"],
    ]
    items = {row[0]: row[2] for row in _rows(_section(markdown, "### Outbox items and who receives them"))}
    assert items == {
        "`client_webinar_attendance_classified`": "`attendance-reporter`",
        "`post_webinar_route`": "`reminder-sender`, `attendance-reporter`",
        "`action.route`": "`screen-mirror`",
        "`action.screen`": "`screen-mirror`",
        "`action.reminder`": "`reminder-sender`",
    }
    boundaries = _section(markdown, "## Spec boundaries")
    assert "(`route_consumer_clash`)" in boundaries and "(`not_in_outbox`)" in boundaries


def test_docs_without_consumers_have_no_consumers_section(run_cli):
    markdown = run_cli("docs").stdout
    assert "## Consumers" not in markdown and "consumer" not in _section(markdown, "## Spec boundaries").lower()


# ---------------------------------------------------------------- graph

def test_mermaid_notes_the_consumers_beside_the_route(consumers_dir: Path, run_cli):
    plain = run_cli("graph").stdout
    out = run_cli("graph", "--config", str(consumers_dir))
    assert out.exit_code == 0, out.stderr
    assert out.stdout.startswith(plain.rstrip("\n") + "\n")  # the route diagram itself is unchanged
    assert out.stdout[len(plain):].splitlines() == [
        "",
        "  note right of new",
        "    Outbox consumers",
        "    reminder-sender: action.reminder, post_webinar_route",
        "    screen-mirror: action.route, action.screen",
        "    attendance-reporter: client_webinar_attendance_classified, post_webinar_route",
        "  end note",
    ]


def test_dot_draws_the_consumers_in_a_cluster(consumers_dir: Path, run_cli):
    out = run_cli("graph", "--config", str(consumers_dir), "--format", "dot")
    assert out.exit_code == 0, out.stderr
    assert "subgraph cluster___consumers__ {" in out.stdout
    assert 'label="Outbox consumers" style=dashed' in out.stdout
    assert '"consumer:reminder-sender" [label="reminder-sender: action.reminder, post_webinar_route" shape=note]' \
        in out.stdout
    assert "consumer" not in run_cli("graph", "--format", "dot").stdout
    if shutil.which("dot"):
        import subprocess
        drawn = subprocess.run(["dot", "-Tsvg"], input=out.stdout.encode(), capture_output=True, check=True)
        assert b"reminder&#45;sender: action.reminder, post_webinar_route" in drawn.stdout


# ---------------------------------------------------------------- AsyncAPI

def _asyncapi(run_cli, config: Path) -> dict:
    out = run_cli("schema", "--config", str(config), "--format", "asyncapi")
    assert out.exit_code == 0, out.stderr
    return json.loads(out.stdout)


def test_asyncapi_with_consumers_validates_against_the_official_schema(consumers_dir: Path, run_cli):
    from test_schema_diff import asyncapi_errors

    assert asyncapi_errors(_asyncapi(run_cli, consumers_dir)) == []


def test_asyncapi_has_each_consumers_subscription(consumers_config: Config, consumers_dir: Path, run_cli):
    document = _asyncapi(run_cli, consumers_dir)
    outbox = document["channels"]["outbox"]
    assert outbox["address"] == "/v1/feed/{consumer}"
    assert outbox["parameters"]["consumer"]["enum"] == ["reminder-sender", "screen-mirror", "attendance-reporter"]
    types = ["client_webinar_attendance_classified", "post_webinar_route", "action.route", "action.screen",
             "action.reminder"]
    assert list(outbox["messages"]) == [f"outbox.{t}" for t in types]
    messages = document["components"]["messages"]
    assert [messages[f"outbox.{t}"]["name"] for t in types] == types
    receives = {op["x-consumer"]: [m["$ref"].rsplit("/", 1)[1] for m in op["messages"]]
                for op in document["operations"].values() if op["action"] == "receive"}
    assert receives == {
        "reminder-sender": ["outbox.post_webinar_route", "outbox.action.reminder"],
        "screen-mirror": ["outbox.action.route", "outbox.action.screen"],
        "attendance-reporter": ["outbox.client_webinar_attendance_classified", "outbox.post_webinar_route"],
    }
    op = document["operations"]["reminder-sender.receive"]
    assert op["channel"] == {"$ref": "#/channels/outbox"}
    assert op["description"] == "sends the client reminders the scenario decides"
    assert document["x-consumers"]["screen-mirror"]["actions"] == ["route", "screen"]
    assert messages["outbox.action.reminder"]["x-consumers"] == ["reminder-sender"]
    # the contract itself is as without consumers
    plain = _asyncapi(run_cli, bundled_config())
    assert {k: v for k, v in document["channels"].items() if k != "outbox"} == plain["channels"]
    assert {k: v for k, v in document["operations"].items() if op_is_send(v)} == plain["operations"]
    assert "outbox" not in plain["channels"] and "x-consumers" not in plain


def op_is_send(op: dict) -> bool:
    return op["action"] == "send"


def test_asyncapi_outbox_messages_describe_what_process_reports(consumers_config: Config, tmp_path: Path):
    """Items built the way docs/consuming.md says (an emitted event plus subject and time; an action as a
    CloudEvent `action.<kind>` from `scenario` with the action as data) from a real `process`
    result validate against the exported message payloads."""
    from jsonschema import Draft202012Validator

    from conftest import completed, entered
    from engine import Engine
    from engine.governance.export import asyncapi

    messages = asyncapi(consumers_config)["components"]["messages"]
    engine = Engine.open(config=consumers_config, db=tmp_path / "t.db")
    try:
        results = [engine.process(entered("l1", "w1")), engine.process(completed("l1", "w1"))]
    finally:
        engine.close()
    items = []
    for result in results:
        assert result["status"] == "accepted", result
        for event in result["emitted"]:
            items.append({**event, "subject": "l1/w1", "time": "2026-02-01T19:00:01Z"})
        for i, action in enumerate(result["actions"]):
            items.append({"specversion": "1.0", "id": f"a{i}", "source": "scenario",
                          "type": f"action.{action['type']}", "subject": "l1/w1", "time": "2026-02-01T19:00:01Z",
                          "datacontenttype": "application/json", "data": action})
    assert {item["type"] for item in items} == set(consumers_config.outbox_types())
    for item in items:
        payload = messages[f"outbox.{item['type']}"]["payload"]
        schema = payload.get("schema", payload)
        errors = [e.message for e in Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
                  .iter_errors(item)]
        assert errors == [], (item["type"], errors)
        without_subject = {k: v for k, v in item.items() if k != "subject"}
        assert list(Draft202012Validator(schema).iter_errors(without_subject)), item["type"]


# ---------------------------------------------------------------- diff (through the API; the CLI cases are in diff_cases.yaml)

def test_diff_names_the_consumer_that_breaks(tmp_path: Path):
    from engine.governance.compat import diff, violates

    old = load_config(with_consumers(tmp_path / "old"))
    new = load_config(with_consumers(tmp_path / "new", EXAMPLE.read_text("utf-8").replace(
        "      actions: [route, screen]\n", "      actions: [route]\n")))
    changes = diff(old, new)
    assert [(c.kind, c.where, c.detail, c.breaking_for) for c in changes] == [
        ("consumer_narrowed", "consumer screen-mirror", "screen-mirror no longer receives action.screen",
         ("consumers",))]
    assert violates(changes, "forward") and violates(changes, "full") and not violates(changes, "backward")
    back = diff(new, old)
    assert [(c.kind, c.breaking_for) for c in back] == [("consumer_widened", ())]
    assert not violates(back, "full")
