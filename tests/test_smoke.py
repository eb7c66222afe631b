"""The shortest path through the product: one event in, one route out."""

from conftest import completed, entered, jsonl, result_lines


def test_entered_then_completed_routes_and_classifies(run_cli, tmp_path):
    (tmp_path / "in.jsonl").write_bytes(jsonl(entered(id="a"), completed(id="b")))
    out = run_cli("process", "in.jsonl")
    assert out.exit_code == 0, out.stderr
    first, second = result_lines(out.stdout)
    assert (first["line"], first["status"], first["route"]["state"]) == (1, "accepted", "in_webinar")
    assert [e["type"] for e in second["emitted"]] == ["client_webinar_attendance_classified", "post_webinar_route"]
    assert "2 accepted, 0 duplicate, 0 rejected" in out.stderr
    route = run_cli("route", "--lead", "l1", "--webinar", "w1")
    assert [h["to"] for h in __import__("json").loads(route.stdout)["history"]] == ["in_webinar", "completed"]
