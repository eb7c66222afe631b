"""webinar-flows engine: a generic, YAML-driven scenario engine.

The engine knows events, emitters, rules and a route machine in general; the YAML config
says which ones exist. Import what you need from here:

    from engine import Engine
    eng = Engine.open(config=None, db="webinar-flows.db")
"""

from .config import load_config
from .errors import ConfigError, EngineError, Problem, StoreError, UsageError
from .model import Config
from .pipeline import Engine
from .reasons import DUPLICATE_REASONS, REJECTION_REASONS

__all__ = [
    "Config",
    "ConfigError",
    "DUPLICATE_REASONS",
    "Engine",
    "EngineError",
    "Problem",
    "REJECTION_REASONS",
    "StoreError",
    "UsageError",
    "load_config",
]
