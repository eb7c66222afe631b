"""webinar-flows engine: a generic, YAML-driven scenario engine.

The engine knows events, emitters, rules and a route machine in general; the YAML config
says which ones exist. Import what you need from here:

    from engine import Engine
    eng = Engine.open(config=None, db="webinar-flows.db")
"""

from .compat import Change, violates
from .compat import diff as diff_configs
from .config import load_config
from .diagram import GraphvizNotFound, render_diagram, render_image
from .document import render_markdown
from .errors import ConfigError, EngineError, Problem, StoreError, UsageError
from .explain import explain as explain_route
from .export import asyncapi, event_schemas
from .model import Config
from .pipeline import Engine
from .quarantine import Selection
from .reasons import DUPLICATE_REASONS, REJECTION_REASONS
from .replay import replay as replay_history

__all__ = [
    "Change",
    "Config",
    "ConfigError",
    "DUPLICATE_REASONS",
    "Engine",
    "EngineError",
    "GraphvizNotFound",
    "Problem",
    "REJECTION_REASONS",
    "Selection",
    "StoreError",
    "UsageError",
    "asyncapi",
    "diff_configs",
    "event_schemas",
    "explain_route",
    "load_config",
    "render_diagram",
    "render_image",
    "render_markdown",
    "replay_history",
    "violates",
]
