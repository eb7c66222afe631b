"""Reading config YAML safely, as YAML 1.2 core, with the position of every node.

PyYAML speaks YAML 1.1 (`on`/`no` are booleans, dates become objects, the last of two
duplicate keys silently wins) and its composer recurses, so a deep file kills it. We read
the parser's event stream instead and build plain data ourselves, iteratively: core-schema
scalars only, duplicate keys and foreign tags reported, and hard limits on size, depth and
alias expansion, so a hostile file costs milliseconds and a few kilobytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import Problem
from ..jsonvalue import pointer

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_NODES = 200_000

Path_ = tuple[Any, ...]

_CORE = "tag:yaml.org,2002:"
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")


@dataclass
class YamlDoc:
    """Plain data read from one file, and where each node stands in it."""

    file: str
    kind: str = ""  # which config file this is: events, emitters, states or rules
    data: Any = None
    locations: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: Path_) -> tuple[int, int]:
        """Line and column of the nearest located node on `path` (1-based)."""
        path = tuple(path)
        while path and path not in self.locations:
            path = path[:-1]
        return self.locations.get(path, (1, 1))

    def problem(self, path: Path_, code: str, message: str, severity: str = "error") -> Problem:
        line, col = self.where(path)
        found = Problem(self.file, line, col, severity, code, message, pointer(path))
        self.problems.append(found)
        return found


class _Abort(Exception):
    def __init__(self, code: str, message: str, mark: Any = None):
        super().__init__(message)
        self.code, self.message, self.mark = code, message, mark


def _resolve_plain(text: str) -> Any:
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT10.match(text):
        return int(text)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text) or _INF.match(text) or _NAN.match(text):
        return float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                     .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))
    return text


def _scalar(event: yaml.ScalarEvent) -> Any:
    tag = event.tag
    if tag in (None, "!"):
        return _resolve_plain(event.value) if event.style is None and tag is None else event.value
    if tag == _CORE + "str":
        return event.value
    if tag in (_CORE + "int", _CORE + "float", _CORE + "bool", _CORE + "null"):
        value = _resolve_plain(event.value)
        expected = {"int": int, "float": (int, float), "bool": bool, "null": type(None)}[tag[len(_CORE):]]
        if isinstance(value, expected) and not (tag.endswith("int") and isinstance(value, bool)):
            return float(value) if tag.endswith("float") else value
        raise _Abort("bad_scalar", f"{event.value!r} is not a valid {tag[len(_CORE):]}", event.start_mark)
    raise _Abort("unsupported_tag", f"YAML tag {tag!r} is refused: only the YAML 1.2 core tags are allowed "
                 "(a tag that constructs objects could run code)", event.start_mark)


@dataclass
class _Frame:
    container: Any
    path: Path_
    anchor: str | None
    nodes_at_start: int
    mark: Any = None  # where the container starts: a problem with it as a key points there
    key: Any = None
    key_mark: Any = None
    awaiting_key: bool = True
    skip_value: bool = False


class _Builder:
    def __init__(self, doc: YamlDoc):
        self.doc = doc
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.nodes = 0
        self.aliases = 0
        self.documents = 0

    def count(self, n: int, mark: Any) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise _Abort("config_expands_too_much",
                         f"the document expands to more than {MAX_NODES} nodes (an alias bomb?)", mark)

    def feed(self, event: Any) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise _Abort("multiple_documents", "a config file holds exactly one YAML document",
                             event.start_mark)
        elif isinstance(event, yaml.ScalarEvent):
            self.count(1, event.start_mark)
            value = _scalar(event)
            self.add(value, event.start_mark)
            if event.anchor:
                self.anchors[event.anchor] = (value, 1)
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self.open(event)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = self.stack.pop()
            size = self.nodes - frame.nodes_at_start
            if frame.anchor:
                self.anchors[frame.anchor] = (frame.container, size)
            self.add(frame.container, frame.mark, opened=frame)
        elif isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Abort("config_too_many_aliases", f"more than {MAX_ALIASES} aliases", event.start_mark)
            if event.anchor not in self.anchors:
                raise _Abort("yaml_syntax", f"unknown alias *{event.anchor}", event.start_mark)
            value, size = self.anchors[event.anchor]
            self.count(size, event.start_mark)
            self.add(value, event.start_mark)

    def open(self, event: Any) -> None:
        is_map = isinstance(event, yaml.MappingStartEvent)
        core = _CORE + ("map" if is_map else "seq")
        if event.tag not in (None, "!", core):
            raise _Abort("unsupported_tag", f"YAML tag {event.tag!r} is refused: only the YAML 1.2 core tags "
                         "are allowed (a tag that constructs objects could run code)", event.start_mark)
        if len(self.stack) >= MAX_DEPTH:
            raise _Abort("config_too_deep", f"nesting deeper than {MAX_DEPTH} levels", event.start_mark)
        self.count(1, event.start_mark)
        path = self.child_path(event.start_mark)
        self.doc.locations.setdefault(path, _pos(event.start_mark))
        self.stack.append(_Frame({} if is_map else [], path, event.anchor, self.nodes, event.start_mark))

    def child_path(self, mark: Any) -> Path_:  # noqa: ARG002
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.container, list):
            return top.path + (len(top.container),)
        if top.awaiting_key:
            return top.path + ("<key>",)
        if top.skip_value:  # the value of a refused key is dropped, and that key may be a list or a map
            return top.path + ("<refused>",)
        return top.path + (top.key,)

    def add(self, value: Any, mark: Any, opened: _Frame | None = None) -> None:
        if not self.stack:
            self.doc.data = value
            self.doc.locations.setdefault((), (1, 1))
            return
        top = self.stack[-1]
        if isinstance(top.container, list):
            path = top.path + (len(top.container),)
            top.container.append(value)
            self.doc.locations.setdefault(path, _pos(mark))
            return
        if top.awaiting_key:
            top.awaiting_key, top.key_mark, top.skip_value = False, mark, False
            if not isinstance(value, str):
                self.problem(mark, "non_string_key",
                             f"key {value!r} is not a string: quote it (YAML reads it as {type(value).__name__})",
                             top.path)
                top.skip_value = True
            elif value in top.container:
                first = self.doc.locations.get(top.path + (value,), (0, 0))[0]
                self.problem(mark, "duplicate_key", f"duplicate key {value!r} (first defined on line {first})",
                             top.path + (value,))
                top.skip_value = True
            top.key = value
            return
        top.awaiting_key = True
        if not top.skip_value:
            top.container[top.key] = value
            self.doc.locations[top.path + (top.key,)] = _pos(top.key_mark)

    def problem(self, mark: Any, code: str, message: str, path: Path_) -> None:
        line, col = _pos(mark)
        self.doc.problems.append(Problem(self.doc.file, line, col, "error", code, message, pointer(path)))


def _pos(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _line_col(text: Any, at: int, newline: Any) -> tuple[int, int]:
    """1-based line and column of index `at` of a text (or of bytes: the column counts bytes)."""
    start = text.rfind(newline, 0, at) + 1
    return text.count(newline, 0, at) + 1, at - start + 1


def load_yaml(text: bytes | str, file: str) -> YamlDoc:
    """Read one YAML document; problems are collected on the returned doc, never raised."""
    doc = YamlDoc(file)
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_FILE_BYTES:
        doc.problems.append(Problem(file, 1, 1, "error", "config_too_large",
                                    f"more than {MAX_FILE_BYTES} bytes; a config file may hold at most that"))
        return doc
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, col = _line_col(text, exc.start, b"\n")
            doc.problems.append(Problem(file, line, col, "error", "yaml_syntax",
                                        f"not UTF-8: byte 0x{text[exc.start]:02x} ({exc.reason})"))
            return doc
    builder = _Builder(doc)
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            builder.feed(event)
    except _Abort as abort:
        line, col = _pos(abort.mark)
        doc.problems.append(Problem(file, line, col, "error", abort.code, abort.message))
        doc.data = None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no mark, a position
        line, col = _line_col(text, exc.position, "\n")
        doc.problems.append(Problem(file, line, col, "error", "yaml_syntax",
                                    f"invalid YAML: unacceptable character #x{exc.character:04x}: "
                                    "control characters and noncharacters are not allowed"))
        doc.data = None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = _pos(mark)
        reason = getattr(exc, "problem", None) or str(exc)
        doc.problems.append(Problem(file, line, col, "error", "yaml_syntax", f"invalid YAML: {reason}"))
        doc.data = None
    return doc
