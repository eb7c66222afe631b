"""`validate --keys FILE`: the keys file `serve` would use, checked against the config."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TRACKER


def _new_key(run_cli, keys: Path) -> None:
    made = run_cli("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(keys))
    assert made.exit_code == 0, made.output


def test_a_good_keys_file_validates(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    _new_key(run_cli, keys)
    done = run_cli("validate", "--keys", str(keys))
    assert done.exit_code == 0 and ": valid (" in done.stdout


def test_a_keys_file_others_may_read_fails_validation_naming_the_file(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    _new_key(run_cli, keys)
    keys.chmod(0o644)
    done = run_cli("validate", "--keys", str(keys), "--format", "json")
    assert done.exit_code == 1
    report = json.loads(done.stdout)
    assert report["valid"] is False and report["errors"] == 1
    (problem,) = [p for p in report["problems"] if p["severity"] == "error"]
    assert (problem["file"], problem["code"]) == (str(keys), "invalid_keys_file")
    assert "chmod 600" in problem["message"]


def test_a_key_for_an_internal_emitter_fails_validation(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.k1]\nemitter = "attendance-classifier"\nsecrets = ["whsec_'
                    'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\n')
    keys.chmod(0o600)
    done = run_cli("validate", "--keys", str(keys))
    assert done.exit_code == 1
    assert f"{keys}:1:1: error invalid_keys_file:" in done.stderr and "internal" in done.stderr
