"""Hostile configs: refused quickly, in bounded memory, at engine start-up too, and never online.

tests/test_validate.py holds the table of broken configs and checks each problem's code, file and
line through `load_config`. This file adds what that table does not measure, for configs built to
hurt: alias bombs, nesting far past what PyYAML's recursive composer survives, huge files, tags
that would run code, YAML 1.1 traps, `$ref`s that leave the config or point at a server, and
regular expressions that backtrack catastrophically. For each one:

- `Engine.open(config=DIR)` raises `ConfigError` holding the problem (code, file, line) within
  TIME_LIMIT_S, creates no database, and stays under API_PEAK_LIMIT_KIB (tracemalloc peak);
- the real console script (`webinar-flows validate --config DIR` and `process`) exits 1 with
  `FILE:LINE:COL: error CODE:` on stderr within TIME_LIMIT_S, and its peak RSS (the child's own
  high-water mark, see HWM_WRAPPER) stays under CLI_RSS_LIMIT_KIB;
- a live HTTP server on 127.0.0.1 sees zero connections whatever the config points at.

Measured figures go through the `figure` fixture (`make reliability-figures`).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine import ConfigError, Engine, load_config
from engine.config.locate import bundled_config

CLI = str(Path(sys.executable).parent / "webinar-flows")
TIME_LIMIT_S = 2.0  # measured: 0.03-0.3 s in-process, 0.25-0.9 s as a fresh process on a busy 2-core box
API_PEAK_LIMIT_KIB = 32 * 1024  # loading the default config peaks at ~0.2 MiB (tracemalloc)
CLI_RSS_LIMIT_KIB = 100 * 1024  # `validate` of the default config peaks at ~46 MiB RSS
TRACKER = "client-webinar-tracker-v2"

# The classic "billion laughs" (nine levels, nine copies each: 9**9 = 387,420,489 strings once
# expanded), exactly 342 bytes.
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]"
       for prev, name in zip("abcdefgh", "bcdefghi", strict=True)]
) + "\n"
assert len(BILLION_LAUGHS.encode()) == 342


# ------------------------------------------------------------------------------- helpers

def copy_default(target: Path) -> Path:
    target.mkdir(parents=True)
    src = bundled_config()
    for name in ("events.yaml", "emitters.yaml", "states.yaml"):
        shutil.copy(src / name, target / name)
    shutil.copytree(src / "rules", target / "rules")
    return target


def replace_line(root: Path, file: str, pattern: str, replacement: str) -> None:
    """Replace the one line of `file` that `pattern` (a regex anchored at a line start) matches."""
    path = root / file
    text = path.read_text("utf-8")
    found = list(re.finditer(pattern + r".*\n", text, re.MULTILINE))
    assert len(found) == 1, f"{pattern!r} matches {len(found)} lines of {file}"
    path.write_text(text[:found[0].start()] + replacement + text[found[0].end():], "utf-8")


def line_of(root: Path, file: str, marker: str) -> int:
    """The 1-based line of the only line of `file` holding `marker`."""
    with (root / file).open("rb") as handle:
        found = [i for i, line in enumerate(handle, 1) if marker.encode() in line]
    assert len(found) == 1, f"{marker!r} stands on lines {found} of {file}"
    return found[0]


def event_block(text: str, event: str) -> tuple[int, int]:
    """Where the definition of `event` stands in events.yaml text: [start, end)."""
    start = text.index(f"\n  {event}:\n") + 1
    following = re.search(r"^  \S", text[start + 1:], re.MULTILINE)
    return start, (start + 1 + following.start()) if following else len(text)


def replace_in_event(root: Path, event: str, pattern: str, replacement: str) -> None:
    """Replace the one line of `event`'s definition that matches `pattern` (a regex anchored at
    the line start), whatever the default config's wording of that line."""
    path = root / "events.yaml"
    text = path.read_text("utf-8")
    start, end = event_block(text, event)
    block = text[start:end]
    found = list(re.finditer(pattern + r".*\n", block, re.MULTILINE))
    assert len(found) == 1, f"{pattern!r} matches {len(found)} lines of {event}"
    block = block[:found[0].start()] + replacement + block[found[0].end():]
    path.write_text(text[:start] + block + text[end:], "utf-8")


FORM = "client_webinar_form_submitted"


def set_form_payload(root: Path, schema: str) -> None:
    replace_in_event(root, FORM, r"^        form_payload:", f"        form_payload: {schema}\n")


def set_session_schema(root: Path, schema: str) -> None:
    """The session_id schema of client_webinar_completed."""
    replace_in_event(root, "client_webinar_completed", r"^        session_id:", f"        session_id: {schema}\n")


def add_form_defs(root: Path, lines: list[str]) -> None:
    """Put `lines` (a `$defs:` block, 6-space indented) first under the form event's payload."""
    replace_in_event(root, FORM, r"^    payload:", "    payload:\n" + "\n".join(lines) + "\n")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    maxrss_kib: int


# Linux carries a process's RSS high-water mark across execve, so the ru_maxrss of a child forked
# from this (large) pytest process starts at pytest's own size. The child therefore reports the
# high-water mark of its own address space (VmHWM, reset by execve) when it exits: the real
# console script runs unchanged under runpy, with an atexit hook.
HWM_WRAPPER = r"""
import atexit, os, runpy, sys
def _report():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                with open(os.environ["WF_TEST_HWM_FILE"], "w") as out:
                    out.write(line.split()[1])
atexit.register(_report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_measured(args: list[str], *, cwd: Path, timeout: float = 60,
                 preexec_fn: Callable[[], None] | None = None, measure_memory: bool = False) -> Run:
    """Run a child, killed after `timeout`; its wall time and, with `measure_memory` (args[0]
    must then be a Python script), its peak RSS in KiB."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as hwm:
        env = dict(os.environ)
        if measure_memory and Path("/proc/self/status").exists():
            args = [sys.executable, "-c", HWM_WRAPPER, *args]
            env["WF_TEST_HWM_FILE"] = hwm.name
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                preexec_fn=preexec_fn)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        reported = hwm.read().strip()
        maxrss = int(reported) if reported else usage.ru_maxrss
        return Run(proc.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                   seconds, maxrss)


def problem_lines(stderr: str) -> list[tuple[str, int, str]]:
    """(file, line, code) of every `FILE:LINE:COL: error CODE: message` line."""
    pattern = re.compile(r"^(.+):(\d+):(\d+): error ([a-z_]+): .+$")
    return [(m[1], int(m[2]), m[4]) for m in map(pattern.match, stderr.splitlines()) if m]


def api_problems(exc: ConfigError, root: Path) -> set[tuple[str, int, str]]:
    prefix = f"{root}/"
    assert all(p.file.startswith(prefix) for p in exc.errors), [str(p) for p in exc.errors]
    return {(p.file[len(prefix):], p.line, p.code) for p in exc.errors}


# ------------------------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Hostile:
    id: str
    build: Callable[[Path], None]
    code: str
    file: str
    line: Callable[[Path], int]


def _alias_bomb(root: Path) -> None:
    (root / "states.yaml").write_text(BILLION_LAUGHS, "utf-8")


def _payload_alias_bomb(root: Path) -> None:
    """Nine levels of allOf, each nine copies of the level below: a valid JSON Schema of 9**9
    subschemas, aimed at the payload validator."""
    defs = ["      $defs:", "        a: &a {allOf: [" + ", ".join(["{type: object}"] * 9) + "]}"]
    defs += [f"        {n}: &{n} {{allOf: [" + ", ".join([f"*{p}"] * 9) + "]}"
             for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    add_form_defs(root, defs)
    set_form_payload(root, "{allOf: [*i]}")


def _deep_flow(levels: int) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        (root / "events.yaml").write_text("[" * levels + "]" * levels + "\n", "utf-8")
    return build


def _deep_block(root: Path) -> None:
    (root / "states.yaml").write_text("".join(" " * i + f"k{i}:\n" for i in range(1000)) + " " * 1000 + "end: 1\n",
                                      "utf-8")


HUGE_BYTES = 50 * 1024 * 1024


def _huge_file(root: Path) -> None:
    with (root / "states.yaml").open("ab") as out:
        chunk = b"#" + b"x" * (1024 * 1024 - 2) + b"\n"
        for _ in range(HUGE_BYTES // len(chunk) + 1):
            out.write(chunk)


def _object_tag(root: Path) -> None:
    replace_in_event(root, FORM, r"^        form_id:",
                     '        form_id: {type: string, description: !!python/object/apply:os.system ["touch CANARY"]}\n')


def _duplicate_event(root: Path) -> None:
    text = (root / "events.yaml").read_text("utf-8")
    block = text[text.index("  client_webinar_left:\n"):text.index("  client_webinar_completed:\n")]
    again = block.replace("  client_webinar_left:\n", "  client_webinar_left:  # again\n")
    (root / "events.yaml").write_text(text + again, "utf-8")


def _float_name(root: Path) -> None:
    replace_line(root, "emitters.yaml", r"^      client_webinar_entered:",
                 "      client_webinar_entered: planned\n      1.10: planned\n")


def _complex_key(root: Path) -> None:
    # a YAML mapping may have a list or a map as a key; with a map as its value, the reader
    # once crashed (an unhashable path) instead of refusing the key
    with (root / "emitters.yaml").open("a", encoding="utf-8") as f:
        f.write("? [lead_id, webinar_id]\n: {planned: true}\n")


def _ref_url(root: Path) -> None:
    set_form_payload(root, "{$ref: 'http://127.0.0.1:9/form.json'}")


def _ref_outside(root: Path) -> None:
    (root.parent / "outside.json").write_text('{"type": "object"}', "utf-8")
    set_form_payload(root, "{$ref: '../outside.json'}")


def _redos(pattern: str, where: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        quoted = "'" + pattern.replace("'", "''") + "'"
        if where == "pattern":
            set_session_schema(root, "{type: string, pattern: " + quoted + "}")
        else:
            set_form_payload(root, "{type: object, patternProperties: {" + quoted + ": {type: string}}}")
    return build


def _at(marker: str, file: str = "events.yaml") -> Callable[[Path], int]:
    return lambda root: line_of(root, file, marker)


def _line(n: int) -> Callable[[Path], int]:
    return lambda root: n


CASES = [
    # 342 bytes; each *e adds 59,049 nodes, so the 200,000-node budget runs out on the f line.
    Hostile("alias_bomb", _alias_bomb, "config_expands_too_much", "states.yaml", _at("f: &f", "states.yaml")),
    Hostile("payload_alias_bomb", _payload_alias_bomb, "config_expands_too_much", "events.yaml", _at("e: &e")),
    Hostile("deep_nesting_5k", _deep_flow(5_000), "config_too_deep", "events.yaml", _line(1)),
    Hostile("deep_nesting_100k", _deep_flow(100_000), "config_too_deep", "events.yaml", _line(1)),
    # the 65th block mapping (key k64, line 65) is one level past the limit of 64
    Hostile("deep_block_1k", _deep_block, "config_too_deep", "states.yaml", _line(65)),
    Hostile("huge_file", _huge_file, "config_too_large", "states.yaml", _line(1)),
    Hostile("object_tag", _object_tag, "unsupported_tag", "events.yaml", _at("touch CANARY")),
    Hostile("duplicate_key", _duplicate_event, "duplicate_key", "events.yaml", _at("client_webinar_left:  # again")),
    Hostile("yaml11_float_name", _float_name, "non_string_key", "emitters.yaml", _at("1.10: planned", "emitters.yaml")),
    Hostile("complex_key", _complex_key, "non_string_key", "emitters.yaml",
            _at("? [lead_id, webinar_id]", "emitters.yaml")),
    Hostile("ref_url", _ref_url, "remote_ref", "events.yaml", _at("127.0.0.1:9")),
    Hostile("ref_outside", _ref_outside, "ref_outside_config", "events.yaml", _at("../outside.json")),
    Hostile("redos_nested_plus", _redos("(a+)+$", "pattern"), "unsafe_pattern", "events.yaml", _at("(a+)+$")),
    Hostile("redos_alternation", _redos("(a|a)*", "patternProperties"), "unsafe_pattern", "events.yaml",
            _at("(a|a)*")),
    Hostile("redos_dot_star", _redos("(.*)*x", "pattern"), "unsafe_pattern", "events.yaml", _at("(.*)*x")),
]


def params() -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Hostile], Path]]:
    """Each case's config directory, built once; the 50 MB file is removed afterwards."""
    roots: dict[str, Path] = {}

    def get(case: Hostile) -> Path:
        if case.id not in roots:
            root = copy_default(tmp_path_factory.mktemp(case.id) / "config")
            case.build(root)
            roots[case.id] = root
        return roots[case.id]

    yield get
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def validated(built: Callable[[Hostile], Path]) -> Callable[[Hostile], Run]:
    """`webinar-flows validate --config DIR` per case, run once (in the case's directory)."""
    runs: dict[str, Run] = {}

    def get(case: Hostile) -> Run:
        if case.id not in runs:
            root = built(case)
            runs[case.id] = run_measured([CLI, "validate", "--config", str(root)], cwd=root.parent,
                                          measure_memory=True)
        return runs[case.id]

    return get


def assert_no_canary(root: Path) -> None:
    assert not (root / "CANARY").exists() and not (root.parent / "CANARY").exists(), "a YAML tag ran a command"


# ------------------------------------------------------------------------------- API

@pytest.mark.parametrize("case", params())
def test_engine_open_refuses_quickly(case: Hostile, built, tmp_path: Path, monkeypatch, figure):
    """Engine.open raises ConfigError naming code, file and line, fast, before any database exists."""
    root = built(case)
    monkeypatch.chdir(root.parent)
    db = tmp_path / "never.db"
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        Engine.open(config=root, db=db)
    elapsed = time.perf_counter() - start
    figure(f"{case.id}_ms", round(elapsed * 1000, 1))
    assert (case.file, case.line(root), case.code) in api_problems(info.value, root)
    assert elapsed < TIME_LIMIT_S, f"{case.id}: Engine.open took {elapsed:.2f} s"
    assert not db.exists() and not Path(f"{db}-wal").exists()
    assert_no_canary(root)


@pytest.mark.parametrize("case", params())
def test_engine_open_memory_is_bounded(case: Hostile, built, tmp_path: Path, monkeypatch, figure):
    """The refusal's peak Python allocation (tracemalloc) stays small whatever the file expands to."""
    root = built(case)
    monkeypatch.chdir(root.parent)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            Engine.open(config=root, db=tmp_path / "never.db")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    figure(f"{case.id}_peak_kib", peak // 1024)
    assert peak // 1024 < API_PEAK_LIMIT_KIB, f"{case.id}: peak {peak // 1024} KiB"


def test_default_config_memory_baseline(figure):
    """The yardstick for the bounds above: loading the valid default config."""
    tracemalloc.start()
    try:
        load_config(bundled_config())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    figure("default_config_peak_kib", peak // 1024)
    assert peak // 1024 < API_PEAK_LIMIT_KIB


# ------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("case", params())
def test_validate_cli_refuses_quickly(case: Hostile, built, validated, figure):
    """`webinar-flows validate` exits 1 with FILE:LINE:COL: error CODE: on stderr, fast."""
    root = built(case)
    run = validated(case)
    figure(f"{case.id}_cli_ms", round(run.seconds * 1000, 1))
    if case.code == "unsafe_pattern":
        figure("redos_validate_ms", round(run.seconds * 1000, 1))
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert (f"{root}/{case.file}", case.line(root), case.code) in problem_lines(run.stderr), run.stderr[-2000:]
    assert run.stderr.rstrip().endswith("warning(s)") and ": invalid: " in run.stderr
    assert run.seconds < TIME_LIMIT_S, f"{case.id}: validate took {run.seconds:.2f} s"
    assert_no_canary(root)


@pytest.mark.parametrize("case", params())
def test_validate_cli_memory_is_bounded(case: Hostile, validated, figure):
    """The child's peak RSS (interpreter and libraries included) stays under 100 MiB."""
    run = validated(case)
    figure(f"{case.id}_cli_maxrss_kib", run.maxrss_kib)
    assert run.returncode == 1
    assert run.maxrss_kib < CLI_RSS_LIMIT_KIB, f"{case.id}: peak RSS {run.maxrss_kib} KiB"


PROCESS_CASES = ("alias_bomb", "payload_alias_bomb", "deep_nesting_100k", "huge_file", "object_tag", "ref_url",
                 "redos_nested_plus")


@pytest.mark.parametrize("case", [p for p in params() if p.id in PROCESS_CASES])
def test_process_refuses_to_start(case: Hostile, built, tmp_path: Path):
    """`webinar-flows process` with a hostile config exits 1 naming the problem; reads no event,
    creates no database, writes no result line."""
    root = built(case)
    db = tmp_path / "never.db"
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"specversion": "1.0", "id": "e1", "source": TRACKER, "type": "client_webinar_entered",
                                  "data": {"lead_id": "l1", "webinar_id": "w1", "timestamp": "2026-02-01T18:00:00Z"}})
                      + "\n")
    run = run_measured([CLI, "process", str(events), "--config", str(root), "--db", str(db)], cwd=root.parent)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert (f"{root}/{case.file}", case.line(root), case.code) in problem_lines(run.stderr)
    assert f"error: the config in {root} is invalid" in run.stderr
    assert run.seconds < TIME_LIMIT_S
    assert not db.exists()
    assert_no_canary(root)


def test_huge_file_is_refused_unparsed(built, validated, figure):
    """The 50 MB file: refused on line 1 with its size, through both doors, well within the limit
    (memory is checked in the *_memory_is_bounded tests)."""
    case = next(c for c in CASES if c.id == "huge_file")
    root = built(case)
    size = (root / "states.yaml").stat().st_size
    assert size > HUGE_BYTES
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(root)
    elapsed = time.perf_counter() - start
    [problem] = info.value.errors
    assert (problem.code, problem.line, problem.column) == ("config_too_large", 1, 1)
    assert str(size) in problem.message and "1048576" in problem.message
    run = validated(case)
    assert run.returncode == 1 and f"{root}/states.yaml:1:1: error config_too_large: {size} bytes" in run.stderr
    figure("huge_file_load_config_ms", round(elapsed * 1000, 1))
    assert elapsed < TIME_LIMIT_S


# ------------------------------------------------------------------------------- tags

@pytest.mark.parametrize("tag", [
    '!!python/object/apply:os.system ["touch CANARY"]',
    '!!python/object/new:os.system ["touch CANARY"]',
    "!!python/name:os.system",
    '!<tag:yaml.org,2002:python/object/apply:os.system> ["touch CANARY"]',
    "!!python/object:os.system {}",
    "!local {}",
])
def test_object_constructing_tags_run_nothing(tag: str, tmp_path: Path, monkeypatch):
    """Every non-core tag is refused where it stands, in a rules file too; no canary appears,
    neither from the API nor from the real console script."""
    root = copy_default(tmp_path / "config")
    replace_line(root, "rules/attendance.yaml", r"^evaluation_result:", f"evaluation_result: {tag}\n")
    line = line_of(root, "rules/attendance.yaml", tag.split()[0])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        Engine.open(config=root, db=tmp_path / "never.db")
    assert ("rules/attendance.yaml", line, "unsupported_tag") in api_problems(info.value, root)
    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path)
    assert run.returncode == 1
    assert (f"{root}/rules/attendance.yaml", line, "unsupported_tag") in problem_lines(run.stderr)
    assert not (tmp_path / "CANARY").exists() and not (root / "CANARY").exists()
    assert not (tmp_path / "never.db").exists()


# ------------------------------------------------------------------------------- YAML 1.1 traps

def test_yaml11_names_are_strings_at_run_time(tmp_path: Path, run_cli):
    """A state named `NO` and an emitter named `on` are strings (YAML 1.2 core): the config is
    valid and events from `on` drive the route into state `NO`."""
    root = copy_default(tmp_path / "config")
    states = (root / "states.yaml").read_text("utf-8")
    (root / "states.yaml").write_text(re.sub(r"(?<![\w-])completed(?![\w-])", "NO", states), "utf-8")
    emitters = (root / "emitters.yaml").read_text("utf-8")
    (root / "emitters.yaml").write_text(emitters.replace(f"  {TRACKER}:\n", "  on:\n"), "utf-8")
    assert "- name: NO\n" in (root / "states.yaml").read_text() and "\n  on:\n" in (root / "emitters.yaml").read_text()
    out = run_cli("validate", "--config", str(root))
    assert out.exit_code == 0, out.stderr
    with Engine.open(config=root, db=tmp_path / "t.db") as eng:
        assert "NO" in eng.config.route.states and "on" in eng.config.emitters
        result = eng.process({"specversion": "1.0", "id": "c1", "source": "on", "type": "client_webinar_completed",
                              "data": {"lead_id": "l1", "webinar_id": "w1", "webinar_type": "live",
                                       "session_id": "s1", "completed_at": "2026-02-01T19:00:00Z"}})
        assert (result["status"], result["route"]["state"]) == ("accepted", "NO")
        refused = eng.process({"specversion": "1.0", "id": "c2", "source": TRACKER, "type": "client_webinar_completed",
                               "data": {"lead_id": "l2", "webinar_id": "w1", "webinar_type": "live",
                                        "session_id": "s1", "completed_at": "2026-02-01T19:00:00Z"}})
        assert (refused["status"], refused["reason"]) == ("rejected", "unauthorized_emitter")


# ------------------------------------------------------------------------------- no network

class _Recorder(http.server.ThreadingHTTPServer):
    """Counts every TCP connection it accepts, whether or not a request follows."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections: list[Any] = []
        super().__init__(("127.0.0.1", 0), _SchemaHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.append(client_address)
        super().process_request(request, client_address)


class _SchemaHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b'{"type": "object"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The server works: one request from the test itself is seen, then forgotten.
    probe = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    probe.request("GET", "/probe")
    assert json.loads(probe.getresponse().read()) == {"type": "object"}
    probe.close()
    assert len(server.connections) == 1
    server.connections.clear()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _form_event(answers: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"f-{answers!r}", "source": TRACKER, "type": "client_webinar_form_submitted",
            "data": {"lead_id": "l1", "webinar_id": "w1", "webinar_type": "live", "session_id": "s1",
                     "submitted_at": "2026-02-01T19:10:00Z", "form_id": "f1", "form_payload": answers}}


REMOTE_SCHEMAS = {
    # refused by validate
    "ref": ("{$ref: 'http://127.0.0.1:PORT/form.json'}", "remote_ref"),
    "ref_protocol_relative": ("{$ref: '//127.0.0.1:PORT/form.json'}", "remote_ref"),
    "id_rebase": ("{$id: 'http://127.0.0.1:PORT/schemas/', $ref: 'form.json'}", "remote_ref"),
    # accepted or refused: either way nothing is fetched
    "schema_keyword": ("{$schema: 'http://127.0.0.1:PORT/meta', type: object}", None),
    "dynamic_ref": ("{$dynamicRef: 'http://127.0.0.1:PORT/form.json#meta'}", None),
    "ref_in_local_file": ("{$ref: 'form.yaml'}", None),
}


@pytest.mark.parametrize("name", list(REMOTE_SCHEMAS))
def test_no_network_request_for_remote_schemas(name: str, schema_server: _Recorder, tmp_path: Path, monkeypatch,
                                               figure):
    """A payload schema naming a live server: `validate`, `Engine.open` and processing an event
    (API and CLI) make zero connections to it. The proxy variables point at the same server, so
    a fetch that honoured a proxy would be counted too."""
    port = schema_server.server_address[1]
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    schema, code = REMOTE_SCHEMAS[name]
    root = copy_default(tmp_path / "config")
    set_form_payload(root, schema.replace("PORT", str(port)))
    (root / "form.yaml").write_text(f"$ref: 'http://127.0.0.1:{port}/form.json'\n", "utf-8")
    line = line_of(root, "events.yaml", "        form_payload: {$")

    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path)
    assert "Traceback" not in run.stderr
    if code is not None:
        assert run.returncode == 1
        assert (f"{root}/events.yaml", line, code) in problem_lines(run.stderr)
    try:
        eng = Engine.open(config=root, db=tmp_path / "api.db")
    except ConfigError as exc:
        assert run.returncode == 1, "validate and Engine.open disagree"
        if code is not None:
            assert ("events.yaml", line, code) in api_problems(exc, root)
    else:
        assert code is None and run.returncode == 0, "validate and Engine.open disagree"
        with eng:
            result = eng.process(_form_event({"q1": "yes"}))
        assert result["status"] in ("accepted", "rejected")
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(_form_event({"q1": "yes"})) + "\n")
    processed = run_measured([CLI, "process", str(events), "--config", str(root), "--db", str(tmp_path / "cli.db")],
                             cwd=tmp_path)
    assert processed.returncode == run.returncode and "Traceback" not in processed.stderr
    time.sleep(0.05)  # let a late connection land before counting
    figure(f"remote_{name}_requests", len(schema_server.connections))
    assert schema_server.connections == [], "the engine opened a connection to a schema server"


# ------------------------------------------------------------------------------- regular expressions

def test_safe_pattern_is_accepted_and_enforced(tmp_path: Path, figure):
    """`^[a-z]+$` as a pattern and as a patternProperties key: valid, and checked on every
    event (a long hostile value costs milliseconds)."""
    root = copy_default(tmp_path / "config")
    set_session_schema(root, "{type: string, pattern: '^[a-z]+$'}")
    set_form_payload(root, "{type: object, patternProperties: {'^[a-z]+$': {type: string}}, "
                           "additionalProperties: false}")
    start = time.perf_counter()
    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    figure("safe_pattern_validate_ms", round((time.perf_counter() - start) * 1000, 1))

    def completed(session: str, n: int) -> dict[str, Any]:
        return {"specversion": "1.0", "id": f"c{n}", "source": TRACKER, "type": "client_webinar_completed",
                "data": {"lead_id": f"l{n}", "webinar_id": "w1", "webinar_type": "live", "session_id": session,
                         "completed_at": "2026-02-01T19:00:00Z"}}

    with Engine.open(config=root, db=tmp_path / "t.db") as eng:
        assert eng.process(completed("abc", 1))["status"] == "accepted"
        bad = eng.process(completed("abc1", 2))
        assert (bad["status"], bad["reason"]) == ("rejected", "invalid_payload")
        assert [(e["path"], e["code"]) for e in bad["errors"]] == [("/data/session_id", "pattern")]
        start = time.perf_counter()
        hostile = eng.process(completed("a" * 100_000 + "!", 3))
        elapsed = time.perf_counter() - start
        figure("safe_pattern_100k_value_ms", round(elapsed * 1000, 1))
        assert hostile["reason"] == "invalid_payload" and elapsed < 0.5
        assert eng.process(_form_event({"abc": "x"}))["status"] == "accepted"
        wrong = eng.process(_form_event({"ABC": "x"}))
        assert (wrong["status"], wrong["reason"]) == ("rejected", "invalid_payload")
        assert [e["path"] for e in wrong["errors"]] == ["/data/form_payload/ABC"]


def test_pattern_properties_errors_name_only_the_key_at_fault(tmp_path: Path):
    """With patternProperties `^[a-z]+$` and additionalProperties false, `{abc, ABC}` is refused
    for ABC only: the error list must not blame the allowed key."""
    root = copy_default(tmp_path / "config")
    set_form_payload(root, "{type: object, patternProperties: {'^[a-z]+$': {type: string}}, "
                           "additionalProperties: false}")
    with Engine.open(config=root, db=tmp_path / "t.db") as eng:
        wrong = eng.process(_form_event({"abc": "x", "ABC": "x"}))
    assert wrong["reason"] == "invalid_payload"
    assert [e["path"] for e in wrong["errors"]] == ["/data/form_payload/ABC"]


def test_overlapping_alternatives_with_any_char_are_refused(tmp_path: Path):
    """`(.|a)*x`: both alternatives match `a`, so it backtracks exponentially like `(a|a)*`."""
    root = copy_default(tmp_path / "config")
    _redos("(.|a)*x", "pattern")(root)
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert ("events.yaml", line_of(root, "events.yaml", "(.|a)*x"), "unsafe_pattern") in api_problems(info.value, root)


def test_unsafe_pattern_behind_a_local_ref_is_refused(tmp_path: Path):
    """The pattern lives in schemas/session.yaml, which the payload `$ref`s: still refused."""
    root = copy_default(tmp_path / "config")
    (root / "schemas").mkdir()
    (root / "schemas" / "session.yaml").write_text("type: string\npattern: '(a+)+$'\n", "utf-8")
    set_session_schema(root, "{$ref: 'schemas/session.yaml'}")
    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path)
    assert run.returncode == 1, "validate accepted a catastrophic pattern behind a $ref"
    assert "unsafe_pattern" in {code for _, _, code in problem_lines(run.stderr)}


@pytest.mark.parametrize("fmt", ["date-tim", "uri"])
def test_a_format_nothing_checks_behind_a_local_ref_is_refused(tmp_path: Path, fmt: str):
    """The format lives in schemas/session.yaml, which the payload `$ref`s: as inline, every value
    would pass unchecked (jsonschema checks no format it does not know), so validate refuses it."""
    root = copy_default(tmp_path / "config")
    (root / "schemas").mkdir()
    (root / "schemas" / "session.yaml").write_text(f"type: string\nformat: {fmt}\n", "utf-8")
    set_session_schema(root, "{$ref: 'schemas/session.yaml'}")
    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path)
    assert run.returncode == 1, f"validate accepted format {fmt!r} behind a $ref"
    assert ("events.yaml", "unknown_format") in {(Path(f).name, code) for f, _, code in problem_lines(run.stderr)}
    assert f"format '{fmt}' in session.yaml" in run.stderr
    (root / "schemas" / "session.yaml").write_text("type: string\nformat: uuid\n", "utf-8")
    assert run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path).returncode == 0


def test_dynamic_ref_to_a_url_is_refused(tmp_path: Path):
    root = copy_default(tmp_path / "config")
    set_form_payload(root, "{$dynamicRef: 'http://127.0.0.1:9/form.json#meta'}")
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert ("events.yaml", line_of(root, "events.yaml", "$dynamicRef"), "remote_ref") in api_problems(info.value, root)


def test_remote_ref_inside_a_referenced_file_is_refused(tmp_path: Path):
    root = copy_default(tmp_path / "config")
    (root / "form.yaml").write_text("$ref: 'http://127.0.0.1:9/form.json'\n", "utf-8")
    set_form_payload(root, "{$ref: 'form.yaml'}")
    with pytest.raises(ConfigError) as info:
        load_config(root)
    assert "remote_ref" in {p.code for p in info.value.errors}


# ------------------------------------------------------------------------------- budgets that bite late

def _payload_bomb_under_budget(root: Path) -> None:
    """Five levels of allOf (9, 9, 9, 9, then 3 copies): ~150,000 nodes, under the 200,000-node
    YAML budget, 40 lines of YAML, and a valid JSON Schema."""
    defs = ["      $defs:", "        a: &a {allOf: [" + ", ".join(["{type: object}"] * 9) + "]}"]
    defs += [f"        {n}: &{n} {{allOf: [" + ", ".join([f"*{p}"] * 9) + "]}"
             for p, n in zip("abc", "bcd", strict=True)]
    add_form_defs(root, defs)
    set_form_payload(root, "{allOf: [*d, *d, *d]}")


API_SCRIPT = """
import sys, time
from engine import ConfigError, Engine
start = time.perf_counter()
try:
    Engine.open(config=sys.argv[1], db=sys.argv[2]).close()
    print("opened", time.perf_counter() - start)
except ConfigError as exc:
    print("refused", time.perf_counter() - start)
"""


def test_payload_schema_bomb_under_the_node_budget_answers_quickly(tmp_path: Path, figure):
    """A schema-shaped alias bomb that stays under the YAML budget but over the schema budget
    (MAX_SCHEMA_NODES): validate and Engine.open refuse it as schema_too_large, located in
    events.yaml, within the time limit."""
    root = copy_default(tmp_path / "config")
    _payload_bomb_under_budget(root)
    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path, timeout=TIME_LIMIT_S + 1)
    figure("payload_bomb_under_budget_validate_ms", round(run.seconds * 1000, 1))
    assert run.seconds < TIME_LIMIT_S, f"validate took {run.seconds:.1f} s (killed at {TIME_LIMIT_S + 1} s)"
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert {file for file, _, _ in problem_lines(run.stderr)} == {f"{root}/events.yaml"}
    assert "schema_too_large" in run.stderr
    api = run_measured([sys.executable, "-c", API_SCRIPT, str(root), str(tmp_path / "t.db")], cwd=Path.cwd(),
                       timeout=TIME_LIMIT_S + 1)
    assert api.returncode == 0 and api.stdout.split()[0] == "refused"
    assert float(api.stdout.split()[1]) < TIME_LIMIT_S


def test_config_file_that_never_ends_is_refused(tmp_path: Path):
    """states.yaml -> /dev/zero: a clear refusal on states.yaml line 1, not an out-of-memory crash.
    Run in a child capped at 1 GiB of address space so a failure cannot hurt the machine."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    root = copy_default(tmp_path / "config")
    (root / "states.yaml").unlink()
    (root / "states.yaml").symlink_to("/dev/zero")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    run = run_measured([CLI, "validate", "--config", str(root)], cwd=tmp_path, timeout=30, preexec_fn=cap)
    assert "Traceback" not in run.stderr and "MemoryError" not in run.stderr
    assert run.returncode == 1
    assert any(f == f"{root}/states.yaml" and line == 1 for f, line, _ in problem_lines(run.stderr))
    assert run.seconds < TIME_LIMIT_S
