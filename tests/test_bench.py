"""The benchmark's yardsticks stay honest: the floor pipelines reach the engine's outcome.

`make bench` refuses a ratio when they disagree; this keeps a change to any side from being
found out only there. The tight floor must agree on everything it keeps: the counts, every
route's state and screen, every rejection's bytes and reason, and the outbox item by item
(ids, types and bodies per route key, in order; only `time` differs). The floor as written
until issue 12 keeps no outbox and agrees on counts and routes.
"""

from __future__ import annotations

from bench.run import STATUSES, disagreement, engine_outcome, lines_of, time_engine, time_floor, time_loose
from bench.specialised import Specialised
from engine.config.locate import bundled_config


def test_floors_and_engine_agree_on_a_generated_stream(tmp_path):
    lines = lines_of(3000, 300, seed=11)
    for batch in (1000, 1):
        _, engine = time_engine(lines, tmp_path / f"engine-{batch}.db", batch)
        _, floor = time_floor(lines, tmp_path / f"floor-{batch}.db", batch)
        _, loose = time_loose(lines, tmp_path / f"loose-{batch}.db", batch)
        assert disagreement(engine, floor) is None
        assert disagreement(engine, loose) is None
        counts, routes = engine["counts"], engine["routes"]
        assert counts["accepted"] > 2000 and counts["duplicate"] > 0 and counts["rejected"] > 0
        assert len(routes) > 250 and {"completed", "form_submitted"} <= {s for s, _ in routes.values()}
        items = [t for ids, _ in engine["outbox"].values() for _, t in ids]
        assert len(items) > 3000 and {"post_webinar_route", "action.reminder"} <= set(items)
        assert len(engine["rejections"]) > 5


def test_the_specialised_pipeline_reaches_the_floors_outcome(tmp_path):
    """bench/specialised.py measures what a pipeline generated per config could reach: only while
    it stores what the engine stores and decides what the floor decides."""
    lines = lines_of(3000, 300, seed=11)
    for batch in (1000, 1):
        side = Specialised(tmp_path / f"specialised-{batch}.db", bundled_config())
        results = side.run(lines, batch)
        side.close()
        counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
        ours = engine_outcome(tmp_path / f"specialised-{batch}.db", counts)
        _, floor = time_floor(lines, tmp_path / f"floor-{batch}.db", batch)
        assert disagreement(ours, floor) is None
        assert counts == floor["counts"] and counts["rejected"] > 5
        assert sum(len(ids) for ids, _ in ours["outbox"].values()) > 3000


def test_a_difference_in_the_outbox_is_found(tmp_path):
    lines = lines_of(500, 50, seed=5)
    _, engine = time_engine(lines, tmp_path / "engine.db", 100)
    _, floor = time_floor(lines, tmp_path / "floor.db", 100)
    subject = next(k for k, (ids, _) in floor["outbox"].items() if len(ids) > 1)
    ids, body = floor["outbox"][subject]
    floor["outbox"][subject] = (ids[::-1], body)
    assert "outbox" in (disagreement(engine, floor) or "")
    floor["outbox"][subject] = (ids, "0" * 40)
    assert "bodies" in (disagreement(engine, floor) or "")
