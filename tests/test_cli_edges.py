"""The command line at its edges: standard input that is closed or unreadable, a --db that names
no database, and configs whose route key is not (lead_id, webinar_id).

Each test here failed before its fix: `process <&-` ended in an AttributeError traceback, the
read-only commands created an empty database at a mistyped --db and answered "no route", and
route, explain and evaluate passed lead_id/webinar_id to the engine whatever the config's key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import entered, jsonl, result_lines

WF = Path(sys.executable).parent / "webinar-flows"


def _shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` under sh with $WF set to the console script (for redirections like <&-)."""
    return subprocess.run(["sh", "-c", script], cwd=cwd, env={"WF": str(WF), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60, check=False)


# -- standard input closed or unreadable ------------------------------------------------------------

@pytest.mark.parametrize("args", ["", " -", " events.jsonl -"])
def test_process_with_standard_input_closed_says_so(tmp_path, args):
    (tmp_path / "events.jsonl").write_bytes(jsonl(entered(id="c1")))
    run = _shell(f'"$WF" process --db x.db{args} <&-', tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "error: standard input is closed" in run.stderr
    assert run.stdout == ""
    assert not (tmp_path / "x.db").exists()  # refused before the database was touched


def test_process_with_standard_input_unreadable_says_so(tmp_path):
    # fd 0 open for writing only: reading it fails with EBADF
    run = _shell('"$WF" process --db x.db 0>/dev/null', tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "error: cannot read standard input" in run.stderr
    assert run.stderr.rstrip().splitlines()[-1] == "0 accepted, 0 duplicate, 0 rejected before the failure"


def test_a_reader_that_goes_away_ends_the_run_saying_so_and_what_was_committed(tmp_path):
    """`process ... | head -1`: the pipe closes after one line; the run stops with one clear line
    and the counts of what it committed (the whole batch in flight), no traceback."""
    (tmp_path / "events.jsonl").write_bytes(b"".join(jsonl(entered(id=f"p{i}", lead=f"lead-{i}"))
                                                     for i in range(3000)))
    run = _shell('{ "$WF" process events.jsonl --db x.db --batch-size 1000 2>err.txt; echo "status $?" >rc.txt; } '
                 '| head -1 >/dev/null; cat rc.txt err.txt', tmp_path)
    assert "Traceback" not in run.stdout and "Exception ignored" not in run.stdout
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "status 1"
    assert lines[1] == ("error: standard output was closed before the command ended (the reader of the pipe "
                        "went away); nothing more was written")
    committed = lines[2]
    assert committed.endswith(" accepted, 0 duplicate, 0 rejected before the failure")
    import sqlite3

    conn = sqlite3.connect(tmp_path / "x.db")
    stored = conn.execute("SELECT count(*) FROM stored_inputs").fetchone()[0]
    conn.close()
    assert committed == f"{stored} accepted, 0 duplicate, 0 rejected before the failure"
    assert stored % 1000 == 0 and stored < 3000  # whole batches, and not the whole file


@pytest.mark.parametrize("redirect", [">/dev/full", ">&-"])
def test_feed_that_cannot_write_says_so_and_keeps_its_cursor(tmp_path, redirect):
    from test_consumers_config import with_consumers

    with_consumers(tmp_path / "config")
    (tmp_path / "events.jsonl").write_bytes(Path(__file__).parent.parent.joinpath("examples", "events.jsonl")
                                            .read_bytes())
    made = _shell('"$WF" process --config config --db x.db events.jsonl >/dev/null', tmp_path)
    assert made.returncode == 0, made.stderr
    before = _shell('"$WF" feed reminder-sender --config config --db x.db --no-ack', tmp_path).stdout
    assert before.count("\n") > 1
    run = _shell(f'"$WF" feed reminder-sender --config config --db x.db {redirect}', tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr
    assert run.stderr.rstrip().splitlines()[-1].startswith("error: standard output cannot be written (")
    after = _shell('"$WF" feed reminder-sender --config config --db x.db --no-ack', tmp_path).stdout
    assert after == before  # nothing was acknowledged


@pytest.mark.parametrize("redirect", [">/dev/full", ">&-"])
def test_any_command_that_cannot_write_its_output_says_so_in_one_line(tmp_path, redirect):
    made = _shell('"$WF" keys new site-1 --emitter client-webinar-tracker-v2 --keys k.toml >/dev/null', tmp_path)
    assert made.returncode == 0, made.stderr
    for command in ("keys list --keys k.toml", "validate"):
        run = _shell(f'"$WF" {command} {redirect}', tmp_path)
        assert run.returncode == 1, (command, run.stderr)
        assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, command
        assert run.stderr.rstrip().splitlines()[-1].startswith("error: standard output cannot be written ("), command


def test_process_reads_files_with_standard_input_closed(tmp_path):
    (tmp_path / "events.jsonl").write_bytes(jsonl(entered(id="c1")))
    run = _shell('"$WF" process --db x.db events.jsonl <&-', tmp_path)
    assert run.returncode == 0, run.stderr
    assert [r["id"] for r in result_lines(run.stdout)] == ["c1"]


# -- a --db that names no database ----------------------------------------------------------------

READERS = [
    ("route", "--lead", "l1", "--webinar", "w1"),
    ("explain", "--lead", "l1", "--webinar", "w1"),
    ("rejections",),
    ("evaluate", "--webinar", "w1"),
    ("reprocess",),
]


@pytest.mark.parametrize("args", READERS, ids=[a[0] for a in READERS])
@pytest.mark.parametrize("where", ["command", "group", "environment"])
def test_read_only_commands_refuse_a_database_that_does_not_exist(run_cli, tmp_path, monkeypatch, args, where):
    run_cli("process", "-", "--db", "real.db", input=jsonl(entered(id="r1")))
    if where == "command":
        out = run_cli(*args, "--db", "typo.db")
    elif where == "group":
        out = run_cli("--db", "typo.db", *args)
    else:
        monkeypatch.setenv("WEBINAR_FLOWS_DB", str(tmp_path / "typo.db"))
        out = run_cli(*args)
    assert out.exit_code == 1, out.output
    assert "typo.db" in out.stderr and "does not exist" in out.stderr
    assert out.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir() if "typo" in p.name) == []
    # the real one still answers
    assert run_cli(*args, "--db", "real.db").exit_code == 0


# -- a route key other than (lead_id, webinar_id) --------------------------------------------------

@pytest.fixture
def contact_config(config_copy: Path) -> Path:
    """The default config with lead_id renamed contact_id everywhere: route key (contact_id, webinar_id)."""
    for path in [*config_copy.glob("*.yaml"), *config_copy.glob("rules/*.yaml")]:
        path.write_text(path.read_text("utf-8").replace("lead_id", "contact_id"), "utf-8")
    assert "key: [contact_id, webinar_id]" in (config_copy / "states.yaml").read_text("utf-8")
    return config_copy


def _contact_entered(contact: str, webinar: str, id: str) -> dict:
    event = entered(None, webinar, id=id)
    event["data"]["contact_id"] = contact
    return event


@pytest.fixture
def contacts(run_cli, contact_config: Path):
    """run_cli with the contact config, after two contacts entered webinar w1 and one w2."""
    events = [_contact_entered("c1", "w1", "e1"), _contact_entered("c2", "w1", "e2"), _contact_entered("c3", "w2", "e3")]
    out = run_cli("--config", str(contact_config), "process", "-", input=jsonl(*events))
    assert [r["status"] for r in result_lines(out.stdout)] == ["accepted"] * 3, out.output

    def invoke(*args: str):
        return run_cli("--config", str(contact_config), *args)

    return invoke


def test_route_with_another_route_key(contacts):
    out = contacts("route", "--key", "contact_id=c1", "--webinar", "w1")
    assert out.exit_code == 0, out.output
    route = json.loads(out.stdout)
    assert list(route)[:4] == ["contact_id", "webinar_id", "state", "screen"]
    assert (route["contact_id"], route["webinar_id"], route["state"]) == ("c1", "w1", "in_webinar")
    same = contacts("route", "--key", "webinar_id=w1", "--key", "contact_id=c1")
    assert json.loads(same.stdout) == route
    missing = contacts("route", "--key", "contact_id=nobody", "--webinar", "w1")
    assert missing.exit_code == 1 and "no route for contact 'nobody' on webinar 'w1'" in missing.stderr


def test_explain_with_another_route_key(contacts):
    out = contacts("explain", "--key", "contact_id=c2", "--webinar", "w1", "--format", "json")
    assert out.exit_code == 0, out.output
    story = json.loads(out.stdout)
    assert story["key"] == {"contact_id": "c2", "webinar_id": "w1"}
    assert [s["event"]["id"] for s in story["story"]] == ["e2"]
    text = contacts("explain", "--key", "contact_id=c2", "--webinar", "w1")
    assert text.stdout.startswith("contact_id=c2, webinar_id=w1 ")


def test_evaluate_with_another_route_key(contacts):
    out = contacts("evaluate", "--webinar", "w1", "--at", "2026-02-02T00:00:00Z")
    assert out.exit_code == 0, out.output
    lines = result_lines(out.stdout)
    assert [(x["contact_id"], x["webinar_id"], x["attended"]) for x in lines] == [("c1", "w1", False),
                                                                                  ("c2", "w1", False)]
    one = result_lines(contacts("evaluate", "--webinar", "w2", "--key", "contact_id=c3").stdout)
    assert [(x["contact_id"], x["webinar_id"]) for x in one] == [("c3", "w2")]


@pytest.mark.parametrize("args", [("route", "--lead", "c1", "--webinar", "w1"),
                                  ("explain", "--lead", "c1", "--webinar", "w1"),
                                  ("evaluate", "--lead", "c1", "--webinar", "w1"),
                                  ("route", "--key", "lead_id=c1", "--webinar", "w1")])
def test_a_field_the_route_key_lacks_is_a_usage_error(contacts, args):
    out = contacts(*args)
    assert out.exit_code == 2, out.output
    assert "lead_id" in out.stderr and "contact_id, webinar_id" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(("args", "words"), [
    (("route", "--webinar", "w1"), ["--key contact_id=VALUE"]),
    (("explain", "--key", "contact_id=c1"), ["--webinar"]),
    (("evaluate", "--key", "contact_id=c1"), ["--webinar"]),
    (("route", "--key", "contact_id"), ["FIELD=VALUE"]),
    (("route", "--key", "contact_id=c1", "--key", "contact_id=c2", "--webinar", "w1"), ["contact_id", "twice"]),
])
def test_a_missing_or_malformed_key_field_is_a_usage_error(contacts, args, words):
    out = contacts(*args)
    assert out.exit_code == 2, out.output
    for word in words:
        assert word in out.stderr
    assert out.stdout == ""


def test_key_option_names_the_default_key_fields_too(run_cli):
    run_cli("process", "-", input=jsonl(entered(id="k1")))
    by_key = run_cli("route", "--key", "lead_id=l1", "--key", "webinar_id=w1")
    assert by_key.exit_code == 0, by_key.output
    assert json.loads(by_key.stdout) == json.loads(run_cli("route", "--lead", "l1", "--webinar", "w1").stdout)
    twice = run_cli("route", "--lead", "l1", "--key", "lead_id=l2", "--webinar", "w1")
    assert twice.exit_code == 2 and "lead_id" in twice.stderr and "twice" in twice.stderr


def test_an_integer_key_field_is_matched_as_an_integer(run_cli, config_copy):
    """A key field the payloads declare as an integer: --webinar 7 names webinar_id 7, not "7"."""
    for path in [config_copy / "events.yaml", *config_copy.glob("rules/*.yaml")]:
        text = path.read_text("utf-8")
        path.write_text(text.replace("webinar_id: {type: string, minLength: 1,", "webinar_id: {type: integer,"), "utf-8")
    assert "webinar_id: {type: integer," in (config_copy / "events.yaml").read_text("utf-8")
    config = ("--config", str(config_copy))
    event = entered("l1", "w", id="i1")
    event["data"]["webinar_id"] = 7
    out = run_cli(*config, "process", "-", input=jsonl(event))
    assert result_lines(out.stdout)[0]["status"] == "accepted", out.output
    route = run_cli(*config, "route", "--lead", "l1", "--webinar", "7")
    assert route.exit_code == 0, route.output
    assert json.loads(route.stdout)["webinar_id"] == 7
    story = run_cli(*config, "explain", "--key", "lead_id=l1", "--key", "webinar_id=7", "--format", "json")
    assert json.loads(story.stdout)["key"] == {"lead_id": "l1", "webinar_id": 7}
    (line,) = result_lines(run_cli(*config, "evaluate", "--webinar", "7", "--at", "2026-02-02T00:00:00Z").stdout)
    assert (line["lead_id"], line["webinar_id"], line["attended"]) == ("l1", 7, False)
    bad = run_cli(*config, "route", "--lead", "l1", "--webinar", "seven")
    assert bad.exit_code == 2 and "webinar_id is an integer" in bad.stderr
