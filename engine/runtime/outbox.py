"""The outbox: what the scenario decided, as CloudEvents its consumers receive.

Every derived event and every action of a committed event becomes one item, written in the
same transaction as the event, so a consumer can never see a decision that was rolled back
nor miss one that was committed. An item's id is stable: a derived event keeps its own
(a UUIDv5 of the rule and the cause), an action gets a UUIDv5 of its cause and its position,
so a replay, a re-delivery or a reset feed yields the same ids.
"""

from __future__ import annotations

from typing import Any

import orjson

from .rules import derived_id

ACTION_SOURCE = "scenario"
ACTION_PREFIX = "action."


def subject(key_values: list[Any]) -> str:
    """The route key's values joined by `/`, in the order of the config's key."""
    try:
        return "/".join(key_values)  # strings, as keys mostly are: each written as it is
    except TypeError:
        return "/".join(v if isinstance(v, str) else orjson.dumps(v).decode() for v in key_values)


def action_id(cause: tuple[str, str], position: int) -> str:
    return derived_id(f"#action/{position}", cause)


def items(route_key: str, key_values: list[Any], emitted: list[dict[str, Any]], actions: list[dict[str, Any]],
          cause: tuple[str, str], at: str) -> list[tuple[str, str, str, str, str]]:
    """Outbox rows (route_key, id, type, body, recorded_at): derived events first, then actions,
    each in the order `process` reports them."""
    about = subject(key_values)
    rows = [(route_key, event["id"], event["type"],
             orjson.dumps({**event, "subject": about, "time": at}).decode(), at) for event in emitted]
    for position, action in enumerate(actions):
        item = {"specversion": "1.0", "id": action_id(cause, position), "source": ACTION_SOURCE,
                "type": ACTION_PREFIX + action["type"], "subject": about, "time": at,
                "datacontenttype": "application/json", "data": action}
        rows.append((route_key, item["id"], item["type"], orjson.dumps(item).decode(), at))
    return rows
