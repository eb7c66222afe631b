"""The Scenario Service: turns a route change into the actions the spec allows.

Only three kinds exist, as the spec's scenario layer allows nothing else: routing
between states, a screen transition, and client reminders tied to the event.
"""

from __future__ import annotations

from typing import Any

from ..model import RouteSpec


def actions_for(route: RouteSpec, key: dict[str, Any], before: str, after: str, event: dict[str, Any]) -> list[dict[str, Any]]:
    state = route.states[after]
    actions: list[dict[str, Any]] = [{"type": "route", "from": before, "to": after}]
    if state.screen:
        actions.append({"type": "screen", "screen": state.screen})
    for reminder in state.reminders:
        context = {**key, "state": after, "event": {"type": event["type"], "id": event["id"], "data": event["data"]}}
        actions.append({"type": "reminder", "reminder": reminder, "context": context})
    return actions
