"""What each console page shows, as plain data: the HTML page renders it, its JSON twin is it.

Reads go through the engine's public API and the store's read interface (`HistoryReader`)
on the calling thread's own read engine (`Service.reader()`), never through the writer's
connection; writes (re-process, purge) are jobs on the service's writer thread, in the
same queue as ingestion. No SQL here: the same code serves every storage backend.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from engine import (
    ConfigError,
    Engine,
    Selection,
    UsageError,
    diff_configs,
    load_config,
    render_diagram,
)
from engine.governance.quarantine import ORIGIN, iter_rejections
from engine.model import key_value

from ..paths import key_path

Service = Any  # service.app.Service; not imported: the app imports the console

WINDOWS = (("hour", timedelta(hours=1)), ("day", timedelta(days=1)), ("all", None))
DIMENSIONS = ("status", "reason", "emitter", "type")
STATUSES = ("accepted", "duplicate", "rejected")
QUARANTINE_LIMIT = 500  # rows a quarantine page lists (newest first); the twin says how many matched
ROUTES_LIMIT = 200
FAILED_LIMIT = 500  # failed deliveries a consumer's section lists
HASH_SHORT = 12
CONFIG_FILES = ("events.yaml", "emitters.yaml", "states.yaml", "consumers.yaml")
CURRENT_STYLE = "classDef current fill:#ffe08a,stroke:#b26a00,stroke-width:3px,color:#000"


class NotFound(Exception):
    """The page's object does not exist (a 404)."""


class BadInput(Exception):
    """A query or form value the page cannot use (a 400 with the message)."""


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- overview ----------------------------------------------------------------------------------


def outcome_counts(reader: Engine, now: datetime | None = None) -> dict[str, Any]:
    """Counts of the input log's outcomes by status, reason, emitter (the input's source) and
    event type, for the last hour, the last day and all time."""
    now = now or datetime.now(UTC)
    bounds = {name: (now - span if span else None) for name, span in WINDOWS}
    counts = {name: {dim: Counter() for dim in DIMENSIONS} | {"total": 0} for name, _ in WINDOWS}
    with reader.store.snapshot():
        for row in reader.store.inputs():
            at = _parse_time(row["recorded_at"])
            values = {"status": row["status"], "reason": row["reason"] or "-", "emitter": row["source"] or "-",
                      "type": row["type"] or "-"}
            for name, since in bounds.items():
                if since is None or at >= since:
                    window = counts[name]
                    window["total"] += 1
                    for dim in DIMENSIONS:
                        window[dim][values[dim]] += 1
    return {name: {"total": w["total"], **{dim: dict(sorted(w[dim].items(), key=lambda kv: (-kv[1], kv[0])))
                                            for dim in DIMENSIONS}} for name, w in counts.items()}


def writer_health(service: Service) -> dict[str, Any]:
    writable, detail = service.database_writable()
    writer = service.writer
    return {"alive": writer.alive and not service.closing, "queue_depth": writer.depth,
            "queue_capacity": service.settings.queue_events, "database_writable": writable, "detail": detail,
            "last_error": writer.last_error[0] if writer.last_error else None}


def deliveries(service: Service, reader: Engine) -> dict[str, Any]:
    """Per consumer of consumers.yaml: its acknowledged feed cursor and backlog, and its push
    deliveries' state (pending, failed, done, disabled) with the failed items and their last
    answer, through the engine's delivery API (`failed_available` false on an engine without it)."""
    config = service.settings.config
    backlog = getattr(reader, "backlog", None)
    cursor_of = getattr(reader.store, "cursor_of", None)
    failed_of = getattr(reader, "deliveries", None)
    state_of = getattr(reader, "delivery_state", None)
    pushes = callable(failed_of) and callable(state_of)
    consumers = []
    for name, spec in config.consumers.items():
        entry: dict[str, Any] = {"name": name, "description": spec.description, "actions": list(spec.actions),
                                 "events": list(spec.events), "cursor": None, "backlog": None,
                                 "failed_available": pushes, "push": None, "failed": []}
        if callable(backlog) and callable(cursor_of):
            entry["cursor"], entry["backlog"] = cursor_of(name), backlog(name)
        if pushes:
            state = state_of(name)
            entry["failed"] = [{k: item.get(k) for k in ("id", "type", "subject", "attempts", "last_status",
                                                          "last_answer", "updated_at")}
                               for item in failed_of(name, failed=True, limit=FAILED_LIMIT)]
            # a consumer with no url reads the feed: no push counts (its "not taken yet" would never
            # drain), unless deliveries of an earlier url are still recorded
            entry["pull_only"] = name not in service.settings.keys.push and not (
                entry["failed"] or any(state.get(k) for k in ("pending", "done", "failed", "disabled")))
            entry["push"] = None if entry["pull_only"] else state
        consumers.append(entry)
    return {"consumers": consumers, "failed_total": sum(len(c["failed"]) for c in consumers),
            "available": callable(backlog) and callable(cursor_of), "failed_available": pushes}


def retry_job(consumer: str | None, item: str | None) -> Callable[[Engine], int]:
    """A writer job: failed deliveries (one item, one consumer's, or all) become pending again."""
    return partial(_retry, consumer, item)


def _retry(consumer: str | None, item: str | None, engine: Engine) -> int:
    return engine.retry_deliveries(item_id=item, consumer=consumer)


def overview(service: Service, reader: Engine) -> dict[str, Any]:
    config = service.settings.config
    delivered = deliveries(service, reader)
    return {"config_hash": config.hash, "counts": outcome_counts(reader), "writer": writer_health(service),
            "failed_deliveries": {"total": delivered["failed_total"], "available": delivered["failed_available"],
                                  "consumers": {c["name"]: len(c["failed"]) for c in delivered["consumers"]}}}


# -- contract ----------------------------------------------------------------------------------


def mermaid_ids(diagram: str) -> dict[str, str]:
    """State name -> its Mermaid id, read from the diagram's `state "NAME..." as ID` lines."""
    ids = {}
    for match in re.finditer(r'^\s*state "([^"<]*)(?:<br/>[^"]*)?" as (\S+)\s*$', diagram, re.MULTILINE):
        ids[match.group(1)] = match.group(2)
    return ids


def diagram_with_current(diagram: str, state: str | None) -> tuple[str, str | None]:
    """The Mermaid text with `state` styled by the class `current`, and that state's Mermaid id."""
    node = mermaid_ids(diagram).get(state or "")
    if node is None:
        return diagram, None
    return diagram.rstrip("\n") + f"\n  {CURRENT_STYLE}\n  class {node} current\n", node


def contract(config: Any) -> dict[str, Any]:
    events = [{"name": e.name, "status": e.status, "description": e.description, "identity": list(e.identity),
               "payload": e.payload} for e in config.events.values()]
    emitters = [{"name": m.name, "kind": m.kind, "description": m.description, "internal": m.internal,
                 "events": dict(m.events)} for m in config.emitters.values()]
    matrix = {m.name: {e: m.events.get(e) for e in config.events} for m in config.emitters.values()}
    rules = [{"id": r.id, "description": r.description, "on": r.on_event or "evaluation",
              "emits": r.emit_event, "source": r.emit_source, "file": r.file} for r in config.rules]
    consumers = [{"name": c.name, "description": c.description, "actions": list(c.actions), "events": list(c.events)}
                 for c in config.consumers.values()]
    return {"config_hash": config.hash, "events": events, "emitters": emitters, "matrix": matrix,
            "rules": rules, "consumers": consumers, "route_key": list(config.route.key),
            "diagram": render_diagram(config)}


def preview_files(config: Any) -> list[str]:
    """The files a preview may replace: the four config files and every rules file, named inside
    the config directory (`rules/attendance.yaml`); a config without one may add `rules/rules.yaml`."""
    root, rules = Path(config.root), []
    for f in config.files:
        try:
            name = Path(f).relative_to(root)
        except ValueError:
            continue
        if name.parts[:1] == ("rules",):
            rules.append(name.as_posix())
    return [*CONFIG_FILES, *(sorted(rules) or ["rules/rules.yaml"])]


def _not_config(directory: str, names: list[str]) -> list[str]:
    """What a preview's copy leaves out: everything but YAML and JSON files (a `$ref` reaches
    those) and the directories that may hold them."""
    skip = {".git", ".venv", "node_modules", "__pycache__", "site", ".pytest_cache"}
    return [n for n in names if n in skip or n.startswith(".")
            or (not (Path(directory) / n).is_dir() and Path(n).suffix not in (".yaml", ".yml", ".json"))]


def _relative(problem: dict[str, Any]) -> dict[str, Any]:
    """A problem's file named inside the config directory (`emitters.yaml`, `rules/x.yaml`)."""
    return {**problem, "file": problem["file"].removeprefix("./")}


def preview(config: Any, file: str, text: str) -> dict[str, Any]:
    """Validate, diff and draw the live config with `file` replaced by `text`; nothing is written
    (the live directory is copied to a temporary one, which is removed)."""
    if file not in preview_files(config):
        raise BadInput(f"file must be one of {', '.join(preview_files(config))}")
    root = Path(config.root)
    with tempfile.TemporaryDirectory(prefix="wf-preview-") as tmp:
        copy = Path(tmp) / "config"
        shutil.copytree(root, copy, ignore=_not_config)
        target = copy / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("\r\n", "\n"), encoding="utf-8")
        try:
            new = load_config(copy, display=".")
        except ConfigError as exc:
            problems = [_relative(p.as_dict()) for p in exc.problems]
            return {"file": file, "valid": False, "problems": problems, "changes": [], "breaking": [],
                    "diagram": None}
        problems = [_relative(p.as_dict()) for p in new.problems]
        changes = [c.as_dict("full") for c in diff_configs(config, new)]
        return {"file": file, "valid": True, "problems": problems, "changes": changes,
                "breaking": [c for c in changes if c["breaking_for"]], "diagram": render_diagram(new),
                "config_hash": new.hash}


# -- routes ------------------------------------------------------------------------------------


def typed_key_value(config: Any, name: str, value: str) -> Any:
    """A route key field's value from a URL, typed as the CLI types --lead/--webinar; BadInput
    when it is not of the field's type."""
    try:
        return key_value(config, name, value)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _single(query: dict[str, list[str]], allowed: tuple[str, ...], alternatives: tuple[str, ...] = ()
            ) -> dict[str, list[str]]:
    """The query checked: only `allowed` parameters, each once unless it takes `alternatives`
    (a filter's values are alternatives, as for `webinar-flows rejections`); empty values dropped."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadInput(f"unknown parameter(s) {', '.join(unknown)}; this page takes {', '.join(allowed)}")
    twice = sorted(k for k, v in query.items() if len(v) > 1 and k not in alternatives)
    if twice:
        raise BadInput(f"{', '.join(twice)} given more than once; give each at most once")
    return {k: [x for x in v if x] for k, v in query.items() if any(v)}


def find_routes(config: Any, reader: Engine, query: dict[str, list[str]]) -> dict[str, Any]:
    """Routes whose key fields equal the given ones (any subset of the route key's fields)."""
    fields = list(config.route.key)
    given = {f: v[0] for f, v in _single(query, tuple(fields)).items()}
    codec = config.route.route_key
    with reader.store.snapshot():
        if given:
            keys = reader.store.route_keys({fields.index(f): typed_key_value(config, f, v) for f, v in given.items()})
            rows = [(k, reader.store.route_row(k)) for k in keys[:ROUTES_LIMIT]]
            found = [(k, (r["state"], r["screen"])) for k, r in rows if r is not None]
            total = len(keys)
        else:
            states = reader.store.route_states()
            total = len(states)
            found = list(states.items())[:ROUTES_LIMIT]
    routes = []
    for key, (state, screen) in found:
        values = codec.decode(key)
        routes.append({**values, "state": state, "screen": screen,
                       "path": key_path(values[f] for f in fields)})
    return {"fields": fields, "query": given, "routes": routes, "total": total, "limit": ROUTES_LIMIT}


def one_route(config: Any, reader: Engine, values: list[str]) -> dict[str, Any]:
    fields = list(config.route.key)
    if len(values) != len(fields) or not all(values):
        raise NotFound(f"the path is /console/routes/{'/'.join('{' + f + '}' for f in fields)}")
    try:
        key = {f: typed_key_value(config, f, v) for f, v in zip(fields, values, strict=True)}
    except BadInput as exc:
        raise NotFound(str(exc)) from None
    try:
        with reader.store.snapshot():
            route = reader.route(**key)
            story = reader.explain(**key)
    except UsageError as exc:
        raise NotFound(str(exc)) from None
    if route is None and story is None:
        raise NotFound("no route for this key")
    state = route["state"] if route else None
    diagram, node = diagram_with_current(render_diagram(config), state)
    return {"key": key, "state": state, "screen": route["screen"] if route else None,
            "history": route["history"] if route else [], "story": (story or {}).get("story", []),
            "diagram": diagram, "current_node": node}


# -- quarantine --------------------------------------------------------------------------------


QUARANTINE_FILTERS = ("reason", "emitter", "type", "since")


def _selection(filters: dict[str, list[str]]) -> Selection:
    try:
        return Selection(reasons=tuple(filters.get("reason", ())), sources=tuple(filters.get("emitter", ())),
                         types=tuple(filters.get("type", ())), since=(filters.get("since") or [None])[0])
    except UsageError as exc:
        raise BadInput(str(exc)) from None


def quarantine(reader: Engine, query: dict[str, list[str]]) -> dict[str, Any]:
    """Open rejections matching the filters, newest first (a filter's several values: any of them)."""
    filters = _single(query, QUARANTINE_FILTERS, alternatives=("reason", "emitter", "type"))
    selection = _selection(filters)
    rows = list(iter_rejections(reader, selection, raw=False))
    rows.sort(key=lambda r: (_parse_time(r["last_seen_at"]), r["seq"]), reverse=True)  # seen again: on top
    with reader.store.snapshot():
        everything = list(iter_rejections(reader, Selection(), raw=False))
    choices = {"reason": sorted({r["reason"] for r in everything}),
               "emitter": sorted({r["source"] for r in everything if r["source"]}),
               "type": sorted({r["type"] for r in everything if r["type"]})}
    return {"filters": {k: ", ".join(filters.get(k, ())) for k in QUARANTINE_FILTERS},
            "total": len(rows), "rejections": rows[:QUARANTINE_LIMIT], "limit": QUARANTINE_LIMIT,
            "choices": choices}


def rejection(reader: Engine, seq: int) -> dict[str, Any]:
    for row in iter_rejections(reader, Selection(state="all"), raw=False):
        if row["seq"] == seq:
            raw = reader.store.rejection_raw(seq)
            entry = dict(row)
            if raw is None:
                entry.update(text=None, hex=None, encoding=None)
            else:
                try:
                    entry.update(text=raw.decode("utf-8"), hex=None, encoding="utf-8")
                except UnicodeDecodeError:
                    entry.update(text=None, hex=raw.hex(" "), encoding="hex")
            return entry
    raise NotFound(f"no rejection {seq}")


# -- jobs on the writer thread -------------------------------------------------------------------


def reprocess_job(seqs: list[int]) -> Callable[[Engine], dict[int, dict[str, Any]]]:
    """A writer job: re-run these open rejections' bytes as new inputs, as the quarantine's
    reprocess does (the input log's origin `rejection:SEQ`; one admitted is marked resolved in
    the same transaction). Returns {seq: result}; a gone, resolved or truncated one gets none.
    A partial of a module function, not a closure: it travels to the writer process by pickle."""
    return partial(_reprocess, list(seqs))


def _reprocess(seqs: list[int], engine: Engine) -> dict[int, dict[str, Any]]:
    wanted = set(seqs)
    todo = [row["seq"] for row in iter_rejections(engine, Selection(), raw=False)
            if row["seq"] in wanted and not row["truncated"]]
    items = []
    for seq in todo:
        raw = engine.store.rejection_raw(seq)
        if raw is not None:
            items.append((raw, f"{ORIGIN}{seq}", None))
    done: list[int] = []

    def settle(item: Any, result: dict[str, Any], input_seq: int) -> None:
        seq = int(str(item[1])[len(ORIGIN):])
        done.append(seq)
        if result["status"] != "rejected":
            engine.store.resolve_rejection(seq, input_seq, engine.clock())

    results: dict[int, dict[str, Any]] = {}
    for batch in engine.iter_batches(items, max(1, len(items)), settle=settle):
        results.update(zip(done, batch, strict=True))
        done.clear()
    return results


def purge_job(seqs: list[int]) -> Callable[[Engine], int]:
    """A writer job: delete these rejections (their bytes); the input log keeps its rows."""
    return partial(_purge, sorted(set(seqs)))


def _purge(seqs: list[int], engine: Engine) -> int:
    with engine.store.transaction():
        return engine.store.purge_rejections(seqs)


def as_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
