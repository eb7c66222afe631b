"""The route machine: one `transitions.Machine` per config, never per event or per key.

The machine is built once with `auto_transitions` off (the default would let a route jump
from any state to any other) and bound to one reusable model: a fire sets the model's
state from storage, triggers, and reads the new state back. No callbacks are ever passed,
so no string from YAML is resolved to code. Only this module and `diagram` (which draws the
same machine with transitions' own diagram backends) import `transitions`.
"""

from __future__ import annotations

from transitions import Machine

from ..model import RouteSpec


class _Cursor:
    """The one model the machine moves; it holds a stored state only for one fire."""

    state: str


class RouteMachine:
    def __init__(self, spec: RouteSpec):
        self.spec = spec
        self._cursor = _Cursor()
        self.machine = Machine(
            model=self._cursor,
            states=list(spec.states),
            transitions=[
                {"trigger": t.trigger, "source": "*" if t.sources == ("*",) else list(t.sources), "dest": t.dest}
                for t in spec.transitions
            ],
            initial=spec.initial,
            auto_transitions=False,
            ignore_invalid_triggers=False,
        )
        self.table = self._compile()

    def _compile(self) -> dict[tuple[str, str], str]:
        """(state, trigger) -> dest, read off the machine so that it stays the source of truth."""
        table: dict[tuple[str, str], str] = {}
        for trigger, event in self.machine.events.items():
            for source, transitions in event.transitions.items():
                table[(source, trigger)] = transitions[0].dest
        return table

    def knows(self, state: str) -> bool:
        return state in self.spec.states

    def fire(self, state: str, trigger: str) -> str | None:
        """The state after `trigger` in `state`, or None when no transition is declared.

        Read from the table compiled off the machine: a dict lookup instead of a trigger call
        (which logs and dispatches); `trigger` runs the machine itself, and tests hold the two
        equal for every state and trigger.
        """
        return self.table.get((state, trigger))

    def trigger(self, state: str, trigger: str) -> str | None:
        """Fire `trigger` on the machine itself, from `state`; None when it may not fire."""
        if not self.machine.get_transitions(trigger, source=state):
            return None
        self.machine.set_state(state, model=self._cursor)
        self._cursor.trigger(trigger)  # type: ignore[attr-defined]
        return self._cursor.state
