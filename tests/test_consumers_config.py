"""consumers.yaml, the optional fifth config file: loading, hashing, checks, and its place in
docs, graph, diff and the AsyncAPI export.

The fixture config is a copy of the default config plus tests/data/consumers_example.yaml
(DESIGN's reminder-sender and two more). The validate checks of consumers.yaml are cases of
tests/data/broken_configs.yaml; the tests here cover what the table cannot.
"""

from __future__ import annotations

import hashlib
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
