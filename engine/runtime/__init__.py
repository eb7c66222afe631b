"""The runtime: from an event's bytes to a committed outcome, with no file read and no YAML."""
