"""webinar-flows engine: a generic, YAML-driven scenario engine.

The engine knows events, emitters, rules and a route machine in general; the YAML config
says which ones exist. Import what you need from here:

    from engine import Engine
    eng = Engine.open(config=None, db="webinar-flows.db")
"""

from .config.load import load_config
from .config.locate import bundled_config, find_config
from .runtime.envelope import DEFAULT_MAX_EVENT_BYTES
from .errors import (ConfigError, DatabaseMissing, EngineError, NotADatabase, Problem, StoreBusy, StoreConflict, StoreError,
                     StoreFull, StoreReadOnly, StoreUnavailable, UsageError)
from .model import Config
from .api import Engine
from .runtime.pipeline import DEFAULT_BATCH_SIZE, Pipeline, Received
from .timefmt import normalise_time
from .reasons import DUPLICATE_REASONS, REJECTION_REASONS

# The governance tools load on first use, so that processing events pays nothing for them.
_LAZY = {
    "Change": ("governance.compat", "Change"), "violates": ("governance.compat", "violates"), "diff_configs": ("governance.compat", "diff"),
    "GraphvizNotFound": ("governance.diagram", "GraphvizNotFound"), "render_diagram": ("governance.diagram", "render_diagram"),
    "render_image": ("governance.diagram", "render_image"), "render_markdown": ("governance.document", "render_markdown"),
    "explain_route": ("governance.explain", "explain"), "asyncapi": ("governance.export", "asyncapi"),
    "event_schemas": ("governance.export", "event_schemas"), "Selection": ("governance.quarantine", "Selection"),
    "replay_history": ("governance.replay", "replay"),
    "DeliveryAnswer": ("runtime.delivery", "Answer"), "RETRY_SCHEDULE": ("runtime.delivery", "SCHEDULE"),
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_EVENT_BYTES",
    "Change",
    "Config",
    "ConfigError",
    "DUPLICATE_REASONS",
    "DatabaseMissing",
    "Engine",
    "EngineError",
    "GraphvizNotFound",
    "NotADatabase",
    "Pipeline",
    "Problem",
    "REJECTION_REASONS",
    "Received",
    "Selection",
    "StoreBusy",
    "StoreConflict",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnavailable",
    "UsageError",
    "asyncapi",
    "bundled_config",
    "diff_configs",
    "event_schemas",
    "explain_route",
    "find_config",
    "load_config",
    "normalise_time",
    "render_diagram",
    "render_image",
    "render_markdown",
    "replay_history",
    "violates",
]
