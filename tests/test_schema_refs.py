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

from conftest import TRACKER, envelope
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
