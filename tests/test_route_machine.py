"""The route machine is the source of truth: the compiled table must say what it does."""

from __future__ import annotations

import itertools

from engine import load_config
from engine.config.locate import bundled_config
from engine.runtime.route import RouteMachine


def test_compiled_table_equals_firing_the_machine_for_every_state_and_trigger():
    config = load_config(bundled_config())
    machine = RouteMachine(config.route)
    triggers = sorted(set(config.events) | {"no_such_event"})
    states = sorted(config.route.states)
    for state, trigger in itertools.product(states, triggers):
        assert machine.fire(state, trigger) == machine.trigger(state, trigger), (state, trigger)
    assert machine.fire("completed", "client_webinar_form_submitted") == "form_submitted"
    assert machine.fire("form_submitted", "client_webinar_form_submitted") == "form_submitted"
    assert machine.fire("completed", "client_webinar_entered") is None


def test_auto_transitions_are_off():
    machine = RouteMachine(load_config(bundled_config()).route)
    assert not any(name.startswith("to_") for name in machine.machine.events)
