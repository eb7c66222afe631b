"""Scenario tests driven by data: every `tests/scenarios/*.yaml` is one story, and a new case
needs no Python.

A scenario file (read as YAML 1.2 core by the engine's own loader, so `on:` stays a string,
dates stay strings and a duplicate key is an error):

    description: what the story proves                       # required
    xfail: "BUG: ..."         # optional: the whole story is expected to fail (strict)
    config:                   # optional; absent (or `default`): the bundled default config
      merge:                  # deep-merged into a copy of a default file: mappings merge key
        emitters.yaml:        # by key, `null` deletes a key, anything else replaces
          emitters:
            landing-page-form: {kind: web_form, events: {client_webinar_registered: implemented}}
      files:                  # whole files written as given (add or replace); `null` deletes
        rules/post_webinar_routing.yaml: {rules: [...]}
    engine: {max_event_bytes: 200, clock: "2026-03-01T00:00:00Z"}   # optional Engine.open options
    envelope: {specversion: "1.0", source: client-webinar-tracker-v2}  # optional defaults laid
                              # under every `process` event (default: {specversion: "1.0"});
                              # a top-level key set to null in a step drops the default
    steps:
      - note: optional words for the reader
        process: {type: client_webinar_entered, id: e1, data: {...}}   # Engine.process(dict)
        expect: {status: accepted, route: {state: in_webinar}}
      - raw: 'not json'                 # Engine.process(str), the line exactly as written
      - raw_hex: "7b 22 ff"             # Engine.process(bytes), for bytes YAML cannot hold
      - evaluate: {webinar_id: w1, lead_id: l1, at: "2026-02-02T00:00:00Z"}
        expect: [{lead_id: l1, attended: false, emitted_types: [...]}]
      - route: {lead_id: l1, webinar_id: w1}
        expect: {state: completed, history: [[new, in_webinar], [in_webinar, completed, c1]]}
        xfail: "BUG: ..."     # optional: this step's expectation is known to fail (strict)
      - route: {lead_id: l1}              # evaluate/route take any keyword arguments, and
        raises: UsageError                # `raises` names the exception class (or a base)

Expectations are partial: a mapping compares only the keys it gives (recursively); a list
must have exactly as many items, compared in order; scalars compare as JSON values (`true`
is not `1`). `expect: null` means the result must be None (a `route` that does not exist).
A step without `expect` or `raises` only feeds the engine, yet an `evaluate` or `route` that
raises still fails it.
Shorthands, on a `process` result and on each `evaluate` item:
    emitted_types: [TYPE, ...]   the types of the emitted events, in order
    emitted_data:  [DATA, ...]   their `data`, each compared whole (not partially)
    action_types:  [TYPE, ...]   (process only) the types of the actions, in order
    errors_include: [ERR, ...]   (process only) each partial error matches some error
and on a `route` result, `history` items may be `[from, to]` or `[from, to, event_id]`.

Every scenario runs in three modes, each on a fresh database, with a fixed clock
(`engine.clock`, default 2026-03-01T00:00:00Z) so that results are reproducible:
    one_by_one   each `process`/`raw` step through Engine.process
    batched      each run of consecutive input steps (no `evaluate`/`route` between them)
                 through one Engine.process_many call, one commit for the whole run
    batch_of_2   the same runs through process_many(batch_size=2): commits inside a run
The batched modes also run the scenario one by one and assert that every step's result is
identical, which proves that batching changes nothing.

A step marked `xfail` must fail its expectation in that mode, else the test fails (strict
XPASS); the other steps are still checked and any of their failures fails the test. `xfail`
may be a string (every mode) or a mapping {mode: reason}. The same holds for the scenario.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import Engine
from engine.config.locate import bundled_config
from engine.config.yamlfile import load_yaml

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
MODES = ("one_by_one", "batched", "batch_of_2")
DEFAULT_CLOCK = "2026-03-01T00:00:00Z"
DEFAULT_ENVELOPE = {"specversion": "1.0"}
CONFIG_FILES = ("events.yaml", "emitters.yaml", "states.yaml")

SCENARIO_KEYS = {"description", "xfail", "config", "engine", "envelope", "steps"}
ENGINE_KEYS = {"max_event_bytes", "clock"}
CONFIG_KEYS = {"merge", "files"}
INPUT_KINDS = ("process", "raw", "raw_hex")
STEP_KINDS = (*INPUT_KINDS, "evaluate", "route")
STEP_EXTRA = {"expect", "raises", "xfail", "note"}
PROCESS_KEYS = {"line", "id", "type", "status", "reason", "errors", "emitted", "actions", "route",
                "emitted_types", "emitted_data", "action_types", "errors_include"}


# -- reading scenario files ------------------------------------------------------------------


class ScenarioError(Exception):
    """A scenario file that does not follow the format: a broken test, not a failing one."""


@dataclass
class Step:
    number: int
    kind: str
    arg: Any
    expect: Any
    has_expect: bool
    xfail: str | dict[str, str] | None
    note: str = ""
    raises: str | None = None

    @property
    def is_input(self) -> bool:
        return self.kind in INPUT_KINDS

    def label(self) -> str:
        what = f" {self.arg['id']}" if self.kind == "process" and self.arg.get("id") else ""
        note = f": {self.note}" if self.note else ""
        return f"step {self.number} ({self.kind}{what}{note})"


@dataclass
class Scenario:
    path: Path
    description: str
    steps: list[Step]
    config: dict[str, Any] | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    envelope: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ENVELOPE))
    xfail: str | dict[str, str] | None = None


def _closed(mapping: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = set(mapping) - allowed
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return mapping


def _mapping(value: Any, where: str) -> dict[str, Any]:
    return _closed(value, set(value) if isinstance(value, dict) else set(), where)


def _xfail_value(value: Any, where: str) -> str | dict[str, str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) <= set(MODES) and all(isinstance(v, str) for v in value.values()):
        return value
    raise ScenarioError(f"{where}: xfail is a reason string or a mapping {{mode: reason}} over {list(MODES)}")


def _step(number: int, raw: Any, where: str) -> Step:
    kinds = [k for k in STEP_KINDS if isinstance(raw, dict) and k in raw]
    if len(kinds) != 1:
        raise ScenarioError(f"{where}: a step holds exactly one of {list(STEP_KINDS)}")
    kind = kinds[0]
    _closed(raw, {kind} | STEP_EXTRA, where)
    arg, expect = raw[kind], raw.get("expect")
    if kind in ("raw", "raw_hex"):
        if not isinstance(arg, str):
            raise ScenarioError(f"{where}/{kind}: a string")
    else:
        _mapping(arg, f"{where}/{kind}")  # an event, or the keyword arguments of evaluate/route
    if "expect" in raw:
        _check_expect(kind, expect, f"{where}/expect")
    raises = raw.get("raises")
    if raises is not None and (kind in INPUT_KINDS or not isinstance(raises, str) or "expect" in raw):
        raise ScenarioError(f"{where}/raises: an exception class name, on an evaluate or route step without expect")
    return Step(number, kind, arg, expect, "expect" in raw, _xfail_value(raw.get("xfail"), f"{where}/xfail"),
                raw.get("note", ""), raises)


def _check_expect(kind: str, expect: Any, where: str) -> None:
    if kind in INPUT_KINDS:
        _closed(expect, PROCESS_KEYS, where)
    elif kind == "evaluate":
        if not isinstance(expect, list):
            raise ScenarioError(f"{where}: the expected evaluation is a list, one item per route key")
        for i, item in enumerate(expect):
            _mapping(item, f"{where}/{i}")
    elif expect is not None:
        _mapping(expect, where)


def load_scenario(path: Path) -> Scenario:
    doc = load_yaml(path.read_bytes(), str(path))
    if doc.problems:
        raise ScenarioError("\n".join(str(p) for p in doc.problems))
    data = _closed(doc.data, SCENARIO_KEYS, path.name)
    if not isinstance(data.get("description"), str) or not data["description"].strip():
        raise ScenarioError(f"{path.name}: a scenario needs a description")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{path.name}: a scenario needs a non-empty list of steps")
    config = data.get("config")
    if config == "default":
        config = None
    if config is not None:
        _closed(config, CONFIG_KEYS, f"{path.name}/config")
    return Scenario(
        path=path, description=data["description"],
        steps=[_step(i + 1, s, f"{path.name}/steps/{i + 1}") for i, s in enumerate(steps)],
        config=config,
        engine=dict(_closed(data.get("engine", {}), ENGINE_KEYS, f"{path.name}/engine")),
        envelope={**DEFAULT_ENVELOPE, **_mapping(data.get("envelope", {}), f"{path.name}/envelope")},
        xfail=_xfail_value(data.get("xfail"), f"{path.name}/xfail"),
    )


# -- the config a scenario runs on -----------------------------------------------------------


def deep_merge(base: Any, patch: Any) -> Any:
    """`patch` laid over `base`: mappings merge key by key, null deletes, the rest replaces."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = deep_merge(merged.get(key), value)
    return merged


def _read_yaml(path: Path) -> Any:
    doc = load_yaml(path.read_bytes(), str(path))
    if doc.problems:
        raise ScenarioError("\n".join(str(p) for p in doc.problems))
    return doc.data


def _write(path: Path, data: Any) -> None:
    """JSON is YAML 1.2, and keeps every type exactly as the scenario gave it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_config(patch: dict[str, Any], target: Path) -> Path:
    """A copy of the default config in `target`, with the scenario's patch applied."""
    source = bundled_config()
    target.mkdir(parents=True)
    for name in CONFIG_FILES:
        shutil.copy(source / name, target / name)
    shutil.copytree(source / "rules", target / "rules")
    for name, overlay in (patch.get("merge") or {}).items():
        file = target / name
        if not file.is_file():
            raise ScenarioError(f"config.merge: {name} is not a file of the default config")
        _write(file, deep_merge(_read_yaml(file), overlay))
    for name, content in (patch.get("files") or {}).items():
        file = target / name
        if not file.resolve().is_relative_to(target.resolve()):
            raise ScenarioError(f"config.files: {name} is outside the config directory")
        if content is None:
            file.unlink(missing_ok=True)
        else:
            _write(file, content)
    return target


# -- running ---------------------------------------------------------------------------------


def _event(scenario: Scenario, step: Step) -> dict[str, Any] | str | bytes:
    if step.kind == "raw":
        return step.arg
    if step.kind == "raw_hex":
        return bytes.fromhex(step.arg)
    event = copy.deepcopy(scenario.envelope)
    for key, value in copy.deepcopy(step.arg).items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def _groups(steps: list[Step], mode: str) -> Iterator[list[Step]]:
    """Steps as they are fed to the engine: runs of inputs together unless one by one."""
    run: list[Step] = []
    for step in steps:
        if step.is_input and mode != "one_by_one":
            run.append(step)
            continue
        if run:
            yield run
            run = []
        yield [step]
    if run:
        yield run


def run_scenario(scenario: Scenario, mode: str, workdir: Path, db: str | None = None) -> list[Any]:
    """Every step's result, in step order (on `db`, else a SQLite file in `workdir`)."""
    workdir.mkdir(parents=True)
    config = build_config(scenario.config, workdir / "config") if scenario.config is not None else None
    clock_value = scenario.engine.get("clock", DEFAULT_CLOCK)
    options: dict[str, Any] = {"clock": lambda: clock_value}
    if "max_event_bytes" in scenario.engine:
        options["max_event_bytes"] = scenario.engine["max_event_bytes"]
    results: list[Any] = []
    with Engine.open(config=config, db=db or workdir / "scenario.db", **options) as eng:
        for group in _groups(scenario.steps, mode):
            first = group[0]
            if first.kind in ("evaluate", "route"):
                results.append(_call(getattr(eng, first.kind), first.arg))
            elif mode == "one_by_one":
                results.append(eng.process(_event(scenario, first)))
            else:
                events = [_event(scenario, s) for s in group]
                size = len(events) if mode == "batched" else 2
                results.extend(eng.process_many(events, batch_size=size))
    return results


def _call(method: Any, kwargs: dict[str, Any]) -> Any:
    """An API call's result, or the exception it raised as data: {raised: [class names, most derived first]}."""
    try:
        return method(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the scenario says which exceptions it expects
        return {"raised": [c.__name__ for c in type(exc).__mro__ if c is not object], "message": str(exc)}


# -- matching --------------------------------------------------------------------------------


def _same_scalar(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return expected == actual


def match(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where `actual` differs from the partial `expected`: one message per difference."""
    where = path or "/"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, got {actual!r}"]
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}/{key}: missing (have {sorted(actual)})")
            else:
                problems += match(value, actual[key], f"{path}/{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {actual!r}"]
        if len(expected) != len(actual):
            return [f"{where}: expected {len(expected)} item(s), got {len(actual)}: {_show(actual)}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for p in match(e, a, f"{path}/{i}")]
    if not _same_scalar(expected, actual):
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []


def equal(expected: Any, actual: Any, path: str) -> list[str]:
    """Whole-value comparison (used where the contract says 'the same payload')."""
    if json.dumps(expected, sort_keys=True) == json.dumps(actual, sort_keys=True):
        return []
    return [f"{path}: expected exactly {_show(expected)}, got {_show(actual)}"]


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) < 600 else text[:600] + "…"


def _shorthands(expected: dict[str, Any], actual: dict[str, Any], path: str) -> tuple[dict[str, Any], list[str]]:
    """Split off the shorthand keys; return the plain rest and the shorthands' problems."""
    rest, problems = dict(expected), []
    if "emitted_types" in rest:
        problems += match(rest.pop("emitted_types"), [e.get("type") for e in actual.get("emitted", [])],
                          f"{path}/emitted_types")
    if "emitted_data" in rest:
        wanted = rest.pop("emitted_data")
        got = [e.get("data") for e in actual.get("emitted", [])]
        if not isinstance(wanted, list) or len(wanted) != len(got):
            problems.append(f"{path}/emitted_data: expected {_show(wanted)}, got {_show(got)}")
        else:
            for i, (w, g) in enumerate(zip(wanted, got, strict=True)):
                problems += equal(w, g, f"{path}/emitted_data/{i}")
    if "action_types" in rest:
        problems += match(rest.pop("action_types"), [a.get("type") for a in actual.get("actions", [])],
                          f"{path}/action_types")
    if "errors_include" in rest:
        for want in rest.pop("errors_include"):
            if not any(not match(want, err) for err in actual.get("errors", [])):
                have = _show(actual.get("errors"))
                problems.append(f"{path}/errors_include: no error matches {_show(want)} in {have}")
    return rest, problems


def _history_item(item: Any) -> Any:
    if isinstance(item, list) and len(item) in (2, 3):
        out: dict[str, Any] = {"from": item[0], "to": item[1]}
        if len(item) == 3:
            out["event"] = {"id": item[2]}
        return out
    return item


def _raised(actual: Any) -> list[str] | None:
    return actual.get("raised") if isinstance(actual, dict) and isinstance(actual.get("raised"), list) else None


def check(step: Step, actual: Any) -> list[str]:
    raised = _raised(actual) if not step.is_input else None
    if step.raises is not None:
        if raised is None:
            return [f"expected {step.raises} to be raised, got {_show(actual)}"]
        return [] if step.raises in raised else [f"expected {step.raises}, got {raised[0]}: {actual['message']}"]
    if raised is not None:
        return [f"raised {raised[0]}: {actual['message']}"]
    if not step.has_expect:
        return []
    expected = step.expect
    if expected is None:
        return [] if actual is None else [f"expected None, got {_show(actual)}"]
    if actual is None:
        return [f"expected {_show(expected)}, got None"]
    if step.is_input:
        rest, problems = _shorthands(expected, actual, "")
        return problems + match(rest, actual)
    if step.kind == "evaluate":
        if len(expected) != len(actual):
            return [f"expected {len(expected)} evaluation item(s), got {len(actual)}: {_show(actual)}"]
        problems = []
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            rest, found = _shorthands(want, got, f"/{i}")
            problems += found + match(rest, got, f"/{i}")
        return problems
    expected = dict(expected)
    if "history" in expected and isinstance(expected["history"], list):
        expected["history"] = [_history_item(h) for h in expected["history"]]
    return match(expected, actual)


def _reason(xfail: str | dict[str, str] | None, mode: str) -> str | None:
    if isinstance(xfail, dict):
        return xfail.get(mode)
    return xfail


# -- the tests -------------------------------------------------------------------------------


def _scenario_files() -> list[Path]:
    return sorted(SCENARIOS.glob("*.yaml"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: p.stem)
def test_scenario(path: Path, mode: str, tmp_path: Path) -> None:
    scenario = load_scenario(path)
    scenario_xfail = _reason(scenario.xfail, mode)
    results = run_scenario(scenario, mode, tmp_path / mode)
    baseline = run_scenario(scenario, "one_by_one", tmp_path / "baseline") if mode != "one_by_one" else None

    failures: list[str] = []
    expected_failures: list[str] = []
    unexpected_passes: list[str] = []
    for step, actual in zip(scenario.steps, results, strict=True):
        problems = check(step, actual)
        if baseline is not None:
            problems += [f"differs from one-by-one processing: {p}"
                         for p in equal(baseline[step.number - 1], actual, "")]
        reason = _reason(step.xfail, mode)
        if reason is not None:
            (expected_failures.append(f"{step.label()}: {reason}") if problems
             else unexpected_passes.append(f"{step.label()} passed but is marked xfail: {reason}"))
        else:
            failures += [f"{step.label()}: {p}" for p in problems]

    header = f"{scenario.path.name} [{mode}] — {scenario.description.strip()}"
    if scenario_xfail is not None:
        if failures or expected_failures:
            pytest.xfail(scenario_xfail)
        pytest.fail(f"{header}\nXPASS(strict): the scenario passed but is marked xfail: {scenario_xfail}")
    if failures or unexpected_passes:
        pytest.fail("\n".join([header, *failures, *(f"XPASS(strict): {u}" for u in unexpected_passes)]),
                    pytrace=False)
    if expected_failures:
        pytest.xfail("; ".join(expected_failures))


@pytest.mark.parametrize("mode", ("one_by_one", "batch_of_2"))
@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: p.stem)
def test_scenario_on_postgres_equals_sqlite(path: Path, mode: str, tmp_path: Path, pg_url: str) -> None:
    """Every scenario on PostgreSQL: each step's result equals the SQLite run's, and its
    expectations hold (the same xfails apply)."""
    scenario = load_scenario(path)
    on_sqlite = run_scenario(scenario, mode, tmp_path / "sqlite")
    on_postgres = run_scenario(scenario, mode, tmp_path / "postgres", db=pg_url)
    differences = [f"{step.label()}: {p}" for step, a, b in zip(scenario.steps, on_sqlite, on_postgres, strict=True)
                   for p in equal(a, b, "")]
    assert not differences, "\n".join(differences)


def test_every_scenario_file_is_well_formed() -> None:
    """A typo in a scenario must break the suite, not silently test less."""
    files = _scenario_files()
    assert files, f"no scenario files in {SCENARIOS}"
    for path in files:
        scenario = load_scenario(path)
        assert any(s.has_expect or s.raises for s in scenario.steps), f"{path.name}: no step expects anything"


def test_matcher_is_partial_but_strict_on_lists_and_types() -> None:
    assert match({"a": 1}, {"a": 1, "b": 2}) == []
    assert match({"a": {"b": True}}, {"a": {"b": 1}}) != []
    assert match([1], [1, 2]) != []
    assert match({"c": 1}, {"a": 1}) != []
    assert equal({"a": 1}, {"a": 1, "b": 2}, "") != []
