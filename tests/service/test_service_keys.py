"""The keys file checks: what makes `serve` refuse to start, each problem naming the file."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine import bundled_config, load_config
from service.keys import (
    SECRET_PREFIX,
    KeysFileError,
    check_keys,
    find_keys_file,
    load_keys,
    new_secret,
    parse_secret,
)

TRACKER = "client-webinar-tracker-v2"
SECRET = SECRET_PREFIX + base64.b64encode(b"k" * 32).decode()


@pytest.fixture(scope="module")
def config():
    return load_config(bundled_config())


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_valid_file_loads_with_defaults(tmp_path: Path, config) -> None:
    path = _write(tmp_path, f'[keys.site-17]\nemitter = "{TRACKER}"\nsecrets = ["{SECRET}"]\n'
                            '[handshake]\norigins = ["wp.example"]\n[consumers.crm]\ntokens = ["t0ken-abc"]\n'
                            '[console.users.ann]\nhash = "x"\n')
    keys = load_keys(path, config)
    key = keys.keys["site-17"]
    assert (key.emitter, key.secrets, key.batch, key.rate, key.burst) == (TRACKER, (b"k" * 32,), False, 100.0, 200.0)
    assert keys.origins == ("wp.example",) and keys.consumer_tokens == {"crm": ("t0ken-abc",)}
    assert keys.document["console"]["users"]["ann"] == {"hash": "x"}
    assert SECRET not in repr(keys) and "kkkk" not in repr(keys)


@pytest.mark.parametrize(("text", "mode", "expected"), [
    (f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["{SECRET}"]\n', 0o644, "mode 0644"),
    ('[keys.a\nemitter = "x"', 0o600, "not valid TOML"),
    (f'[keys.a]\nemitter = "nobody"\nsecrets = ["{SECRET}"]\n', 0o600, "unknown emitter 'nobody'"),
    (f'[keys.a]\nemitter = "attendance-classifier"\nsecrets = ["{SECRET}"]\n', 0o600, "is internal"),
    (f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["whsec_c2hvcnQ="]\n', 0o600, "secret 1 is malformed"),
    (f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["nope_{SECRET}"]\n', 0o600, "secret 1 is malformed"),
    (f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["{SECRET}", "{SECRET}", "{SECRET}"]\n', 0o600, "1 or 2"),
    (f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["{SECRET}"]\nrate = 0\n', 0o600, "rate must be"),
    (f'[keys.a]\nemitter = "{TRACKER}"\nsecrets = ["{SECRET}"]\nbatch = "yes"\n', 0o600, "batch must be"),
    ("[handshake]\n", 0o600, "no [keys.ID] table"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_problem(tmp_path: Path, config, text, mode, expected) -> None:
    path = _write(tmp_path, text, mode)
    with pytest.raises(KeysFileError) as caught:
        load_keys(path, config)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    assert SECRET not in str(caught.value)


def test_check_keys_lists_every_problem(tmp_path: Path, config) -> None:
    path = _write(tmp_path, '[keys.a]\nemitter = "nobody"\nsecrets = ["bad"]\n[keys.b]\nsecrets = []\n', 0o640)
    problems = check_keys(path, config)
    assert len(problems) == 5 and all(p.startswith(f"{path}: ") for p in problems)


def test_a_missing_file_says_how_to_create_one(tmp_path: Path, config) -> None:
    (problem,) = check_keys(tmp_path / "none.toml", config)
    assert "webinar-flows keys new ID --emitter NAME" in problem


def test_the_file_is_found_by_option_then_environment_then_credentials(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WEBINAR_FLOWS_KEYS", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert find_keys_file(None) is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert find_keys_file(None) == tmp_path / "keys.toml"
    monkeypatch.setenv("WEBINAR_FLOWS_KEYS", "/etc/wf/keys.toml")
    assert find_keys_file(None) == Path("/etc/wf/keys.toml")
    assert find_keys_file(Path("mine.toml")) == Path("mine.toml")


def test_fresh_secrets_parse_and_differ() -> None:
    one, two = new_secret(), new_secret()
    assert one != two and len(parse_secret(one)) == 32
