"""Payload `$ref` files belong to the config: read once by loading, hashed, never read again.

Before, the runtime resolved `$ref`s by reading the files while it validated payloads, and
the config hash did not cover them: editing a referenced file changed verdicts while every
row recorded the old hash.
"""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import pytest

from conftest import TRACKER, entered, envelope
from engine import Engine, load_config
from test_hostile_config import copy_default, set_form_payload

SESSION = {"type": "string", "maxLength": 5}


def _completed(session: str) -> dict:
    return envelope("client_webinar_completed", {"lead_id": "l1", "webinar_id": "w1", "webinar_type": "live",
                                                 "session_id": session, "completed_at": "2026-02-01T19:00:00Z"},
                    source=TRACKER)


@pytest.fixture
def config_with_ref(tmp_path: Path) -> Path:
    from test_hostile_config import replace_in_event

    root = copy_default(tmp_path / "config")
    (root / "session.json").write_text(json.dumps(SESSION))
    replace_in_event(root, "client_webinar_completed", r"^        session_id:",
                     "        session_id: {$ref: 'session.json'}\n")
    return root


def test_a_referenced_file_is_part_of_the_config_hash(config_with_ref: Path) -> None:
    before = load_config(config_with_ref).hash
    (config_with_ref / "session.json").write_text(json.dumps({**SESSION, "maxLength": 6}))
    after = load_config(config_with_ref).hash
    assert before != after
    assert load_config(config_with_ref).hash == after


def test_the_config_carries_what_the_reference_resolved_to(config_with_ref: Path) -> None:
    config = load_config(config_with_ref)
    (uri, content), = config.schema_resources
    assert uri.endswith("/session.json") and content == SESSION


def test_processing_reads_no_file_after_loading(config_with_ref: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(config_with_ref)
    (config_with_ref / "session.json").write_text(json.dumps({"type": "integer"}))  # loading saw the old one
    with Engine.open(config=config, db=tmp_path / "r.db") as eng:
        opened: list[str] = []
        real_open, real_io_open = builtins.open, io.open

        def spy(file, *args, **kwargs):  # type: ignore[no-untyped-def]
            opened.append(str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy)
        monkeypatch.setattr(io, "open", spy)
        monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(str(self)) or b"")
        ok, too_long = eng.process_many([_completed("s1"), _completed("s-123456")])
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(io, "open", real_io_open)
    assert ok["status"] == "accepted"
    assert (too_long["reason"], too_long["errors"][0]["path"]) == ("invalid_payload", "/data/session_id")
    assert not [name for name in opened if "config" in name]


def _completed_payload(root: Path) -> dict:
    import yaml

    return yaml.safe_load((root / "events.yaml").read_text())["events"]["client_webinar_completed"]["payload"]


def _set_completed_payload(root: Path, payload: dict) -> None:
    import yaml

    events = yaml.safe_load((root / "events.yaml").read_text())
    events["events"]["client_webinar_completed"]["payload"] = payload
    (root / "events.yaml").write_text(yaml.safe_dump(events, sort_keys=False))


@pytest.mark.parametrize("form", ["a whole $ref", "allOf", "allOf of a $ref"])
def test_fields_declared_through_a_ref_or_allof_are_the_payloads_fields(tmp_path: Path, form: str) -> None:
    """Identity, rules and the route key name payload fields; a payload written as a `$ref` to a
    shared file, or as `allOf` branches, declares the same fields as written inline."""
    root = copy_default(tmp_path / "config")
    inline = _completed_payload(root)
    (root / "shared.json").write_text(json.dumps({"$defs": {"completed": inline}}))
    payload = {"a whole $ref": {"$ref": "shared.json#/$defs/completed"},
               "allOf": {"allOf": [inline]},
               "allOf of a $ref": {"allOf": [{"$ref": "shared.json#/$defs/completed"}]}}[form]
    _set_completed_payload(root, payload)
    config = load_config(root)  # raised unknown_field for lead_id, webinar_id, session_id, ... before
    assert set(config.events["client_webinar_completed"].fields) == set(inline["properties"])
    with Engine.open(config=config, db=tmp_path / "x.db") as eng:
        first = eng.process(_completed("s1"))
        extra = eng.process(envelope("client_webinar_completed", {**_completed("s2")["data"], "other": 1},
                                     source=TRACKER))
    assert first["status"] == "accepted" and first["route"]["state"] == "completed"
    assert [e["type"] for e in first["emitted"]] == ["client_webinar_attendance_classified", "post_webinar_route"]
    assert (extra["status"], extra["reason"]) == ("rejected", "invalid_payload")


def test_a_date_time_identity_field_behind_a_ref_compares_as_an_instant(tmp_path: Path) -> None:
    """entered's identity holds its timestamp; written as a `$ref` to a date-time, the same moment
    in another offset is still the same fact."""
    from test_hostile_config import replace_in_event

    root = copy_default(tmp_path / "config")
    (root / "at.json").write_text(json.dumps({"type": "string", "format": "date-time"}))
    replace_in_event(root, "client_webinar_entered", r"^        timestamp:", "        timestamp: {$ref: 'at.json'}\n")
    config = load_config(root)
    assert config.events["client_webinar_entered"].datetime_fields == {"timestamp"}

    with Engine.open(config=config, db=tmp_path / "x.db") as eng:
        assert eng.process(entered("l1", "w1", ts="2026-02-01T18:00:00Z", id="e1"))["status"] == "accepted"
        again = eng.process(entered("l1", "w1", ts="2026-02-01T19:00:00+01:00", id="e2"))
    assert (again["status"], again["reason"]) == ("duplicate", "same_fact")
