"""YAML loading that remembers where every value came from (file:line), and refuses
duplicate keys, so that every matrix error can point at the line to fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserInputError


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: cannot read: {exc}") from None
    return loads(text, str(path))


def loads(text: str, name: str = "<string>") -> Located:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise UserInputError(f"{name}{line}: malformed YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise UserInputError(f"{name}: malformed YAML: {str(exc).splitlines()[0]}") from None
    located = Located(data=None, file=name)
    if node is None:
        located.data = {}
        return located
    located.data = _build(node, (), located, name)
    return located


def _build(node: yaml.Node, path: tuple, located: Located, name: str) -> Any:
    located.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise UserInputError(f"{name}:{key_node.start_mark.line + 1}: YAML merge keys (<<) are not supported")
            key = _scalar(key_node, name)
            if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
                raise UserInputError(f"{name}:{key_node.start_mark.line + 1}: keys must be strings")
            key = str(key)
            if key in out:
                first = located.lines.get(path + (key,))
                raise UserInputError(
                    f"{name}:{key_node.start_mark.line + 1}: duplicate key '{key}'"
                    + (f" (first defined at line {first})" if first else "")
                )
            out[key] = _build(value_node, path + (key,), located, name)
            located.lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, path + (i,), located, name) for i, child in enumerate(node.value)]
    return _scalar(node, name)


def _scalar(node: yaml.Node, name: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise UserInputError(f"{name}:{node.start_mark.line + 1}: expected a plain value here")
    try:
        value = yaml.SafeLoader("").construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise UserInputError(f"{name}:{node.start_mark.line + 1}: {str(exc).splitlines()[0]}") from None
    # Version-like values must stay strings: 11.8 -> "11.8", 3.10 must not become 3.1.
    if isinstance(value, float) and node.tag == "tag:yaml.org,2002:float":
        return node.value
    return value
