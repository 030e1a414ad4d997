"""Two images compared config field by config field, then layer by layer and file by file: what
`imagegen verify` reports when a rebuild is not the published image, and what the reproducibility bench
shows when two cold builds differ.

    read(ref_or_tarball) -> ImageScan          a save stream read with a full sha256 per file
    compare(a, b) -> ImageDiff                 the config keys that differ, the layers, the files

A file differs by `content` (sha256), `mode`, `owner` (uid:gid), `mtime`, `xattrs`, `link` (a symlink's
or hard link's target), `kind` (file, dir, ...), or is `missing` from one side. The first difference is
the one in the lowest layer, in the tar's own entry order there (the order the engine wrote), files
before directories: a layer lists the parent directories of what it adds, and those are rarely the news.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from .savestream import ImageScan, Rec

_KINDS = {"f": "file", "d": "directory", "l": "symlink", "h": "hard link", "o": "other"}


@dataclass(frozen=True)
class FileDiff:
    """One file that differs: `layer` (0 = bottom), `path`, `what` differs, and each side's value."""

    layer: int
    path: str
    what: str
    a: str
    b: str

    def line(self) -> str:
        return f"layer {self.layer}: {self.path}: {self.what} {self.a} != {self.b}"


@dataclass
class ImageDiff:
    """`config`: dotted paths of the config fields that differ (`created`, `history[2].created`,
    `config.Labels.org.opencontainers.image.created`); `layers`: (index, diff_id a, diff_id b) of the
    layers that differ, None for a layer one side lacks; `files`: the first `limit` file differences,
    lowest layer first; `files_total`: how many there were in all."""

    config: list[str] = field(default_factory=list)
    layers: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    files: list[FileDiff] = field(default_factory=list)
    files_total: int = 0

    @property
    def same(self) -> bool:
        return not self.config and not self.layers

    @property
    def first(self) -> FileDiff | None:
        return self.files[0] if self.files else None

    def as_dict(self) -> dict:
        return {"same": self.same, "config": self.config,
                "layers": [{"index": i, "a": a, "b": b} for i, a, b in self.layers],
                "files": [vars(f) for f in self.files], "files_total": self.files_total}


def read(ref: str) -> ImageScan:
    """The image `ref` names, read with a full sha256 per file: a local image, or a `docker save` /
    OCI-layout tarball when `ref` is an existing file. Raises ImagegenError (EngineError, UserInputError)."""
    from .savestream import read_image, read_tarball

    if os.path.isfile(ref):
        return read_tarball(ref, compressed=False, strong=True)[0]
    return read_image(ref, compressed=False, strong=True)[0]


def config_diff(a, b, prefix: str = "") -> list[str]:
    """The dotted paths where two JSON values differ (lists by index)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(p)
            else:
                out += config_diff(a[k], b[k], p)
        return out
    if isinstance(a, list) and isinstance(b, list):
        out = []
        for i in range(max(len(a), len(b))):
            p = f"{prefix}[{i}]"
            if i >= len(a) or i >= len(b):
                out.append(p)
            else:
                out += config_diff(a[i], b[i], p)
        return out
    return [] if a == b else [prefix or "."]


def _describe(r: Rec, what: str) -> str:
    if what == "content":
        return f"sha256:{r.digest.hex()[:16]}… ({r.size} bytes)" if r.digest else f"({r.size} bytes)"
    if what == "mode":
        return oct(stat.S_IMODE(r.mode))
    if what == "tar mode":
        return oct(r.mode)
    if what == "owner":
        return f"{r.uid}:{r.gid}"
    if what == "mtime":
        return str(r.mtime)
    if what == "xattrs":
        return ",".join(k for k, _ in r.xattrs) or "none"
    if what == "link":
        return r.link or ""
    return _KINDS.get(r.kind, r.kind)


def _rec_diff(x: Rec, y: Rec) -> str | None:
    if x.kind != y.kind:
        return "kind"
    if x.kind == "f" and (x.size != y.size or x.digest != y.digest):
        return "content"
    if x.link != y.link:
        return "link"
    if stat.S_IMODE(x.mode) != stat.S_IMODE(y.mode):
        return "mode"
    if (x.uid, x.gid) != (y.uid, y.gid):
        return "owner"
    if x.xattrs != y.xattrs:
        return "xattrs"
    if x.mtime != y.mtime:
        return "mtime"
    if x.mode != y.mode:  # the same permissions; the tar header's file-type bits differ (a re-packed layer)
        return "tar mode"
    return None


#: how telling each difference is: a changed file before changed metadata before header-only noise
_RANK = {"missing": 0, "kind": 0, "content": 0, "link": 0, "mode": 1, "owner": 1, "xattrs": 1, "mtime": 2,
         "tar mode": 3}


def compare(a: ImageScan, b: ImageScan, *, limit: int = 20) -> ImageDiff:
    """What differs between `a` and `b` (see ImageDiff). Layers are paired by position; within a pair
    of differing layers, entries by path (whiteouts and opaque directories included)."""
    d = ImageDiff(config=config_diff(a.config, b.config))
    for i in range(max(len(a.layers), len(b.layers))):
        la = a.layers[i] if i < len(a.layers) else None
        lb = b.layers[i] if i < len(b.layers) else None
        if la is not None and lb is not None and la.digest == lb.digest and la.digest:
            continue
        d.layers.append((i, la.digest if la else None, lb.digest if lb else None))
        ea = {r.path: r for r in la.entries} if la else {}
        eb = {r.path: r for r in lb.entries} if lb else {}
        order = [r.path for r in la.entries] if la else []
        order += [p for p in (r.path for r in lb.entries) if p not in ea] if lb else []
        found: list[tuple[bool, FileDiff]] = []
        for path in order:
            x, y = ea.get(path), eb.get(path)
            if x is None or y is None:
                fd = FileDiff(i, path, "missing", "present" if x else "absent", "present" if y else "absent")
            else:
                what = _rec_diff(x, y)
                if what is None:
                    continue
                fd = FileDiff(i, path, what, _describe(x, what), _describe(y, what))
            only_dirs = all(r is None or r.kind == "d" for r in (x, y))
            found.append((only_dirs, fd))
        # files before directories (a layer's tar lists the parent directories of what it adds first), and
        # within them what changed a file's bytes or kind before metadata
        for _, fd in sorted(found, key=lambda t: (t[0], _RANK.get(t[1].what, 1))):
            d.files_total += 1
            if len(d.files) < limit:
                d.files.append(fd)
        for kind in ("whiteouts", "opaques"):
            sa = set(getattr(la, kind)) if la else set()
            sb = set(getattr(lb, kind)) if lb else set()
            for path in sorted(sa ^ sb):
                d.files_total += 1
                if len(d.files) < limit:
                    d.files.append(FileDiff(i, path, kind[:-1], "yes" if path in sa else "no",
                                            "yes" if path in sb else "no"))
    return d
