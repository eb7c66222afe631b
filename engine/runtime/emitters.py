"""Who may emit what: step 5 of an event's way in."""

from __future__ import annotations

from ..model import Config
from ..reasons import Rejected, error


class EmitterPolicy:
    """An event is accepted only from an external emitter that lists it, planned or implemented."""

    def __init__(self, config: Config):
        self._allowed = {(name, event) for name, em in config.emitters.items() if not em.internal for event in em.events}
        self._internal = {name for name, em in config.emitters.items() if em.internal}
        self._known = set(config.emitters)

    def check(self, source: str, event_type: str) -> None:
        if (source, event_type) in self._allowed:
            return
        if source in self._internal:
            message = f"'{source}' is an internal service: its events are derived by the engine, never sent in"
        elif source not in self._known:
            message = f"'{source}' is not an approved emitter (add it to emitters.yaml)"
        else:
            message = f"emitter '{source}' may not emit '{event_type}' (see emitters.yaml)"
        raise Rejected("unauthorized_emitter", [error("/source", "unauthorized_emitter", message)])
