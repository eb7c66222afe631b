"""Regenerate the figures table of docs/RELIABILITY.md from the tests that measure them.

Runs the reliability tests with $WEBINAR_FLOWS_FIGURES set (each test records what it
measured through the `figure` fixture), measures commit throughput at synchronous=NORMAL
and FULL, and rewrites the block between the figures markers in docs/RELIABILITY.md.

    python bench/reliability_figures.py          # or: make reliability-figures
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import stream  # noqa: E402
from engine import Engine  # noqa: E402

DOC = ROOT / "docs" / "RELIABILITY.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
TESTS = ["tests/test_crash.py", "tests/test_concurrency.py", "tests/test_fuzz.py", "tests/test_hostile_config.py",
         "tests/test_faults.py"]


def run_tests(target: Path) -> int:
    env = {**os.environ, "WEBINAR_FLOWS_FIGURES": str(target)}
    present = [t for t in TESTS if (ROOT / t).exists()]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *present],
                          cwd=ROOT, env=env).returncode


def throughput(synchronous: str, events: int = 3_000) -> float:
    lines = [line.encode() for line in stream(events, 300, seed=5)]
    with tempfile.TemporaryDirectory() as tmp:
        with Engine.open(db=Path(tmp) / "t.db", synchronous=synchronous) as eng:
            started = time.perf_counter()
            eng.process_many(lines, batch_size=1)
            return events / (time.perf_counter() - started)


def render(figures: list[dict], extra: list[tuple[str, str, str]]) -> str:
    rows = ["| test | figure | value |", "|---|---|---|"]
    for f in figures:
        test = f["test"].split("::")[0].removeprefix("tests/")
        value = f["value"]
        rows.append(f"| `{test}` | `{f['name']}` | {json.dumps(value) if not isinstance(value, str) else value} |")
    rows += [f"| `{test}` | `{name}` | {value} |" for test, name, value in extra]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, SQLite " \
              f"{__import__('sqlite3').sqlite_version}"
    stamp = time.strftime("%Y-%m-%d")
    return f"{START}\nMeasured {stamp} on {machine} by `make reliability-figures`.\n\n" + "\n".join(rows) + f"\n{END}"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "figures.jsonl"
        status = run_tests(target)
        figures = [json.loads(line) for line in target.read_text().splitlines()] if target.exists() else []
    extra = [("bench/reliability_figures.py", f"commit_per_event_{mode.lower()}_events_per_s",
              f"{throughput(mode):,.0f}") for mode in ("NORMAL", "FULL")]
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + render(figures, extra) + tail)
    print(f"{len(figures) + len(extra)} figures written to {DOC.relative_to(ROOT)}; tests exit {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
