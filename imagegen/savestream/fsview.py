"""The image's final filesystem: layers applied in order with overlay whiteouts, and every byte
that a later layer hid (overwrote or deleted) accounted to the layer that added it."""

from __future__ import annotations

import posixpath
from collections import deque
from dataclasses import dataclass, field

from .layers import ImageScan, Rec

MAX_HOPS = 40


class _Dir:
    __slots__ = ("children", "rec")

    def __init__(self, rec: Rec | None = None) -> None:
        self.children: dict[str, _Dir | Rec] = {}
        self.rec = rec   # the directory's own tar entry (mode, owner), if a layer had one


DIR = "d"


@dataclass
class Hidden:
    rec: Rec
    reason: str     # "deleted" | "overwritten"
    by_layer: int


@dataclass
class View:
    index: dict[str, Rec | str]                 # final path -> Rec (files, links, others) or DIR
    dirs: dict[str, Rec] = field(default_factory=dict)   # final directory path -> its last tar entry
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
    """Apply the layers in order as overlayfs does (opaque directories, then whiteouts, then the
    layer's own entries) and account every hidden byte.

    Bytes are counted by inode, not by tar member: a regular file and its hard links (`h`
    entries, which in a layer tar name an earlier member of the same layer) are one inode, whose
    bytes stay visible as long as any of its names does. When the last name goes (deleted by a
    whiteout or an opaque directory, or overwritten), the bytes count as hidden, charged to the
    layer that removed that last name. If the data-carrying name is gone but a link survives, the
    surviving name (first in path order) carries the file in the final view."""
    root = _Dir()
    view = View(index={})
    inode_of: dict[int, Rec] = {}   # id(hard-link Rec) -> the regular-file Rec holding its data
    refs: dict[int, int] = {}       # id(regular-file Rec) -> visible names

    def drop(r: Rec, reason: str, by: int) -> None:
        ino = r if r.kind == "f" else inode_of.get(id(r)) if r.kind == "h" else None
        if ino is None:
            return
        left = refs.get(id(ino), 0) - 1
        refs[id(ino)] = left
        if left == 0 and ino.size:
            view.hidden.append(Hidden(ino, reason, by))
            book = view.deleted_by_layer if reason == "deleted" else view.overwritten_by_layer
            book[by] = book.get(by, 0) + ino.size
            view.hidden_from_layer[ino.layer] = view.hidden_from_layer.get(ino.layer, 0) + ino.size

    def hide(node: _Dir | Rec, reason: str, by: int) -> None:
        for r in _walk(node):
            drop(r, reason, by)

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
        here: dict[str, Rec] = {}   # this layer's entries so far, for its hard links
        for rec in ls.entries:
            rec.layer = i
            if rec.path == "/":
                continue
            if rec.kind == "h":
                target = here.get(rec.link or "")
                if target is None:  # not in this layer: what the image shows there now
                    tp, tn = lookup_parent(rec.link or "", False, i)
                    t = tp.children.get(tn) if tp is not None else None
                    target = t if type(t) is Rec else None
                if target is not None:
                    ino = target if target.kind == "f" else inode_of.get(id(target))
                    if ino is not None:
                        inode_of[id(rec)] = ino
            parent, name = lookup_parent(rec.path, True, i)
            existing = parent.children.get(name)
            if rec.kind == "d":
                if type(existing) is _Dir:
                    existing.rec = rec
                    continue
                if existing is not None:
                    hide(existing, "overwritten", i)
                parent.children[name] = _Dir(rec)
            else:
                if existing is not None:
                    hide(existing, "overwritten", i)
                parent.children[name] = rec
                here[rec.path] = rec
                ino = rec if rec.kind == "f" else inode_of.get(id(rec))
                if ino is not None:
                    refs[id(ino)] = refs.get(id(ino), 0) + 1

    # flatten
    index: dict[str, Rec | str] = {"/": DIR}
    stack: list[tuple[str, _Dir]] = [("", root)]
    dirs: dict[str, Rec] = {}
    orphans: dict[int, list[str]] = {}   # inode whose own name is gone -> its surviving link names
    while stack:
        prefix, d = stack.pop()
        for name, c in d.children.items():
            p = prefix + "/" + name
            if type(c) is _Dir:
                index[p] = DIR
                if c.rec is not None:
                    dirs[p] = c.rec
                stack.append((p, c))
            else:
                if c.path != p:  # entries are keyed by their own path; keep it canonical
                    c.path = p
                index[p] = c
                if c.kind == "h" and id(c) in inode_of:
                    orphans.setdefault(id(inode_of[id(c)]), []).append(p)
    for names in orphans.values():
        first = index[names[0]]
        ino = inode_of[id(first)]
        if index.get(ino.path) is ino:
            continue  # the data-carrying name is still there
        names.sort()
        carrier = ino.copy(path=names[0], mode=index[names[0]].mode)
        index[names[0]] = carrier
        for p in names[1:]:
            index[p] = index[p].copy(link=names[0])
    view.index = index
    view.dirs = dirs
    return view
