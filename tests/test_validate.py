"""Config validation: `engine.load_config` and `webinar-flows validate`.

Most cases are data: tests/data/broken_configs.yaml lists an edit of the default config and the
exact problems (code, file, line) it must produce; each case runs through the API and through
the CLI (text and JSON). The tests below the table cover what a table cannot express: hostile
files (tags that would run code, alias bombs, deep nesting, huge files), YAML 1.1 traps, the
default config's own warnings, the output format and how the CLI finds its config.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import ConfigError, EngineError, Problem, load_config
from engine.config.locate import bundled_config

DATA = Path(__file__).resolve().parent / "data"
CASES: list[dict[str, Any]] = yaml.safe_load((DATA / "broken_configs.yaml").read_text("utf-8"))["cases"]
CONFIG_FILES = ("events.yaml", "emitters.yaml", "states.yaml", "rules")

# FILE:LINE:COL: SEVERITY CODE: message
LINE_RE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning) "
                     r"(?P<code>[a-z_]+): (?P<message>.+)$")


# ------------------------------------------------------------------------------------ helpers

def apply_edits(root: Path, edits: list[dict[str, Any]]) -> None:
    """Apply a case's edit steps to the config copy in `root` (see the table's header)."""
    for step in edits:
        path = root / step["file"]
        if step.get("delete"):
            path.unlink()
        elif "write" in step:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(step["write"].encode("utf-8"))
        elif "append" in step:
            text = read(path)
            path.write_bytes((text + ("" if text.endswith("\n") else "\n") + step["append"]).encode("utf-8"))
        elif "replace" in step:
            old, new = step["replace"]["old"], step["replace"]["new"]
            text = read(path)
            assert text.count(old) == 1, f"edit of {step['file']}: {old!r} occurs {text.count(old)} times"
            path.write_bytes(text.replace(old, new).encode("utf-8"))
        elif step.get("crlf"):
            path.write_bytes(read(path).replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8"))
        else:
            raise AssertionError(f"unknown edit step {step}")


def read(path: Path) -> str:
    """A file's text exactly as stored (no newline translation)."""
    return path.read_bytes().decode("utf-8")


def line_of(root: Path, file: str, text: str) -> int:
    """The 1-based line of the only line of `file` holding `text`."""
    lines = [i for i, line in enumerate(read(root / file).split("\n"), 1) if text in line]
    assert len(lines) == 1, f"{text!r} stands on lines {lines} of {file}; the table needs a unique marker"
    return lines[0]


def rel(problem: Problem, root: Path) -> str:
    """A problem's file relative to the config dir (problems name files as DIR/relative)."""
    prefix = f"{root}/"
    assert problem.file.startswith(prefix), f"{problem.file} is not under {root}"
    return problem.file[len(prefix):]


def expectation(root: Path, spec: dict[str, Any]) -> tuple[str, str, int]:
    line = spec["line"] if "line" in spec else line_of(root, spec["file"], spec["line_of"])
    return spec["code"], spec["file"], line


def default_warnings(root: Path) -> dict[tuple[str, str], tuple[str, str, int]]:
    """The default config's four warnings, located by reading states.yaml."""
    return {
        ("state_unsent", "registered"): ("state_unsent", "states.yaml", line_of(root, "states.yaml", "- name: registered")),
        ("state_unsent", "left"): ("state_unsent", "states.yaml", line_of(root, "states.yaml", "- name: left")),
        ("trigger_unsent", "client_webinar_registered"):
            ("trigger_unsent", "states.yaml", line_of(root, "states.yaml", "{trigger: client_webinar_registered,")),
        ("trigger_unsent", "client_webinar_left"):
            ("trigger_unsent", "states.yaml", line_of(root, "states.yaml", "{trigger: client_webinar_left,")),
    }


def expected_warnings(root: Path, case: dict[str, Any]) -> Counter:
    found = default_warnings(root)
    for gone in case.get("warnings_removed", []):
        del found[(gone["code"], gone["name"])]
    return Counter(list(found.values()) + [expectation(root, w) for w in case.get("warnings_added", [])])


def assert_well_formed(problems: list[Problem]) -> None:
    """Every problem is located (file, line >= 1, column >= 1) and has a severity and a code."""
    for p in problems:
        assert isinstance(p, Problem)
        assert p.file and p.line >= 1 and p.column >= 1, p
        assert p.severity in ("error", "warning"), p
        assert re.fullmatch(r"[a-z_]+", p.code) and p.message, p


def load_problems(root: Path) -> tuple[bool, list[Problem]]:
    """(valid, problems) from the API."""
    try:
        config = load_config(root)
    except ConfigError as exc:
        assert isinstance(exc, EngineError)
        return False, exc.problems
    return True, list(config.problems)


def triples(problems: list[Problem], root: Path, severity: str) -> Counter:
    return Counter((p.code, rel(p, root), p.line) for p in problems if p.severity == severity)


def stderr_problems(stderr: str) -> list[dict[str, Any]]:
    """The FILE:LINE:COL lines of a validate run's stderr."""
    found = []
    for line in stderr.splitlines():
        m = LINE_RE.match(line)
        if m:
            found.append({**m.groupdict(), "line": int(m["line"]), "column": int(m["column"])})
    return found


def case_params() -> list[Any]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
        params.append(pytest.param(case, id=case["id"], marks=marks))
    return params


@pytest.fixture
def write(config_copy: Path):
    """Write one file of the config copy (text or bytes) and return the copy's root."""
    def put(name: str, content: str | bytes) -> Path:
        path = config_copy / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, "utf-8")
        return config_copy
    return put


def only_error(root: Path) -> Problem:
    """Load `root`, expect a ConfigError with exactly one error, and return it."""
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert_well_formed(info.value.problems)
    errors = info.value.errors
    assert len(errors) == 1, [str(p) for p in errors]
    return errors[0]


# ------------------------------------------------------------------------ the table, via the API

def test_table_is_well_formed():
    """Every case has a unique id, a reason and an expectation, so the table stays readable."""
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    for case in CASES:
        assert case.get("why") and case.get("edit") and "errors" in case, case["id"]
        if case.get("warnings_added") or case.get("warnings_removed"):
            assert case["errors"] == [], f"{case['id']}: warnings are checked on valid configs only"


@pytest.mark.parametrize("case", case_params())
def test_case_via_api(case: dict[str, Any], config_copy: Path):
    """load_config reports exactly the expected errors, each at its code, file and line."""
    apply_edits(config_copy, case["edit"])
    valid, problems = load_problems(config_copy)
    assert_well_formed(problems)
    expected = Counter(expectation(config_copy, e) for e in case["errors"])
    assert triples(problems, config_copy, "error") == expected, "\n".join(map(str, problems))
    assert valid == (not case["errors"])
    if valid:
        assert triples(problems, config_copy, "warning") == expected_warnings(config_copy, case), \
            "\n".join(map(str, problems))
    for spec in case["errors"]:
        code, file, line = expectation(config_copy, spec)
        match = [p for p in problems if (p.code, rel(p, config_copy), p.line) == (code, file, line)]
        if "column" in spec:
            assert [p.column for p in match] == [spec["column"]] * len(match), match
        if "message_contains" in spec:
            assert all(spec["message_contains"] in p.message for p in match), match


# ------------------------------------------------------------------------ the table, via the CLI

@pytest.mark.parametrize("case", case_params())
def test_case_via_cli_text(case: dict[str, Any], config_copy: Path, run_cli):
    """validate prints every problem as FILE:LINE:COL: SEVERITY CODE: message; exit 1 on errors."""
    apply_edits(config_copy, case["edit"])
    _, api = load_problems(config_copy)
    out = run_cli("validate", "--config", str(config_copy))
    printed = stderr_problems(out.stderr)
    assert [(p["file"], p["line"], p["column"], p["severity"], p["code"], p["message"]) for p in printed] == \
        [(p.file, p.line, p.column, p.severity, p.code, p.message) for p in api]
    expected = Counter(expectation(config_copy, e) for e in case["errors"])
    got = Counter((p["code"], p["file"][len(str(config_copy)) + 1:], p["line"]) for p in printed
                  if p["severity"] == "error")
    assert got == expected, out.stderr
    if case["errors"]:
        assert out.exit_code == 1, out.stderr
        assert out.stdout == ""
        assert "invalid" in out.stderr.splitlines()[-1]
    else:
        assert out.exit_code == 0, out.stderr
        assert len(out.stdout.splitlines()) == 1 and "valid" in out.stdout


@pytest.mark.parametrize("case", case_params())
def test_case_via_cli_json(case: dict[str, Any], config_copy: Path, run_cli):
    """--format json prints one document on stdout with valid, counts and every problem."""
    apply_edits(config_copy, case["edit"])
    out = run_cli("validate", "--config", str(config_copy), "--format", "json")
    doc = json.loads(out.stdout)
    assert out.exit_code == (1 if case["errors"] else 0)
    assert doc["valid"] is (not case["errors"])
    errors = [p for p in doc["problems"] if p["severity"] == "error"]
    assert doc["errors"] == len(errors) and doc["warnings"] == len(doc["problems"]) - len(errors)
    for p in doc["problems"]:
        assert set(p) >= {"file", "line", "column", "severity", "code", "message", "path"}
    got = Counter((p["code"], p["file"][len(str(config_copy)) + 1:], p["line"]) for p in errors)
    assert got == Counter(expectation(config_copy, e) for e in case["errors"])


# ------------------------------------------------------------------------ the default config

def test_default_config_has_exactly_its_four_warnings(default_config: Path):
    """registered and left are reachable only through triggers no approved emitter sends."""
    config = load_config(default_config)
    assert_well_formed(list(config.problems))
    assert all(p.severity == "warning" for p in config.problems)
    assert triples(list(config.problems), default_config, "warning") == \
        Counter(default_warnings(default_config).values())
    by_code = {(p.code, p.line): p.message for p in config.problems}
    lines = default_warnings(default_config)
    assert "'registered'" in by_code[("state_unsent", lines[("state_unsent", "registered")][2])]
    assert "'left'" in by_code[("state_unsent", lines[("state_unsent", "left")][2])]


def test_cli_validates_default_config(run_cli, default_config: Path):
    """No config anywhere: the bundled default validates, exit 0, one summary line, warnings on stderr."""
    out = run_cli("validate")
    assert out.exit_code == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1
    assert "valid" in out.stdout and "invalid" not in out.stdout
    assert "4 warning" in out.stdout
    printed = stderr_problems(out.stderr)
    assert len(printed) == len(out.stderr.splitlines()) == 4, out.stderr
    assert all(p["severity"] == "warning" and p["file"] == str(default_config / "states.yaml") for p in printed)
    assert Counter((p["code"], "states.yaml", p["line"]) for p in printed) == \
        Counter(default_warnings(default_config).values())


def test_cli_validates_default_config_json(run_cli, default_config: Path):
    """The JSON document of the default config: valid, no error, the four warnings, a hash."""
    out = run_cli("validate", "--format", "json")
    assert out.exit_code == 0
    doc = json.loads(out.stdout)
    assert doc["valid"] is True and doc["errors"] == 0 and doc["warnings"] == 4
    assert re.fullmatch(r"[0-9a-f]{64}", doc["config_hash"])
    assert Counter((p["code"], Path(p["file"]).name, p["line"]) for p in doc["problems"]) == \
        Counter(default_warnings(default_config).values())


def test_warnings_do_not_fail_validation(config_copy: Path, run_cli):
    """A config with extra warnings (no screen, trap state, unused event) still loads and validates."""
    apply_edits(config_copy, [
        {"file": "states.yaml", "replace": {"old": "    screen: webinar_room\n", "new": ""}},
        {"file": "states.yaml", "replace": {"old": "    source: [completed, form_submitted]\n",
                                            "new": "    source: completed\n"}},
        {"file": "events.yaml", "append": "  client_webinar_rated:\n    status: planned\n    payload: {type: object}\n"},
    ])
    config = load_config(config_copy)
    assert {p.code for p in config.warnings} == {"state_unsent", "trigger_unsent", "no_screen", "trap_state",
                                                 "unused_event"}
    out = run_cli("validate", "--config", str(config_copy))
    assert out.exit_code == 0 and "valid" in out.stdout
    assert "7 warning" in out.stdout


# ------------------------------------------------------------------------ hostile YAML

def test_object_tag_runs_nothing(write, tmp_path: Path, run_cli):
    """`!!python/object/apply:os.system` is refused before anything is built: no canary file."""
    canary = tmp_path / "CANARY"
    text = (bundled_config() / "states.yaml").read_text("utf-8")
    root = write("states.yaml", text.replace(
        "    description: In the webinar experience.\n",
        f'    description: !!python/object/apply:os.system ["touch {canary}"]\n'
        '    reminders: !!python/object/apply:os.system ["touch CANARY"]\n'))
    problems = only_error(root)
    assert (problems.code, rel(problems, root), problems.line) == \
        ("unsupported_tag", "states.yaml", line_of(root, "states.yaml", f"touch {canary}"))
    out = run_cli("validate", "--config", str(root))
    assert out.exit_code == 1 and "unsupported_tag" in out.stderr
    assert not canary.exists()
    assert not (root / "CANARY").exists() and not Path("CANARY").exists()


def test_duplicate_key_message_names_first_line(config_copy: Path):
    """A duplicate key is reported where it repeats, and the message points at the first one."""
    apply_edits(config_copy, [{"file": "states.yaml", "replace": {
        "old": "    screen: webinar_room\n", "new": "    screen: webinar_room\n    screen: webinar_lobby\n"}}])
    p = only_error(config_copy)
    first = line_of(config_copy, "states.yaml", "screen: webinar_room")
    assert (p.code, p.line) == ("duplicate_key", first + 1)
    assert f"line {first}" in p.message and "screen" in p.message


def test_duplicate_block_key_message_names_first_line(config_copy: Path):
    """The first line of a key whose value is a block is the key's line, not the block's."""
    apply_edits(config_copy, [{"file": "emitters.yaml", "append":
                               "  attendance-classifier:\n    kind: service\n    events: {}\n"}])
    p = only_error(config_copy)
    first = [i for i, line in enumerate((config_copy / "emitters.yaml").read_text().splitlines(), 1)
             if line == "  attendance-classifier:"]
    assert p.code == "duplicate_key" and p.line == first[1]
    assert f"line {first[0]}" in p.message


def test_alias_bomb_is_refused_quickly(write):
    """A billion-laughs document stops at the node limit in well under a second."""
    levels = "abcdefghi"
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip(levels, levels[1:]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    root = write("states.yaml", "\n".join(lines) + "\n")
    start = time.monotonic()
    p = only_error(root)
    assert time.monotonic() - start < 2
    assert (p.code, rel(p, root)) == ("config_expands_too_much", "states.yaml")
    # Each level holds ten copies of the one before: a..e expand to ~111 thousand nodes, and
    # one alias of e adds 100 thousand more, so the 200,000-node limit is crossed at f's first
    # alias (line 6, column 8).
    assert (p.line, p.column) == (line_of(root, "states.yaml", "f: &f"), 8)


def test_too_many_aliases(write):
    """More than 100 aliases is refused, at the 101st."""
    lines = ["x: &x word"] + [f"k{i}: *x" for i in range(101)]
    root = write("states.yaml", "\n".join(lines) + "\n")
    p = only_error(root)
    assert (p.code, rel(p, root), p.line) == ("config_too_many_aliases", "states.yaml", 102)


def test_deep_flow_nesting_is_refused_without_recursion(write):
    """100,000 nested brackets: config_too_deep on line 1, no RecursionError, fast."""
    root = write("events.yaml", "[" * 100_000 + "]" * 100_000 + "\n")
    start = time.monotonic()
    p = only_error(root)
    assert time.monotonic() - start < 5
    assert (p.code, rel(p, root), p.line) == ("config_too_deep", "events.yaml", 1)


def test_deep_block_nesting_is_refused_at_its_line(write):
    """Block mappings nested 70 deep: the 65th level (line 65) is one too many."""
    root = write("states.yaml", "".join(" " * i + f"k{i}:\n" for i in range(70)) + " " * 70 + "end: 1\n")
    p = only_error(root)
    assert (p.code, rel(p, root), p.line) == ("config_too_deep", "states.yaml", 65)


def test_nesting_at_the_limit_is_not_too_deep(write):
    """64 levels are allowed: the file fails its schema, not the depth limit."""
    root = write("states.yaml", "".join(" " * i + f"k{i}:\n" for i in range(63)) + " " * 63 + "end: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert "config_too_deep" not in {p.code for p in info.value.problems}


def test_file_over_one_mib_is_refused(write):
    """A file over 1 MiB is refused unread, on line 1."""
    text = (bundled_config() / "states.yaml").read_text("utf-8")
    root = write("states.yaml", text + "#" + "x" * (1024 * 1024) + "\n")
    p = only_error(root)
    assert (p.code, rel(p, root), p.line) == ("config_too_large", "states.yaml", 1)


def test_file_of_exactly_one_mib_is_read(write):
    """The limit is inclusive: a file of exactly 1 MiB (padded with a comment) loads."""
    text = (bundled_config() / "states.yaml").read_text("utf-8")
    pad = 1024 * 1024 - len(text.encode()) - 2
    root = write("states.yaml", text + "#" + "x" * pad + "\n")
    assert (root / "states.yaml").stat().st_size == 1024 * 1024
    load_config(root)


def test_invalid_utf8_is_a_syntax_error(write):
    """Bytes that are not UTF-8 are reported, not decoded with replacement characters."""
    text = (bundled_config() / "emitters.yaml").read_bytes()
    root = write("emitters.yaml", text.replace(b"WordPress", b"Word\xffPress"))
    p = only_error(root)
    assert (p.code, rel(p, root)) == ("yaml_syntax", "emitters.yaml")
    line = next(n for n, text in enumerate(text.splitlines(), 1) if b"WordPress" in text)
    assert (p.line, p.column) == (line, text.splitlines()[line - 1].index(b"WordPress") + 5)
    assert "0xff" in p.message and "\n" not in str(p)


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b", "\x7f", "\ufffe"])
def test_a_character_yaml_refuses_is_one_line_at_its_place(write, char: str):
    """PyYAML's reader error has no mark and a two-line text: the problem said 1:1 on two lines,
    breaking `FILE:LINE:COL: SEVERITY CODE: message`."""
    text = (bundled_config() / "emitters.yaml").read_text("utf-8")
    root = write("emitters.yaml", text.replace("WordPress", f"Word{char}Press").encode("utf-8"))
    p = only_error(root)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "WordPress" in row)
    assert (p.code, p.line, p.column) == ("yaml_syntax", line, text.splitlines()[line - 1].index("WordPress") + 5)
    assert f"#x{ord(char):04x}" in p.message and "\n" not in str(p)


def test_ref_through_symlink_leaving_the_config(config_copy: Path, tmp_path: Path):
    """A $ref to a file inside the config that is a symlink to outside is still refused."""
    outside = tmp_path / "outside.json"
    outside.write_text('{"type": "object"}')
    (config_copy / "form.json").symlink_to(outside)
    apply_edits(config_copy, [{"file": "events.yaml", "replace": {
        "old": "        form_payload: {type: object,", "new": "        form_payload: {$ref: 'form.json',"}}])
    p = only_error(config_copy)
    assert (p.code, p.line) == ("ref_outside_config", line_of(config_copy, "events.yaml", "form.json"))


# ------------------------------------------------------------------------ YAML 1.2 core scalars

def test_yaml11_booleans_and_dates_stay_strings(config_copy: Path):
    """A state named `no`, a screen `off`, reminders `yes`/`on`, an emitter `on`, date-like
    descriptions: all load as the strings written."""
    apply_edits(config_copy, [
        {"file": "states.yaml", "replace": {"old": "transitions:\n", "new":
            "  - {name: no, screen: off, reminders: [yes, on, n], final: true, description: 2026-02-01}\n"
            "transitions:\n"
            "  - {trigger: client_webinar_entered, source: form_submitted, dest: no}\n"}},
        {"file": "emitters.yaml", "append":
            "  on:\n    kind: service\n    internal: true\n    description: 2026-02-01T18:00:00Z\n    events: {}\n"
            "  off:\n    kind: 1:30\n    events: {}\n"},
    ])
    config = load_config(config_copy)
    assert not [p for p in config.problems if p.severity == "error"]
    state = config.route.states["no"]
    assert (state.name, state.screen, state.reminders, state.description) == \
        ("no", "off", ("yes", "on", "n"), "2026-02-01")
    assert config.route.transitions[0].dest == "no"
    assert config.emitters["on"].description == "2026-02-01T18:00:00Z"
    assert config.emitters["off"].kind == "1:30"
    assert config.emitters["on"].internal is True


def test_true_false_are_the_only_booleans(config_copy: Path):
    """`internal: yes` is the string "yes", so the emitter schema refuses it (boolean expected)."""
    apply_edits(config_copy, [{"file": "emitters.yaml", "replace": {
        "old": "    internal: true\n    description: Classifies", "new": "    internal: yes\n    description: Classifies"}}])
    p = only_error(config_copy)
    assert (p.code, rel(p, config_copy), p.line) == \
        ("invalid_value", "emitters.yaml", line_of(config_copy, "emitters.yaml", "internal: yes"))


def test_quoted_key_is_a_string(config_copy: Path):
    """Quoting a number-like key makes it a string, so only the name pattern applies (its line is
    checked by the table case quoted_number_event_name_location)."""
    apply_edits(config_copy, [{"file": "emitters.yaml", "replace": {
        "old": "      client_webinar_entered: planned\n", "new": "      client_webinar_entered: planned\n      '1.10': planned\n"}}])
    p = only_error(config_copy)
    assert (p.code, rel(p, config_copy)) == ("invalid_value", "emitters.yaml")
    assert "'1.10'" in p.message


# ------------------------------------------------------------------------ API shape

def test_missing_config_directory(tmp_path: Path, run_cli):
    """A config directory that does not exist is one located error, through the API and the CLI."""
    missing = tmp_path / "nope"
    p = only_error(missing)
    assert (p.code, p.line, p.column) == ("missing_config", 1, 1)
    out = run_cli("validate", "--config", str(missing))
    assert out.exit_code == 1 and "missing_config" in out.stderr


def test_config_error_carries_every_problem(config_copy: Path):
    """ConfigError is an EngineError; `.problems` holds errors and warnings, `.errors` the errors,
    and str(problem) is the CLI's line format."""
    apply_edits(config_copy, [
        {"file": "states.yaml", "replace": {"old": "initial: new\n", "new": "initial: new\ntimeout: 1\n"}},
        {"file": "emitters.yaml", "replace": {"old": "    kind: client_tracker\n",
                                              "new": "    kind: client_tracker\n    url: x\n"}},
    ])
    with pytest.raises(EngineError) as info:
        load_config(config_copy)
    exc = info.value
    assert isinstance(exc, ConfigError)
    assert {p.code for p in exc.errors} == {"time_logic", "unknown_key"}
    assert {rel(p, config_copy) for p in exc.errors} == {"states.yaml", "emitters.yaml"}
    for p in exc.problems:
        m = LINE_RE.match(str(p))
        assert m and (m["file"], int(m["line"]), int(m["column"]), m["code"]) == (p.file, p.line, p.column, p.code)
        assert p.path.startswith("/")


def test_every_error_kind_is_reported_at_once(config_copy: Path):
    """Pass-2 errors in several files are all reported together, sorted errors first."""
    apply_edits(config_copy, [
        {"file": "states.yaml", "replace": {"old": "reminders: [rejoin_webinar]", "new": "reminders: [notify_partner]"}},
        {"file": "rules/post_webinar_routing.yaml", "replace": {
            "old": "      source: post-webinar-routing-service\n", "new": "      source: attendance-classifier\n"}},
    ])
    with pytest.raises(ConfigError) as info:
        load_config(config_copy)
    problems = info.value.problems
    assert {p.code for p in info.value.errors} == {"forbidden_vocabulary", "unauthorized_emitter"}
    severities = [p.severity for p in problems]
    assert severities == sorted(severities, key=lambda s: s != "error")


@pytest.mark.parametrize("reminder, refused", [
    ("notifypartner", True), ("sync_to_hubspotcrm", True), ("crmsync", True), ("qualifying_call", True),
    ("presale_offer", True), ("pushToSalesforce", True), ("dealflow", True), ("upsell", True),
    ("partnership_offer", True),
    ("ideal_time", False), ("counsellor_call", False), ("rejoin_webinar_now", False)])
def test_forbidden_vocabulary_inside_a_longer_word(config_copy: Path, reminder: str, refused: bool):
    """The spec keeps partner, sales, qualification, CRM and deal logic out; a compound name does
    not bring it back in (it passed when only whole words counted), and ideal or counsellor pass."""
    apply_edits(config_copy, [{"file": "states.yaml", "replace": {
        "old": "reminders: [rejoin_webinar]", "new": f"reminders: [{reminder}]"}}])
    if not refused:
        load_config(config_copy)
        return
    with pytest.raises(ConfigError) as info:
        load_config(config_copy)
    assert [p.code for p in info.value.errors] == ["forbidden_vocabulary"]


# ------------------------------------------------------------------------ finding the config

def _copy_config(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in CONFIG_FILES:
        src = bundled_config() / name
        if src.is_dir():
            shutil.copytree(src, target / name)
        else:
            shutil.copy(src, target / name)
    return target


def _broken(target: Path) -> Path:
    _copy_config(target)
    (target / "states.yaml").write_text("initial: [\n", "utf-8")
    return target


def _validated(out: Any) -> Path:
    assert out.exit_code in (0, 1), out.stderr
    return Path(json.loads(out.stdout)["config"]).resolve()


def test_config_option_wins_over_env_and_cwd(run_cli, tmp_path: Path, monkeypatch):
    """--config DIR is used even when $WEBINAR_FLOWS_CONFIG and the current dir name others."""
    _broken(tmp_path)
    monkeypatch.setenv("WEBINAR_FLOWS_CONFIG", str(_broken(tmp_path / "env")))
    chosen = _copy_config(tmp_path / "chosen")
    out = run_cli("validate", "--config", str(chosen), "--format", "json")
    assert out.exit_code == 0 and _validated(out) == chosen.resolve()
    text = run_cli("validate", "--config", str(chosen))
    assert text.exit_code == 0 and text.stdout.startswith(f"{chosen}: valid")


def test_group_level_config_option(run_cli, tmp_path: Path, monkeypatch):
    """`webinar-flows --config DIR validate` works like the command's own option."""
    monkeypatch.setenv("WEBINAR_FLOWS_CONFIG", str(_broken(tmp_path / "env")))
    chosen = _copy_config(tmp_path / "chosen")
    out = run_cli("--config", str(chosen), "validate", "--format", "json")
    assert out.exit_code == 0 and _validated(out) == chosen.resolve()


def test_env_wins_over_cwd(run_cli, tmp_path: Path, monkeypatch):
    """$WEBINAR_FLOWS_CONFIG is used when there is no --config, even if the cwd holds a config."""
    _broken(tmp_path)
    env = _copy_config(tmp_path / "env")
    monkeypatch.setenv("WEBINAR_FLOWS_CONFIG", str(env))
    out = run_cli("validate", "--format", "json")
    assert out.exit_code == 0 and _validated(out) == env.resolve()


def test_cwd_with_states_yaml_wins_over_bundled(run_cli, tmp_path: Path):
    """With neither option nor env, a current dir holding states.yaml is the config."""
    _broken(tmp_path)
    out = run_cli("validate", "--format", "json")
    assert out.exit_code == 1 and _validated(out) == tmp_path.resolve()
    assert {Path(p["file"]).name for p in json.loads(out.stdout)["problems"]} == {"states.yaml"}


def test_cwd_without_states_yaml_uses_bundled(run_cli, tmp_path: Path):
    """A current dir holding other config files but no states.yaml is not a config."""
    (tmp_path / "events.yaml").write_text("events: [\n", "utf-8")
    out = run_cli("validate", "--format", "json")
    assert out.exit_code == 0 and _validated(out) == bundled_config().resolve()


def test_nothing_given_uses_bundled(run_cli):
    """With no option, no env and nothing in the current dir, the bundled default is validated."""
    out = run_cli("validate", "--format", "json")
    assert out.exit_code == 0 and _validated(out) == bundled_config().resolve()
