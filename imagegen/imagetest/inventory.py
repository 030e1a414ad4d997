"""What an image holds, read from the image itself (its `docker save` stream), not a container.

The listing comes from the one save-stream reader, :mod:`imagegen.savestream`, that `imagegen
audit` uses too: the same layer sizes, the same gzip -6 counter and gzip cache (by layer
diff_id), the same overlay semantics (whiteouts, opaque directories, hard links counted by
inode) and the same ELF reader. Per layer: its uncompressed size and its compressed size as a
registry stores it; per path of the merged filesystem: type, mode, size, owner, link target and,
for ELF objects, whether a symbol table is left. Nothing is extracted to disk. The listing is
cached per image ID (content addressed) in $IMAGEGEN_CACHE/imagetest/, because a multi-GB
image takes a while to stream.

This is how contents policy works on shell-less images: no tool has to run inside them.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .. import paths
from ..elf import ElfProbe
from ..savestream import DIR, ChunkSource, ImageScan, LayerScan, Rec, View, apply_layers, read_save_stream
from ..savestream.source import read_image, settle_gzip

INVENTORY_VERSION = 3
GZIP_LEVEL = 6
_CHUNK = 1 << 20

# entry tuple indices
T, MODE, SIZE, UID, GID, LINK, ELF = range(7)
# types: f regular, d dir, l symlink, h hardlink, o other
ELF_SYMTAB = "symtab"  # has a .symtab section (not stripped)
ELF_PATCHED = "symtab-patchelf"  # has a .symtab, and patchelf's layout: `strip` must not touch it
ELF_STRIPPED = "stripped"


def cache_dir() -> Path:
    """Image listings, by image ID (the gzip sizes they hold come from the reader's one gzip cache,
    :func:`imagegen.savestream.gzsize.cache_dir`)."""
    return paths.imagetest_dir()


@dataclass
class Layer:
    name: str  # member path in the save stream
    size: int  # bytes of the layer tar
    gzip_size: int  # bytes of gzip -6 of the layer tar (or of the compressed blob itself)
    files: int = 0


@dataclass
class Inventory:
    image_id: str
    layers: list[Layer]
    files: dict[str, list]  # merged filesystem: path (no leading /) -> entry
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False

    @property
    def compressed_size(self) -> int:
        return sum(layer.gzip_size for layer in self.layers)

    @property
    def layers_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def exists(self, path: str) -> bool:
        return path.strip("/") in self.files

    def resolve(self, path: str) -> str | None:
        return resolve(self.files, path)

    def to_json(self) -> dict:
        return {
            "version": INVENTORY_VERSION,
            "image_id": self.image_id,
            "layers": [layer.__dict__ for layer in self.layers],
            "files": self.files,
            "config": self.config,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Inventory":
        return cls(d["image_id"], [Layer(**x) for x in d["layers"]], d["files"], d.get("config", {}), d.get("seconds", 0.0))


def resolve(files: dict[str, list], path: str, depth: int = 0) -> str | None:
    """The path a name reaches inside the image, following symlinks (absolute and relative,
    also in parent directories); None if it does not exist."""
    parts = [p for p in path.strip("/").split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        if part == "..":
            cur = posixpath.dirname(cur)
            continue
        cur = posixpath.join(cur, part) if cur else part
        e = files.get(cur)
        if e is None:
            if i == len(parts) - 1:
                return None
            continue  # a parent directory without its own tar entry
        if e[T] == "l":
            if depth > 40:
                return None
            target = e[LINK]
            joined = target if target.startswith("/") else posixpath.join("/" + posixpath.dirname(cur), target)
            rest = "/".join(parts[i + 1:])
            return resolve(files, posixpath.normpath(posixpath.join(joined, rest) if rest else joined), depth + 1)
    return cur


# --- ELF --------------------------------------------------------------------------------------


def _elf_verdict(rec: Rec | None) -> str | None:
    info = rec.elf if rec is not None else None
    if info is None:
        return None
    if not info.symtab:
        return ELF_STRIPPED
    return ELF_PATCHED if info.patchelf_layout else ELF_SYMTAB


def elf_kind(f: IO[bytes], size: int) -> str | None:
    """None if not ELF; else ELF_SYMTAB if a SHT_SYMTAB section exists, ELF_STRIPPED otherwise
    (:class:`imagegen.elf.ElfProbe`, reading the stream forward only)."""
    probe = ElfProbe(size)
    left = size
    while left > 0:
        b = f.read(min(left, _CHUNK))
        if not b:
            break
        probe.feed(memoryview(b))
        left -= len(b)
    info = probe.result()
    if info is None:
        return None
    return ELF_SYMTAB if info.symtab else ELF_STRIPPED


# --- listing from the shared reader ------------------------------------------------------------


def _entry(rec: Rec) -> list:
    kind = rec.kind
    if kind == "f":
        return ["f", rec.mode, rec.size, rec.uid, rec.gid, "", _elf_verdict(rec)]
    if kind == "l":
        return ["l", rec.mode, 0, rec.uid, rec.gid, rec.link or "", None]
    if kind == "h":
        return ["h", rec.mode, 0, rec.uid, rec.gid, (rec.link or "").lstrip("/"), None]
    return ["o", rec.mode, 0, rec.uid, rec.gid, "", None]


def files_of(view: View) -> dict[str, list]:
    """The merged filesystem as inventory entries (paths without the leading '/')."""
    files: dict[str, list] = {}
    for path, node in view.index.items():
        if path == "/":
            continue
        if node is DIR or node == DIR:
            d = view.dirs.get(path)
            files[path[1:]] = ["d", d.mode if d else 0o755, 0, d.uid if d else 0, d.gid if d else 0, "", None]
        else:
            files[path[1:]] = _entry(node)  # type: ignore[arg-type]
    for e in files.values():  # hard links: the ELF verdict of the name they link to
        if e[T] == "h" and e[LINK] in files:
            e[ELF] = files[e[LINK]][ELF]
    return files


def layers_of(scan: ImageScan) -> list[Layer]:
    return [Layer(ls.key, ls.tar_size, ls.gzip_size or 0, sum(1 for r in ls.entries if r.kind == "f"))
            for ls in scan.layers]


def merge_layers(layers: list[dict[str, list]]) -> dict[str, list]:
    """Apply layers of inventory entries in order (types `w` whiteout, `W` opaque directory), with
    the reader's own overlay model (:func:`imagegen.savestream.apply_layers`)."""
    scan = ImageScan([], {}, {}, [], [])
    origin: dict[int, list] = {}
    for i, entries in enumerate(layers):
        ls = LayerScan(key=str(i))
        for path, e in entries.items():
            p = "/" + path.strip("/")
            if e[T] == "W":
                ls.opaques.append(p)
            elif e[T] == "w":
                ls.whiteouts.append(p)
            else:
                rec = Rec(p, e[T], e[SIZE] if e[T] == "f" else 0,
                          link=("/" + e[LINK].lstrip("/")) if e[T] == "h" else e[LINK], mode=e[MODE],
                          uid=e[UID], gid=e[GID])
                origin[id(rec)] = e
                ls.entries.append(rec)
        scan.layers.append(ls)
    view = apply_layers(scan)
    merged: dict[str, list] = {}
    for path, node in view.index.items():
        if path == "/":
            continue
        if node == DIR:
            d = view.dirs.get(path)
            merged[path[1:]] = origin.get(id(d)) if d is not None else ["d", 0o755, 0, 0, 0, "", None]
        else:
            merged[path[1:]] = origin.get(id(node)) or _entry(node)  # type: ignore[arg-type]
    for e in merged.values():
        if e[T] == "h" and e[LINK] in merged:
            e[ELF] = merged[e[LINK]][ELF]
    return merged


def scan_save_stream(stream: IO[bytes]) -> tuple[list[Layer], dict[str, list], dict]:
    """Parse a `docker save` stream (docker-archive or OCI layout) read from a file object:
    (layers with gzip sizes, merged files, image config)."""
    src = ChunkSource(iter(lambda: stream.read(_CHUNK), b""))
    scan = read_save_stream(src)
    settle_gzip(scan, True, {})
    return layers_of(scan), files_of(apply_layers(scan)), scan.config


def load_inventory(image: str, *, use_cache: bool = True) -> Inventory:
    """The inventory of a local image, from cache or one streamed `docker save`."""
    from ..engine import api

    info = api().inspect_image(image)
    image_id = info["Id"]
    path = cache_dir() / f"inventory-v{INVENTORY_VERSION}-{image_id.split(':')[-1]}.json.gz"
    if use_cache and path.exists():
        try:
            with gzip.open(path, "rt") as fh:
                inv = Inventory.from_json(json.load(fh))
            inv.cached = True
            return inv
        except (OSError, ValueError, KeyError):
            pass
    t0 = time.monotonic()
    scan, _info, _mode = read_image(image_id, compressed=True, info=info)
    inv = Inventory(image_id, layers_of(scan), files_of(apply_layers(scan)), scan.config, time.monotonic() - t0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with gzip.open(tmp, "wt", compresslevel=1) as fh:
            json.dump(inv.to_json(), fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written is not an error
    return inv
