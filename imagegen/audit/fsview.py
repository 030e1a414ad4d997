"""The image's final filesystem: layers applied in order with overlay whiteouts, and every byte
that a later layer hid (overwrote or deleted) accounted to the layer that added it."""

from __future__ import annotations

import posixpath
from collections import deque
from dataclasses import dataclass, field

from .scan import ImageScan, Rec

MAX_HOPS = 40


class _Dir:
    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, _Dir | Rec] = {}


DIR = "d"


@dataclass
class Hidden:
    rec: Rec
    reason: str     # "deleted" | "overwritten"
    by_layer: int


@dataclass
class View:
    index: dict[str, Rec | str]                 # final path -> Rec (files, links, others) or DIR
    hidden: list[Hidden] = field(default_factory=list)
    deleted_by_layer: dict[int, int] = field(default_factory=dict)
    overwritten_by_layer: dict[int, int] = field(default_factory=dict)
    hidden_from_layer: dict[int, int] = field(default_factory=dict)

    def files(self):
        """Regular files of the final view (Rec with kind 'f')."""
        for v in self.index.values():
            if type(v) is Rec and v.kind == "f":
                yield v

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """Canonical path of `path` inside the image, following symlinks. Raises SymlinkLoop."""
        parts = deque(p for p in path.split("/") if p and p != ".")
        cur = "/"
        hops = 0
        chain = [path]
        while parts:
            comp = parts.popleft()
            if comp == "..":
                cur = posixpath.dirname(cur) if cur != "/" else "/"
                continue
            nxt = cur.rstrip("/") + "/" + comp
            node = self.index.get(nxt)
            if type(node) is Rec and node.kind == "l" and (parts or follow_last):
                hops += 1
                chain.append(nxt + " -> " + (node.link or ""))
                if hops > MAX_HOPS:
                    raise SymlinkLoop(path, chain)
                target = node.link or ""
                parts.extendleft(reversed([p for p in target.split("/") if p and p != "."]))
                if target.startswith("/"):
                    cur = "/"
                continue
            cur = nxt
        return cur


class SymlinkLoop(Exception):
    def __init__(self, path: str, chain: list[str]):
        super().__init__(path)
        self.path = path
        self.chain = chain


def _walk(node: _Dir | Rec):
    if type(node) is _Dir:
        stack = [node]
        while stack:
            d = stack.pop()
            for c in d.children.values():
                if type(c) is _Dir:
                    stack.append(c)
                else:
                    yield c
    else:
        yield node


def apply_layers(scan: ImageScan) -> View:
    root = _Dir()
    view = View(index={})

    def hide(node: _Dir | Rec, reason: str, by: int) -> None:
        for r in _walk(node):
            if r.kind == "f" and r.size:
                view.hidden.append(Hidden(r, reason, by))
                book = view.deleted_by_layer if reason == "deleted" else view.overwritten_by_layer
                book[by] = book.get(by, 0) + r.size
                view.hidden_from_layer[r.layer] = view.hidden_from_layer.get(r.layer, 0) + r.size

    def lookup_parent(path: str, create: bool, layer: int) -> tuple[_Dir | None, str]:
        parts = [p for p in path.split("/") if p]
        d = root
        for comp in parts[:-1]:
            nxt = d.children.get(comp)
            if type(nxt) is not _Dir:
                if not create:
                    return None, parts[-1] if parts else ""
                if nxt is not None:
                    hide(nxt, "overwritten", layer)
                nxt = _Dir()
                d.children[comp] = nxt
            d = nxt
        return d, parts[-1] if parts else ""

    for i, ls in enumerate(scan.layers):
        for path in ls.opaques:
            parent, name = lookup_parent(path, False, i)
            node = parent.children.get(name) if parent is not None and name else (root if path == "/" else None)
            if type(node) is _Dir:
                for child in node.children.values():
                    hide(child, "deleted", i)
                node.children = {}
        for path in ls.whiteouts:
            parent, name = lookup_parent(path, False, i)
            if parent is not None and name in parent.children:
                hide(parent.children.pop(name), "deleted", i)
        for rec in ls.entries:
            rec.layer = i
            if rec.path == "/":
                continue
            parent, name = lookup_parent(rec.path, True, i)
            existing = parent.children.get(name)
            if rec.kind == "d":
                if type(existing) is _Dir:
                    continue
                if existing is not None:
                    hide(existing, "overwritten", i)
                parent.children[name] = _Dir()
            else:
                if existing is not None:
                    hide(existing, "overwritten", i)
                parent.children[name] = rec

    # flatten
    index: dict[str, Rec | str] = {"/": DIR}
    stack: list[tuple[str, _Dir]] = [("", root)]
    while stack:
        prefix, d = stack.pop()
        for name, c in d.children.items():
            p = prefix + "/" + name
            if type(c) is _Dir:
                index[p] = DIR
                stack.append((p, c))
            else:
                if c.path != p:  # entries are keyed by their own path; keep it canonical
                    c.path = p
                index[p] = c
    view.index = index
    return view
