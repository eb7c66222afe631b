"""The Route Consumer: applies route and screen actions (route fixation), nothing else.

It takes no decision of its own: it records the state a route action names and the screen
a screen action names. Reminders are not its business; they stay in the outbox for
whoever sends them.
"""

from __future__ import annotations

from typing import Any

from ..store.base import Store

CONSUMED = frozenset({"route", "screen"})


class RouteConsumer:
    def __init__(self, store: Store):
        self.store = store

    def apply(self, route_key: str, actions: list[dict[str, Any]], cause: dict[str, Any], fact_seq: int,
              config_hash: str, at: str) -> tuple[str | None, str | None]:
        """Fix the route the actions name; returns its (state, screen) as now recorded."""
        state = screen = None
        for action in actions:
            if action["type"] == "route":
                state = action["to"]
                self.store.append_history(route_key, action["from"], action["to"], cause, fact_seq, config_hash, at)
            elif action["type"] == "screen":
                screen = action["screen"]
        if state is not None:
            self.store.fix_route(route_key, state, screen, config_hash, at)
        self.store.add_actions(route_key, fact_seq, actions, CONSUMED, config_hash, at)
        return state, screen
