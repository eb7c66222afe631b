"""`webinar-flows keys new|rotate|retire|list` through the CLI: the file they write is one that
`serve` accepts (mode 0600, well-formed secrets), rotation keeps the newest old secret only,
`list` never prints a secret, and a write keeps every other table of the file."""

from __future__ import annotations

import base64
import json
import os
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from engine import load_config

TRACKER = "client-webinar-tracker-v2"
INTERNAL = "attendance-classifier"


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEBINAR_FLOWS_KEYS", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _secret_ok(text: str) -> bool:
    if not text.startswith("whsec_"):
        return False
    return len(base64.b64decode(text[len("whsec_"):], validate=True)) == 32


def _doc(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_new_creates_the_file_0600_and_prints_the_secret_once(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    result = run("keys", "new", "site-17", "--emitter", TRACKER, "--keys", str(path))
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert _secret_ok(secret) and result.stdout.count("whsec_") == 1
    assert secret not in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _doc(path)["keys"]["site-17"] == {"emitter": TRACKER, "secrets": [secret]}
    # what serve will read: the server's own checks find nothing to refuse
    from service.keys import check_keys, load_keys

    config = load_config(Path(__file__).resolve().parents[1])
    assert check_keys(path, config) == []
    assert load_keys(path, config).keys["site-17"].secrets == (base64.b64decode(secret[6:]),)
    # no leftover temporary file beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.toml"]


def test_new_with_flags_and_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    result = run("keys", "new", "site-1", "--emitter", TRACKER, "--batch", "--rate", "50",
                 env={"WEBINAR_FLOWS_KEYS": str(path)})
    assert result.exit_code == 0, result.output
    assert _doc(path)["keys"]["site-1"]["batch"] is True and _doc(path)["keys"]["site-1"]["rate"] == 50
    creds = tmp_path / "creds"
    creds.mkdir()
    result = run("keys", "new", "site-2", "--emitter", TRACKER, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert result.exit_code == 0, result.output
    assert "site-2" in _doc(creds / "keys.toml")["keys"]


def test_new_without_any_keys_file_says_where_to_name_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("keys", "new", "site-1", "--emitter", TRACKER)
    assert result.exit_code == 1
    assert "--keys FILE" in result.stderr and "WEBINAR_FLOWS_KEYS" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("emitter", "message"), [("nobody", "unknown emitter 'nobody'"),
                                                  (INTERNAL, "is internal")])
def test_new_refuses_an_unknown_or_internal_emitter(tmp_path: Path, emitter: str, message: str) -> None:
    path = tmp_path / "keys.toml"
    result = run("keys", "new", "site-1", "--emitter", emitter, "--keys", str(path))
    assert result.exit_code == 1 and message in result.stderr and TRACKER in result.stderr
    assert "whsec_" not in result.stdout and not path.exists()


def test_new_refuses_an_existing_id_and_a_bad_id(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    assert run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path)).exit_code == 0
    before = path.read_bytes()
    result = run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path))
    assert result.exit_code == 1 and "exists" in result.stderr and "whsec_" not in result.stdout
    assert path.read_bytes() == before
    result = run("keys", "new", "a.b/c", "--emitter", TRACKER, "--keys", str(path))
    assert result.exit_code == 1 and "bad key id" in result.stderr
    assert path.read_bytes() == before


def test_rotate_puts_the_new_secret_first_and_keeps_only_the_newest_old(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    first = run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path)).stdout.strip()
    second = run("keys", "rotate", "site-1", "--keys", str(path))
    assert second.exit_code == 0, second.output
    second_secret = second.stdout.strip()
    assert _secret_ok(second_secret) and second_secret != first
    assert _doc(path)["keys"]["site-1"]["secrets"] == [second_secret, first]
    third_secret = run("keys", "rotate", "site-1", "--keys", str(path)).stdout.strip()
    assert _doc(path)["keys"]["site-1"]["secrets"] == [third_secret, second_secret]
    assert len({first, second_secret, third_secret}) == 3
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    retired = run("keys", "retire", "site-1", "--keys", str(path))
    assert retired.exit_code == 0 and "whsec_" not in retired.output
    assert _doc(path)["keys"]["site-1"]["secrets"] == [third_secret]


def test_rotate_an_unknown_key_or_a_missing_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    result = run("keys", "rotate", "site-1", "--keys", str(path))
    assert result.exit_code == 1 and "no such keys file" in result.stderr and not path.exists()
    run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path))
    result = run("keys", "rotate", "site-9", "--keys", str(path))
    assert result.exit_code == 1 and "no key 'site-9'" in result.stderr and "whsec_" not in result.output


def test_list_shows_ids_emitters_and_flags_never_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    secrets = [run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path)).stdout.strip(),
               run("keys", "new", "site-2", "--emitter", TRACKER, "--batch", "--rate", "20",
                   "--keys", str(path)).stdout.strip()]
    secrets.append(run("keys", "rotate", "site-1", "--keys", str(path)).stdout.strip())
    result = run("keys", "list", "--keys", str(path))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == [{"id": "site-1", "emitter": TRACKER, "batch": False, "rate": 100, "secrets": 2},
                    {"id": "site-2", "emitter": TRACKER, "batch": True, "rate": 20, "secrets": 1}]
    text = run("keys", "list", "--keys", str(path), "--format", "text")
    assert text.exit_code == 0 and "site-2" in text.stdout and "yes" in text.stdout
    for output in (result.output, text.output):
        assert "whsec_" not in output
        for secret in secrets:
            assert secret not in output and secret[6:20] not in output


SHORT = "whsec_" + base64.b64encode(b"x" * 23).decode()  # decodes to 23 bytes: malformed


def test_list_shows_what_serve_would_not_accept_as_null_and_warns(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[keys.a]\nemitter = "nope"\nsecrets = ["{SHORT}"]\nbatch = "yes"\nrate = "fast"\n')
    path.chmod(0o600)
    result = run("keys", "list", "--keys", str(path))
    assert result.exit_code == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"id": "a", "emitter": "nope", "batch": None, "rate": None, "secrets": 1}]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("unknown emitter 'nope'" in w for w in warnings) and any("batch must be" in w for w in warnings)
    assert any("rate must be" in w for w in warnings) and any("secret 1 is malformed" in w for w in warnings)
    text = run("keys", "list", "--keys", str(path), "--format", "text")
    assert text.stdout.splitlines()[1].split() == ["a", "nope", "?", "?", "1"]


def test_rotate_warns_when_the_secret_it_keeps_is_malformed(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["{SHORT}"]\n')
    path.chmod(0o600)
    result = run("keys", "rotate", "a", "--keys", str(path))
    assert result.exit_code == 0 and _secret_ok(result.stdout.strip())
    assert "warning:" in result.stderr and "secret 2 is malformed" in result.stderr
    assert SHORT[6:] not in result.output


def test_a_write_through_a_symbolic_link_replaces_the_file_it_points_at(tmp_path: Path) -> None:
    real, link = tmp_path / "secrets" / "keys.toml", tmp_path / "keys.toml"
    real.parent.mkdir()
    first = run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(real)).stdout.strip()
    link.symlink_to(real)
    second = run("keys", "rotate", "site-1", "--keys", str(link))
    assert second.exit_code == 0, second.output
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert _doc(real)["keys"]["site-1"]["secrets"] == [second.stdout.strip(), first]
    assert stat.S_IMODE(real.stat().st_mode) == 0o600


def test_a_write_keeps_the_other_tables_and_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path))
    with path.open("a") as handle:
        handle.write('\n[handshake]\norigins = ["wp.example"]\n\n[consumers.crm]\ntokens = ["tok-1"]\n\n'
                     '[console.users.ann]\nhash = "$argon2id$v=19$x"\nrole = "operator"\n')
    before = _doc(path)
    old = path.open("rb")  # held open, so its inode cannot be reused by the new file
    assert run("keys", "new", "site-2", "--emitter", TRACKER, "--keys", str(path)).exit_code == 0
    assert run("keys", "rotate", "site-1", "--keys", str(path)).exit_code == 0
    after = _doc(path)
    for table in ("handshake", "consumers", "console"):
        assert after[table] == before[table]
    assert set(after["keys"]) == {"site-1", "site-2"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with old:  # replaced by a rename, not rewritten in place: the old inode still holds the old text
        assert os.fstat(old.fileno()).st_ino != path.stat().st_ino
        assert tomllib.loads(old.read().decode()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.toml"]


def test_a_broken_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text('[keys.a]\nsecrets = ["whsec_broken\n')
    path.chmod(0o600)
    before = path.read_bytes()
    for args in (("new", "site-1", "--emitter", TRACKER), ("rotate", "a"), ("list",)):
        result = run("keys", *args, "--keys", str(path))
        assert result.exit_code == 1 and "not valid TOML" in result.stderr
        assert "whsec_broken" not in result.output
    assert path.read_bytes() == before


def test_a_group_readable_file_is_rewritten_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    run("keys", "new", "site-1", "--emitter", TRACKER, "--keys", str(path))
    path.chmod(0o644)
    listed = run("keys", "list", "--keys", str(path))
    assert listed.exit_code == 0 and "chmod 600" in listed.stderr
    assert run("keys", "rotate", "site-1", "--keys", str(path)).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keys_help_shows_no_secret() -> None:
    for args in (("keys", "--help"), ("keys", "new", "--help"), ("keys", "rotate", "--help"),
                 ("keys", "list", "--help")):
        result = run(*args)
        assert result.exit_code == 0 and "whsec_" not in result.output


def test_concurrent_new_commands_lose_no_key(tmp_path: Path) -> None:
    """Eight `keys new` processes at once on one file: every key is in it afterwards."""
    import subprocess
    import sys

    cli_path = str(Path(sys.executable).with_name("webinar-flows"))
    path = tmp_path / "keys.toml"
    env = {k: v for k, v in os.environ.items() if k not in ("WEBINAR_FLOWS_KEYS", "CREDENTIALS_DIRECTORY")}
    procs = [subprocess.Popen([cli_path, "keys", "new", f"site-{n}", "--emitter", TRACKER, "--keys", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for n in range(8)]
    secrets = {}
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        secrets[f"site-{n}"] = out.decode().strip()
    document = _doc(path)
    assert {k: v["secrets"] for k, v in document["keys"].items()} == {k: [v] for k, v in secrets.items()}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
