"""Loading a config directory: YAML in, a checked, frozen `Config` out.

Two passes, every problem reported with file, line and column: pass 1 reads each file
safely and holds it to its own closed JSON Schema; pass 2 (`checks`) resolves the
references between files and holds the whole to the spec's boundaries.
"""

from __future__ import annotations

import copy
from dataclasses import replace
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match, relevance

from . import checks
from .refs import LocalFiles, declared_fields
from ..errors import ConfigError, Problem
from ..model import (
    Config,
    ConsumerSpec,
    DataCondition,
    EmitterSpec,
    EvaluationResult,
    EventSpec,
    FactRef,
    FieldMap,
    RouteSpec,
    RuleSpec,
    StateSpec,
    TransitionSpec,
)
from .yamlfile import MAX_FILE_BYTES, YamlDoc, load_yaml

FILES = ("events.yaml", "emitters.yaml", "states.yaml")
OPTIONAL_FILES = ("consumers.yaml",)  # part of the config (and its hash) only when present
RULES_DIR = "rules"

# Keys that would bring time logic or executable callbacks into a config. Each is refused
# with the spec boundary it protects rather than as a mere unknown key.
TIME_KEYS = frozenset({"timeout", "timeouts", "on_timeout", "delay", "schedule", "cron", "after", "every",
                       "interval", "at", "wait", "sleep", "deadline", "ttl", "expires", "timer"})
CALLBACK_KEYS = frozenset({"on_enter", "on_exit", "conditions", "unless", "before", "prepare",
                           "on_exception", "on_final", "finalize_event", "prepare_event", "callbacks",
                           "after_state_change", "before_state_change"})
_FREE_FORM = {"payload", "data", "where", "repeatable_when"}  # below these, keys are user field names
_NAME_MAPS = {"emitters", "events", "consumers"}  # below these, keys are names, not config keys


def _schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("engine.config").joinpath(f"schemas/{name}.schema.json").read_text("utf-8"))


_VALIDATORS = {kind: Draft202012Validator(_schema(kind))
               for kind in ("events", "emitters", "rules", "states", "consumers")}


def config_files(root: Path) -> list[Path]:
    """The files that make up a config, in a stable order (what the config hash covers)."""
    files = [root / name for name in FILES]
    files += [root / name for name in OPTIONAL_FILES if (root / name).is_file()]
    rules = root / RULES_DIR
    if rules.is_dir():
        files += sorted(p for p in rules.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return files


def _kind(root: Path, path: Path) -> str:
    return "rules" if path.parent != root else path.stem


def _read(root: Path, display: str) -> tuple[dict[str, YamlDoc], list[Problem], str]:
    docs: dict[str, YamlDoc] = {}
    problems: list[Problem] = []
    digest = hashlib.sha256()
    for path in config_files(root):
        name = f"{display}/{path.relative_to(root).as_posix()}"
        try:
            with path.open("rb") as handle:  # bounded: a huge or endless file costs no more than the limit
                raw = handle.read(MAX_FILE_BYTES + 1)
                size = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            problems.append(Problem(name, 1, 1, "error", "missing_file", f"the config has no {path.name}"))
            continue
        except OSError as exc:
            problems.append(Problem(name, 1, 1, "error", "unreadable_file", str(exc)))
            continue
        if len(raw) > MAX_FILE_BYTES:
            shown = f"{size} bytes" if size > MAX_FILE_BYTES else f"more than {MAX_FILE_BYTES} bytes"
            problems.append(Problem(name, 1, 1, "error", "config_too_large",
                                    f"{shown}; a config file may hold at most {MAX_FILE_BYTES} bytes"))
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + raw + b"\0")
        doc = load_yaml(raw, name)
        doc.kind = _kind(root, path)
        docs[name] = doc
    return docs, problems, digest.hexdigest()


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def _names_a_callback(value: Any) -> bool:
    """`after` is both a transitions callback (`after: notify`, a function's name or a list of
    them) and the word of a delay (`after: 30`, `after: 5m`): the value tells which boundary."""
    names = value if isinstance(value, list) and value else [value]
    return all(isinstance(v, str) and _IDENTIFIER.fullmatch(v) for v in names)


def _boundary_keys(doc: YamlDoc, node: Any, path: tuple, names: bool = False) -> None:
    """Flag, and drop from `node`, keys that are time logic or callbacks, wherever they stand."""
    if isinstance(node, dict) and names:
        for key, value in node.items():
            _boundary_keys(doc, value, path + (key,))
    elif isinstance(node, dict):
        for key in list(node):
            if key == "after" and _names_a_callback(node[key]):
                doc.problem(path + (key,), "callback_refused",
                            "'after' here names a function to call (a transitions callback): the route machine "
                            "takes no callbacks, so no code runs from YAML (allowed actions are routing, screens "
                            "and reminders only)")
                del node[key]
            elif key in TIME_KEYS:
                doc.problem(path + (key,), "time_logic",
                            f"'{key}' is time logic: the spec forbids timers, delays and schedules "
                            "in the scenario layer (no time logic)")
                del node[key]
            elif key in CALLBACK_KEYS:
                doc.problem(path + (key,), "callback_refused",
                            f"'{key}' is a callback: the route machine takes no callbacks, so no code "
                            "runs from YAML (allowed actions are routing, screens and reminders only)")
                del node[key]
            elif key not in _FREE_FORM:
                _boundary_keys(doc, node[key], path + (key,), names=key in _NAME_MAPS)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _boundary_keys(doc, item, path + (i,))


def _schema_pass(doc: YamlDoc) -> None:
    if doc.data is None and doc.problems:
        return
    data = copy.deepcopy(doc.data) if doc.data is not None else {}
    _boundary_keys(doc, data, ())
    for error in sorted(_VALIDATORS[doc.kind].iter_errors(data), key=relevance):
        error = best_match([error]) if error.context else error
        path = tuple(error.absolute_path)
        if "propertyNames" in error.schema_path:
            doc.problem(path + (error.instance,), "invalid_value", f"invalid name: {error.message}")
            continue
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - known):
                doc.problem(path + (key,), "unknown_key", f"unknown key '{key}' (allowed: {', '.join(sorted(known))})")
            continue
        custom = error.schema.get("x-code") if isinstance(error.schema, dict) else None
        if custom:  # the schema names this refusal itself (e.g. an unknown action kind)
            doc.problem(path, custom, f"{'/'.join(map(str, path))}: "
                        + error.schema["x-message"].format(value=json.dumps(error.instance, ensure_ascii=False)))
            continue
        code = "invalid_value" if error.validator != "required" else "missing_key"
        doc.problem(path, code, f"{'/'.join(map(str, path)) or 'document'}: {error.message}")


def load_config(root: str | Path, *, display: str | None = None) -> Config:
    """Load and check the config directory `root`; raise `ConfigError` holding every problem."""
    root = Path(root)
    display = display if display is not None else str(root)
    if not root.is_dir():
        raise ConfigError([Problem(display, 1, 1, "error", "missing_config", f"{display} is not a directory")])
    docs, problems, config_hash = _read(root, display)
    for doc in docs.values():
        _schema_pass(doc)
        problems += doc.problems
        doc.problems = []
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems + _despite(root, docs, config_hash, problems))
    files = LocalFiles(root)
    config = _build(root, docs, config_hash, files)
    problems += checks.run(config, docs, files)
    for doc in docs.values():
        problems += doc.problems
    problems.sort(key=lambda p: (p.severity != "error", p.file, p.line, p.column))
    if any(p.severity == "error" for p in problems):
        raise ConfigError(problems)
    return replace(config, problems=tuple(problems), hash=files.extend_hash(config_hash),
                   schema_resources=files.resources())


def _despite(root: Path, docs: dict[str, YamlDoc], config_hash: str, found: list[Problem]) -> list[Problem]:
    """Pass 2 over a config that failed pass 1, when it still holds together: one run then
    reports every problem it can (a bad key and a bad reference at once), not one kind a run."""
    try:
        config = _build(root, docs, config_hash)
        more = checks.run(config, docs)
    except Exception:  # noqa: BLE001 - a config that broke its schemas need not build; pass 1 said why
        return []
    for doc in docs.values():
        more += doc.problems
    flagged = {(p.file, p.line) for p in found}  # what pass 2 says there follows from pass 1's error
    return sorted((p for p in more if (p.file, p.line) not in flagged),
                  key=lambda p: (p.severity != "error", p.file, p.line, p.column))


def _doc(docs: dict[str, YamlDoc], kind: str) -> list[YamlDoc]:
    return [d for d in docs.values() if d.kind == kind]


def _build(root: Path, docs: dict[str, YamlDoc], config_hash: str, files: LocalFiles | None = None) -> Config:
    events = {name: _event(name, spec, root, files) for name, spec in _doc(docs, "events")[0].data["events"].items()}
    emitters = {
        name: EmitterSpec(name, spec["kind"], spec.get("description", ""), bool(spec.get("internal", False)),
                          dict(spec["events"]))
        for name, spec in _doc(docs, "emitters")[0].data["emitters"].items()
    }
    rules: list[RuleSpec] = []
    evaluation: EvaluationResult | None = None
    first_evaluation = ""
    for doc in _doc(docs, "rules"):
        data = doc.data or {}
        if "evaluation_result" in data:
            if evaluation is not None:
                doc.problem(("evaluation_result",), "duplicate_evaluation_result",
                            f"evaluation_result is declared in more than one rules file (first in {first_evaluation})")
            else:
                first_evaluation = doc.file
            evaluation = EvaluationResult(**data["evaluation_result"])
        rules += [_rule(r, doc.file) for r in data.get("rules", [])]
    return Config(root=root, hash=config_hash, events=events, emitters=emitters, rules=tuple(rules),
                  route=_route(_doc(docs, "states")[0].data), evaluation_result=evaluation,
                  files=tuple(config_files(root)), consumers=_consumers(_doc(docs, "consumers")))


def _consumers(docs: list[YamlDoc]) -> dict[str, ConsumerSpec]:
    """consumers.yaml as specs; none without the file. Tolerant of a file that failed its schema
    (pass 2 then still runs over the rest): what is not a list of names is left out."""
    data = docs[0].data if docs else None
    section = data.get("consumers") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        return {}

    def names(value: Any) -> tuple[str, ...]:
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    found = {}
    for name, spec in section.items():
        spec = spec if isinstance(spec, dict) else {}
        receives = spec.get("receives") if isinstance(spec.get("receives"), dict) else {}
        description = spec.get("description") if isinstance(spec.get("description"), str) else ""
        found[name] = ConsumerSpec(name, description, names(receives.get("actions")), names(receives.get("events")))
    return found


def _event(name: str, spec: dict[str, Any], root: Path, files: LocalFiles | None) -> EventSpec:
    identity = tuple(spec.get("identity", ()))
    props = declared_fields(spec["payload"], root, files)
    datetimes = frozenset(f for f in identity if isinstance(props.get(f), dict) and props[f].get("format") == "date-time")
    repeatable = {k: tuple(v) for k, v in spec.get("repeatable_when", {}).items()}
    return EventSpec(name, spec["status"], spec.get("description", ""), spec["payload"], identity, repeatable, datetimes,
                     props)


def _factref(ref: Any) -> FactRef:
    if isinstance(ref, str):
        return FactRef(ref)
    return FactRef(ref["event"], tuple(sorted(ref.get("where", {}).items())))


def _fieldmap(name: str, spec: dict[str, Any]) -> FieldMap:
    if "value" in spec:
        return FieldMap(name, "value", value=spec["value"])
    if "cases" in spec:
        return FieldMap(name, "cases", source=spec["from"],
                        cases=tuple((c["equals"], c["value"]) for c in spec["cases"]),
                        has_default="default" in spec, default=spec.get("default"))
    return FieldMap(name, "from", source=spec["from"])


def _rule(spec: dict[str, Any], file: str) -> RuleSpec:
    when = spec.get("when", {})
    conditions = tuple(DataCondition(f, *next(iter(c.items()))) for f, c in when.get("data", {}).items())
    emit = spec["emit"]
    return RuleSpec(
        id=spec["id"], description=spec.get("description", ""), on_event=spec["on"].get("event"),
        has=tuple(_factref(r) for r in when.get("has", [])), lacks=tuple(_factref(r) for r in when.get("lacks", [])),
        data=conditions, emit_event=emit["event"], emit_source=emit["source"],
        copy_data=bool(emit.get("copy_data", False)),
        fields=tuple(_fieldmap(n, m) for n, m in emit.get("data", {}).items()), file=file,
    )


def _route(spec: dict[str, Any]) -> RouteSpec:
    states: dict[str, StateSpec] = {}
    for item in spec["states"]:
        if isinstance(item, str):
            states.setdefault(item, StateSpec(item))
        else:
            states.setdefault(item["name"], StateSpec(item["name"], item.get("screen"), tuple(item.get("reminders", ())),
                                                      item.get("description", ""), bool(item.get("final", False))))
    transitions = tuple(
        TransitionSpec(t["trigger"], ("*",) if t["source"] == "*" else tuple([t["source"]] if isinstance(t["source"], str)
                                                                            else t["source"]),
                       t["dest"], t.get("description", ""))
        for t in spec["transitions"]
    )
    return RouteSpec(tuple(spec["key"]), spec["initial"], states, transitions)
