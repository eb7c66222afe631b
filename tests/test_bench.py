"""The benchmark's yardstick stays honest: the floor pipeline reaches the engine's outcome.

`make bench` refuses a ratio when the two disagree; this keeps a change to either side from
being found out only there.
"""

from __future__ import annotations

from bench.run import lines_of, time_engine, time_floor


def test_floor_and_engine_agree_on_a_generated_stream(tmp_path):
    lines = lines_of(3000, 300, seed=11)
    for batch in (1000, 1):
        _, engine_counts, engine_routes = time_engine(lines, tmp_path / f"engine-{batch}.db", batch)
        _, floor_counts, floor_routes = time_floor(lines, tmp_path / f"floor-{batch}.db", batch)
        assert engine_counts == floor_counts
        assert engine_counts["accepted"] > 2000 and engine_counts["duplicate"] > 0 and engine_counts["rejected"] > 0
        assert engine_routes == floor_routes
        assert len(engine_routes) > 250 and {"completed", "form_submitted"} <= set(engine_routes.values())
