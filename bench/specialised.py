"""A yardstick between engine and floor: the engine's own store driven by the default config's logic
written out by hand.

`Specialised` writes what the engine writes, row for row, through `SQLiteStore` (schema 6, the
engine's SQL, its transaction), but decides nothing by reading a config: the contract's checks,
the route table, the two rules, the actions and the outbox items are the default config's,
spelled out as the floor spells them (orjson, fastjsonschema, a state dict). It is an upper
bound of what a pipeline generated from the config once per config hash could reach on today's
schema: it does less than the engine (no strict-JSON checks, no rule validated against the
contract, simpler rejection errors), so a generated pipeline would be slower than it, not
faster. Set beside the engine and the tight floor it splits the gap between them into the
engine's interpretation of its config (engine -> specialised) and what it stores
(specialised -> floor): docs/PERFORMANCE.md, "Seventh round".

    python bench/specialised.py                     # 40,000 events, batches of 1,000, 4 rounds
    python bench/specialised.py --batch 1 --events 8000

tests/test_bench.py holds its outcome equal to the floor's (and so to the engine's).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.floor import (  # noqa: E402
    ALLOWED,
    CLASSIFIED,
    COMPLETED,
    IDENTITY,
    MAX_BYTES,
    REMINDERS,
    ROUTED,
    SCREENS,
    TABLE,
    _validators,
)
from engine.config.load import load_config  # noqa: E402
from engine.runtime.envelope import fingerprint  # noqa: E402
from engine.runtime.rules import derived_id  # noqa: E402
from engine.store.sqlite import SQLiteStore  # noqa: E402
from engine.timefmt import UtcClock  # noqa: E402

SORT = orjson.OPT_SORT_KEYS
CONSUMED = frozenset({"route", "screen"})
ID_C = ("lead_id", "webinar_id", "attended")
ID_R = ("lead_id", "webinar_id", "status")


def result(status: str, eid: str | None, etype: str | None, reason: str | None = None, errors: list | None = None,
           emitted: list | None = None, actions: list | None = None, route: dict | None = None) -> dict[str, Any]:
    """A result as `Engine.process_many` gives it."""
    return {"line": None, "id": eid, "type": etype, "status": status, "reason": reason, "errors": errors or [],
            "emitted": emitted or [], "actions": actions or [], "route": route}


class Specialised:
    """The engine's store and rows, the default config's decisions written out."""

    def __init__(self, db: str | Path, config: Path):
        self.store = SQLiteStore(db)
        self.validate = _validators(config)
        self.hash = load_config(config).hash
        self.clock = UtcClock()

    def run(self, lines: list[bytes], batch: int) -> list[dict[str, Any]]:
        out = []
        store = self.store
        gc.disable()  # as process_many holds the collector: every result is kept until it returns
        try:
            for start in range(0, len(lines), batch):
                with store.transaction():
                    self.commit_at = self.clock()
                    for raw in lines[start:start + batch]:
                        out.append(self.one(raw, self.clock()))
        finally:
            gc.enable()
        return out

    def log(self, res: dict[str, Any], at: str, fact_seq: int | None = None, rejection_seq: int | None = None,
            source: str | None = None) -> None:
        self.store.record_input((None, None, res["status"], res["reason"], source, res["id"], res["type"], fact_seq,
                                 rejection_seq, self.hash, at))

    def reject(self, raw: bytes, reason: str, at: str, partial: dict[str, Any], message: str = "") -> dict[str, Any]:
        eid = partial.get("id") if isinstance(partial.get("id"), str) else None
        et = partial.get("type") if isinstance(partial.get("type"), str) else None
        src = partial.get("source") if isinstance(partial.get("source"), str) else None
        errors = [{"path": "", "code": reason, "message": message or reason}]
        res = result("rejected", eid, et, reason, errors)
        kept, size, digest, truncated = fingerprint(raw, MAX_BYTES)
        seq = self.store.record_rejection({
            "raw_sha256": digest, "raw": kept, "raw_size": size, "truncated": int(truncated), "reason": reason,
            "errors": json.dumps(errors, ensure_ascii=False), "source": src, "id": eid, "type": et,
            "config_hash": self.hash, "at": at})
        self.log(res, at, rejection_seq=seq, source=src)
        return res

    def one(self, raw: bytes, at: str) -> dict[str, Any]:
        if len(raw) > MAX_BYTES:
            return self.reject(raw, "too_large", at, {})
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self.reject(raw, "malformed_json", at, {}, str(exc))
        if not (isinstance(ev, dict) and ev.get("specversion") == "1.0" and isinstance(ev.get("id"), str)
                and isinstance(ev.get("source"), str) and isinstance(ev.get("type"), str)
                and isinstance(ev.get("data"), dict)):
            return self.reject(raw, "invalid_envelope", at, ev if isinstance(ev, dict) else {})
        t, data, source, eid = ev["type"], ev["data"], ev["source"], ev["id"]
        check = self.validate.get(t)
        if check is None:
            return self.reject(raw, "unknown_event", at, ev)
        if (source, t) not in ALLOWED:
            return self.reject(raw, "unauthorized_emitter", at, ev)
        try:
            check(data)
        except fastjsonschema.JsonSchemaException as exc:
            return self.reject(raw, "invalid_payload", at, ev, exc.message)
        store, h = self.store, self.hash
        canonical = orjson.dumps(ev, option=SORT).decode()
        if not store.claim_envelope(source, eid, canonical, h):
            if store.find_envelope(source, eid) == canonical:
                res = result("duplicate", eid, t, "same_envelope")
                self.log(res, at, source=source)
                return res
            return self.reject(raw, "id_conflict", at, ev)
        fields = IDENTITY[t]
        identity = orjson.dumps([data[f] for f in fields]).decode() if all(f in data for f in fields) else None
        key = (orjson.dumps([data["lead_id"], data["webinar_id"]]).decode()
               if "lead_id" in data and "webinar_id" in data else None)
        fact_seq = store.add_fact((source, eid, t, key, identity, orjson.dumps(data, option=SORT).decode(), 0, None,
                                   None, None, h, at))
        if fact_seq is None:
            res = result("duplicate", eid, t, "same_fact")
            self.log(res, at, source=source)
            return res
        if key is None:
            res = result("accepted", eid, t)
            self.log(res, at, fact_seq=fact_seq, source=source)
            return res
        lead, webinar = data["lead_id"], data["webinar_id"]
        emitted = []
        if t == COMPLETED:
            rows = store.facts_with_identity(key)
            if not any(ft == CLASSIFIED and d.get("attended") is True for ft, d, _ in rows):
                local = {(ft, i) for ft, _, i in rows if i is not None}
                cdata = {"lead_id": lead, "webinar_id": webinar, "attended": True, "timestamp": data["completed_at"]}
                cid = derived_id("attended_on_completion", (source, eid))
                cident = orjson.dumps([lead, webinar, True]).decode()
                if (CLASSIFIED, cident) not in local:
                    c = {"specversion": "1.0", "id": cid, "source": "attendance-classifier", "type": CLASSIFIED,
                         "datacontenttype": "application/json", "data": cdata}
                    emitted.append((c, cident))
                    rdata = {**cdata, "status": "attended"}
                    rident = orjson.dumps([lead, webinar, "attended"]).decode()
                    if (ROUTED, rident) not in local:
                        r = {"specversion": "1.0", "id": derived_id("route_after_classification",
                                                                    ("attendance-classifier", cid)),
                             "source": "post-webinar-routing-service", "type": ROUTED,
                             "datacontenttype": "application/json", "data": rdata}
                        emitted.append((r, rident))
            for e, ident in emitted:
                store.insert_fact((e["source"], e["id"], e["type"], key, ident,
                                   orjson.dumps(e["data"], option=SORT).decode(), 1,
                                   "attended_on_completion" if e["type"] == CLASSIFIED else "route_after_classification",
                                   fact_seq, None, h, at))
            emitted = [e for e, _ in emitted]
        stored = store.route_state(key)
        state, screen = stored if stored is not None else ("new", None)
        dest = TABLE.get((state, t))
        actions = []
        if dest is None:
            if stored is None:
                store.create_route(key, state, h, at)
        else:
            actions = [{"type": "route", "from": state, "to": dest}]
            screen = SCREENS.get(dest)
            if screen:
                actions.append({"type": "screen", "screen": screen})
            reminder = REMINDERS.get(dest)
            if reminder:
                actions.append({"type": "reminder", "reminder": reminder, "context": {
                    "lead_id": lead, "webinar_id": webinar, "state": dest,
                    "event": {"type": t, "id": eid, "data": data}}})
            store.append_history(key, state, dest, {"source": source, "id": eid, "type": t}, fact_seq, h, at)
            store.fix_route(key, dest, screen, h, at)
            store.add_actions(key, fact_seq, actions, CONSUMED, h, at)
            state = dest
        if emitted or actions:
            about = f"{lead}/{webinar}"
            ca = self.commit_at
            rows = [(key, e["id"], e["type"], orjson.dumps({**e, "subject": about, "time": ca}).decode(), ca)
                    for e in emitted]
            for pos, a in enumerate(actions):
                item = {"specversion": "1.0", "id": derived_id(f"#action/{pos}", (source, eid)), "source": "scenario",
                        "type": "action." + a["type"], "subject": about, "time": ca,
                        "datacontenttype": "application/json", "data": a}
                rows.append((key, item["id"], item["type"], orjson.dumps(item).decode(), ca))
            store.add_outbox(rows)
        res = result("accepted", eid, t, emitted=emitted, actions=actions,
                     route={"lead_id": lead, "webinar_id": webinar, "state": state, "screen": screen})
        self.log(res, at, fact_seq=fact_seq, source=source)
        return res

    def close(self) -> None:
        self.store.close()


def main(argv: list[str] | None = None) -> int:
    from bench import run
    from engine.config.locate import bundled_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args(argv)
    lines = run.lines_of(args.events, max(args.events // 10, 100))

    def time_specialised(db: Path) -> tuple[float, dict]:
        side = Specialised(db, bundled_config())
        started = time.perf_counter()
        results = side.run(lines, args.batch)
        elapsed = time.perf_counter() - started
        side.close()
        counts = {s: sum(r["status"] == s for r in results) for s in run.STATUSES}
        return len(lines) / elapsed, run.engine_outcome(db, counts)

    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            base = Path(tmp) / str(rep)
            sides = [("specialised", lambda: time_specialised(base.with_suffix(".s.db"))),
                     ("engine", lambda: run.time_engine(lines, base.with_suffix(".e.db"), args.batch)),
                     ("floor", lambda: run.time_floor(lines, base.with_suffix(".f.db"), args.batch))]
            sides = sides[rep % 3:] + sides[:rep % 3]  # each side first in turn
            rates, outcomes = {}, {}
            for name, measure in sides:
                rates[name], outcomes[name] = measure()
            for name in ("specialised", "engine"):
                problem = run.disagreement(outcomes[name], outcomes["floor"])
                if problem:
                    print(f"{name} and floor disagree: {problem}", file=sys.stderr)
                    return 1
            ratios.append((rates["engine"] / rates["floor"], rates["specialised"] / rates["floor"]))
            print(f"round {rep + 1}: engine {rates['engine']:,.0f}, specialised {rates['specialised']:,.0f}, "
                  f"floor {rates['floor']:,.0f} events/s", flush=True)
    print(f"median of {args.reps}: engine / floor {statistics.median(r[0] for r in ratios):.3f}, "
          f"specialised / floor {statistics.median(r[1] for r in ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
