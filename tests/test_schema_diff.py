"""`webinar-flows schema` and `webinar-flows diff`, through the CLI.

schema: every event gets a JSON Schema file holding its payload, and the AsyncAPI document
validates against the official AsyncAPI 3.0 JSON Schema (vendored under tests/vendor/asyncapi,
checked offline) and names every event, emitter and status.

diff: tests/data/diff_cases.yaml lists one config change per case with the exact changes it
must produce and the exit code in each compatibility mode; the tests below the table cover
the output formats and the failures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

from conftest import TRACKER, envelope, jsonl, result_lines
from engine import load_config
from engine.governance.compat import MODES
from engine.config.locate import bundled_config
from test_validate import apply_edits

HERE = Path(__file__).resolve().parent
CASES: list[dict[str, Any]] = yaml.safe_load((HERE / "data" / "diff_cases.yaml").read_text("utf-8"))["cases"]
ASYNCAPI_SCHEMA = HERE / "vendor" / "asyncapi" / "3.0.0.json"


# ------------------------------------------------------------------------------------ helpers

def config_dir(target: Path, edits: list[dict[str, Any]] | None = None) -> Path:
    """A copy of the default config in `target`, with the edits applied."""
    src = bundled_config()
    target.mkdir(parents=True)
    for name in ("events.yaml", "emitters.yaml", "states.yaml"):
        shutil.copy(src / name, target / name)
    shutil.copytree(src / "rules", target / "rules")
    apply_edits(target, edits or [])
    load_config(target)  # every case config must be valid
    return target


def flat(items: list[Any]) -> list[Any]:
    """A list with nested lists (YAML aliases of shared parts) spliced in."""
    return [x for item in items for x in (item if isinstance(item, list) else [item])]


def offline(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # nothing is fetched: every schema must be in the vendored file


def asyncapi_validator() -> Draft7Validator:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text("utf-8"))
    registry: Registry = Registry(retrieve=offline)  # type: ignore[call-arg]
    registry = registry.with_resource(schema["$id"], DRAFT7.create_resource(schema)).crawl()
    return Draft7Validator(schema, registry=registry)


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in asyncapi_validator().iter_errors(document)]


# ------------------------------------------------------------------------------------ schema

def test_schema_files_one_per_event_with_its_payload(run_cli, tmp_path: Path) -> None:
    out = run_cli("schema", "--output-dir", "schemas")
    assert out.exit_code == 0, out.stderr
    config = load_config(bundled_config())
    files = sorted(p.name for p in (tmp_path / "schemas").iterdir())
    assert files == sorted(f"{name}.schema.json" for name in config.events)
    for name, spec in config.events.items():
        schema = json.loads((tmp_path / "schemas" / f"{name}.schema.json").read_text("utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"{name}.schema.json"
        assert (schema["title"], schema["description"], schema["x-status"]) == (name, spec.description, spec.status)
        assert schema["x-identity"] == list(spec.identity)
        assert schema["properties"]["type"]["const"] == name
        data = schema["properties"]["data"]
        assert {k: v for k, v in data.items() if k != "description"} == spec.payload
        assert data["required"] == spec.payload["required"]


def test_schema_file_validates_the_envelope_the_engine_accepts(run_cli, tmp_path: Path) -> None:
    run_cli("schema", "--output-dir", "schemas", "--base-uri", "https://example.com/events/")
    schema = json.loads((tmp_path / "schemas" / "client_webinar_completed.schema.json").read_text("utf-8"))
    assert schema["$id"] == "https://example.com/events/client_webinar_completed.schema.json"
    assert schema["x-emitters"] == {TRACKER: "implemented"}
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    event = envelope("client_webinar_completed", {"lead_id": "l1", "webinar_id": "w1", "webinar_type": "live",
                                                  "session_id": "s1", "completed_at": "2026-02-01T19:00:00Z"})
    assert list(validator.iter_errors(event)) == []
    processed = result_lines(run_cli("process", input=jsonl(event)).stdout)
    assert processed[0]["status"] == "accepted"
    wrong = {**event, "type": "client_webinar_entered", "data": {**event["data"], "webinar_type": "hybrid"}}
    assert {e.json_path for e in validator.iter_errors(wrong)} == {"$.type", "$.data.webinar_type"}


def test_schema_without_output_dir_prints_every_schema(run_cli) -> None:
    out = run_cli("schema")
    assert out.exit_code == 0
    assert set(json.loads(out.stdout)) == set(load_config(bundled_config()).events)


def test_schema_expands_refs_into_a_standalone_schema(run_cli, config_copy: Path, tmp_path: Path) -> None:
    (config_copy / "schemas").mkdir()
    (config_copy / "schemas" / "form.yaml").write_text("type: object\nminProperties: 1\n", "utf-8")
    events = config_copy / "events.yaml"
    events.write_text(events.read_text("utf-8").replace(
        "form_payload: {type: object,", "form_payload: {$ref: 'schemas/form.yaml',"), "utf-8")
    out = run_cli("schema", "--config", str(config_copy), "--output-dir", "out")
    assert out.exit_code == 0, out.stderr
    schema = json.loads((tmp_path / "out" / "client_webinar_form_submitted.schema.json").read_text("utf-8"))
    form = schema["properties"]["data"]["properties"]["form_payload"]
    assert form == {"description": "The answers; their structure is defined by the form.",
                    "type": "object", "minProperties": 1}
    assert "$ref" not in json.dumps(schema)


def test_asyncapi_validates_against_the_official_schema(run_cli) -> None:
    out = run_cli("schema", "--format", "asyncapi")
    assert out.exit_code == 0, out.stderr
    document = json.loads(out.stdout)
    assert asyncapi_errors(document) == []


@pytest.mark.parametrize("breakage", ["no_asyncapi", "wrong_version", "bad_action", "bad_payload", "stray_key"])
def test_asyncapi_validation_catches_a_broken_document(run_cli, breakage: str) -> None:
    document = json.loads(run_cli("schema", "--format", "asyncapi").stdout)
    operation = next(iter(document["operations"].values()))
    message = next(iter(document["components"]["messages"].values()))
    if breakage == "no_asyncapi":
        del document["asyncapi"]
    elif breakage == "wrong_version":
        document["asyncapi"] = "2.6.0"
    elif breakage == "bad_action":
        operation["action"] = "emit"
    elif breakage == "bad_payload":
        message["payload"]["properties"]["data"]["type"] = "record"
    else:
        document["channels"]["unexpected"] = {"address": "x", "flavour": "strawberry"}
    assert asyncapi_errors(document) != []


def test_asyncapi_lists_every_event_emitter_and_status(run_cli) -> None:
    document = json.loads(run_cli("schema", "--format", "asyncapi").stdout)
    config = load_config(bundled_config())
    assert set(document["channels"]) == set(config.events) == set(document["components"]["messages"])
    for name, spec in config.events.items():
        message = document["components"]["messages"][name]
        assert document["channels"][name]["address"] == name
        assert message["x-status"] == spec.status
        assert {"name": f"status:{spec.status}"}.items() <= message["tags"][0].items()
        assert message["payload"]["properties"]["data"]["required"] == spec.payload["required"]
    assert set(document["x-emitters"]) == set(config.emitters)
    sends = {(op["x-emitter"], op["channel"]["$ref"], op["x-internal"], op["x-status"])
             for op in document["operations"].values()}
    assert sends == {(e.name, f"#/channels/{event}", e.internal, status)
                     for e in config.emitters.values() for event, status in e.events.items()}
    assert all(op["action"] == "send" for op in document["operations"].values())
    internal = [op for op in document["operations"].values() if op["x-internal"]]
    assert internal and all({"name": "internal"} in op["tags"] for op in internal)


def test_asyncapi_yaml_to_a_file(run_cli, tmp_path: Path) -> None:
    out = run_cli("schema", "--format", "asyncapi", "--output", "contract.yaml")
    assert out.exit_code == 0 and out.stdout == ""
    text = (tmp_path / "contract.yaml").read_text("utf-8")
    assert text.startswith("asyncapi: 3.0.0\n")
    document = yaml.safe_load(text)
    assert document == json.loads(run_cli("schema", "--format", "asyncapi").stdout)
    assert asyncapi_errors(document) == []


def test_asyncapi_declares_later_json_schema_keywords(run_cli, config_copy: Path) -> None:
    events = config_copy / "events.yaml"
    events.write_text(events.read_text("utf-8").replace(
        "form_payload: {type: object,", "form_payload: {type: object, dependentRequired: {a: [b]},"), "utf-8")
    document = json.loads(run_cli("schema", "--config", str(config_copy), "--format", "asyncapi").stdout)
    payload = document["components"]["messages"]["client_webinar_form_submitted"]["payload"]
    assert payload["schemaFormat"] == "application/schema+json;version=2020-12"
    assert "schemaFormat" not in document["components"]["messages"]["client_webinar_completed"]["payload"]
    assert asyncapi_errors(document) == []


def test_schema_usage_and_invalid_config(run_cli, config_copy: Path) -> None:
    assert run_cli("schema", "--format", "asyncapi", "--output-dir", "x").exit_code == 2
    assert run_cli("schema", "--title", "T").exit_code == 2  # asyncapi only: not silently ignored
    assert run_cli("schema", "--format", "asyncapi", "--base-uri", "https://x/").exit_code == 2
    assert '"title": "T"' in run_cli("schema", "--format", "asyncapi", "--title", "T").stdout
    (config_copy / "states.yaml").write_text("key: [lead_id]\n", "utf-8")
    out = run_cli("schema", "--config", str(config_copy))
    assert out.exit_code == 1
    assert "is invalid" in out.stderr and out.stdout == ""


# ------------------------------------------------------------------------------------ diff

def _db(tmp_path: Path, run_cli, config: Path, events: list[dict[str, Any]]) -> Path:
    db = tmp_path / "routes.db"
    lines = [envelope(e["type"], e["data"], source=e.get("source", TRACKER)) for e in events]
    out = run_cli("process", "--config", str(config), "--db", str(db), input=jsonl(*lines))
    assert [r["status"] for r in result_lines(out.stdout)] == ["accepted"] * len(lines)
    return db


@pytest.fixture
def case_pair(request: pytest.FixtureRequest, tmp_path: Path, run_cli) -> tuple[list[str], dict[str, Any]]:
    case = request.param
    old = config_dir(tmp_path / "old", case.get("old_edit"))
    new = config_dir(tmp_path / "new", case.get("edit"))
    args = [str(old), str(new)]
    if "db" in case:
        args += ["--db", str(_db(tmp_path, run_cli, old, case["db"]))]
    return args, case


@pytest.mark.parametrize("case_pair", CASES, ids=[c["id"] for c in CASES], indirect=True)
@pytest.mark.parametrize("mode", list(MODES))
def test_diff_case(run_cli, case_pair: tuple[list[str], dict[str, Any]], mode: str) -> None:
    args, case = case_pair
    out = run_cli("diff", *args, "--mode", mode, "--format", "json")
    changes = json.loads(out.stdout)
    expected = flat(case["changes"])
    assert sorted((c["kind"], c["where"], c["breaking_for"]) for c in changes) == \
        sorted((e["kind"], e["where"], e["breaking_for"]) for e in expected)
    for want in expected:
        if "detail_contains" in want:
            got = next(c for c in changes if (c["kind"], c["where"]) == (want["kind"], want["where"]))
            assert want["detail_contains"] in got["detail"]
    for change in changes:
        assert change["breaking_in_mode"] == bool(MODES[mode] & set(change["breaking_for"]))
    assert out.exit_code == case["exit"][mode], out.stdout + out.stderr


@pytest.mark.parametrize("case_pair", [c for c in CASES if c["id"] in ("identical", "optional_field_added",
                                                                       "emitter_permission_removed")],
                         ids=lambda c: c["id"], indirect=True)
def test_diff_text_matches_json(run_cli, case_pair: tuple[list[str], dict[str, Any]]) -> None:
    args, case = case_pair
    changes = json.loads(run_cli("diff", *args, "--format", "json").stdout)
    out = run_cli("diff", *args)
    lines = out.stdout.splitlines()
    assert len(lines) == len(changes) + 1
    for line, change in zip(lines, changes, strict=False):
        verdict = "BREAKING" if change["breaking_in_mode"] else "SAFE"
        assert line.startswith(f"{verdict:<8}  {change['kind']}  {change['where']}: {change['detail']}")
        if change["breaking_for"]:
            assert f"[breaks {', '.join(change['breaking_for'])}" in line
    verdict = "violated" if case["exit"]["backward"] else "kept"
    assert lines[-1].endswith(f"backward compatibility: {verdict}")
    assert out.exit_code == case["exit"]["backward"]


def test_diff_identical_configs(run_cli) -> None:
    default = str(bundled_config())
    out = run_cli("diff", default, default, "--mode", "full")
    assert (out.exit_code, out.stdout) == (0, "no changes; full compatibility: kept\n")


def test_diff_new_defaults_to_the_config_in_force(run_cli, config_copy: Path, tmp_path: Path) -> None:
    old = config_dir(tmp_path / "old", [{"file": "emitters.yaml",
                                         "replace": {"old": "      client_webinar_form_submitted: planned\n",
                                                     "new": ""}}])
    out = run_cli("diff", str(old), "--config", str(config_copy), "--format", "json")
    assert [c["kind"] for c in json.loads(out.stdout)] == ["emitter_permission_added"]
    assert run_cli("diff", str(old), str(config_copy), "--config", str(config_copy)).exit_code == 2


def test_diff_refuses_an_invalid_config(run_cli, config_copy: Path) -> None:
    (config_copy / "states.yaml").write_text("key: [lead_id]\n", "utf-8")
    out = run_cli("diff", str(bundled_config()), str(config_copy))
    assert out.exit_code == 1
    assert "error: the NEW config in" in out.stderr and "missing_key" in out.stderr


def test_diff_with_a_missing_database_fails(run_cli, tmp_path: Path) -> None:
    default = str(bundled_config())
    out = run_cli("diff", default, default, "--db", str(tmp_path / "nowhere.db"))
    assert out.exit_code == 1
    assert "no such database" in out.stderr
    assert not (tmp_path / "nowhere.db").exists()


def test_diff_follows_a_change_inside_a_referenced_file(run_cli, tmp_path: Path) -> None:
    ref = {"file": "events.yaml", "replace": {"old": "form_payload: {type: object,",
                                              "new": "form_payload: {$ref: 'form.json',"}}
    old = config_dir(tmp_path / "old", [{"file": "form.json", "write": '{"type": "object"}'}, ref])
    new = config_dir(tmp_path / "new", [{"file": "form.json", "write": '{"type": "object", "required": ["q1"]}'},
                                        ref])
    changes = json.loads(run_cli("diff", str(old), str(new), "--format", "json").stdout)
    assert [(c["kind"], c["where"]) for c in changes] == [
        ("field_made_required", "event client_webinar_form_submitted.form_payload.q1")]
