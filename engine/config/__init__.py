"""Config loading: locating a config, reading its YAML, the two validation passes, the model.

Everything that reads a file lives here; what it returns is a self-contained `Config`.
"""

from .load import load_config
from .locate import bundled_config, find_config

__all__ = ["bundled_config", "find_config", "load_config"]
