"""The keys file: which emitter each ingestion key speaks for, and the secrets that prove it.

Secrets never live in the YAML contract, which is in git; they live in a TOML file that only
the service's user may read. This module finds that file, checks it against the config and
loads it. `serve` refuses to start on any problem; `validate --keys` and the `keys` commands
use the same checks, so every tool agrees on what a valid file is. No message here ever
quotes a secret or a token.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets as _random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import Config

SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # Standard Webhooks: at least 24 random bytes; 64 is plenty for HMAC-SHA256
MAX_SECRETS = 2  # the current one and, during a rotation, the previous one
DEFAULT_RATE = 100.0  # requests per second; the bucket holds twice as many
KEY_FIELDS = frozenset({"emitter", "secrets", "batch", "rate"})
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # one URL path segment, nothing to escape
ENV_KEYS = "WEBINAR_FLOWS_KEYS"
CREDENTIAL_NAME = "keys.toml"  # the name systemd's LoadCredential= gives it under $CREDENTIALS_DIRECTORY
HOW_TO_CREATE = "create one with: webinar-flows keys new ID --emitter NAME --keys FILE"


class KeysFileError(Exception):
    """The keys file cannot be used; the message names the file and every problem."""


@dataclass(frozen=True)
class EmitterKey:
    """One ingestion key: the URL's key id, the emitter it authenticates as, its limits."""

    id: str
    emitter: str
    secrets: tuple[bytes, ...] = field(repr=False)  # decoded; the first is the newest
    batch: bool = False
    rate: float = DEFAULT_RATE

    @property
    def burst(self) -> float:
        return 2 * self.rate


@dataclass(frozen=True)
class PushTarget:
    """A consumer that gets its outbox items POSTed: `[consumers.NAME] url` and `secrets`."""

    name: str
    url: str
    secrets: tuple[bytes, ...] = field(repr=False)  # decoded; each signs, the first is the newest


@dataclass(frozen=True)
class Keys:
    """A loaded keys file. `document` keeps every table, including ones later features read."""

    path: Path
    keys: dict[str, EmitterKey]
    origins: tuple[str, ...] = ()
    consumer_tokens: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    document: dict[str, Any] = field(default_factory=dict, repr=False)
    # [console.users.NAME] password_hash (argon2) and [console] session_secret, for the web console
    console_users: dict[str, str] = field(default_factory=dict, repr=False)
    session_secret: str | None = field(default=None, repr=False)
    push: dict[str, PushTarget] = field(default_factory=dict)  # consumers with a url


def find_keys_file(option: Path | None) -> Path | None:
    """The keys file to use: `--keys`, else $WEBINAR_FLOWS_KEYS, else $CREDENTIALS_DIRECTORY/keys.toml.

    The first one configured wins even if it does not exist yet (so `keys new` creates it
    there); None when nothing is configured.
    """
    if option is not None:
        return Path(option)
    if os.environ.get(ENV_KEYS):
        return Path(os.environ[ENV_KEYS])
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
    return None


def new_secret(size: int = 32) -> str:
    """A fresh random secret in its `whsec_` form."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(size)).decode("ascii")


def parse_secret(text: str) -> bytes:
    """The key bytes of a `whsec_` secret; ValueError (never quoting the secret) when malformed."""
    if not isinstance(text, str) or not text.startswith(SECRET_PREFIX):
        raise ValueError(f"a secret must be a string starting with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a secret must be {SECRET_PREFIX!r} followed by standard base64") from None
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"a secret must decode to {low}-{high} bytes, not {len(key)}")
    return key


_SECRET_TEXT = re.compile(r"whsec_[A-Za-z0-9+/=_-]*")
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_TABLE = re.compile(r"\[(keys|consumers)\.([^\]]+)\]|\[(handshake|console)\]")
_FIELD = re.compile(r"\b(emitter|secrets?|batch|rate|tokens|url|origins)\b")


def redact(text: str) -> str:
    """`text` with anything shaped like a secret left out: a secret pasted into the wrong field
    (an emitter, a key id, a field's name) must not come back in a message."""
    return _SECRET_TEXT.sub("whsec_… (not shown)", text)


def problem_position(text: str, message: str) -> tuple[int, int]:
    """Where in the keys file (its `text`) a problem `message` of `check_keys` stands: the
    parser's position for invalid TOML, else the line of the field it names inside the table
    it names, else that table's header; (1, 1) when the message names neither."""
    at = _TOML_AT.search(message)
    if at:
        return int(at.group(1)), int(at.group(2))
    table = _TABLE.search(message)
    if not table:
        return 1, 1
    kind, name = (table.group(1), table.group(2)) if table.group(1) else (table.group(3), None)
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*" + re.escape(kind) + (
        r"\s*\.\s*(?:\"" + re.escape(name) + r"\"|'" + re.escape(name) + r"'|" + re.escape(name) + r")" if name else "")
        + r"\s*\]")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return 1, 1
    unknown = re.search(r"unknown field '([^']*)'", message)
    field = _FIELD.search(message[table.end():])
    if unknown or field:
        wanted = (re.compile(r"^\s*[\"']?" + re.escape(unknown.group(1)) + r"[\"']?\s*=") if unknown
                  else re.compile(r"^\s*" + field.group(1).rstrip("s") + r"s?\s*="))  # type: ignore[union-attr]
        for i in range(start + 1, len(lines)):
            if lines[i].lstrip().startswith("["):
                break
            if wanted.match(lines[i]):
                return i + 1, len(lines[i]) - len(lines[i].lstrip()) + 1
    return start + 1, len(lines[start]) - len(lines[start].lstrip()) + 1


def check_keys(path: Path, config: Config) -> list[str]:
    """Every problem of the keys file at `path` against `config`, each naming the file; [] if none."""
    return _read(Path(path), config)[1]


def load_keys(path: Path, config: Config, *, ingest: bool = True) -> Keys:
    """The keys file at `path`, checked against `config`; KeysFileError listing every problem.
    `ingest=False` (the deliverer) does not require an ingestion key."""
    keys, problems = _read(Path(path), config, ingest=ingest)
    if problems or keys is None:
        raise KeysFileError("\n".join(problems))
    return keys


def _read(path: Path, config: Config, *, ingest: bool = True) -> tuple[Keys | None, list[str]]:
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, [f"{path}: no such keys file; {HOW_TO_CREATE}"]
    except OSError as exc:
        return None, [f"{path}: cannot read the keys file: {exc.strerror}"]
    problems = []
    if mode & 0o077:
        problems.append(f"{path}: the keys file is accessible to group or others (mode {mode & 0o777:04o}); "
                        f"run: chmod 600 {path}")
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, [*problems, f"{path}: not valid TOML: not UTF-8"]
    except tomllib.TOMLDecodeError as exc:
        return None, [*problems, f"{path}: not valid TOML: {_toml_message(exc)}"]
    keys = _keys(path, document.get("keys"), config, problems) if ingest or "keys" in document else {}
    origins = _strings(path, "[handshake] origins", _table(path, document, "handshake", problems).get("origins", []),
                       problems)
    consumers = _table(path, document, "consumers", problems)
    tokens = _consumer_tokens(path, consumers, problems)
    push = _push_targets(path, consumers, config, problems)
    console = _table(path, document, "console", problems)
    users = console.get("users", {}) if isinstance(console.get("users", {}), dict) else {}
    # a user without a string password_hash cannot log in; `keys user NAME` writes a valid one
    hashes = {name: spec["password_hash"] for name, spec in users.items()
              if isinstance(spec, dict) and isinstance(spec.get("password_hash"), str)}
    secret = console.get("session_secret") if isinstance(console.get("session_secret"), str) else None
    return Keys(path, keys, tuple(origins), tokens, document, hashes, secret, push), [redact(p) for p in problems]


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    """The parser's message without the offending text (a malformed line may hold a secret)."""
    return str(exc).split("\n")[0]


def _table(path: Path, document: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        problems.append(f"{path}: [{name}] must be a table")
        return {}
    return value


def _keys(path: Path, table: Any, config: Config, problems: list[str]) -> dict[str, EmitterKey]:
    if not isinstance(table, dict) or not table:
        problems.append(f"{path}: no [keys.ID] table; {HOW_TO_CREATE}")
        return {}
    keys = {}
    for key_id, spec in table.items():
        where = f"{path}: [keys.{key_id}]"
        before = len(problems)
        if not KEY_ID.match(key_id):
            problems.append(f"{where}: a key id is 1-64 letters, digits, '-' or '_', starting with a letter or digit")
        if not isinstance(spec, dict):
            problems.append(f"{where}: must be a table")
            continue
        for unknown in sorted(set(spec) - KEY_FIELDS):
            problems.append(f"{where}: unknown field {unknown!r} (known: {', '.join(sorted(KEY_FIELDS))})")
        emitter = _emitter(where, spec.get("emitter"), config, problems)
        secrets = _secrets(where, spec.get("secrets"), problems)
        batch = spec.get("batch", False)
        if not isinstance(batch, bool):
            problems.append(f"{where}: batch must be true or false")
        rate = spec.get("rate", DEFAULT_RATE)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1_000_000:
            problems.append(f"{where}: rate must be a number of requests per second above 0")
        if len(problems) == before:
            keys[key_id] = EmitterKey(key_id, emitter, secrets, batch, float(rate))
    return keys


def _emitter(where: str, name: Any, config: Config, problems: list[str]) -> str:
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: emitter is required: one of {', '.join(_external(config))}")
    elif name not in config.emitters:
        problems.append(f"{where}: unknown emitter {name!r}; the config's outside emitters: "
                        f"{', '.join(_external(config))}")
    elif config.emitters[name].internal:
        problems.append(f"{where}: emitter {name!r} is internal (the engine's own); a key may only speak for "
                        f"one of: {', '.join(_external(config))}")
    return name if isinstance(name, str) else ""


def _external(config: Config) -> list[str]:
    return sorted(name for name, spec in config.emitters.items() if not spec.internal)


def _secrets(where: str, values: Any, problems: list[str]) -> tuple[bytes, ...]:
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_SECRETS:
        problems.append(f"{where}: secrets must be a list of 1 or {MAX_SECRETS} secrets")
        return ()
    decoded = []
    for position, text in enumerate(values, 1):
        try:
            decoded.append(parse_secret(text))
        except ValueError as exc:
            problems.append(f"{where}: secret {position} is malformed: {exc}")
    return tuple(decoded)


def _strings(path: Path, what: str, values: Any, problems: list[str]) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
        problems.append(f"{path}: {what} must be a list of non-empty strings")
        return []
    return values


def _consumer_tokens(path: Path, consumers: dict[str, Any], problems: list[str]) -> dict[str, tuple[str, ...]]:
    """Each consumer's bearer tokens (for route reads); the rest of a consumer's table is not read here."""
    tokens = {}
    for name, spec in consumers.items():
        if not isinstance(spec, dict):
            problems.append(f"{path}: [consumers.{name}] must be a table")
        elif "tokens" in spec:
            tokens[name] = tuple(_strings(path, f"[consumers.{name}] tokens", spec["tokens"], problems))
    return tokens


def _push_targets(path: Path, consumers: dict[str, Any], config: Config, problems: list[str]) -> dict[str, PushTarget]:
    """Consumers with a `url`: a consumer of consumers.yaml, an http(s) URL and 1 or 2 secrets."""
    targets = {}
    for name, spec in consumers.items():
        if not isinstance(spec, dict) or ("url" not in spec and "secrets" not in spec):
            continue
        where, before = f"{path}: [consumers.{name}]", len(problems)
        if name not in config.consumers:
            declared = ", ".join(sorted(config.consumers)) or "none"
            problems.append(f"{where}: no consumer {name!r} in the config's consumers.yaml (declared: {declared})")
        url = spec.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) <= len("http://"):
            problems.append(f"{where}: url must be an https:// (or http://) URL")
        secrets = _secrets(where, spec.get("secrets"), problems)
        if len(problems) == before:
            targets[name] = PushTarget(name, url, secrets)
    return targets
