"""Faults around the database file: each a clear error naming the file, exit 1, no partial write,
and a rerun once the fault is lifted that ends where an undisturbed run ends.

The input is a seeded stream of EVENTS realistic events (bench/generate.py). `baseline` is the
state an undisturbed `webinar-flows process` leaves (tests/dbstate.py: the comparable rows of
every table). Faults:

- the database directory is missing, or read-only (CI runs as root, which ignores permissions:
  the child drops the privilege that lets root write anywhere, and proves, in the same process
  and before it runs the CLI, that it cannot create a file in that directory);
- the disk fills up (RLIMIT_FSIZE in the child, SIGXFSZ ignored, so writes fail with EFBIG):
  mid-run, and while the schema is being created; through the CLI and through the API;
- the file is from a newer schema version, random bytes, a valid header followed by garbage,
  a valid database truncated in the middle, or another application's SQLite database.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.generate import stream
from dbstate import integrity, snapshot
from engine import Engine, StoreError

CLI = str(Path(sys.executable).parent / "webinar-flows")
ROOT = Path(__file__).resolve().parent.parent
EVENTS = 2_000
SEED = 31
NOBODY = 65534
PROBE_FAILED = 97  # exit code of PROBE when the "read-only" directory turned out writable


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp dirs are 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="wf-faults-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir() and not sub.is_symlink():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def events_file(workdir: Path) -> Path:
    path = workdir / "stream.jsonl"
    path.write_text("".join(line + "\n" for line in stream(EVENTS, 200, seed=SEED)), "utf-8")
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def first_half(workdir: Path, events_file: Path) -> Path:
    path = workdir / "first-half.jsonl"
    lines = events_file.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[: EVENTS // 2]))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def baseline_db(workdir: Path, events_file: Path) -> Path:
    """The whole stream processed undisturbed."""
    db = workdir / "baseline" / "base.db"
    db.parent.mkdir()
    done = process(db, events_file)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == EVENTS
    return db


@pytest.fixture(scope="module")
def baseline(baseline_db: Path) -> dict[str, list[tuple[Any, ...]]]:
    state = snapshot(baseline_db)
    assert len(state["facts"]) > EVENTS // 2 and len(state["routes"]) > 100 and state["rejections"]
    return state


@pytest.fixture(scope="module")
def half_db(workdir: Path, first_half: Path) -> Path:
    """A database holding the first half of the stream (a template: copy it before use)."""
    db = workdir / "half" / "half.db"
    db.parent.mkdir()
    done = process(db, first_half)
    assert done.returncode == 0, done.stderr
    return db


# ------------------------------------------------------------------------------- helpers

def process(db: Path, events: Path, *, batch_size: int | None = None, preexec_fn: Callable[[], None] | None = None,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [*(prefix or []), CLI, "process", str(events), "--db", str(db)]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn,
                          stdin=subprocess.DEVNULL, cwd=events.parent)


def assert_refused(run: subprocess.CompletedProcess[str], db: Path, *hints: str) -> None:
    """Exit 1, `error: <db path>: ...` on stderr, no traceback."""
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.startswith(f"error: {db}"), run.stderr[-2000:]
    for hint in hints:
        assert hint in run.stderr, run.stderr[-2000:]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siblings(db: Path) -> list[str]:
    """The -wal, -shm and -journal files next to `db`."""
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name + "-"))


def copy_db(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


# Every row that should not exist if batches commit whole: a count per check, all must be 0.
ORPHANS = {
    "input_without_its_fact": "SELECT count(*) FROM inputs WHERE fact_seq IS NOT NULL"
                              " AND fact_seq NOT IN (SELECT seq FROM facts)",
    "accepted_input_without_fact": "SELECT count(*) FROM inputs WHERE status = 'accepted' AND fact_seq IS NULL",
    "input_without_its_rejection": "SELECT count(*) FROM inputs WHERE rejection_seq IS NOT NULL"
                                   " AND rejection_seq NOT IN (SELECT seq FROM rejections)",
    "fact_without_input": "SELECT count(*) FROM facts f WHERE derived = 0"
                          " AND NOT EXISTS (SELECT 1 FROM inputs i WHERE i.fact_seq = f.seq)",
    "derived_fact_without_cause": "SELECT count(*) FROM facts WHERE derived = 1"
                                  " AND (cause_seq IS NULL OR cause_seq NOT IN (SELECT seq FROM facts))"
                                  " AND (evaluation_seq IS NULL"
                                  "      OR evaluation_seq NOT IN (SELECT seq FROM evaluations))",
    "envelope_without_input": "SELECT count(*) FROM envelopes e WHERE NOT EXISTS (SELECT 1 FROM inputs i"
                              " WHERE i.source = e.source AND i.id = e.id AND i.status != 'rejected')",
    "rejection_without_input": "SELECT count(*) FROM rejections r"
                               " WHERE NOT EXISTS (SELECT 1 FROM inputs i WHERE i.rejection_seq = r.seq)",
    "route_without_fact": "SELECT count(*) FROM routes r"
                          " WHERE NOT EXISTS (SELECT 1 FROM facts f WHERE f.route_key = r.route_key)",
    "history_without_fact": "SELECT count(*) FROM route_history WHERE fact_seq NOT IN (SELECT seq FROM facts)",
    "action_without_fact": "SELECT count(*) FROM actions WHERE fact_seq NOT IN (SELECT seq FROM facts)",
}


def orphans(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return {name: conn.execute(sql).fetchone()[0] for name, sql in ORPHANS.items()}
    finally:
        conn.close()


def scalar(db: Path, sql: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def tables(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    finally:
        conn.close()


# ------------------------------------------------------------------------------- missing directory

def test_missing_directory_literal_path(events_file: Path):
    """`--db /nonexistent/dir/x.db`: exit 1, the message names the path, nothing is created."""
    if Path("/nonexistent").exists():
        pytest.skip("/nonexistent exists on this machine")
    db = Path("/nonexistent/dir/x.db")
    run = process(db, events_file)
    assert_refused(run, db, "does not exist")
    assert run.stdout == ""
    assert not Path("/nonexistent").exists()
    with pytest.raises(StoreError, match="/nonexistent/dir/x.db"):
        Engine.open(db=db)
    assert not Path("/nonexistent").exists()


def test_missing_directory_then_rerun(events_file: Path, baseline: dict, tmp_path: Path, figure):
    """A missing directory is refused without creating it; once created, the run is the baseline's."""
    db = tmp_path / "gone" / "dir" / "x.db"
    run = process(db, events_file)
    assert_refused(run, db, f"directory {db.parent} does not exist")
    assert run.stdout == "" and not (tmp_path / "gone").exists()
    db.parent.mkdir(parents=True)
    rerun = process(db, events_file)
    assert rerun.returncode == 0, rerun.stderr
    equal = snapshot(db) == baseline
    figure("missing_dir_rerun_equal", equal)
    assert equal


# ------------------------------------------------------------------------------- read-only directory

# Runs first in the unprivileged child: prove that the directory is really read-only for this
# process (creating a file fails), then become the command to test (same process, same rights).
PROBE = r"""
import os, sys
target = os.path.join(sys.argv[1], ".write-probe")
try:
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
except PermissionError:
    pass
else:
    os.close(fd)
    os.unlink(target)
    sys.exit(97)
os.execv(sys.argv[2], sys.argv[2:])
"""

API_OPEN = r"""
import sys
from engine import Engine, StoreError
try:
    with Engine.open(db=sys.argv[1]) as eng:
        eng.process_many(open(sys.argv[2], "rb").read().splitlines())
except StoreError as exc:
    print("StoreError", exc)
    sys.exit(3)
"""

_PR_CAPBSET_DROP = 24
_DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _drop_dac_capabilities() -> None:
    """Root without the capabilities that bypass file permissions: dropped from the bounding set,
    so the exec that follows gives this root process none of them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


def unprivileged(workdir: Path) -> tuple[str, Callable[[], None] | None]:
    """How to run a child that file permissions bind: ("chmod", None) when we are not root;
    else setuid(65534) when that user can run this interpreter and read the checkout and the
    input; else root with its DAC capabilities dropped."""
    if os.geteuid() != 0:
        return "chmod", None
    check = [sys.executable, "-c", "import sys, engine, cli.main; open(sys.argv[1], 'rb').read(1)",
             str(workdir / "stream.jsonl")]
    for name, fn in (("setuid_65534", _become_nobody), ("drop_dac_capabilities", _drop_dac_capabilities)):
        try:
            ok = subprocess.run(check, preexec_fn=fn, capture_output=True, timeout=60,
                                cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return name, fn
    pytest.skip("running as root, but neither setuid(65534) nor dropping CAP_DAC_OVERRIDE yields a child that "
                "file permissions bind")


def test_read_only_directory_then_rerun(workdir: Path, events_file: Path, half_db: Path, baseline: dict,
                                        figure):
    """A database directory the process cannot write: a new database and an existing one are both
    refused with a message naming the file; the existing one is left exactly as it was; once
    the directory is writable, both runs end in the baseline state."""
    mechanism, preexec = unprivileged(workdir)
    figure("readonly_mechanism", mechanism)
    ro = workdir / "ro"
    ro.mkdir()
    existing = copy_db(half_db, ro / "existing.db")
    existing.chmod(0o644)
    before, before_hash = snapshot(existing), sha256(existing)
    new = ro / "new.db"
    ro.chmod(0o555)  # owned by the test's user (root in CI), r-x for everyone
    try:
        assert stat.S_IMODE(ro.stat().st_mode) == 0o555
        prefix = [sys.executable, "-c", PROBE, str(ro)]
        for db in (new, existing):
            run = process(db, events_file, preexec_fn=preexec, prefix=prefix)
            assert run.returncode != PROBE_FAILED, (
                f"precondition failed ({mechanism}): the child could create a file in {ro}; the test would pass "
                "vacuously")
            assert_refused(run, db, "read-only")
            assert run.stdout == ""
        api = subprocess.run([sys.executable, "-c", PROBE, str(ro), sys.executable, "-c", API_OPEN, str(new),
                              str(events_file)], capture_output=True, text=True, timeout=120, preexec_fn=preexec,
                             cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert api.returncode == 3, (api.returncode, api.stdout, api.stderr[-2000:])
        assert api.stdout.startswith(f"StoreError {new}: ")
        assert sorted(p.name for p in ro.iterdir()) == ["existing.db"], "something was created in the directory"
        assert sha256(existing) == before_hash and snapshot(existing) == before
        assert integrity(existing) == "ok"
    finally:
        ro.chmod(0o755)
    for db in (new, existing):
        rerun = process(db, events_file)
        assert rerun.returncode == 0, rerun.stderr
        assert len(rerun.stdout.splitlines()) == EVENTS
    equal = snapshot(new) == baseline and snapshot(existing) == baseline
    figure("readonly_rerun_equal", equal)
    assert equal


# ------------------------------------------------------------------------------- full disk

def file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize(("where", "fraction", "batch_size"), [
    ("mid_run", 0.4, 100),
    ("mid_run_odd_batches", 0.7, 37),
    ("schema_creation", None, 50),
])
def test_disk_full_then_rerun(where: str, fraction: float | None, batch_size: int, events_file: Path,
                              baseline_db: Path, baseline: dict, tmp_path: Path, figure):
    """Writes fail with EFBIG part-way: exit 1 naming the file; the database holds whole batches
    only, exactly those whose result lines were printed, with no orphan rows; a rerun without the
    limit ends in the baseline state. The limit is a fraction of the undisturbed run's database
    (its data must land in the database or its WAL, so some write crosses it), or 16 KiB, which
    the schema alone exceeds."""
    limit = int(baseline_db.stat().st_size * fraction) if fraction else 16 * 1024
    figure(f"disk_full_{where}_limit_bytes", limit)
    db = tmp_path / "full.db"
    run = process(db, events_file, batch_size=batch_size, preexec_fn=file_size_limit(limit))
    assert_refused(run, db, "disk full or write failed")
    printed = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["line"] for r in printed] == list(range(1, len(printed) + 1))
    committed = scalar(db, "SELECT count(*) FROM inputs") if "inputs" in tables(db) else 0
    figure(f"disk_full_{where}_committed_inputs", committed)
    assert integrity(db) == "ok"
    assert committed == len(printed), "result lines and committed inputs disagree"
    assert committed % batch_size == 0, f"{committed} inputs: a batch of {batch_size} was split"
    if where == "schema_creation":
        assert committed == 0 and tables(db) == set() and scalar(db, "PRAGMA user_version") == 0
    else:
        assert 0 < committed < EVENTS, "the limit did not bite mid-run"
        assert orphans(db) == dict.fromkeys(ORPHANS, 0)
        conn = sqlite3.connect(db)
        statuses = dict(conn.execute("SELECT status, count(*) FROM inputs GROUP BY status").fetchall())
        conn.close()
        counted = {s: sum(r["status"] == s for r in printed) for s in ("accepted", "duplicate", "rejected")}
        assert {s: n for s, n in counted.items() if n} == statuses
        assert (f"{counted['accepted']} accepted, {counted['duplicate']} duplicate, {counted['rejected']} rejected "
                "before the failure") in run.stderr
    rerun = process(db, events_file, batch_size=batch_size)
    assert rerun.returncode == 0, rerun.stderr
    assert len(rerun.stdout.splitlines()) == EVENTS
    equal = snapshot(db) == baseline
    figure(f"disk_full_{where}_rerun_equal", equal)
    if where == "mid_run":
        figure("disk_full_rerun_equal", equal)
    assert equal


API_FULL = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from engine import Engine, StoreError
lines = open(sys.argv[2], "rb").read().splitlines()
try:
    with Engine.open(db=sys.argv[1]) as eng:
        eng.process_many(lines, batch_size=100)
except StoreError as exc:
    print("StoreError", exc)
    sys.exit(3)
"""


def test_disk_full_through_the_api(events_file: Path, baseline_db: Path, baseline: dict, tmp_path: Path):
    """`Engine.process_many` on a full disk raises StoreError naming the file (not a raw sqlite3 or
    OS error); whole batches only; rerunning the same call without the limit gives the baseline."""
    db = tmp_path / "api.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limit = str(int(baseline_db.stat().st_size * 0.4))
    run = subprocess.run([sys.executable, "-c", API_FULL, str(db), str(events_file), limit],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 3, (run.returncode, run.stdout, run.stderr[-3000:])
    assert run.stdout.startswith(f"StoreError {db}: disk full or write failed")
    committed = scalar(db, "SELECT count(*) FROM inputs")
    assert 0 < committed < EVENTS and committed % 100 == 0
    assert integrity(db) == "ok" and orphans(db) == dict.fromkeys(ORPHANS, 0)
    again = subprocess.run([sys.executable, "-c", API_FULL, str(db), str(events_file), "0"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshot(db) == baseline


# ------------------------------------------------------------------------------- newer schema

def test_newer_schema_version_then_rerun(events_file: Path, half_db: Path, baseline: dict, tmp_path: Path, figure):
    """`PRAGMA user_version = 99`: refused naming the file and the version, the file untouched
    byte for byte; with the version restored (the fault lifted), the rerun ends in the baseline."""
    db = copy_db(half_db, tmp_path / "newer.db")
    version = scalar(db, "PRAGMA user_version")
    assert 0 < version < 99
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before, before_hash = snapshot(db), sha256(db)
    run = process(db, events_file)
    assert_refused(run, db, "schema version 99", "upgrade webinar-flows")
    assert run.stdout == ""
    assert sha256(db) == before_hash and snapshot(db) == before and siblings(db) == []
    assert integrity(db) == "ok"
    with pytest.raises(StoreError, match="schema version 99") as info:
        Engine.open(db=db)
    assert str(db) in str(info.value)
    assert sha256(db) == before_hash

    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    rerun = process(db, events_file)
    assert rerun.returncode == 0, rerun.stderr
    equal = snapshot(db) == baseline
    figure("newer_schema_rerun_equal", equal)
    assert equal


def test_empty_database_from_a_newer_schema(events_file: Path, tmp_path: Path):
    """A file holding nothing but a newer user_version is not migrated over."""
    db = tmp_path / "future.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = sha256(db)
    run = process(db, events_file)
    assert_refused(run, db, "schema version 99")
    assert sha256(db) == before and tables(db) == set() and siblings(db) == []


# ------------------------------------------------------------------------------- corrupt files

def _random_bytes(baseline_db: Path) -> bytes:
    return random.Random(SEED).randbytes(64 * 1024)


def _header_then_garbage(baseline_db: Path) -> bytes:
    """A real database's first 100 bytes (a valid header) followed by random pages."""
    return baseline_db.read_bytes()[:100] + random.Random(SEED).randbytes(64 * 1024 - 100)


def _truncated(baseline_db: Path) -> bytes:
    """A valid database cut in the middle."""
    data = baseline_db.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("make", [_random_bytes, _header_then_garbage, _truncated],
                         ids=["random_bytes", "header_then_garbage", "truncated"])
def test_corrupt_file_is_refused_untouched(make: Callable[[Path], bytes], events_file: Path, baseline_db: Path,
                                           baseline: dict, tmp_path: Path, figure):
    """A file that is not a sound database: exit 1 naming it as corrupt, not one byte written to
    it, no result line; the API raises StoreError. For the truncated copy, the fault lifted is
    the intact database restored: the same run changes nothing, the state stays the baseline."""
    db = tmp_path / "corrupt.db"
    db.write_bytes(make(baseline_db))
    before = sha256(db)
    run = process(db, events_file)
    assert_refused(run, db, "not a webinar-flows database or is corrupt")
    assert run.stdout == ""
    assert sha256(db) == before and siblings(db) == []
    with pytest.raises(StoreError, match="corrupt") as info:
        Engine.open(db=db)
    assert str(db) in str(info.value)
    assert sha256(db) == before

    if make is not _truncated:
        return
    restored = copy_db(baseline_db, tmp_path / "restored.db")
    rerun = process(restored, events_file)
    assert rerun.returncode == 0, rerun.stderr
    assert all(json.loads(line)["status"] != "accepted" for line in rerun.stdout.splitlines())
    assert snapshot(restored) == baseline


def test_foreign_sqlite_database_is_not_adopted(events_file: Path, tmp_path: Path):
    """`--db` pointing at another application's SQLite file (a typo, a wrong variable): refused
    naming the file, which is left as it was (tables, journal mode, bytes)."""
    db = tmp_path / "notes.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()
    before = sha256(db)
    run = process(db, events_file)
    assert_refused(run, db, "not a webinar-flows database")
    assert tables(db) == {"notes"} and scalar(db, "PRAGMA journal_mode") == "delete"
    assert sha256(db) == before
