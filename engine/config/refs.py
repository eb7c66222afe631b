"""Payload `$ref`s: which may be followed, and the local files they reach.

A payload may refer only to files inside the config directory. Loading reads each such file
once (`LocalFiles`), keeps its content in the `Config` and its bytes in the config hash, so the
runtime validates against exactly what was hashed and never opens a file itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

from ..model import PAYLOAD_FORMATS
from .patterns import unsafe_pattern
from .yamlfile import load_yaml

if os.name == "nt":
    from nturl2path import url2pathname
else:  # what urllib.request's url2pathname is on POSIX, without importing http.client and email
    from urllib.parse import unquote as url2pathname


def base_uri(root: Path) -> str:
    """The URI payload schemas are resolved against: they stand in events.yaml."""
    return root.resolve().as_uri() + "/events.yaml"


class LocalFiles:
    """The config's schema files, each read once, remembered with the bytes that were read."""

    def __init__(self, root: Path):
        self.root = root
        self.read: dict[str, tuple[bytes, Any]] = {}

    def retrieve(self, uri: str) -> Resource:
        if uri not in self.read:
            if ref_problem(self.root, uri) is not None:
                raise NoSuchResource(ref=uri)
            path = Path(url2pathname(urlsplit(uri).path)).resolve()
            raw = path.read_bytes()
            doc = load_yaml(raw, str(path))
            if doc.problems:
                raise NoSuchResource(ref=uri)
            self.read[uri] = (raw, doc.data)
        return Resource.from_contents(self.read[uri][1], default_specification=DRAFT202012)

    def registry(self) -> Registry:
        return Registry(retrieve=self.retrieve)  # type: ignore[call-arg]

    def resources(self) -> tuple[tuple[str, Any], ...]:
        return tuple((uri, data) for uri, (_, data) in sorted(self.read.items()))

    def extend_hash(self, config_hash: str) -> str:
        """The config hash with every schema file that was read: editing one changes the hash."""
        if not self.read:
            return config_hash
        digest = hashlib.sha256(config_hash.encode())
        root = self.root.resolve()
        for uri, (raw, _) in sorted(self.read.items()):
            name = Path(url2pathname(urlsplit(uri).path)).resolve().relative_to(root).as_posix()
            digest.update(name.encode() + b"\0" + raw + b"\0")
        return digest.hexdigest()


_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _refs(node: Any, path: tuple, base: str) -> Iterator[tuple[tuple, str, str, str]]:
    """Every `$id` and `$ref` of a schema as (path, keyword, value, base URI in force)."""
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            yield path + ("$id",), "$id", node["$id"], base
            rebased = _join(base, node["$id"])
            base = rebased if rebased and rebased.startswith("file:") else base
        for key, value in node.items():
            if key in _REF_KEYWORDS and isinstance(value, str):
                yield path + (key,), key, value, base
            elif key not in ("$id", "enum", "const", "examples", "default"):
                yield from _refs(value, path + (key,), base)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, path + (i,), base)


def _join(base: str, ref: str) -> str | None:
    try:
        return urljoin(base, ref)
    except ValueError:
        return None


def check_refs(files: LocalFiles, payload: dict[str, Any], path: tuple) -> Iterator[tuple[tuple, str, str]]:
    """Problems with a payload's references and the local files they reach: leaving the config,
    pointing at nothing, or a pattern that backtracks — the payload's own and any file's.

    Every file it reaches is read once, through `files`, which keeps it for the config."""
    root = files.root
    base = base_uri(root)
    registry = files.registry().with_resource(base, Resource.from_contents(payload, DRAFT202012))
    todo: list[tuple[Any, tuple, str]] = [(payload, path, base)]
    seen = {base}
    while todo:
        schema, where_from, file_base = todo.pop()
        for where, keyword, value, scope in _refs(schema, where_from, file_base):
            problem = ref_problem(root, value, scope)
            if problem is None and keyword != "$id":
                try:
                    resolved = registry.resolver(base_uri=scope).lookup(value)
                except (Unresolvable, ValueError, OSError) as exc:
                    problem = "unknown_ref", f"{keyword} '{value}' points to nothing ({type(exc).__name__})"
                else:
                    target = urljoin(scope, value).split("#", 1)[0]
                    if target not in seen:  # a local file: hold its refs and patterns to the same rules
                        seen.add(target)
                        todo.append((resolved.resolver.lookup(target).contents, where, target))
            if problem is not None and not (keyword == "$id" and problem[0] == "unknown_ref"):
                yield where, *problem
        if file_base != base:
            name = file_base.rsplit('/', 1)[-1]
            for _, pattern in patterns_of(schema, ()):
                why = unsafe_pattern(pattern)
                if why:
                    yield where_from, "unsafe_pattern", f"pattern {pattern!r} in {name} is refused: {why}"
            for _, fmt in formats_of(schema, ()):
                if fmt not in PAYLOAD_FORMATS:
                    yield where_from, "unknown_format", unknown_format(fmt, f" in {name}")


def ref_problem(root: Path, ref: str, base: str | None = None) -> tuple[str, str] | None:
    """Why a payload `$ref` (or `$id`) may not be followed, or None: only files inside the config are."""
    base = base or root.resolve().as_uri() + "/events.yaml"
    try:
        target = urlsplit(urljoin(base, ref))
    except ValueError:
        return "remote_ref", f"'{ref}' is not a valid URL reference"
    if target.scheme != "file" or target.netloc:
        return "remote_ref", (f"'{ref}' points outside the config: only local references are allowed "
                              "(the engine never fetches a schema over the network)")
    try:
        path = Path(url2pathname(target.path)).resolve()
    except (ValueError, OSError):
        return "unknown_ref", f"'{ref}' names no file that can exist"
    if not path.is_relative_to(root.resolve()):
        return "ref_outside_config", f"'{ref}' points outside the config directory"
    if not path.is_file():
        return "unknown_ref", f"'{ref}': no such file in the config directory"
    return None


def keyword_values(node: Any, path: tuple, keyword: str) -> Iterator[tuple[tuple, Any]]:
    """Every value a schema gives `keyword`, with its path (values of enum, const, examples and
    default are data, not schemas, and are not looked into)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == keyword:
                yield path + (key,), value
            if key not in ("enum", "const", "examples", "default"):
                yield from keyword_values(value, path + (key,), keyword)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from keyword_values(item, path + (i,), keyword)


def patterns_of(node: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    """Every regular expression a payload schema would run: `pattern` values, `patternProperties` keys."""
    yield from ((where, value) for where, value in keyword_values(node, path, "pattern") if isinstance(value, str))
    for where, value in keyword_values(node, path, "patternProperties"):
        if isinstance(value, dict):
            yield from ((where + (regex,), regex) for regex in value)


_MAX_FIELD_NODES = 1000  # schemas visited for one payload's fields; validate bounds schemas anyway


def declared_fields(payload: Any, root: Path, files: LocalFiles | None) -> dict[str, Any]:
    """The fields a payload schema declares, name -> its schema: its own `properties`, those of a
    schema it `$ref`s and of every `allOf`, `anyOf` and `oneOf` branch (the first declaration of a
    name wins); a field that is a `$ref` is given as what it points to, so that a date-time behind
    a reference still compares as an instant. References resolve only to files inside the config
    (through `files`; None: none are read), and one that does not resolve declares nothing: the
    reference checks say why."""
    if not isinstance(payload, dict):
        return {}
    base = base_uri(root)
    registry = (files.registry() if files is not None else Registry()).with_resource(
        base, Resource.from_contents(payload, default_specification=DRAFT202012))
    found: dict[str, Any] = {}
    todo = [(payload, registry.resolver(base_uri=base))]
    visited = 0
    while todo and visited < _MAX_FIELD_NODES:
        node, resolver = todo.pop(0)
        visited += 1
        if not isinstance(node, dict):
            continue
        target = _lookup(resolver, node.get("$ref"))
        if target is not None:
            todo.append(target)
        props = node.get("properties")
        if isinstance(props, dict):
            for name, schema in props.items():
                if name not in found:
                    found[name] = _followed(schema, resolver)
        for key in ("allOf", "anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                todo += [(branch, resolver) for branch in node[key]]
    return found


def _lookup(resolver: Any, ref: Any) -> tuple[Any, Any] | None:
    if not isinstance(ref, str):
        return None
    try:
        resolved = resolver.lookup(ref)
    except Exception:  # noqa: BLE001 - unresolvable, or a schema referencing cannot walk (properties: 'x'):
        return None    # the reference checks and the metaschema say what is wrong
    return resolved.contents, resolved.resolver


def _followed(schema: Any, resolver: Any) -> Any:
    """A field's schema, or what it points to when it is a `$ref` (followed a few steps at most)."""
    for _ in range(8):
        target = _lookup(resolver, schema.get("$ref")) if isinstance(schema, dict) else None
        if target is None:
            return schema
        schema, resolver = target
    return schema


def unknown_format(fmt: str, where: str = "") -> str:
    """The message of `unknown_format`: a format nothing checks would let every value through."""
    return (f"format {fmt!r}{where} is not one the engine checks ({', '.join(PAYLOAD_FORMATS)}): "
            "every value would pass unchecked; use one of those, or a pattern")


def formats_of(node: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    """Every `format` a payload schema names."""
    return ((where, value) for where, value in keyword_values(node, path, "format") if isinstance(value, str))
