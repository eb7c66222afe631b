"""The command line, as docs/cli/ describes it.

Most tests run in-process through click's CliRunner (the `run_cli` fixture, in tmp_path);
the ones marked "subprocess" run the installed console script, the way services and
operators do, including two processes sharing one database file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
import pytest
from conftest import TRACKER, completed, entered, form_submitted, jsonl, registered, result_lines

from cli.commands import COMMANDS
from engine import Engine, load_config

WF = Path(sys.executable).parent / "webinar-flows"
RESULT_KEYS = ["line", "id", "type", "status", "reason", "errors", "emitted", "actions", "route"]
SUMMARY = re.compile(r"^(\d+) accepted, (\d+) duplicate, (\d+) rejected$")


# -- helpers ----------------------------------------------------------------------------------

def summary(stderr: str) -> tuple[int, int, int]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no summary on stderr"
    match = SUMMARY.match(lines[-1])
    assert match, f"last stderr line is not a summary: {lines[-1]!r}"
    return int(match[1]), int(match[2]), int(match[3])


def rows(db: Path, sql: str, *params: Any) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}
    env.update(extra)
    return env


def wf(*args: str | Path, cwd: Path, input: bytes | None = None, env: dict[str, str] | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the installed console script."""
    return subprocess.run([str(WF), *map(str, args)], cwd=cwd, input=input, capture_output=True,
                          env=env or clean_env(), timeout=timeout, check=False)


def add_registered_emitter(config: Path) -> None:
    with (config / "emitters.yaml").open("a", encoding="utf-8") as f:
        f.write("  client-registration-form:\n    kind: client_tracker\n    description: landing page form\n"
                "    events:\n      client_webinar_registered: implemented\n")


def flow(lead: str, webinar: str, prefix: str) -> list[dict[str, Any]]:
    return [entered(lead, webinar, id=f"{prefix}-e"), completed(lead, webinar, id=f"{prefix}-c"),
            form_submitted(lead, webinar, id=f"{prefix}-f")]


MIXED = [entered(id="m1"), b"{not json", entered(id="m1"), completed(id="m2"), completed(id="m3"),
         registered(id="m4"), form_submitted(id="m5"), completed(id="m2", session="other")]


# -- process: input, output, order --------------------------------------------------------------

@pytest.fixture
def run_on(run_cli, db_url):
    """`run_cli` with `--db` on each backend (a SQLite file, a fresh PostgreSQL database)."""
    def invoke(*args: str, input: str | bytes | None = None) -> Any:
        return run_cli(*args, "--db", db_url, input=input)

    return invoke


def test_process_a_file_gives_one_result_per_line_in_order(run_on, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl(*MIXED))
    out = run_on("process", "in.jsonl")
    assert out.exit_code == 0, out.stderr
    results = result_lines(out.stdout)
    assert [r["line"] for r in results] == list(range(1, len(MIXED) + 1))
    for r in results:
        assert list(r) == RESULT_KEYS  # no "file" key with one file
    assert [(r["status"], r["reason"]) for r in results] == [
        ("accepted", None), ("rejected", "malformed_json"), ("duplicate", "same_envelope"), ("accepted", None),
        ("duplicate", "same_fact"), ("rejected", "unauthorized_emitter"), ("accepted", None),
        ("rejected", "id_conflict")]
    assert [r["id"] for r in results] == ["m1", None, "m1", "m2", "m3", "m4", "m5", "m2"]
    assert results[6]["route"] == {"lead_id": "l1", "webinar_id": "w1", "state": "form_submitted",
                                   "screen": "post_webinar_thanks"}
    assert summary(out.stderr) == (3, 2, 3)
    # no progress bar when stderr is not a terminal: the summary is all
    assert out.stderr.strip().splitlines() == ["3 accepted, 2 duplicate, 3 rejected"]


def test_process_prints_what_the_api_returns(run_cli, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl(*MIXED))
    out = run_cli("process", "in.jsonl", "--db", "cli.db")
    with Engine.open(db=tmp_path / "api.db") as eng:
        expected = eng.process_many([json.dumps(e).encode() if isinstance(e, dict) else e for e in MIXED],
                                    first_line=1)
    assert result_lines(out.stdout) == expected


def test_process_rejections_still_exit_0(run_cli, tmp_path):
    (tmp_path / "bad.jsonl").write_bytes(b"{\n[]\n\xff\xfe\n")
    out = run_cli("process", "bad.jsonl")
    assert out.exit_code == 0
    assert [r["reason"] for r in result_lines(out.stdout)] == ["malformed_json", "invalid_envelope", "malformed_json"]
    assert summary(out.stderr) == (0, 0, 3)


@pytest.mark.parametrize("args", [(), ("-",)])
def test_process_reads_stdin(run_cli, args):
    out = run_cli("process", *args, input=jsonl(entered(id="s1"), b"{", completed(id="s2")))
    assert out.exit_code == 0, out.stderr
    results = result_lines(out.stdout)
    assert [(r["line"], r["id"], r["status"]) for r in results] == [(1, "s1", "accepted"), (2, None, "rejected"),
                                                                    (3, "s2", "accepted")]
    assert all("file" not in r for r in results)
    assert summary(out.stderr) == (2, 0, 1)


def test_process_several_files_carry_file_and_restart_line_numbers(run_cli, tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl(entered(id="a1"), b"{", completed(id="a3")))
    (tmp_path / "b.jsonl").write_bytes(b"\n" + jsonl(entered("l2", id="b2"), entered(id="a1")))
    out = run_cli("process", "a.jsonl", "b.jsonl", "-", input=jsonl(form_submitted(id="c1")))
    assert out.exit_code == 0, out.stderr
    got = [(r["file"], r["line"], r["id"], r["status"]) for r in result_lines(out.stdout)]
    assert got == [("a.jsonl", 1, "a1", "accepted"), ("a.jsonl", 2, None, "rejected"), ("a.jsonl", 3, "a3", "accepted"),
                   ("b.jsonl", 2, "b2", "accepted"), ("b.jsonl", 3, "a1", "duplicate"),
                   ("-", 1, "c1", "accepted")]
    assert list(result_lines(out.stdout)[0]) == ["file", *RESULT_KEYS]
    assert summary(out.stderr) == (4, 1, 1)


def test_blank_lines_are_skipped_but_counted(run_cli, tmp_path):
    (tmp_path / "gaps.jsonl").write_bytes(
        b"\n" + jsonl(entered(id="g2")) + b"   \n\t\n\n" + jsonl(completed(id="g6")) + b"\n \n")
    out = run_cli("process", "gaps.jsonl")
    results = result_lines(out.stdout)
    assert [(r["line"], r["id"]) for r in results] == [(2, "g2"), (6, "g6")]
    assert summary(out.stderr) == (2, 0, 0)


def test_crlf_line_endings_are_fine(run_cli, tmp_path):
    lines = [json.dumps(entered(id="c1")).encode(), b"", b"{broken", json.dumps(completed(id="c2")).encode()]
    (tmp_path / "crlf.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    (tmp_path / "lf.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    crlf = run_cli("process", "crlf.jsonl", "--db", "crlf.db")
    lf = run_cli("process", "lf.jsonl", "--db", "lf.db")
    assert crlf.exit_code == 0
    assert crlf.stdout == lf.stdout
    assert [(r["line"], r["status"]) for r in result_lines(crlf.stdout)] == [(1, "accepted"), (3, "rejected"),
                                                                           (4, "accepted")]
    # the stored rejection is the line without its line ending
    assert rows(tmp_path / "crlf.db", "SELECT raw FROM rejections") == [(b"{broken",)]


def test_the_last_line_needs_no_newline(run_cli, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl(entered(id="n1")) + json.dumps(completed(id="n2")).encode())
    out = run_cli("process", "in.jsonl")
    assert [(r["line"], r["status"]) for r in result_lines(out.stdout)] == [(1, "accepted"), (2, "accepted")]


def test_batch_size_does_not_change_the_output(run_cli, tmp_path):
    events: list[Any] = []
    for n in range(30):
        events += [*flow(f"lead{n % 7}", "w1", f"p{n}"), b"{bad" + str(n % 3).encode(), entered(f"lead{n % 7}", id=f"p{n}-e")]
    (tmp_path / "in.jsonl").write_bytes(jsonl(*events))
    one = run_cli("process", "in.jsonl", "--batch-size", "1", "--db", "one.db")
    default = run_cli("process", "in.jsonl", "--db", "default.db")
    seven = run_cli("process", "in.jsonl", "--batch-size", "7", "--db", "seven.db")
    assert one.exit_code == default.exit_code == seven.exit_code == 0
    assert one.stdout == default.stdout == seven.stdout
    assert len(result_lines(one.stdout)) == len(events)
    assert one.stderr == default.stderr == seven.stderr
    q = "SELECT route_key, state, screen, version FROM routes ORDER BY route_key"
    assert rows(tmp_path / "one.db", q) == rows(tmp_path / "default.db", q) == rows(tmp_path / "seven.db", q)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_batch_size_is_a_usage_error(run_cli, tmp_path, value):
    (tmp_path / "in.jsonl").write_bytes(jsonl(entered()))
    out = run_cli("process", "in.jsonl", "--batch-size", value)
    assert out.exit_code == 2
    assert "--batch-size" in out.stderr and out.stdout == ""


# -- size limits ------------------------------------------------------------------------------------

def test_max_event_bytes(run_cli, tmp_path):
    small = json.dumps(entered(id="small")).encode()
    big = json.dumps({**entered(id="big", ts="2026-02-01T18:30:00Z"), "note": "x" * 200}).encode()
    (tmp_path / "in.jsonl").write_bytes(small + b"\n" + big + b"\n")
    limit = str(len(small) + 10)
    out = run_cli("process", "in.jsonl", "--max-event-bytes", limit)
    first, second = result_lines(out.stdout)
    assert (first["status"], second["status"], second["reason"]) == ("accepted", "rejected", "too_large")
    assert [(e["path"], e["code"]) for e in second["errors"]] == [("", "too_large")]
    assert str(len(big)) in second["errors"][0]["message"] and limit in second["errors"][0]["message"]
    # the same line is fine under the default limit
    again = run_cli("process", "in.jsonl", "--db", "other.db")
    assert [r["status"] for r in result_lines(again.stdout)] == ["accepted", "accepted"]


def test_a_line_exactly_at_the_limit_is_read(run_cli, tmp_path):
    line = json.dumps(entered(id="edge")).encode()
    (tmp_path / "in.jsonl").write_bytes(line + b"\r\n" + b" " + line + b"\n")
    out = run_cli("process", "in.jsonl", "--max-event-bytes", str(len(line)))
    assert [(r["status"], r["reason"]) for r in result_lines(out.stdout)] == [("accepted", None), ("rejected", "too_large")]


def test_a_3_mb_line_is_rejected_too_large_and_kept_as_size_hash_and_head(run_cli, tmp_path):
    huge = b'{"specversion":"1.0","id":"huge","pad":"' + b"\x00\xffab" * (3 * 1024 * 1024 // 4) + b'"}'
    (tmp_path / "in.jsonl").write_bytes(jsonl(entered(id="before")) + huge + b"\n" + jsonl(completed(id="after")))
    out = run_cli("process", "in.jsonl")
    assert out.exit_code == 0, out.stderr
    results = result_lines(out.stdout)
    assert [(r["line"], r["status"], r["reason"]) for r in results] == [
        (1, "accepted", None), (2, "rejected", "too_large"), (3, "accepted", None)]
    assert (results[1]["id"], results[1]["type"]) == (None, None)  # refused without parsing
    assert rows(tmp_path / "webinar-flows.db", "SELECT raw, raw_size, raw_sha256, truncated, reason FROM rejections") == [
        (huge[:65536], len(huge), hashlib.sha256(huge).hexdigest(), 1, "too_large")]
    assert summary(out.stderr) == (2, 0, 1)


def test_an_oversized_crlf_line_is_kept_like_the_same_lf_line(run_cli, tmp_path):
    content = b"a" * 11
    (tmp_path / "lf.jsonl").write_bytes(content + b"\n")
    (tmp_path / "crlf.jsonl").write_bytes(content + b"\r\n")
    run_cli("process", "lf.jsonl", "--max-event-bytes", "10", "--db", "lf.db")
    run_cli("process", "crlf.jsonl", "--max-event-bytes", "10", "--db", "crlf.db")
    q = "SELECT raw, raw_size, raw_sha256 FROM rejections"
    expected = [(content, 11, hashlib.sha256(content).hexdigest())]
    assert rows(tmp_path / "lf.db", q) == expected
    assert rows(tmp_path / "crlf.db", q) == expected


# -- where the database and config come from ----------------------------------------------------------

def test_default_database_is_webinar_flows_db_in_the_cwd(run_cli, tmp_path):
    run_cli("process", "-", input=jsonl(entered(id="d1")))
    assert (tmp_path / "webinar-flows.db").is_file()
    assert rows(tmp_path / "webinar-flows.db", "SELECT id FROM facts") == [("d1",)]


def test_db_option_and_environment(run_cli, tmp_path, monkeypatch):
    out = run_cli("process", "--db", "explicit.db", "-", input=jsonl(entered(id="x1")))
    assert out.exit_code == 0
    monkeypatch.setenv("WEBINAR_FLOWS_DB", str(tmp_path / "from-env.db"))
    run_cli("process", "-", input=jsonl(entered(id="x2")))
    # --db wins over the environment, also as a group option
    run_cli("--db", "group.db", "process", "-", input=jsonl(entered(id="x3")))
    assert rows(tmp_path / "explicit.db", "SELECT id FROM facts") == [("x1",)]
    assert rows(tmp_path / "from-env.db", "SELECT id FROM facts") == [("x2",)]
    assert rows(tmp_path / "group.db", "SELECT id FROM facts") == [("x3",)]
    assert not (tmp_path / "webinar-flows.db").exists()
    # route reads from the same place
    route = run_cli("route", "--lead", "l1", "--webinar", "w1")
    assert json.loads(route.stdout)["history"][0]["event"]["id"] == "x2"
    route = run_cli("route", "--lead", "l1", "--webinar", "w1", "--db", "explicit.db")
    assert json.loads(route.stdout)["history"][0]["event"]["id"] == "x1"


def test_a_command_option_wins_over_the_group_option(run_cli, tmp_path, config_copy):
    add_registered_emitter(config_copy)
    reg = jsonl(registered(id="reg1", source="client-registration-form"))
    out = run_cli("--db", "group.db", "--config", str(tmp_path / "nowhere"), "process", "-", "--db", "cmd.db",
                  "--config", str(config_copy), input=reg)
    assert result_lines(out.stdout)[0]["status"] == "accepted", out.output
    assert rows(tmp_path / "cmd.db", "SELECT id FROM facts") == [("reg1",)]
    assert not (tmp_path / "group.db").exists()
    # and the group's option is used when the command gives none
    route = run_cli("--db", "cmd.db", "--config", str(config_copy), "route", "--lead", "l1", "--webinar", "w1")
    assert json.loads(route.stdout)["config_hash"] == load_config(config_copy).hash


def test_a_database_that_cannot_be_opened_fails_the_run(run_cli, tmp_path):
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    for args in (("process", "-"), ("route", "--lead", "l1", "--webinar", "w1"), ("evaluate", "--webinar", "w1")):
        out = run_cli(*args, "--db", "notes.db", input=jsonl(entered()))
        assert out.exit_code == 1, args
        assert "notes.db" in out.stderr and out.stdout == ""
    out = run_cli("process", "-", "--db", "missing/dir/x.db", input=jsonl(entered()))
    assert out.exit_code == 1 and "x.db" in out.stderr


def test_config_option_on_commands(run_cli, tmp_path, config_copy):
    add_registered_emitter(config_copy)
    reg = registered(id="reg1", source="client-registration-form")
    default = run_cli("process", "-", "--db", "default.db", input=jsonl(reg))
    assert result_lines(default.stdout)[0]["reason"] == "unauthorized_emitter"
    custom = run_cli("process", "-", "--db", "custom.db", "--config", str(config_copy), input=jsonl(reg))
    result = result_lines(custom.stdout)[0]
    assert (result["status"], result["route"]["state"]) == ("accepted", "registered")
    # as a group option too
    group = run_cli("--config", str(config_copy), "process", "-", "--db", "group.db", input=jsonl(reg))
    assert result_lines(group.stdout)[0]["status"] == "accepted"
    # route and evaluate take it as well and report that config's hash
    route = json.loads(run_cli("route", "--lead", "l1", "--webinar", "w1", "--db", "custom.db",
                               "--config", str(config_copy)).stdout)
    assert route["config_hash"] == load_config(config_copy).hash
    ev = run_cli("evaluate", "--webinar", "w1", "--db", "custom.db", "--config", str(config_copy),
                 "--at", "2026-02-02T00:00:00Z")
    assert ev.exit_code == 0
    assert json.loads(ev.stdout) == {"lead_id": "l1", "webinar_id": "w1", "attended": None, "emitted": []}


def test_config_from_environment_and_from_the_cwd(run_cli, tmp_path, config_copy, monkeypatch):
    add_registered_emitter(config_copy)
    reg = jsonl(registered(id="reg1", source="client-registration-form"))
    monkeypatch.setenv("WEBINAR_FLOWS_CONFIG", str(config_copy))
    assert result_lines(run_cli("process", "-", "--db", "env.db", input=reg).stdout)[0]["status"] == "accepted"
    monkeypatch.delenv("WEBINAR_FLOWS_CONFIG")
    for item in config_copy.iterdir():  # the cwd (tmp_path) now holds states.yaml
        target = tmp_path / item.name
        target.symlink_to(item, target_is_directory=item.is_dir())
    assert result_lines(run_cli("process", "-", "--db", "cwd.db", input=reg).stdout)[0]["status"] == "accepted"


def test_a_broken_config_fails_the_run(run_cli, tmp_path, config_copy):
    (config_copy / "states.yaml").write_text("initial: [\n")
    out = run_cli("process", "-", "--config", str(config_copy), input=jsonl(entered()))
    assert out.exit_code == 1
    assert "states.yaml" in out.stderr and out.stdout == ""


def test_a_missing_input_file_fails_the_run(run_cli):
    out = run_cli("process", "nope.jsonl")
    assert out.exit_code == 1
    assert "nope.jsonl" in out.stderr and out.stdout == ""


# -- evaluate ----------------------------------------------------------------------------------------

def _seed(run_cli: Any) -> None:
    events = [entered("a", id="a-e"), entered("b", id="b-e"), completed("b", id="b-c"), entered("c", "w2", id="c-e")]
    out = run_cli("process", "-", input=jsonl(*events))
    assert summary(out.stderr) == (4, 0, 0)


def test_evaluate_every_lead_of_a_webinar(run_on):
    _seed(run_on)
    out = run_on("evaluate", "--webinar", "w1", "--at", "2026-02-02T00:00:00Z")
    assert out.exit_code == 0, out.stderr
    lines = result_lines(out.stdout)
    assert [list(line) for line in lines] == [["lead_id", "webinar_id", "attended", "emitted"]] * 2
    a, b = lines
    assert (a["lead_id"], a["webinar_id"], a["attended"]) == ("a", "w1", False)
    assert [(e["type"], e["source"], e["data"]) for e in a["emitted"]] == [
        ("client_webinar_attendance_classified", "attendance-classifier",
         {"lead_id": "a", "webinar_id": "w1", "attended": False, "timestamp": "2026-02-02T00:00:00Z"}),
        ("post_webinar_route", "post-webinar-routing-service",
         {"lead_id": "a", "webinar_id": "w1", "attended": False, "timestamp": "2026-02-02T00:00:00Z",
          "status": "not_attended"}),
    ]
    assert all(e["specversion"] == "1.0" and e["id"] for e in a["emitted"])
    assert (b["lead_id"], b["attended"], b["emitted"]) == ("b", True, [])
    # evaluating again derives nothing new
    again = result_lines(run_on("evaluate", "--webinar", "w1", "--at", "2026-02-02T00:00:00Z").stdout)
    assert [(x["lead_id"], x["attended"], x["emitted"]) for x in again] == [("a", False, []), ("b", True, [])]


def test_evaluate_one_lead(run_on):
    _seed(run_on)
    out = run_on("evaluate", "--webinar", "w1", "--lead", "a", "--at", "2026-02-02T03:00:00+03:00")
    (line,) = result_lines(out.stdout)
    assert (line["lead_id"], line["attended"]) == ("a", False)
    assert line["emitted"][0]["data"]["timestamp"] == "2026-02-02T00:00:00Z"  # --at as UTC
    other = result_lines(run_on("evaluate", "--webinar", "w2").stdout)
    assert [(x["lead_id"], x["webinar_id"], x["attended"]) for x in other] == [("c", "w2", False)]
    assert result_lines(run_on("evaluate", "--webinar", "nobody-here").stdout) == []


def test_evaluate_defaults_to_now(run_cli):
    _seed(run_cli)
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    out = run_cli("evaluate", "--webinar", "w1", "--lead", "a")
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    (line,) = result_lines(out.stdout)
    stamp = line["emitted"][0]["data"]["timestamp"]
    assert stamp.endswith("Z")
    assert before <= datetime.fromisoformat(stamp.replace("Z", "+00:00")) <= after


@pytest.mark.parametrize("at", ["yesterday", "2026-13-01T00:00:00Z", "", "18:00"])
def test_evaluate_with_a_bad_at_is_a_usage_error(run_cli, at):
    _seed(run_cli)
    out = run_cli("evaluate", "--webinar", "w1", "--at", at)
    assert out.exit_code == 2
    assert "--at" in out.stderr and out.stdout == ""
    # and nothing was evaluated
    assert result_lines(run_cli("evaluate", "--webinar", "w1", "--lead", "b", "--at", "2026-03-01T00:00:00Z").stdout)[0][
        "emitted"] == []


@pytest.mark.parametrize("at", ["2026-W05-1", "20260201T180000Z"])
def test_evaluate_at_must_be_rfc_3339(run_cli, at):
    out = run_cli("evaluate", "--webinar", "w1", "--at", at)
    assert out.exit_code == 2 and "--at" in out.stderr


def test_evaluate_needs_a_webinar(run_cli):
    out = run_cli("evaluate", "--lead", "a")
    assert out.exit_code == 2 and "--webinar" in out.stderr


# -- route ---------------------------------------------------------------------------------------------

def test_route_prints_state_screen_hash_and_history(run_on):
    run_on("process", "-", input=jsonl(entered(id="r-e"), completed(id="r-c"), form_submitted(id="r-f"),
                                        form_submitted(id="r-f2", form="f2")))
    out = run_on("route", "--lead", "l1", "--webinar", "w1")
    assert out.exit_code == 0, out.stderr
    route = json.loads(out.stdout)
    assert list(route) == ["lead_id", "webinar_id", "state", "screen", "config_hash", "history"]
    assert (route["lead_id"], route["webinar_id"], route["state"], route["screen"]) == (
        "l1", "w1", "form_submitted", "post_webinar_thanks")
    assert re.fullmatch(r"[0-9a-f]{64}", route["config_hash"])
    assert [list(h) for h in route["history"]] == [["from", "to", "event", "at"]] * 4
    assert [(h["from"], h["to"], h["event"]) for h in route["history"]] == [
        ("new", "in_webinar", {"source": TRACKER, "id": "r-e", "type": "client_webinar_entered"}),
        ("in_webinar", "completed", {"source": TRACKER, "id": "r-c", "type": "client_webinar_completed"}),
        ("completed", "form_submitted", {"source": TRACKER, "id": "r-f", "type": "client_webinar_form_submitted"}),
        ("form_submitted", "form_submitted",
         {"source": TRACKER, "id": "r-f2", "type": "client_webinar_form_submitted"}),
    ]
    for h in route["history"]:
        datetime.fromisoformat(h["at"].replace("Z", "+00:00"))


def test_route_that_does_not_exist_exits_1(run_on):
    run_on("process", "-", input=jsonl(entered(id="r-e")))
    out = run_on("route", "--lead", "someone-else", "--webinar", "w1")
    assert out.exit_code == 1
    assert out.stdout == ""
    assert "someone-else" in out.stderr


def test_route_in_a_state_the_config_no_longer_declares(run_cli, config_copy):
    run_cli("process", "-", input=jsonl(entered(id="u-e")))
    states = config_copy / "states.yaml"
    states.write_text(states.read_text("utf-8").replace("in_webinar", "in_room"), "utf-8")
    out = run_cli("route", "--lead", "l1", "--webinar", "w1", "--config", str(config_copy))
    assert out.exit_code == 0
    route = json.loads(out.stdout)
    assert route["state"] == "in_webinar"
    assert route["problem"]["code"] == "unknown_state" and route["problem"]["message"]


@pytest.mark.parametrize("args", [("route", "--lead", "l1"), ("route", "--webinar", "w1")])
def test_route_needs_lead_and_webinar(run_cli, args):
    out = run_cli(*args)
    assert out.exit_code == 2


# -- help and version ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "words"), [
    ((), ["validate", "process", "evaluate", "route", "--config", "--db", "--version"]),
    (("validate",), ["--config", "--format", "exit"]),
    (("process",), ["FILES", "stdin", "--batch-size", "--max-event-bytes", "--db", "--config", "accepted", "summary"]),
    (("evaluate",), ["--webinar", "--lead", "--key", "FIELD=VALUE", "--at", "RFC 3339", "--db", "--config"]),
    (("route",), ["--lead", "--webinar", "--key", "FIELD=VALUE", "history", "--db", "--config"]),
    (("explain",), ["--lead", "--webinar", "--key", "FIELD=VALUE", "--format", "--db", "--config"]),
])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_for_every_command(run_cli, command, words, flag):
    out = run_cli(*command, flag)
    assert out.exit_code == 0
    assert out.stdout.startswith("Usage: ")
    for word in words:
        assert word in out.stdout, word
    assert not (Path.cwd() / "webinar-flows.db").exists()  # help opens no database


def test_version(run_cli):
    out = run_cli("--version")
    assert out.exit_code == 0
    assert out.stdout.strip() == f"webinar-flows, version {version('webinar-flows')}"


# -- the installed console script, in real processes --------------------------------------------------

def test_subprocess_help_version_and_usage_errors(tmp_path):
    assert WF.is_file()
    help_ = wf("--help", cwd=tmp_path)
    assert help_.returncode == 0 and b"process" in help_.stdout
    assert wf("--version", cwd=tmp_path).stdout.decode().strip() == f"webinar-flows, version {version('webinar-flows')}"
    bad = wf("evaluate", "--webinar", "w1", "--at", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and b"--at" in bad.stderr and bad.stdout == b""


def test_help_lists_every_command_and_validate_starts_without_the_governance_tools():
    """The governance commands load on first use (start-up is a goal in docs/PERFORMANCE.md),
    yet --help lists them all and each runs."""
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from cli.main import cli\n"
        "out = CliRunner().invoke(cli, ['validate'])\n"
        "assert out.exit_code == 0, out.output\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('cli.commands.') or m in\n"
        "                ('engine.governance.diagram', 'engine.governance.document', 'engine.governance.compat', 'engine.governance.replay'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    listed = subprocess.run([str(WF), "--help"], capture_output=True, text=True, timeout=60).stdout
    names = {line.split()[0] for line in listed.split("Commands:")[1].splitlines() if line.strip()}
    assert names == {"validate", "process", "evaluate", "route", *COMMANDS}
    assert {"docs", "graph", "schema", "diff", "rejections", "reprocess", "replay", "explain"} <= names
    for name in sorted(names):
        shown = subprocess.run([str(WF), name, "--help"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout.startswith(f"Usage: webinar-flows {name} "), name


def test_subprocess_process_stdin_file_and_default_db(tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl(entered(id="sp1"), b"{", completed(id="sp2")))
    run = wf("process", "in.jsonl", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [(r["line"], r["status"]) for r in result_lines(run.stdout.decode())] == [
        (1, "accepted"), (2, "rejected"), (3, "accepted")]
    assert summary(run.stderr.decode()) == (2, 0, 1)
    assert (tmp_path / "webinar-flows.db").is_file()
    piped = wf("process", cwd=tmp_path, input=jsonl(entered(id="sp1"), form_submitted(id="sp3")))
    assert [(r["line"], r["status"], r["reason"]) for r in result_lines(piped.stdout.decode())] == [
        (1, "duplicate", "same_envelope"), (2, "accepted", None)]


def test_subprocess_database_from_environment(tmp_path):
    env = clean_env(WEBINAR_FLOWS_DB=str(tmp_path / "env.db"))
    run = wf("process", "-", cwd=tmp_path, env=env, input=jsonl(entered(id="env1")))
    assert run.returncode == 0
    assert rows(tmp_path / "env.db", "SELECT id FROM facts") == [("env1",)]
    assert not (tmp_path / "webinar-flows.db").exists()


def test_subprocess_a_lone_surrogate_id_does_not_kill_the_run(tmp_path):
    bad = b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"t","data":{}}'
    run = wf("process", "-", cwd=tmp_path, input=jsonl(entered(id="ok1")) + bad + b"\n" + jsonl(completed(id="ok2")))
    assert run.returncode == 0, run.stderr.decode()[-500:]
    assert [r["status"] for r in result_lines(run.stdout.decode())] == ["accepted", "rejected", "accepted"]
    assert b"Traceback" not in run.stderr


def test_subprocess_route_history_across_processes(tmp_path):
    db = tmp_path / "shared.db"
    assert wf("process", "-", "--db", db, cwd=tmp_path, input=jsonl(entered(id="x-e"))).returncode == 0
    assert wf("process", "-", "--db", db, cwd=tmp_path,
              input=jsonl(completed(id="x-c"), entered(id="x-e"))).returncode == 0
    assert wf("process", "-", "--db", db, cwd=tmp_path, input=jsonl(form_submitted(id="x-f"))).returncode == 0
    run = wf("route", "--lead", "l1", "--webinar", "w1", "--db", db, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    route = json.loads(run.stdout)
    assert route["state"] == "form_submitted"
    assert [(h["from"], h["to"], h["event"]["id"]) for h in route["history"]] == [
        ("new", "in_webinar", "x-e"), ("in_webinar", "completed", "x-c"), ("completed", "form_submitted", "x-f")]
    missing = wf("route", "--lead", "nobody", "--webinar", "w1", "--db", db, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout == b"" and b"nobody" in missing.stderr


def _concurrent_inputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Two streams of 2000 events: each its own leads, plus the same 600 shared events in the same order."""
    shared = [e for i in range(200) for e in flow(f"shared-{i}", "w1", f"sh{i}")]
    streams = []
    for tag in ("a", "b"):
        own = [e for i in range(467) for e in flow(f"{tag}-{i}", "w1", f"{tag}{i}")][:1400]
        mixed: list[dict[str, Any]] = []
        for i in range(1400):
            mixed.append(own[i])
            if i < 600:
                mixed.append(shared[i])
        streams.append(mixed)
    return streams[0], streams[1], shared


def _routes(db: Path) -> dict[str, tuple]:
    return {key: (state, screen) for key, state, screen in rows(db, "SELECT route_key, state, screen FROM routes")}


def _histories(db: Path) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for key, *step in rows(db, "SELECT route_key, from_state, to_state, event_source, event_id, event_type"
                               " FROM route_history ORDER BY seq"):
        out.setdefault(key, []).append(tuple(step))
    return out


@pytest.mark.slow
def test_subprocess_two_processes_write_one_database_at_once(tmp_path):
    a, b, shared = _concurrent_inputs()
    assert len(a) == len(b) == 2000
    (tmp_path / "a.jsonl").write_bytes(jsonl(*a))
    (tmp_path / "b.jsonl").write_bytes(jsonl(*b))
    db = tmp_path / "shared.db"
    # the database exists before the two start: what is under test is writing at once (two processes
    # creating one new file at once is covered in test_pipeline and test_concurrency)
    assert wf("process", "-", "--db", db, cwd=tmp_path, input=b"").returncode == 0

    procs = []
    for name in ("a", "b"):
        out, err = (tmp_path / f"{name}.out").open("wb"), (tmp_path / f"{name}.err").open("wb")
        procs.append((subprocess.Popen([str(WF), "process", f"{name}.jsonl", "--db", str(db), "--batch-size", "25"],
                                       cwd=tmp_path, stdout=out, stderr=err, env=clean_env()), out, err))
    for proc, out, err in procs:
        assert proc.wait(timeout=120) == 0, (tmp_path / "a.err").read_text() + (tmp_path / "b.err").read_text()
        out.close()
        err.close()

    totals = [0, 0, 0]
    by_id: dict[str, list[str]] = {}
    for name, events in (("a", a), ("b", b)):
        stderr = (tmp_path / f"{name}.err").read_text()
        assert "locked" not in stderr and "Traceback" not in stderr
        results = result_lines((tmp_path / f"{name}.out").read_text())
        assert [r["line"] for r in results] == list(range(1, 2001))  # exactly one result per line, in order
        assert [r["id"] for r in results] == [e["id"] for e in events]
        assert {r["status"] for r in results} <= {"accepted", "duplicate"}
        counted = summary(stderr)
        assert counted == (sum(r["status"] == "accepted" for r in results),
                           sum(r["status"] == "duplicate" for r in results), 0)
        totals = [t + c for t, c in zip(totals, counted, strict=True)]
        for r in results:
            by_id.setdefault(r["id"], []).append(r["status"] if r["status"] == "accepted" else r["reason"])
    assert totals == [2800 + 600, 600, 0]
    for e in shared:  # each shared event accepted by exactly one process, a duplicate for the other
        assert sorted(by_id[e["id"]]) == ["accepted", "same_envelope"], e["id"]
    for e in a[:10] + b[-10:]:
        if not e["id"].startswith("sh"):
            assert by_id[e["id"]] == ["accepted"]

    # the same events one after the other give the same routes and the same history per route
    serial = tmp_path / "serial.db"
    with Engine.open(db=serial) as eng:
        eng.process_many(a)
        eng.process_many(b)
    assert _routes(db) == _routes(serial)
    assert len(_routes(db)) == len({e["data"]["lead_id"] for e in a + b}) == 2 * 467 + 200
    assert _histories(db) == _histories(serial)
    assert rows(db, "SELECT count(*) FROM facts") == rows(serial, "SELECT count(*) FROM facts")
    assert rows(db, "SELECT count(*) FROM inputs") == [(4000,)]


def test_result_lines_are_compact_utf8_json_and_never_fail_to_print(capsysbinary):
    from cli.output import print_json as _print

    _print({"id": "é", "n": [1, 2.5], "ok": True, "none": None})
    _print({"big": 2**70, "lone": "\ud800"})  # orjson refuses both; the standard encoder escapes to ASCII
    out = capsysbinary.readouterr().out
    assert out == b'{"id":"\xc3\xa9","n":[1,2.5],"ok":true,"none":null}\n{"big":1180591620717411303424,"lone":"\\ud800"}\n'
    assert [json.loads(line) for line in out.splitlines()][1] == {"big": 2**70, "lone": "\ud800"}


def test_every_command_takes_config_and_db_after_its_name() -> None:
    """DESIGN: every command takes --config and --db (before or after its name); `send` (a client
    of a server) and the `keys` group (a keys file) are the documented exceptions."""
    from click.testing import CliRunner

    from cli.main import cli

    runner = CliRunner()
    missing = []
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            continue
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        wanted = set() if name == "send" else {"--config", "--db"}
        if not wanted <= options:
            missing.append((name, sorted(wanted - options)))
    assert missing == []
    assert runner.invoke(cli, ["docs", "--db", "x.db"]).exit_code == 0


def test_evaluate_takes_any_rfc3339_fraction_as_payloads_do(run_cli):
    """RFC 3339 allows any number of fraction digits, and payload date-times take them: so does --at
    (the evaluation time is kept to the microsecond)."""
    _seed(run_cli)
    out = run_cli("evaluate", "--webinar", "w1", "--lead", "a", "--at", "2026-02-02T00:00:00.123456789Z")
    assert out.exit_code == 0, out.stderr
    emitted = result_lines(out.stdout)[0]["emitted"]
    assert emitted and emitted[0]["data"]["timestamp"] == "2026-02-02T00:00:00.123456Z"
