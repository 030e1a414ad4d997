"""YAML loading that remembers where every value came from (file:line), refuses duplicate keys,
and is bounded: a hostile file (alias bombs, deep nesting, huge or binary input) is one
UserInputError, raised within a fraction of a second in bounded memory.

Why not `yaml.compose`: PyYAML's composer is recursive (deep nesting -> RecursionError, or a
segfault in libyaml's), and aliases share nodes that a tree walk expands exponentially ("billion
laughs"). Here the parser's *event stream* (libyaml when available; its parser is iterative) is
consumed lazily and folded into plain data by an explicit stack, counting every node an alias
expands to, so the limits stop the work as soon as they are crossed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserInputError
from .userfiles import check_regular_file

#: Limits of one document. imagegen's own matrix is about 3 kB, 200 nodes, depth 6.
MAX_BYTES = 1_000_000  # decimal MB of UTF-8 text
MAX_NODES = 20_000  # scalars + collections, aliases counted as the nodes they expand to
MAX_DEPTH = 40  # nested mappings/sequences

_Loader = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.SafeLoader("")
_MERGE = "tag:yaml.org,2002:merge"


@dataclass
class Located:
    """A parsed YAML document plus the line of every node."""

    data: Any
    file: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, path: tuple) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), None)

    def where(self, path: tuple) -> str:
        line = self.line(path)
        return f"{self.file}:{line}" if line else self.file


def load(path: Path) -> Located:
    """Read and parse one YAML file. Raises UserInputError (one line) for a missing, unreadable,
    non-regular, oversized (> MAX_BYTES), non-UTF-8 or malformed file, or one over the limits."""
    path = Path(path)
    check_regular_file(path, "YAML file", " (a device, pipe or socket); give a YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise UserInputError(f"{path}: larger than {MAX_BYTES // 1000} kB; a matrix file is a few kB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    return loads(text, str(path))


def loads(text: str, name: str = "<string>") -> Located:
    """Parse `text` (one YAML document) into plain data: dict (string keys), list, str, int, float,
    bool, None. Floats written like versions stay strings ("3.10"). Raises UserInputError."""
    if len(text) > MAX_BYTES:
        raise UserInputError(f"{name}: larger than {MAX_BYTES // 1000} kB; a matrix file is a few kB")
    if "\x00" in text:
        raise UserInputError(f"{name}: binary data (a NUL byte), not YAML text")
    located = Located(data=None, file=name)
    try:
        located.data = _Builder(name, located).run(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise UserInputError(f"{name}{line}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"{name}: malformed YAML: {(str(exc).splitlines() or ['?'])[0]}") from None
    except RecursionError:  # not reached with the explicit stack; kept so no traceback can escape
        raise UserInputError(f"{name}: nested too deeply") from None
    if located.data is None:
        located.data = {}
    return located


class _Frame:
    __slots__ = ("value", "path", "anchor", "key", "key_line", "log_start", "size_start", "line")

    def __init__(self, value, path, anchor, line, log_start, size_start):
        self.value = value
        self.path = path
        self.anchor = anchor
        self.line = line
        self.key: Any = _NOKEY
        self.key_line = 0
        self.log_start = log_start
        self.size_start = size_start


_NOKEY = object()


class _Builder:
    """Folds parser events into data with an explicit stack, under MAX_NODES and MAX_DEPTH."""

    def __init__(self, name: str, located: Located):
        self.name = name
        self.located = located
        self.nodes = 0
        self.log: list[tuple[tuple, int]] = []  # (path, line) in document order, for anchors
        self.anchors: dict[str, tuple[Any, list[tuple[tuple, int]], int, bool]] = {}
        self.stack: list[_Frame] = []
        self.docs = 0

    def fail(self, line: int, message: str) -> UserInputError:
        return UserInputError(f"{self.name}:{line}: {message}")

    def count(self, n: int, line: int) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise self.fail(line, f"more than {MAX_NODES} YAML nodes (aliases count as what they expand to); "
                                  "a matrix file has a few hundred")

    def run(self, events) -> Any:
        result: Any = None
        for ev in events:
            line = ev.start_mark.line + 1 if ev.start_mark else 0
            if isinstance(ev, yaml.DocumentStartEvent):
                self.docs += 1
                if self.docs > 1:
                    raise self.fail(line, "more than one YAML document (---); a matrix is one document")
                continue
            if isinstance(ev, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
                continue
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                self.count(1, line)
                if len(self.stack) >= MAX_DEPTH:
                    raise self.fail(line, f"nested more than {MAX_DEPTH} levels deep")
                is_map = isinstance(ev, yaml.MappingStartEvent)
                if ev.tag not in (None, "!", "tag:yaml.org,2002:map" if is_map else "tag:yaml.org,2002:seq"):
                    raise self.fail(line, f"YAML tag {ev.tag} is not supported")
                if self.stack and isinstance(self.stack[-1].value, dict) and self.stack[-1].key is _NOKEY:
                    raise self.fail(line, "keys must be strings (a mapping or list is used as a key)")
                path = self._child_path(line)
                self.located.lines[path] = line
                self.log.append((path, line))
                self.stack.append(_Frame({} if is_map else [], path, ev.anchor, line, len(self.log) - 1, self.nodes))
                continue
            if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                frame = self.stack.pop()
                if frame.anchor is not None:
                    self._remember(frame.anchor, frame.value, frame.path, frame.log_start, self.nodes - frame.size_start + 1)
                done = self._add(frame.value, line)
                if done:
                    result = frame.value
                continue
            if isinstance(ev, yaml.ScalarEvent):
                self.count(1, line)
                value, tag = self._scalar(ev, line)
                if self.stack and isinstance(self.stack[-1].value, dict) and self.stack[-1].key is _NOKEY:
                    self._key(value, tag, line)
                    if ev.anchor is not None:
                        self.anchors[ev.anchor] = (value, [], 1, True)
                    continue
                path = self._child_path(line)
                self.located.lines[path] = line
                self.log.append((path, line))
                if ev.anchor is not None:
                    self._remember(ev.anchor, value, path, len(self.log) - 1, 1)
                if self._add(value, line):
                    result = value
                continue
            if isinstance(ev, yaml.AliasEvent):
                if ev.anchor not in self.anchors:
                    raise self.fail(line, f"alias *{ev.anchor} refers to no anchor defined before it")
                value, rel_lines, size, _ = self.anchors[ev.anchor]
                self.count(size, line)
                if self.stack and isinstance(self.stack[-1].value, dict) and self.stack[-1].key is _NOKEY:
                    if isinstance(value, (dict, list)):
                        raise self.fail(line, "keys must be strings (a mapping or list is used as a key)")
                    self._key(value, None, line)
                    continue
                path = self._child_path(line)
                self.located.lines[path] = line
                for rel, rel_line in rel_lines:
                    self.located.lines[path + rel] = rel_line
                value = copy.deepcopy(value)
                if self._add(value, line):
                    result = value
                continue
        return result

    def _remember(self, anchor: str, value: Any, path: tuple, log_start: int, size: int) -> None:
        n = len(path)
        rel = [(p[n:], ln) for p, ln in self.log[log_start + 1:] if p[:n] == path]
        self.anchors[anchor] = (value, rel, size, False)

    def _child_path(self, line: int) -> tuple:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, dict):
            return top.path + (top.key,)
        return top.path + (len(top.value),)

    def _key(self, key: Any, tag: str | None, line: int) -> None:
        top = self.stack[-1]
        if tag == _MERGE:
            raise self.fail(line, "YAML merge keys (<<) are not supported")
        if not isinstance(key, (str, int, float)) or isinstance(key, bool):
            raise self.fail(line, "keys must be strings")
        key = str(key)
        if key in top.value:
            first = self.located.lines.get(top.path + (key,))
            raise self.fail(line, f"duplicate key '{key}'" + (f" (first defined at line {first})" if first else ""))
        top.key, top.key_line = key, line

    def _add(self, value: Any, line: int) -> bool:
        """Attach a finished value to its parent; True when it is the document's root."""
        if not self.stack:
            return True
        top = self.stack[-1]
        if isinstance(top.value, dict):
            top.value[top.key] = value
            self.located.lines[top.path + (top.key,)] = top.key_line
            top.key = _NOKEY
        else:
            top.value.append(value)
        return False

    def _scalar(self, ev: yaml.ScalarEvent, line: int) -> tuple[Any, str]:
        tag = ev.tag
        if tag is None or tag == "!":
            tag = _RESOLVER.resolve(yaml.ScalarNode, ev.value, ev.implicit)
        if tag == _MERGE:
            raise self.fail(line, "YAML merge keys (<<) are not supported")
        node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
        try:
            value = _CONSTRUCTOR.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.fail(line, (str(exc).splitlines() or ["?"])[0]) from None
        # Version-like values must stay strings: 11.8 -> "11.8", 3.10 must not become 3.1.
        if isinstance(value, float) and tag == "tag:yaml.org,2002:float":
            return ev.value, tag
        return value, tag
