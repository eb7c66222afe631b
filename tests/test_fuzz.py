"""Hostile events: docs/pipeline.md "The envelope" and "The eight steps" under attack.

A seeded corpus of more than 10,000 malformed inputs (invalid UTF-8, huge and non-finite
numbers, duplicate keys, deep nesting, wrong types everywhere, lone surrogates, oversized
lines, binary garbage, byte-flipped valid events, BOMs, NUL bytes, CRLF and blank lines)
goes through the installed console script in one subprocess and through the API. Whatever
comes in, the engine must not crash; every non-blank line gets exactly one result, in
order; every rejection is stored with its raw bytes, byte for byte (size and sha256 for an
oversized line), a reason from the closed set and errors of `{path, code, message}`.

The strict JSON rules (I-JSON) are pinned one by one below, and tests/corpus/ holds a few
tricky inputs, one file each, whose outcome is pinned in tests/corpus/expected.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import TRACKER, completed, entered

from bench.generate import stream
from engine import Engine

WF = Path(sys.executable).parent / "webinar-flows"
CORPUS = Path(__file__).resolve().parent / "corpus"
SEED = 20260201
FUZZ_INPUTS = 10_400
LIMIT = 256 * 1024  # the default --max-event-bytes
KEEP_HEAD = 64 * 1024

STATUSES = {"accepted", "duplicate", "rejected"}
REJECTION_REASONS = {"too_large", "malformed_json", "invalid_envelope", "unknown_event", "unauthorized_emitter",
                     "invalid_payload", "id_conflict", "rule_failed"}
DUPLICATE_REASONS = {"same_envelope", "same_fact"}
RESULT_KEYS = {"line", "id", "type", "status", "reason", "errors", "emitted", "actions", "route"}
POINTER = re.compile(r"^(/([^~/]|~[01])*)*$", re.DOTALL)
SUMMARY = re.compile(r"^(\d+) accepted, (\d+) duplicate, (\d+) rejected$")
PLACEHOLDER = "@@fuzz-placeholder@@"


# -- helpers --------------------------------------------------------------------------------------------

def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WEBINAR_FLOWS_")}


def _no_constants(name: str) -> Any:
    raise AssertionError(f"the output holds {name}, which is not JSON")


def strict_lines(stdout: bytes) -> list[dict[str, Any]]:
    """Result lines, read as strict UTF-8 JSON (a NaN in the output would be a bug too)."""
    text = stdout.decode("utf-8")
    return [json.loads(line, parse_constant=_no_constants) for line in text.split("\n") if line.strip()]


def summary(stderr: bytes) -> tuple[int, int, int]:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    assert lines, "no summary on stderr"
    match = SUMMARY.match(lines[-1])
    assert match, f"the last stderr line is not a summary: {lines[-1]!r}"
    return int(match[1]), int(match[2]), int(match[3])


def check_result(result: dict[str, Any], where: str) -> None:
    """The shape every result has, whatever the input was."""
    assert RESULT_KEYS <= set(result), where
    status, reason, errors = result["status"], result["reason"], result["errors"]
    assert status in STATUSES, where
    if status == "rejected":
        assert reason in REJECTION_REASONS, where
        assert errors, f"{where}: a rejection explains itself"
        assert result["emitted"] == [] and result["actions"] == [] and result["route"] is None, where
    elif status == "duplicate":
        assert reason in DUPLICATE_REASONS, where
    else:
        assert reason is None, where
    assert isinstance(errors, list), where
    for err in errors:
        assert set(err) >= {"path", "code", "message"}, (where, err)
        assert isinstance(err["path"], str) and POINTER.match(err["path"]), (where, err["path"])
        assert isinstance(err["code"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", err["code"]), (where, err["code"])
        assert isinstance(err["message"], str) and err["message"], (where, err)
    for key in ("id", "type"):
        assert result[key] is None or isinstance(result[key], str), where


def stored_inputs(db: Path) -> list[tuple]:
    """(line, status, reason, rejection raw, size, sha256, truncated, rejection reason, errors) per input row."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT i.line, i.status, i.reason, r.raw, r.raw_size, r.raw_sha256, r.truncated, r.reason, r.errors"
            " FROM inputs i LEFT JOIN rejections r ON r.seq = i.rejection_seq ORDER BY i.seq").fetchall()
    finally:
        conn.close()


def check_stored(db: Path, expected: list[tuple[int, bytes]], results: list[dict[str, Any]]) -> int:
    """Every input is logged once, in order, and every rejection is kept exactly; returns how many
    rejections were found stored."""
    rows = stored_inputs(db)
    assert len(rows) == len(expected) == len(results)
    found = 0
    for (number, raw), result, row in zip(expected, results, rows, strict=True):
        line, status, reason, kept, size, digest, truncated, rej_reason, rej_errors = row
        where = f"line {number}: {raw[:120]!r}"
        assert (line, status, reason) == (number, result["status"], result["reason"]), where
        if status != "rejected":
            assert kept is None, where
            continue
        assert kept is not None, f"{where}: no rejection row"
        found += 1
        assert rej_reason == result["reason"] and rej_reason in REJECTION_REASONS, where
        assert json.loads(rej_errors) == result["errors"], where
        assert size == len(raw) and digest == hashlib.sha256(raw).hexdigest(), where
        if len(raw) > LIMIT:
            assert truncated == 1 and bytes(kept) == raw[:KEEP_HEAD], where
        else:
            assert truncated == 0 and bytes(kept) == raw, f"{where}: raw bytes not kept exactly"
    return found


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("line", "file")}


# -- the corpus -----------------------------------------------------------------------------------------

def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _with_token(event: dict[str, Any], path: tuple[str, ...], token: str) -> str:
    """The event's JSON text with the value at `path` replaced by the raw JSON text `token`."""
    event = json.loads(_dumps(event))
    node = event
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = PLACEHOLDER
    text = _dumps(event)
    assert text.count(f'"{PLACEHOLDER}"') == 1
    return text.replace(f'"{PLACEHOLDER}"', token)


ENVELOPE_FIELDS = ("id", "source", "type", "data", "specversion")
WRONG_TYPES = ["[]", "{}", "null", "true", "false", "1.5", '""', "0", "-1", "[1,2]", '{"a":1}', "1e5", "-0", "[[]]",
               '[""]', '{"":null}']
NON_FINITE = ["NaN", "Infinity", "-Infinity"]
OUT_OF_RANGE = ["1e400", "-1e400", "1E+400", "1.5e999", str(2**64), str(2**63), str(-(2**63) - 1), str(-(2**64)),
                "1" + "0" * 400 + ".0", "123456789012345678901"]
LONE = ['"\\ud800"', '"\\udfff"', '"a\\ud83dz"', '"\\udc00\\ud800"', '"x\\udbff"', '"\\ud800\\u0041"']
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\x80", b"\xc1\xbf", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xed\xbf\xbf",
            b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xbf", b"\xe0\x80\xaf", b"\xf0\x8f\xbf\xbf"]
BAD_NAMES = ["ID", "Data", "x-y", "a" * 65, "", "caf\u00e9", "a b", "a/b", "a~b", "x\u0000"]


class Corpus:
    """Deterministic hostile lines: (content, expectation) with expectation None (anything but a crash),
    a reason, or (reason, code)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        lines = [line for line in stream(4000, 300, seed=seed)]
        self.valid = [line for line in lines if line.startswith("{") and line.endswith("}")]
        self.events = []
        for line in self.valid:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def event(self) -> dict[str, Any]:
        return json.loads(_dumps(self.rng.choice(self.events)))

    def value_path(self, event: dict[str, Any]) -> tuple[str, ...]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.25:
            return (rng.choice(["x" + str(rng.randrange(100)), "time", "subject", "ext"]),)
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if roll < 0.75 and data:
            return ("data", rng.choice(sorted(data)))
        if roll < 0.9:
            return ("data", "form_payload", rng.choice(["q", "nested"]))
        return ("data", "extra")

    # each kind returns (content bytes, expectation)

    def valid_line(self) -> tuple[bytes, Any]:
        return self.rng.choice(self.valid).encode(), None

    def invalid_utf8(self) -> tuple[bytes, Any]:
        raw = bytearray(self.rng.choice(self.valid).encode())
        for _ in range(self.rng.randint(1, 3)):
            at = self.rng.randrange(len(raw) + 1)
            raw[at:at] = self.rng.choice(BAD_UTF8)
        return bytes(raw), ("malformed_json", "invalid_utf8")

    def non_finite(self) -> tuple[bytes, Any]:
        event = self.event()
        return _with_token(event, self.value_path(event), self.rng.choice(NON_FINITE)).encode(), (
            "malformed_json", "non_finite_number")

    def out_of_range(self) -> tuple[bytes, Any]:
        event = self.event()
        token = self.rng.choice(OUT_OF_RANGE + ["9" * self.rng.randint(21, 5000), "-" + "9" * 5000])
        return _with_token(event, self.value_path(event), token).encode(), ("malformed_json", "number_out_of_range")

    def duplicate_key(self) -> tuple[bytes, Any]:
        event = self.event()
        rng = self.rng
        roll = rng.randrange(4)
        if roll == 0:  # the envelope's own id twice, the second spelled with an escape
            key = rng.choice(['"id"', '"\\u0069d"', '"type"', '"data"', '"source"'])
            text = "{" + key + ":" + _dumps(rng.choice(["x", 1, None, {}])) + "," + _dumps(event)[1:]
        elif roll == 1:  # a payload key twice, equal values
            key = rng.choice(sorted(event["data"]))
            inner = _dumps(event["data"])
            text = _with_token(event, ("data",), "{" + _dumps(key) + ":" + _dumps(event["data"][key]) + "," + inner[1:])
        elif roll == 2:  # deep inside
            depth = rng.randint(1, 30)
            token = '{"a":' * depth + '{"k":1,"k":2}' + "}" * depth
            text = _with_token(event, self.value_path(event), token)
        else:
            text = _with_token(event, self.value_path(event), '{"":1,"":1}')
        return text.encode(), ("malformed_json", "duplicate_key")

    def deep(self) -> tuple[bytes, Any]:
        rng = self.rng
        depth = rng.randint(900, 3000)
        style = rng.randrange(4)
        if style == 0:
            token = "[" * depth + "]" * depth
        elif style == 1:
            token = '{"a":' * depth + "1" + "}" * depth
        elif style == 2:
            token = '[{"a":' * (depth // 2) + "null" + "}]" * (depth // 2)
        else:  # never closed: too deep and truncated, either error may be the one reported
            return ("[" * depth).encode(), ("malformed_json", None)
        if rng.random() < 0.3:
            return token.encode(), ("malformed_json", "nesting_too_deep")
        event = self.event()
        return _with_token(event, self.value_path(event), token).encode(), ("malformed_json", "nesting_too_deep")

    def just_too_deep(self) -> tuple[bytes, Any]:
        depth = self.rng.randint(65, 899)
        event = self.event()
        token = "[" * depth + "]" * depth  # the event itself adds one or more levels
        return _with_token(event, self.value_path(event), token).encode(), ("malformed_json", "nesting_too_deep")

    def wrong_type_envelope(self) -> tuple[bytes, Any]:
        event = self.event()
        field = self.rng.choice(ENVELOPE_FIELDS)
        token = self.rng.choice(WRONG_TYPES + (['"2.0"', '"1"', "1.0"] if field == "specversion" else []))
        if field == "data" and token in ("{}", '{"a":1}', '{"":null}'):
            token = "[]"
        return _with_token(event, (field,), token).encode(), ("invalid_envelope", f"/{field}")

    def wrong_type_payload(self) -> tuple[bytes, Any]:
        event = self.event()
        data = event["data"]
        key = self.rng.choice(sorted(data) + ["lead_id", "webinar_id", "form_payload"])
        return _with_token(event, ("data", key), self.rng.choice(WRONG_TYPES)).encode(), "parsed"

    def missing_field(self) -> tuple[bytes, Any]:
        event = self.event()
        field = self.rng.choice(ENVELOPE_FIELDS)
        del event[field]
        return _dumps(event).encode(), ("invalid_envelope", f"/{field}")

    def lone_surrogate(self) -> tuple[bytes, Any]:
        event = self.event()
        rng = self.rng
        token = rng.choice(LONE)
        if rng.random() < 0.2:  # as a key
            token = "{" + token + ":1}"
        path = (rng.choice(["id", "source", "type", "subject"]),) if rng.random() < 0.4 else self.value_path(event)
        return _with_token(event, path, token).encode(), ("malformed_json", "lone_surrogate")

    def bad_attribute_name(self) -> tuple[bytes, Any]:
        event = self.event()
        event[self.rng.choice(BAD_NAMES)] = "v"
        return _dumps(event).encode(), ("invalid_envelope", "property_names")

    def binary_garbage(self) -> tuple[bytes, Any]:
        raw = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(8, 3000)))
        raw = raw.replace(b"\n", b"\x00")
        return b"\x01" + raw, ("malformed_json", None)

    def byte_flipped(self) -> tuple[bytes, Any]:
        raw = bytearray(self.rng.choice(self.valid).encode())
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(len(raw))
            if self.rng.random() < 0.5:
                raw[at] ^= 1 << self.rng.randrange(8)
            else:
                raw[at] = self.rng.getrandbits(8)
        return bytes(raw).replace(b"\n", b"\r"), None

    def truncated(self) -> tuple[bytes, Any]:
        raw = self.rng.choice(self.valid).encode()
        return raw[: self.rng.randrange(1, len(raw) - 1)], ("malformed_json", "syntax")

    def trailing(self) -> tuple[bytes, Any]:
        raw = self.rng.choice(self.valid).encode()
        return raw + self.rng.choice([b"x", b"}", b",{}", b" {}", b"]", b"\x00", b"//c"]), ("malformed_json", "syntax")

    def bom(self) -> tuple[bytes, Any]:
        raw = self.rng.choice(self.valid).encode()
        roll = self.rng.randrange(4)
        if roll == 0:
            return b"\xef\xbb\xbf" + raw, ("malformed_json", "bom")
        if roll == 1:
            return b"\xef\xbb\xbf\xef\xbb\xbf" + raw, ("malformed_json", "bom")
        if roll == 2:
            return b"\xff\xfe" + raw, ("malformed_json", "invalid_utf8")
        at = self.rng.randrange(1, len(raw))  # a BOM inside: an error between tokens, a character in a string
        return raw[:at] + b"\xef\xbb\xbf" + raw[at:], None

    def nul(self) -> tuple[bytes, Any]:
        raw = self.rng.choice(self.valid).encode()
        roll = self.rng.randrange(3)
        if roll == 0:  # a raw NUL anywhere: a control character JSON does not allow
            at = self.rng.randrange(len(raw) + 1)
            return raw[:at] + b"\x00" + raw[at:], ("malformed_json", "syntax")
        if roll == 1:  # an escaped NUL in the id: valid JSON, a valid id
            event = json.loads(raw)
            event["id"] = f"nul\u0000{self.rng.getrandbits(40)}\u0000"
            return json.dumps(event).encode(), "parsed"
        return b"\x00" * self.rng.randint(1, 40), ("malformed_json", "syntax")

    def not_an_object(self) -> tuple[bytes, Any]:
        token = self.rng.choice(['[]', '"event"', "42", "null", "true", "[{}]", '"{}"', "-0.5", "[" * 64 + "]" * 64])
        return token.encode(), ("invalid_envelope", "type")

    def wide(self) -> tuple[bytes, Any]:
        event = self.event()
        for i in range(self.rng.randint(200, 3000)):
            event["data"][f"extra~/{i}"] = i
        return _dumps(event).encode(), "parsed"

    def datetimes(self) -> tuple[bytes, Any]:
        ts = self.rng.choice([
            "2026-02-01T18:00:00Z", "2026-02-01t18:00:00z", "2026-02-01T18:00:00.123456789123Z",
            "2026-02-01T18:00:00+14:00", "2026-02-01T18:00:00-12:00", "2026-02-29T00:00:00Z",
            "2026-06-30T23:59:60Z", "2026-13-01T00:00:00Z", "2026-02-01T24:00:00Z", "2026-02-01",
            "2026-02-01T18:00:00", "2026-02-01 18:00:00Z", "\u0662026-02-01T18:00:00Z", "", "now",
            "2000-01-01T00:00:00+00:00", "1970-01-01T00:00:00.000Z", "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+01:00", "0001-01-01T00:00:00-01:00",
            "0000-01-01T00:00:00Z"])  # (a UTC instant outside years 1-9999: pinned below)
        lead = f"dt-{self.rng.randrange(30)}"
        return json.dumps(entered(lead, "w-dt", ts, id=f"dt-{self.rng.getrandbits(32)}")).encode(), "parsed"

    def oversized(self) -> tuple[bytes, Any]:
        size = self.rng.randint(LIMIT + 1, 3 * 1024 * 1024)
        if self.rng.random() < 0.5:
            head = _dumps(completed("big", "w-big", id=f"big-{size}"))[:-2]  # ...,"completed_at":"...
            raw = (head + ',"pad":"' + "x" * size + '"}}').encode()
        else:
            raw = bytes(self.rng.getrandbits(8) | 0x80 for _ in range(4096)) * (size // 4096 + 1)
        return raw[: max(size, LIMIT + 1)], ("too_large", "too_large")

    KINDS: list[tuple[float, str]] = [
        (12, "valid_line"), (8, "invalid_utf8"), (5, "non_finite"), (7, "out_of_range"), (7, "duplicate_key"),
        (2.5, "deep"), (2, "just_too_deep"), (8, "wrong_type_envelope"), (9, "wrong_type_payload"),
        (3, "missing_field"), (5, "lone_surrogate"), (3, "bad_attribute_name"), (5, "binary_garbage"),
        (10, "byte_flipped"), (4, "truncated"), (3, "trailing"), (3, "bom"), (4, "nul"), (2, "not_an_object"),
        (0.5, "wide"), (4, "datetimes"),
    ]

    def build(self, count: int, oversized: int = 6) -> list[tuple[bytes, Any]]:
        """`count` non-blank lines (content without line end), plus some blank ones (expectation "blank")."""
        weights = [w for w, _ in self.KINDS]
        names = [n for _, n in self.KINDS]
        out: list[tuple[bytes, Any]] = []
        big_at = set(self.rng.sample(range(count), oversized))
        made = 0
        while made < count:
            if self.rng.random() < 0.01:
                out.append((self.rng.choice([b"", b" ", b"\t", b"  \t "]), "blank"))
                continue
            name = "oversized" if made in big_at else self.rng.choices(names, weights)[0]
            content, expect = getattr(self, name)()
            assert b"\n" not in content
            if not content.strip(b" \t\r"):
                content = b"\x02" + content
            if content.endswith(b"\r"):
                content += b"."
            out.append((content, expect))
            made += 1
        return out


def corpus_file(entries: list[tuple[bytes, Any]], path: Path, seed: int) -> list[tuple[int, bytes, Any]]:
    """Write the entries as JSON Lines (some with CRLF, the last without a line end); return
    (line number, content, expectation) for every non-blank line."""
    rng = random.Random(seed)
    expected = []
    with path.open("wb") as out:
        for number, (content, expect) in enumerate(entries, 1):
            last = number == len(entries)
            out.write(content + (b"" if last else b"\r\n" if rng.random() < 0.05 else b"\n"))
            if expect != "blank":
                expected.append((number, content, expect))
    return expected


def check_expectation(result: dict[str, Any], expect: Any, where: str) -> None:
    if expect is None:
        return
    if expect == "parsed":  # valid JSON with a valid envelope shape: whatever the outcome, not a JSON error
        assert result["reason"] not in ("malformed_json", "too_large"), where
        return
    reason, detail = expect
    assert (result["status"], result["reason"]) == ("rejected", reason), (where, result["reason"], result["errors"])
    if detail is None:
        return
    if detail.startswith("/"):
        assert detail in {e["path"] for e in result["errors"]}, (where, result["errors"])
    else:
        assert detail in {e["code"] for e in result["errors"]}, (where, result["errors"])


# -- the big fuzz run ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fuzz_cli_and_api_survive_ten_thousand_hostile_inputs(tmp_path, figure):
    entries = Corpus(SEED).build(FUZZ_INPUTS)
    expected = corpus_file(entries, tmp_path / "fuzz.jsonl", SEED)
    assert len(expected) >= 10_000
    assert sum(e[2] == ("too_large", "too_large") for e in expected) >= 5

    # 1. the installed console script, one process for the whole corpus
    started = time.monotonic()
    run = subprocess.run([str(WF), "process", "fuzz.jsonl", "--db", "cli.db", "--batch-size", "200"],
                         cwd=tmp_path, capture_output=True, env=clean_env(), timeout=300, check=False)
    cli_seconds = time.monotonic() - started

    # 2. the API with the same bytes, in batches
    started = time.monotonic()
    api_crash = None
    with Engine.open(db=tmp_path / "api.db") as eng:
        try:
            api_results = eng.process_many([c for _, c, _ in expected], batch_size=200, first_line=1)
        except Exception as exc:  # noqa: BLE001 - counted and reported below
            api_crash = exc
    api_seconds = time.monotonic() - started
    crashes = int(run.returncode != 0) + run.stderr.count(b"Traceback") + int(api_crash is not None)
    figure("fuzz_inputs", len(expected))
    figure("fuzz_crashes", crashes)
    figure("fuzz_seconds", round(cli_seconds + api_seconds, 2))
    assert api_crash is None, repr(api_crash)
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")[-3000:]
    assert b"Traceback" not in run.stderr and b"Error" not in run.stderr
    cli_results = strict_lines(run.stdout)
    assert [r["line"] for r in cli_results] == [n for n, _, _ in expected]  # one per non-blank line, in order
    statuses = Counter(r["status"] for r in cli_results)
    assert summary(run.stderr) == (statuses["accepted"], statuses["duplicate"], statuses["rejected"])
    assert sum(statuses.values()) == len(expected)
    assert len([ln for ln in run.stderr.splitlines() if ln.strip()]) == 1, "stderr holds only the summary"
    for (number, content, expect), result in zip(expected, cli_results, strict=True):
        where = f"line {number}: {content[:200]!r}"
        check_result(result, where)
        check_expectation(result, expect, where)
    stored = check_stored(tmp_path / "cli.db", [(n, c) for n, c, _ in expected], cli_results)
    figure("fuzz_rejections_stored_pct", round(100.0 * stored / max(1, statuses["rejected"]), 2))
    assert stored == statuses["rejected"]
    # the fuzz reaches every kind of outcome the default config can produce from outside
    reasons = Counter(r["reason"] for r in cli_results)
    assert statuses["accepted"] > 500 and statuses["duplicate"] > 50
    for reason in REJECTION_REASONS - {"rule_failed"}:
        assert reasons[reason] > 0, reason
    codes = Counter(e["code"] for r in cli_results for e in r["errors"])
    for code in ("invalid_utf8", "bom", "non_finite_number", "number_out_of_range", "duplicate_key",
                 "nesting_too_deep", "lone_surrogate", "syntax", "too_large", "property_names", "type",
                 "required", "format", "additional_properties", "id_conflict"):
        assert codes[code] > 0, code

    # the API gives the same results as the CLI, and stores the same
    assert [_comparable(r) for r in api_results] == [_comparable(r) for r in cli_results]
    api_expected = [(i, c) for i, (_, c, _) in enumerate(expected, 1)]
    assert check_stored(tmp_path / "api.db", api_expected, api_results) == statuses["rejected"]

    # 3. the API one event at a time: identical results (a prefix, the state it sees is the same)
    with Engine.open(db=tmp_path / "one.db") as eng:
        one_by_one = [eng.process(c) for _, c, _ in expected[:1500]]
    assert [_comparable(r) for r in one_by_one] == [_comparable(r) for r in api_results[:1500]]


def test_the_corpus_is_deterministic():
    first = Corpus(SEED).build(300, oversized=1)
    again = Corpus(SEED).build(300, oversized=1)
    assert first == again
    assert Corpus(SEED + 1).build(300, oversized=1) != first


class _Weird:
    def __repr__(self) -> str:
        return "<weird \udcff object>"


def _cycle() -> dict[str, Any]:
    event = entered(id="cycle")
    event["data"]["self"] = event
    return event


def _deep_dict(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    event = entered(id=f"deep-{depth}")
    event["data"]["nest"] = node
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return event


API_OBJECTS: list[tuple[str, Any, str, str | None]] = [
    ("nan float", {**entered(id="o1"), "x": float("nan")}, "malformed_json", "non_finite_number"),  # as the same line read from a file
    ("inf float", {**entered(id="o2"), "x": float("inf")}, "malformed_json", "non_finite_number"),
    ("a set", {**entered(id="o3"), "x": {1, 2}}, "malformed_json", "not_json"),
    ("bytes in a dict", {**entered(id="o4"), "x": b"\xff"}, "malformed_json", "not_json"),
    ("a cycle", _cycle(), "malformed_json", "not_json"),
    ("3000-deep dict", _deep_dict(3000), "malformed_json", None),
    ("100-deep dict", _deep_dict(100), "malformed_json", "nesting_too_deep"),
    ("a 2**64 int", {**entered(id="o5"), "x": 2**64}, "malformed_json", "number_out_of_range"),
    ("a 5000-digit int", {**entered(id="o6"), "x": 10**4999}, "malformed_json", None),
    ("a lone surrogate str", '{"specversion":"1.0","id":"\ud800","source":"s","type":"t","data":{}}',
     "malformed_json", "invalid_utf8"),
    ("a lone surrogate in a dict", entered(id="o\udc80"), "malformed_json", "invalid_utf8"),
    ("None", None, "invalid_envelope", "type"),
    ("an int", 42, "invalid_envelope", "type"),
    ("a list", [entered(id="o7")], "invalid_envelope", "type"),
    ("an object", _Weird(), "malformed_json", "not_json"),
    ("non-str keys", {**entered(id="o8"), ("a", 1): 1}, "malformed_json", "not_json"),
    ("a bytearray", bytearray(b"\xff\xfe"), "malformed_json", "invalid_utf8"),
    ("a memoryview", memoryview(b"[1,2"), "malformed_json", "syntax"),
    ("an empty str", "", "malformed_json", "syntax"),
    ("empty bytes", b"", "malformed_json", "syntax"),
    ("a BOM str", "\ufeff" + json.dumps(entered(id="o9")), "malformed_json", "bom"),
    ("bool data", {**entered(id="o10"), "data": True}, "invalid_envelope", "type"),
]


@pytest.mark.parametrize(("name", "event", "reason", "code"), API_OBJECTS, ids=[o[0] for o in API_OBJECTS])
def test_api_hostile_python_objects_are_rejected_and_stored(open_engine, tmp_path, name, event, reason, code):
    eng = open_engine()
    result = eng.process(event)
    check_result(result, name)
    assert (result["status"], result["reason"]) == ("rejected", reason), result["errors"]
    if code is not None:
        assert code in {e["code"] for e in result["errors"]}, result["errors"]
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # the result serialises as the CLI would print it
    rows = stored_inputs(tmp_path / "test.db")
    assert len(rows) == 1 and rows[0][1] == "rejected" and rows[0][3] is not None and rows[0][7] == reason


def test_api_hostile_python_objects_in_one_batch(open_engine, tmp_path):
    eng = open_engine()
    events = [o[1] for o in API_OBJECTS] + [entered(id="fine-after")]
    results = eng.process_many(events, batch_size=7)
    assert [r["status"] for r in results] == ["rejected"] * len(API_OBJECTS) + ["accepted"]
    assert [r["reason"] for r in results[:-1]] == [o[2] for o in API_OBJECTS]
    assert len(stored_inputs(tmp_path / "test.db")) == len(events)


# -- the JSON rules, pinned ---------------------------------------------------------------------------------

def _line(event: dict[str, Any], path: tuple[str, ...], token: str) -> bytes:
    return _with_token(event, path, token).encode()


GOOD = entered("pin", "w-pin", id="pin-1")
PINNED: list[tuple[str, bytes, str, str | None, str]] = [
    # (name, raw line, reason, code, path)
    ("duplicate key at the top", b'{"id":"a",' + json.dumps(GOOD).encode()[1:], "malformed_json", "duplicate_key", ""),
    ("duplicate key spelled with an escape", b'{"\\u0069d":"a",' + json.dumps(GOOD).encode()[1:],
     "malformed_json", "duplicate_key", ""),
    ("duplicate key in data, equal values", _line(GOOD, ("data",), '{"webinar_id":"w","webinar_id":"w"}'),
     "malformed_json", "duplicate_key", ""),
    ("duplicate empty key deep inside", _line(GOOD, ("x",), '[[{"":1,"":2}]]'), "malformed_json", "duplicate_key", ""),
    ("NaN", _line(GOOD, ("x",), "NaN"), "malformed_json", "non_finite_number", ""),
    ("Infinity", _line(GOOD, ("data", "lead_id"), "Infinity"), "malformed_json", "non_finite_number", ""),
    ("-Infinity", _line(GOOD, ("x",), "-Infinity"), "malformed_json", "non_finite_number", ""),
    ("1e400", _line(GOOD, ("x",), "1e400"), "malformed_json", "number_out_of_range", ""),
    ("-1e400", _line(GOOD, ("x",), "-1e400"), "malformed_json", "number_out_of_range", ""),
    ("a 400-digit float", _line(GOOD, ("x",), "1" + "0" * 400 + ".5"), "malformed_json", "number_out_of_range", ""),
    ("2**64", _line(GOOD, ("x",), str(2**64)), "malformed_json", "number_out_of_range", ""),
    ("2**63", _line(GOOD, ("x",), str(2**63)), "malformed_json", "number_out_of_range", ""),
    ("-2**63-1", _line(GOOD, ("x",), str(-(2**63) - 1)), "malformed_json", "number_out_of_range", ""),
    ("a 5000-digit int", _line(GOOD, ("x",), "7" * 5000), "malformed_json", "number_out_of_range", ""),
    ("a 5000-digit int in data", _line(GOOD, ("data", "webinar_id"), "-" + "7" * 5000),
     "malformed_json", "number_out_of_range", ""),
    ("nesting of 65 arrays", b"[" * 65 + b"]" * 65, "malformed_json", "nesting_too_deep", ""),
    ("nesting of 65 in an event", _line(GOOD, ("x",), "[" * 64 + "]" * 64), "malformed_json", "nesting_too_deep", ""),
    ("nesting of 900", b"[" * 900 + b"]" * 900, "malformed_json", "nesting_too_deep", ""),
    ("nesting of 3000 objects", _line(GOOD, ("data", "x"), '{"a":' * 3000 + "0" + "}" * 3000),
     "malformed_json", "nesting_too_deep", ""),
    ("nesting of 100000, never closed", b"[" * 100_000, "malformed_json", "nesting_too_deep", ""),
    ("invalid UTF-8", json.dumps(GOOD).encode().replace(b"pin-1", b"pin-\xff"), "malformed_json", "invalid_utf8", ""),
    ("an encoded surrogate (CESU-8)", json.dumps(GOOD).encode().replace(b"pin-1", b"pin-\xed\xa0\x80"),
     "malformed_json", "invalid_utf8", ""),
    ("an overlong NUL", json.dumps(GOOD).encode().replace(b"pin-1", b"pin-\xc0\x80"),
     "malformed_json", "invalid_utf8", ""),
    ("a BOM", b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "malformed_json", "bom", ""),
    ("a lone surrogate escape", _line(GOOD, ("id",), '"\\ud800"'), "malformed_json", "lone_surrogate", ""),
    ("a lone surrogate key", _line(GOOD, ("data",), '{"\\udc00":1}'), "malformed_json", "lone_surrogate", ""),
    ("a raw NUL", json.dumps(GOOD).encode().replace(b"pin-1", b"pin-\x00"), "malformed_json", "syntax", ""),
    ("trailing data", json.dumps(GOOD).encode() + b"{}", "malformed_json", "syntax", ""),
    ("single quotes", b"{'id': 1}", "malformed_json", "syntax", ""),
    ("not an object", b"[]", "invalid_envelope", "type", ""),
    ("64 levels are fine", b"[" * 64 + b"]" * 64, "invalid_envelope", "type", ""),
    ("id is a list", _line(GOOD, ("id",), "[]"), "invalid_envelope", "type", "/id"),
    ("id is empty", _line(GOOD, ("id",), '""'), "invalid_envelope", "min_length", "/id"),
    ("source is null", _line(GOOD, ("source",), "null"), "invalid_envelope", "type", "/source"),
    ("type is true", _line(GOOD, ("type",), "true"), "invalid_envelope", "type", "/type"),
    ("data is 1.5", _line(GOOD, ("data",), "1.5"), "invalid_envelope", "type", "/data"),
    ("specversion 1", _line(GOOD, ("specversion",), "1"), "invalid_envelope", "const", "/specversion"),
    ("an object attribute", _line(GOOD, ("ext",), "{}"), "invalid_envelope", "type", "/ext"),
    ("an attribute name with a slash", _line(GOOD, ("a/b~c",), '"v"'), "invalid_envelope", "property_names",
     "/a~1b~0c"),
    ("lead_id is a dict", _line(GOOD, ("data", "lead_id"), "{}"), "invalid_payload", "type", "/data/lead_id"),
    ("an unknown payload key with a slash", _line(GOOD, ("data", "x/y"), "1"), "invalid_payload",
     "additional_properties", "/data/x~1y"),
]


@pytest.mark.parametrize(("name", "raw", "reason", "code", "path"), PINNED, ids=[p[0] for p in PINNED])
def test_json_rules_pinned(open_engine, tmp_path, name, raw, reason, code, path):
    result = open_engine().process(raw)
    check_result(result, name)
    assert (result["status"], result["reason"]) == ("rejected", reason), result["errors"]
    assert (code, path) in {(e["code"], e["path"]) for e in result["errors"]}, result["errors"]
    (row,) = stored_inputs(tmp_path / "test.db")
    assert bytes(row[3]) == raw and row[7] == reason


@pytest.mark.parametrize("value", [str(2**63 - 1), str(-(2**63)), "1.7976931348623157e308", "1e-400", "-0", "0.0",
                                   "5e-324", "1E2"])
def test_numbers_at_the_edge_of_the_range_are_fine(open_engine, value):
    result = open_engine().process(_line(entered(id=f"edge-{value}"), ("x",), value))
    assert result["status"] == "accepted", result["errors"]


def test_escaped_nul_and_non_bmp_ids_round_trip(open_engine, tmp_path):
    eng = open_engine()
    ids = ["a\u0000b", "\U0001f600", "\u2028\u2029", "x" * 10_000]
    for i, event_id in enumerate(ids):
        assert eng.process(entered(f"rt{i}", id=event_id))["status"] == "accepted"
    assert eng.process(json.dumps(entered("rt0", id="a\u0000b")))["reason"] == "same_envelope"
    conn = sqlite3.connect(tmp_path / "test.db")
    try:
        assert sorted(r[0] for r in conn.execute("SELECT id FROM facts WHERE derived = 0")) == sorted(ids)
    finally:
        conn.close()


def test_pinned_rules_through_the_cli(tmp_path):
    lines = [raw for _, raw, _, _, _ in PINNED]
    (tmp_path / "pinned.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run = subprocess.run([str(WF), "process", "pinned.jsonl", "--db", "p.db"], cwd=tmp_path, capture_output=True,
                         env=clean_env(), timeout=60, check=False)
    assert run.returncode == 0 and b"Traceback" not in run.stderr, run.stderr.decode("utf-8", "replace")
    results = strict_lines(run.stdout)
    assert [r["line"] for r in results] == list(range(1, len(PINNED) + 1))
    for (name, _, reason, code, path), result in zip(PINNED, results, strict=True):
        assert result["reason"] == reason, name
        assert (code, path) in {(e["code"], e["path"]) for e in result["errors"]}, name
    assert summary(run.stderr) == (0, 0, len(PINNED))


# -- the size limit and the line reader ----------------------------------------------------------------------

def test_the_size_limit_at_and_around_the_boundary(tmp_path):
    limit = 1000
    event = json.dumps(entered("sz", "w-sz", id="sz"))
    def padded(size: int, tag: str) -> bytes:
        body = f'{{"specversion":"1.0","id":"{tag}","source":"s","type":"t","data":{{}},"pad":"'
        return (body + "p" * (size - len(body) - 2) + '"}').encode()
    cases = [(padded(999, "a"), False), (padded(1000, "b"), False), (padded(1001, "c"), True),
             (padded(1002, "d"), True), (padded(5000, "e"), True)]
    data = b""
    ends = [b"\n", b"\r\n", b"\r\n", b"\n", b"\r\n"]
    for (raw, _), end in zip(cases, ends, strict=True):
        data += raw + end
    data += event.encode()  # the last line has no line end
    (tmp_path / "sz.jsonl").write_bytes(data)
    run = subprocess.run([str(WF), "process", "sz.jsonl", "--db", "sz.db", "--max-event-bytes", str(limit)],
                         cwd=tmp_path, capture_output=True, env=clean_env(), timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    results = strict_lines(run.stdout)
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5, 6]
    for (raw, too_large), result in zip(cases, results[:5], strict=True):
        assert (result["reason"] == "too_large") is too_large, (len(raw), result)
        if too_large:
            assert result["errors"] == [{"path": "", "code": "too_large",
                                         "message": f"{len(raw)} bytes; the limit is {limit}"}]
            assert result["id"] is None and result["type"] is None  # never parsed
        else:
            assert result["reason"] == "unknown_event"
    assert results[5]["status"] == "accepted"
    conn = sqlite3.connect(tmp_path / "sz.db")
    try:
        kept = conn.execute("SELECT raw, raw_size, raw_sha256, truncated FROM rejections WHERE reason = 'too_large'"
                            " ORDER BY raw_size").fetchall()
    finally:
        conn.close()
    big = [raw for raw, too_large in cases if too_large]
    assert [(bytes(r), n, h, t) for r, n, h, t in kept] == [
        (raw, len(raw), hashlib.sha256(raw).hexdigest(), 1) for raw in big]  # under 64 KiB: the head is all of it


_RSS_PROBE = """
import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
sys.stdout.write(repr((run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, run.stdout.decode(),
                       run.stderr.decode())))
"""


def _peak_rss(path: Path, db: Path) -> tuple[int, int, str, str]:
    """Run the CLI on `path` from a fresh Python process, so that RUSAGE_CHILDREN measures that child only:
    (exit code, peak RSS in KiB, stdout, stderr)."""
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(WF), "process", str(path), "--db", str(db)],
                           capture_output=True, env=clean_env(), timeout=120, check=True)
    return eval(probe.stdout.decode())  # noqa: S307 - our own repr


@pytest.mark.slow
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_a_50_mb_line_is_refused_with_bounded_memory(tmp_path, figure, line_end):
    size = 50 * 1024 * 1024
    head = b'{"specversion":"1.0","id":"huge","source":"' + TRACKER.encode() + b'","type":"t","data":{"pad":"'
    body_len = size - len(head) - 3
    digest = hashlib.sha256(head)
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as out:
        out.write(json.dumps(entered("before", id="before")).encode() + b"\n")
        out.write(head)
        block = b"0123456789abcdef" * 65536  # 1 MiB
        left_ = body_len
        while left_:
            part = block[: min(left_, len(block))]
            out.write(part)
            digest.update(part)
            left_ -= len(part)
        out.write(b'"}}' + line_end)
        digest.update(b'"}}')
        out.write(json.dumps(entered("after", id="after")).encode() + b"\n")
    (tmp_path / "small.jsonl").write_bytes(json.dumps(entered("small", id="small")).encode() + b"\n")
    _, baseline_kib, _, _ = _peak_rss(tmp_path / "small.jsonl", tmp_path / "small.db")
    code, max_rss_kib, stdout, stderr = _peak_rss(path, tmp_path / "huge.db")
    assert code == 0 and "Traceback" not in stderr, stderr
    results = strict_lines(stdout.encode())
    assert [(r["line"], r["status"], r["reason"]) for r in results] == [
        (1, "accepted", None), (2, "rejected", "too_large"), (3, "accepted", None)]
    assert results[1]["errors"][0]["message"] == f"{size} bytes; the limit is {LIMIT}"
    conn = sqlite3.connect(tmp_path / "huge.db")
    try:
        (raw, raw_size, raw_sha256, truncated), = conn.execute(
            "SELECT raw, raw_size, raw_sha256, truncated FROM rejections").fetchall()
    finally:
        conn.close()
    assert (raw_size, raw_sha256, truncated) == (size, digest.hexdigest(), 1)
    assert bytes(raw) == (head + block)[:KEEP_HEAD]
    peak_mib, baseline_mib = max_rss_kib / 1024, baseline_kib / 1024
    figure("huge_line_peak_rss_mib", round(peak_mib, 1))
    assert peak_mib < 150, f"reading a 50 MB line took {peak_mib:.0f} MiB"
    # and well under the line itself on top of what a one-event run takes: the line is never held whole
    assert peak_mib - baseline_mib < 25, f"{peak_mib:.0f} MiB against {baseline_mib:.0f} MiB for one small event"


# -- the regression corpus ------------------------------------------------------------------------------------

def _corpus_cases() -> list[tuple[str, dict[str, Any]]]:
    expected = json.loads((CORPUS / "expected.json").read_text("utf-8"))
    return sorted(expected.items())


def test_the_regression_corpus_is_complete():
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.json"}
    assert files == {name for name, _ in _corpus_cases()}
    assert len(files) >= 10


@pytest.mark.parametrize(("name", "pinned"), _corpus_cases(), ids=[n for n, _ in _corpus_cases()])
def test_regression_corpus_through_the_api(open_engine, tmp_path, name, pinned):
    raw = (CORPUS / name).read_bytes()
    result = open_engine().process(raw)
    check_result(result, name)
    assert (result["status"], result["reason"]) == (pinned["status"], pinned.get("reason")), result["errors"]
    if "code" in pinned:
        assert (pinned["code"], pinned.get("path", "")) in {(e["code"], e["path"]) for e in result["errors"]}
    if result["status"] == "rejected":
        (row,) = stored_inputs(tmp_path / "test.db")
        assert bytes(row[3]) == raw


def test_regression_corpus_through_the_cli(tmp_path):
    cases = _corpus_cases()
    run = subprocess.run([str(WF), "process", *[str(CORPUS / n) for n, _ in cases], "--db", str(tmp_path / "c.db")],
                         cwd=tmp_path, capture_output=True, env=clean_env(), timeout=60, check=False)
    assert run.returncode == 0 and b"Traceback" not in run.stderr, run.stderr.decode("utf-8", "replace")
    results = strict_lines(run.stdout)
    assert [(Path(r["file"]).name, r["line"]) for r in results] == [(n, 1) for n, _ in cases]
    for (name, pinned), result in zip(cases, results, strict=True):
        assert (result["status"], result["reason"]) == (pinned["status"], pinned.get("reason")), name


# -- bugs found ------------------------------------------------------------------------------------------------

EXTREME_INSTANTS = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]


@pytest.mark.parametrize("ts", EXTREME_INSTANTS)
def test_api_a_date_time_outside_the_utc_range_is_accepted_with_a_stable_identity(open_engine, ts):
    """Valid RFC 3339 text whose UTC instant falls outside years 1-9999: the payload is valid, so
    the event is accepted, and its identity (which holds the instant) is the same on a resend
    under another id: same_fact, not a second entry."""
    engine = open_engine()
    first = engine.process(entered("ovf", "w-ovf", ts, id=f"ovf-{ts}"))
    check_result(first, ts)
    assert (first["status"], first["route"]["state"]) == ("accepted", "in_webinar"), first
    again = engine.process(entered("ovf", "w-ovf", ts, id=f"ovf-again-{ts}"))
    assert (again["status"], again["reason"]) == ("duplicate", "same_fact"), again


def test_cli_a_date_time_outside_the_utc_range_does_not_kill_the_run(tmp_path):
    lines = [json.dumps(entered("ovf", "w-ovf", ts, id=f"ovf-{i}")) for i, ts in enumerate(EXTREME_INSTANTS)]
    lines.append(json.dumps(entered("fine", "w-ovf", id="after")))
    (tmp_path / "ovf.jsonl").write_text("\n".join(lines) + "\n")
    run = subprocess.run([str(WF), "process", "ovf.jsonl", "--db", "o.db"], cwd=tmp_path, capture_output=True,
                         env=clean_env(), timeout=60, check=False)
    assert run.returncode == 0 and b"Traceback" not in run.stderr
    results = strict_lines(run.stdout)
    assert [(r["line"], r["status"]) for r in results] == [(1, "accepted"), (2, "accepted"), (3, "accepted")]
