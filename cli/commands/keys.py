"""`webinar-flows keys`: add, rotate, retire and list the ingestion keys of the keys file; add
console users (`keys user NAME`).

The keys file (TOML, mode 0600, outside git) maps each key id to the emitter it speaks for and
its secrets; `serve` reads it (service.keys holds the one reader and the checks). These
commands edit it in place:

- the file is found like `serve` finds it: --keys FILE, else $WEBINAR_FLOWS_KEYS, else
  $CREDENTIALS_DIRECTORY/keys.toml. When none of them is given there is no default: a secret
  written to the current directory would too easily end up in git, and `serve` would not find
  it there. `keys new` then fails, saying how to name the file;
- a change holds an exclusive flock on the file's directory from reading to replacing, so two
  commands at once do not lose one's change;
- every write is atomic: a temporary file in the same directory, created with mode 0600,
  fsynced, then renamed over the file (os.replace) and the directory fsynced. A reader sees
  the old file or the new one, never half of one;
- other tables ([handshake], [consumers.*], [console.users.*]) and other keys are kept as
  they are; comments are not (the file is re-serialised with tomli_w);
- a secret is printed once, alone on stdout, by `new` and `rotate`; nothing else ever prints
  one (`list` shows how many a key has).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets as _random
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import tomli_w

from engine import Config
from service.keys import DEFAULT_RATE, KEY_ID, MAX_SECRETS, check_keys, find_keys_file, new_secret, redact

from ..context import CONTEXT, AppContext, Failed, pass_app
from ..options import config_option
from ..output import print_json

_KEYS_HELP = ("The keys file (default: $WEBINAR_FLOWS_KEYS, else $CREDENTIALS_DIRECTORY/keys.toml, as for "
              "serve).")


def _keys_option(f: Any) -> Any:
    return click.option("--keys", "keys_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help=_KEYS_HELP)(f)


def _locate(option: Path | None) -> Path:
    """The keys file; a symbolic link is followed, so that a write replaces the file it points
    at (a link into a secrets directory stays a link) rather than the link itself."""
    path = find_keys_file(option)
    if path is None:
        raise Failed("error: no keys file given: pass --keys FILE, or set $WEBINAR_FLOWS_KEYS (or "
                     "$CREDENTIALS_DIRECTORY, which holds keys.toml); keep the file out of git")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _load(path: Path, *, must_exist: bool) -> dict[str, Any]:
    """The file's whole TOML document ({} when it does not exist and need not)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            raise Failed(f"error: {path}: no such keys file; create one with: "
                         f"webinar-flows keys new ID --emitter NAME --keys {path}") from None
        return {}
    except OSError as exc:
        raise Failed(f"error: {path}: cannot read the keys file: {exc.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        message = str(exc).split("\n")[0]  # never the offending text: a broken line may hold a secret
        raise Failed(f"error: {path}: not valid TOML ({message}); the file was left as it is") from None
    keys = document.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(spec, dict) for spec in keys.values()):
        raise Failed(f"error: {path}: [keys] must hold one table per key; the file was left as it is")
    return document


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Replace `path` by `document` as TOML, mode 0600, in one rename."""
    data = tomli_w.dumps(document).encode("utf-8")
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise Failed(f"error: cannot write the keys file in {directory}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise Failed(f"error: cannot write the keys file {path}: {exc.strerror}") from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file's directory while it is read, changed and replaced, so
    that two `keys` commands at once cannot lose one's change (flock; no lock file left behind)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise Failed(f"error: cannot open the keys file's directory {directory}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _key(document: dict[str, Any], path: Path, key_id: str) -> dict[str, Any]:
    spec = document.get("keys", {}).get(key_id)
    if spec is None:
        known = ", ".join(sorted(document.get("keys", {}))) or "none"
        raise Failed(f"error: {path}: no key {key_id!r} (keys: {known})")
    return spec


def _secrets(spec: dict[str, Any]) -> list[Any]:
    secrets = spec.get("secrets", [])
    return list(secrets) if isinstance(secrets, list) else []


def _report(path: Path, config: Config | None) -> None:
    """Warn (stderr) about what `serve` would refuse in the file; never fails the command (without
    a config that loads, there is nothing to check the emitters against, and nothing is said)."""
    for problem in check_keys(path, config) if config is not None else []:
        click.echo(f"warning: {problem}", err=True)


def _config_if_any(app: AppContext) -> Config | None:
    """The config in force, for warnings only: a broken config does not stop `rotate` or `list`."""
    try:
        return app.config()
    except Failed:
        return None


@click.group(context_settings=CONTEXT)
def keys() -> None:
    """Manage the ingestion keys of the keys file that `serve` reads.

    One key per sending site: its id is in the ingestion URL (/v1/ingest/ID), it speaks for
    one outside emitter of the config, and it holds one secret, or two during a rotation.
    The file is found by --keys FILE, else $WEBINAR_FLOWS_KEYS, else
    $CREDENTIALS_DIRECTORY/keys.toml, as `serve` finds it; there is no default in the current
    directory (a secret there too easily lands in git). It is written atomically with mode
    0600, keeping its other tables (not its comments). A secret is printed once, by `new`
    and `rotate`, and never again. `user NAME` adds a web console user (an argon2 hash of
    the password it asks for). Restart `serve` to apply a change.
    """


@keys.command(name="new", context_settings=CONTEXT)
@click.argument("key_id", metavar="ID")
@click.option("--emitter", required=True, help="The emitter of the config this key speaks for (not an internal one).")
@click.option("--batch/--no-batch", default=False, show_default=True, help="May the key send batched mode.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True, max=1_000_000), default=None,
              help=f"Requests per second (default {DEFAULT_RATE:g}); the burst is twice as many.")
@_keys_option
@config_option
@pass_app
def new(app: AppContext, key_id: str, emitter: str, batch: bool, rate: float | None, keys_file: Path | None) -> None:
    """Add key ID for EMITTER with a fresh secret and print the secret (once).

    Creates the keys file (mode 0600) when it does not exist. Refuses an id already in the
    file, and an emitter the config does not have or marks internal.
    """
    if not KEY_ID.match(key_id):
        raise Failed(f"error: bad key id {key_id!r}: 1-64 letters, digits, '-' or '_', starting with a letter "
                     f"or digit (it is a URL path segment)")
    config_path = app.config_path()
    config = app.config(config_path)
    outside = sorted(name for name, spec in config.emitters.items() if not spec.internal)
    if emitter not in config.emitters:
        raise Failed(f"error: unknown emitter {emitter!r} in the config {config_path}; a key may speak for: "
                     f"{', '.join(outside) or 'no emitter'}")
    if config.emitters[emitter].internal:
        raise Failed(f"error: emitter {emitter!r} is internal (the engine's own); a key may speak for: "
                     f"{', '.join(outside) or 'no emitter'}")
    path = _locate(keys_file)
    with _locked(path):
        document = _load(path, must_exist=False)
        table = document.setdefault("keys", {})
        if key_id in table:
            raise Failed(f"error: {path}: key {key_id!r} exists; use 'webinar-flows keys rotate {key_id}' for a "
                         f"new secret")
        secret = new_secret()
        spec: dict[str, Any] = {"emitter": emitter, "secrets": [secret]}
        if batch:
            spec["batch"] = True
        if rate is not None:
            spec["rate"] = int(rate) if float(rate).is_integer() else rate
        table[key_id] = spec
        write_atomically(path, document)
    click.echo(secret)
    click.echo(f"added key {key_id} for {emitter} to {path}; the secret above is shown once: give it to the "
               f"sender (e.g. WEBINAR_FLOWS_SECRET in its wp-config.php)", err=True)
    _report(path, config)


@keys.command(name="rotate", context_settings=CONTEXT)
@click.argument("key_id", metavar="ID")
@_keys_option
@config_option
@pass_app
def rotate(app: AppContext, key_id: str, keys_file: Path | None) -> None:
    """Give key ID a fresh secret, printed once; the newest old secret stays valid.

    The new secret goes first; of the old ones only the newest is kept, so the sender can
    switch over while both work. End the rotation with `keys retire ID` once the sender
    uses the new one.
    """
    path = _locate(keys_file)
    with _locked(path):
        document = _load(path, must_exist=True)
        spec = _key(document, path, key_id)
        secret = new_secret()
        spec["secrets"] = [secret, *_secrets(spec)[:MAX_SECRETS - 1]]
        write_atomically(path, document)
    click.echo(secret)
    click.echo(f"rotated key {key_id} in {path}: the new secret above is shown once; the previous one "
               f"stays valid until 'webinar-flows keys retire {key_id}'", err=True)
    _report(path, _config_if_any(app))


@keys.command(name="retire", context_settings=CONTEXT)
@click.argument("key_id", metavar="ID")
@_keys_option
def retire(key_id: str, keys_file: Path | None) -> None:
    """End a rotation: key ID keeps only its newest secret."""
    path = _locate(keys_file)
    with _locked(path):
        document = _load(path, must_exist=True)
        spec = _key(document, path, key_id)
        secrets = _secrets(spec)
        if len(secrets) <= 1:
            click.echo(f"key {key_id} in {path} has one secret: nothing to retire", err=True)
            return
        spec["secrets"] = secrets[:1]
        write_atomically(path, document)
    click.echo(f"key {key_id} in {path}: {len(secrets) - 1} old secret(s) retired", err=True)


@keys.command(name="list", context_settings=CONTEXT)
@_keys_option
@click.option("--format", "fmt", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="json: one line per key {id, emitter, batch, rate, secrets (how many)}; text: a table.")
@config_option
@pass_app
def list_keys(app: AppContext, keys_file: Path | None, fmt: str) -> None:
    """List the keys: id, emitter, batch, rate and how many secrets; never a secret.

    A value of the wrong type (an emitter that is not a string, a batch that is not true or
    false, a rate that is not a number) is shown as null (json) or `?` (text); every problem
    `serve` would refuse the file for is a warning on stderr."""
    path = _locate(keys_file)
    document = _load(path, must_exist=True)
    rows = []
    for key_id, spec in document.get("keys", {}).items():
        rate = spec.get("rate", DEFAULT_RATE)
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            rate = None
        elif isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        emitter, batch = spec.get("emitter"), spec.get("batch", False)
        rows.append({"id": redact(key_id), "emitter": redact(emitter) if isinstance(emitter, str) else None,
                     "batch": batch if isinstance(batch, bool) else None, "rate": rate,
                     "secrets": len(_secrets(spec))})
    if fmt == "json":
        for row in rows:
            print_json(row)
    else:
        header = ("ID", "EMITTER", "BATCH", "RATE", "SECRETS")
        table = [header, *[(r["id"], r["emitter"] or "?", {True: "yes", False: "no"}.get(r["batch"], "?"),
                            "?" if r["rate"] is None else f"{r['rate']:g}", str(r["secrets"])) for r in rows]]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    config = _config_if_any(app)
    if config is not None:
        _report(path, config)
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if mode & 0o077:
        click.echo(f"warning: {path} is accessible to group or others (mode {mode & 0o777:04o}); serve refuses "
                   f"it: run chmod 600 {path}", err=True)


@keys.command(name="user", context_settings=CONTEXT)
@click.argument("name", metavar="NAME")
@_keys_option
def user(name: str, keys_file: Path | None) -> None:
    """Add console user NAME, or set its password: asked twice, stored as an argon2 hash.

    The password is read from the terminal without echo, or, when standard input is not a
    terminal, as its first two lines. Two different answers write nothing (exit 1). Also
    writes [console] session_secret, the key that signs console sessions, when the file has
    none. Restart `serve` to apply.
    """
    if not KEY_ID.match(name):
        raise Failed(f"error: bad user name {name!r}: 1-64 letters, digits, '-' or '_', starting with a letter "
                     f"or digit")
    if sys.stdin.isatty():
        first = click.prompt("Password", hide_input=True, default="", show_default=False)
        second = click.prompt("Repeat the password", hide_input=True, default="", show_default=False)
    else:
        lines = [sys.stdin.readline().rstrip("\r\n") for _ in range(2)]
        first, second = lines
    if first != second:
        raise Failed("error: the two passwords differ; nothing was written")
    if not first:
        raise Failed("error: an empty password is not allowed; nothing was written")
    from argon2 import PasswordHasher

    password_hash = PasswordHasher().hash(first)
    path = _locate(keys_file)
    with _locked(path):
        document = _load(path, must_exist=False)
        console = document.setdefault("console", {})
        if not isinstance(console, dict) or not isinstance(console.setdefault("users", {}), dict):
            raise Failed(f"error: {path}: [console] and [console.users] must be tables; the file was left as it is")
        existed = name in console["users"]
        console["users"][name] = {"password_hash": password_hash}
        console.setdefault("session_secret", _random.token_urlsafe(32))
        write_atomically(path, document)
    click.echo(f"{'changed the password of' if existed else 'added'} console user {name} in {path}", err=True)


def register(group: click.Group) -> None:
    """Add this module's command(s) to the CLI group."""
    group.add_command(keys, name="keys")
