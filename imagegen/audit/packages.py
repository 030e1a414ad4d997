"""Who owns each file: pip (dist-info/RECORD, egg-info/installed-files.txt), conda (conda-meta),
dpkg (status + info/*.list, or distroless status.d + *.md5sums). Files are charged one by one,
so wheels sharing a namespace directory (nvidia/) are each charged only their own files."""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass, field

from ..savestream.fsview import SymlinkLoop, View
from ..savestream.layers import Rec

UNOWNED = "(unowned)"


@dataclass
class Package:
    manager: str        # pip | deb | conda
    name: str
    version: str
    location: str = ""
    files: int = 0
    bytes: int = 0
    listed: int = 0      # paths its manifest lists
    missing: int = 0     # listed regular files not in the image

    @property
    def key(self) -> str:
        return f"{self.manager}:{self.name}"


@dataclass
class Ownership:
    owner: dict[str, str] = field(default_factory=dict)        # file path -> package key
    packages: dict[str, Package] = field(default_factory=dict)
    conflicts: int = 0                                          # files listed by more than one package


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "surrogateescape")


def _find(view: View, path: str) -> str | None:
    """The final path of a regular file listed at `path` (through symlinked directories)."""
    node = view.index.get(path)
    if type(node) is Rec:
        return path if node.kind in ("f", "h") else None
    if node is not None:
        return None
    try:
        real = view.resolve(path)
    except SymlinkLoop:
        return None
    node = view.index.get(real)
    return real if type(node) is Rec and node.kind in ("f", "h") else None


def _claim(own: Ownership, pkg: Package, view: View, paths) -> None:
    for p in paths:
        pkg.listed += 1
        real = _find(view, p)
        if real is None:
            if p in view.index:
                pkg.listed -= 1  # directories and symlinks are not files to charge
            else:
                pkg.missing += 1
            continue
        if real in own.owner:
            if own.owner[real] != pkg.key:
                own.conflicts += 1
            continue
        own.owner[real] = pkg.key
        rec = view.index[real]
        pkg.files += 1
        pkg.bytes += rec.size if rec.kind == "f" else 0


def _add(own: Ownership, pkg: Package) -> Package:
    key = pkg.key
    if key in own.packages:  # the same name installed twice (two site-packages, two archs)
        n = 2
        while f"{key}#{n}" in own.packages:
            n += 1
        pkg.name = f"{pkg.name}#{n}"
    own.packages[pkg.key] = pkg
    return pkg


def _pip(view: View, own: Ownership) -> None:
    recs = sorted((r for r in view.files() if r.data is not None and
                   (r.path.endswith(".dist-info/RECORD") or r.path.endswith(".egg-info/installed-files.txt"))),
                  key=lambda r: r.path)
    for r in recs:
        meta_dir = posixpath.dirname(r.path)
        site = posixpath.dirname(meta_dir)
        stem = posixpath.basename(meta_dir).rsplit(".", 1)[0]
        name, _, version = stem.partition("-")
        if r.path.endswith("RECORD"):
            rows = csv.reader(io.StringIO(_text(r.data)))
            rels = [row[0] for row in rows if row and row[0]]
            base = site
        else:
            rels = [line for line in _text(r.data).splitlines() if line.strip()]
            base = meta_dir
        version = version.split("-")[0]
        pkg = _add(own, Package("pip", name.replace("_", "-").lower(), version, location=site))
        _claim(own, pkg, view, (posixpath.normpath(posixpath.join(base, rel)) for rel in rels))


def _conda(view: View, own: Ownership) -> None:
    for r in sorted((r for r in view.files() if r.data is not None and "/conda-meta/" in r.path
                     and r.path.endswith(".json")), key=lambda r: r.path):
        try:
            meta = json.loads(r.data)
            files = meta.get("files") or []
            name, version = str(meta.get("name", "?")), str(meta.get("version", ""))
        except (ValueError, AttributeError):
            continue
        prefix = posixpath.dirname(posixpath.dirname(r.path))
        pkg = _add(own, Package("conda", name, version, location=prefix))
        _claim(own, pkg, view, (posixpath.normpath(posixpath.join(prefix, f)) for f in files if isinstance(f, str)))


def _stanzas(text: str):
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and last:
                continue
            k, sep, v = line.partition(":")
            if sep:
                last = k.strip()
                fields[last] = v.strip()
        if fields.get("Package"):
            yield fields


def _dpkg(view: View, own: Ownership) -> None:
    status = view.index.get("/var/lib/dpkg/status")
    lists: dict[str, Rec] = {}
    md5s: dict[str, Rec] = {}
    statusd: list[Rec] = []
    for r in view.files():
        if r.data is None:
            continue
        if r.path.startswith("/var/lib/dpkg/info/") and r.path.endswith(".list"):
            lists[posixpath.basename(r.path)[:-5]] = r
        elif r.path.startswith("/var/lib/dpkg/status.d/"):
            if r.path.endswith(".md5sums"):
                md5s[posixpath.basename(r.path)[:-8]] = r
            else:
                statusd.append(r)
    entries: list[tuple[dict[str, str], list[str]]] = []
    if type(status) is Rec and status.data is not None:
        for f in _stanzas(_text(status.data)):
            if "installed" not in f.get("Status", "install ok installed").split()[-1:]:
                continue
            name, arch = f["Package"], f.get("Architecture", "")
            lst = lists.get(f"{name}:{arch}") or lists.get(name)
            paths = _text(lst.data).splitlines() if lst is not None else []
            entries.append((f, paths))
    for r in sorted(statusd, key=lambda r: r.path):
        base = posixpath.basename(r.path)
        for f in _stanzas(_text(r.data)):
            m = md5s.get(base) or md5s.get(f["Package"])
            paths = ["/" + line.split(None, 1)[1] for line in _text(m.data).splitlines()
                     if len(line.split(None, 1)) == 2] if m is not None else []
            entries.append((f, paths))
    for f, paths in entries:
        pkg = _add(own, Package("deb", f["Package"], f.get("Version", ""), location=f.get("Architecture", "")))
        _claim(own, pkg, view, (p for p in paths if p and p != "/."))


def ownership(view: View) -> Ownership:
    own = Ownership()
    _pip(view, own)
    _conda(view, own)
    _dpkg(view, own)
    return own
