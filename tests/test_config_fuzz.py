"""validate never crashes: a config whose payload schemas and rule conditions hold any JSON-like
values is either loaded or refused with problems (ConfigError), never ended by a traceback; and
one that loads processes an event into a result.

Pass 2 runs over configs that pass 1 found wanting (to report every problem at once), so each
check meets schemas the metaschema refuses: twice today a check raised on one (an invalid field
schema under a rule's constant, a trigger's `required: 5`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st

from conftest import completed
from engine import ConfigError, Engine, load_config
from engine.config.locate import bundled_config
from engine.config.yamlfile import load_yaml

KEYWORDS = ["type", "enum", "const", "pattern", "format", "minimum", "items", "properties", "required",
            "additionalProperties", "$ref", "allOf", "not", "unevaluatedProperties", "multipleOf"]
POOL = ["string", "object", "boolean", "nosuchtype", "(", "a+", "date-time", "#/nowhere", "x.yaml", "", "live",
        5, -1, 0.5, True, False, None, [], ["x"], [5], {}, {"type": "nosuchtype"}, {"pattern": "("}]
values = st.sampled_from(POOL)
field_schemas = st.one_of(st.dictionaries(st.sampled_from(KEYWORDS), values, max_size=3), values)


def _load(path: Path) -> Any:
    """As the engine reads it (YAML 1.2: `on` stays a string), to be written back by PyYAML, which
    quotes what YAML 1.1 would read otherwise."""
    return load_yaml(path.read_bytes(), str(path)).data


def _edit(root: Path, event: str, field: str, schema: Any, where: Any, required: Any) -> None:
    events = _load(root / "events.yaml")
    payload = events["events"][event]["payload"]
    payload["properties"][field] = schema
    if required is not None:
        payload["required"] = required
    (root / "events.yaml").write_text(yaml.safe_dump(events, sort_keys=False))
    rules = _load(root / "rules" / "attendance.yaml")
    rules["rules"][0]["when"]["lacks"][0]["where"] = {"attended": where}
    (root / "rules" / "attendance.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(event=st.sampled_from(["client_webinar_completed", "client_webinar_attendance_classified",
                              "post_webinar_route"]),
       field=st.sampled_from(["attended", "lead_id", "status", "timestamp", "session_id"]),
       schema=field_schemas, where=values,
       required=st.one_of(st.none(), values))
def test_validate_loads_or_refuses_any_payload_schema_and_condition(event: str, field: str, schema: Any,
                                                                    where: Any, required: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "config"
        root.mkdir()
        for name in ("events.yaml", "emitters.yaml", "states.yaml"):
            shutil.copy(bundled_config() / name, root / name)
        shutil.copytree(bundled_config() / "rules", root / "rules")
        _edit(root, event, field, schema, where, required)
        try:
            config = load_config(root)
        except ConfigError as exc:
            assert exc.problems and all(p.code for p in exc.problems)
            assert not {"non_string_key", "yaml_syntax"} & {p.code for p in exc.problems}  # the edit wrote YAML 1.2
            tally("refused")
            return
        tally("loaded")
        with Engine.open(config=config, db=Path(tmp) / "x.db") as engine:  # and the config runs
            result = engine.process(completed(lead="l1", webinar="w1", id="c1"))
        assert result["status"] in ("accepted", "duplicate", "rejected")
