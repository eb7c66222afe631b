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
    assert f"{keys}:2:1: error invalid_keys_file:" in done.stderr and "internal" in done.stderr  # the emitter's line


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_each_problem_of_a_keys_file_points_at_its_line(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.a]\nemitter = "nope"\nsecrets = ["{SECRET}"]\n\n[keys."b"]\nemitter = "{TRACKER}"\n'
                    f'secrets = ["{SECRET}"]\n  colour = "red"\nrate = -1\n\n[consumers.crm]\nurl = "ftp://x"\n')
    keys.chmod(0o600)
    done = run_cli("validate", "--keys", str(keys), "--format", "json")
    assert done.exit_code == 1
    found = [(p["line"], p["column"], p["message"].split(":")[0]) for p in json.loads(done.stdout)["problems"]
             if p["code"] == "invalid_keys_file"]
    # a problem of a field is on that field's line; one of the table, or of a field it lacks, on its header
    assert [(line, column) for line, column, _ in found] == [(2, 1), (8, 3), (9, 1), (11, 1), (11, 1), (12, 1)]
    assert [table for _, _, table in found] == ["[keys.a]", "[keys.b]", "[keys.b]", *["[consumers.crm]"] * 3]


def test_invalid_toml_points_where_the_parser_stopped(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.a]\nemitter = "{TRACKER}"\nemitter = "again"\n')
    keys.chmod(0o600)
    done = run_cli("validate", "--keys", str(keys))
    assert done.exit_code == 1 and f"{keys}:3:18: error invalid_keys_file: not valid TOML" in done.stderr


def test_a_secret_pasted_into_the_wrong_field_is_never_printed(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys.a]\nemitter = "{SECRET}"\nsecrets = ["{SECRET}"]\n"{SECRET}" = 1\n')
    keys.chmod(0o600)
    for args in (("validate", "--keys", str(keys)), ("keys", "list", "--keys", str(keys)),
                 ("keys", "list", "--keys", str(keys), "--format", "text")):
        done = run_cli(*args)
        assert SECRET[6:] not in done.output, args
        assert "whsec_… (not shown)" in done.output, args



def test_keys_file_errors_come_before_the_configs_warnings(run_cli, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text("a = 1\n\nb = = 2\n")
    keys.chmod(0o600)
    done = run_cli("validate", "--keys", str(keys))
    assert done.exit_code == 1
    lines = [line for line in done.stderr.splitlines() if ": error " in line or ": warning " in line]
    severities = [" error " if ": error " in line else " warning " for line in lines]
    assert severities[0] == " error " and severities == sorted(severities)  # " error " < " warning "
    report = json.loads(run_cli("validate", "--keys", str(keys), "--format", "json").stdout)
    assert report["problems"][0]["severity"] == "error" and report["problems"][-1]["severity"] == "warning"
    assert report["events"]["client_webinar_registered"] == "planned"  # the config itself loaded
    assert report["events"]["client_webinar_completed"] == "implemented"
