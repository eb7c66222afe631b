"""The contract-governance commands, one module each, loaded only when one of them runs.

`COMMANDS` names the module behind each command; the CLI group imports a module the first
time its command is asked for (or when the group lists its commands for --help), so that
`validate` and `process` start without the governance tools.
"""

from __future__ import annotations

COMMANDS = {
    "docs": "docs", "graph": "graph", "schema": "schema", "diff": "diff",
    "rejections": "quarantine", "reprocess": "quarantine", "replay": "replay", "explain": "explain",
    "serve": "serve", "keys": "keys", "send": "send", "feed": "feed", "deliver": "deliver",
    "deliveries": "deliveries",
}
