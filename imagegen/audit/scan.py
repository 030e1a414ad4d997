"""Read a `docker save` stream, layer by layer, without extracting anything.

Per file we keep a small record (path, size, 16-byte content hash, ELF section sizes); file
contents are never kept, except the few small files that say who owns what (pip RECORD, dpkg
status and lists, conda-meta), capped in size. The save stream may put layers in any order and
manifest.json at the end (engine 20.10 writes them in lexical order), so per-layer records are
buffered and put in order once manifest.json and the image config have been read.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain

from ..cuda_kernels import KernelScan, is_library_name, kernel_result
from .elf import ElfInfo, ElfProbe
from .gzsize import GzipCounter
from .stream import BLOCK, ChunkSource, CorruptStream, Member, TruncatedStream, iter_tar, normalize, tee

CAPTURE_MAX = 64 << 20
_CAPTURE = re.compile(
    r"(\.dist-info/RECORD|\.egg-info/installed-files\.txt|^/var/lib/dpkg/status|^/var/lib/dpkg/info/[^/]+\.list"
    r"|^/var/lib/dpkg/status\.d/[^/]+|/conda-meta/[^/]+\.json)$")
ELF_MIN = 64


class Rec:
    """One tar entry of one layer. kind: f file, d dir, l symlink, h hardlink, o other."""

    __slots__ = ("path", "kind", "size", "digest", "link", "elf", "data", "layer", "kernels")

    def __init__(self, path: str, kind: str, size: int = 0, digest: bytes | None = None, link: str | None = None,
                 elf: ElfInfo | None = None, data: bytes | None = None, layer: int = -1):
        self.path = path
        self.kind = kind
        self.size = size
        self.digest = digest
        self.link = link
        self.elf = elf
        self.data = data
        self.layer = layer
        self.kernels = None  # cuda_kernels.LibraryKernels of a shared library with CUDA kernels


@dataclass
class LayerScan:
    key: str
    tar_size: int = 0
    digest: str = ""           # sha256 of the uncompressed tar = the diff_id
    gzip_size: int | None = None
    blob_compressed: bool = False
    entries: list[Rec] = field(default_factory=list)
    whiteouts: list[str] = field(default_factory=list)   # absolute paths removed from lower layers
    opaques: list[str] = field(default_factory=list)     # directories whose lower contents are hidden
    content_bytes: int = 0


@dataclass
class ImageScan:
    layers: list[LayerScan]            # in layer order, bottom first
    config: dict
    manifest: dict
    history: list[dict]                # one per layer (non-empty history entries), same order
    all_history: list[dict]
    save_bytes: int = 0


def _abs(name: str) -> str:
    return "/" + name if name else "/"


def scan_layer(src: ChunkSource, ls: LayerScan, *, on_file: Callable[[Rec], None] | None = None) -> None:
    for m, data in iter_tar(src):
        path = _abs(m.name)
        base = path.rsplit("/", 1)[-1]
        if base.startswith(".wh."):
            parent = path.rsplit("/", 1)[0] or "/"
            if base == ".wh..wh..opq":
                ls.opaques.append(parent)
            elif not base.startswith(".wh..wh."):
                ls.whiteouts.append(posixpath.join(parent, base[4:]))
            continue
        if m.isreg:
            rec = _file(path, m, data)
            ls.content_bytes += m.size
        elif m.isdir:
            rec = Rec(path, "d")
        elif m.issym:
            rec = Rec(path, "l", link=m.linkname)
        elif m.islnk:
            rec = Rec(path, "h", link=_abs(normalize(m.linkname)))
        else:
            rec = Rec(path, "o")
        ls.entries.append(rec)
        if on_file is not None:
            on_file(rec)


def _file(path: str, m: Member, src: ChunkSource) -> Rec:
    size = m.size
    h = hashlib.sha256()
    probe = ElfProbe(size) if size >= ELF_MIN else None
    kscan = KernelScan(path, size) if probe is not None and is_library_name(path) else None
    capture = [] if size <= CAPTURE_MAX and _CAPTURE.search(path) else None
    for mv in src.pieces(size):
        h.update(mv)
        if probe is not None:
            probe.feed(mv)
        if kscan is not None:
            kscan.feed(mv)
        if capture is not None:
            capture.append(bytes(mv))
    elf = probe.result() if probe is not None else None
    rec = Rec(path, "f", size, h.digest()[:16], elf=elf,
              data=b"".join(capture) if capture is not None else None)
    if kscan is not None and elf is not None and elf.fatbin:
        rec.kernels = kernel_result(kscan)
    return rec


def _sniff(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(head) >= 512 and (head[257:262] == b"ustar" or head == bytes(512)):
        return "tar"
    return "other"


def _gunzip(pieces: Iterable) -> Iterable[bytes]:
    d = zlib.decompressobj(31)
    for mv in pieces:
        try:
            out = d.decompress(mv)
            while d.unused_data:  # concatenated gzip members
                rest = d.unused_data
                d = zlib.decompressobj(31)
                out += d.decompress(rest)
        except zlib.error as exc:
            raise CorruptStream(f"invalid gzip data in layer ({exc})") from None
        if out:
            yield out
    if not d.eof:
        raise TruncatedStream("gzip layer ends early")


def read_save_stream(src: ChunkSource, *, want_gzip: Callable[[int], bool] = lambda n: True,
                     log: Callable[[str], None] | None = None) -> ImageScan:
    """Parse a whole save stream from `src`. Raises StreamError subclasses on bad input."""
    layers: dict[str, LayerScan] = {}
    jsons: dict[str, bytes] = {}
    links: dict[str, str] = {}
    for m, data in iter_tar(src):
        name = m.name
        if m.issym or m.islnk:
            target = m.linkname if m.islnk else posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
            links[name] = target.lstrip("./") if m.islnk else target
            continue
        if not m.isreg:
            continue
        is_layer = name.endswith("layer.tar")
        kind = "tar" if is_layer else None
        head = b""
        if not is_layer and name.startswith("blobs/") and m.size >= BLOCK:
            head = data.read_exact(BLOCK)
            kind = _sniff(head)
            if kind == "other":
                if m.size <= CAPTURE_MAX:
                    jsons[name] = head + data.read_exact(m.size - BLOCK)
                continue
        if kind is None:
            if m.size <= CAPTURE_MAX:
                jsons[name] = data.read_exact(m.size)
            continue
        if kind == "zstd":
            raise CorruptStream(f"layer {name} is zstd-compressed; only tar and gzip layers are supported")
        ls = LayerScan(key=name, tar_size=m.size)
        sha = hashlib.sha256()
        pieces = chain([memoryview(head)] if head else [], data.pieces(m.size - len(head)))
        gz = None
        if kind == "gzip":
            ls.blob_compressed = True
            ls.gzip_size = m.size
            inner = ChunkSource(tee(_gunzip(pieces), [sha.update]))
        else:
            if want_gzip(m.size):
                gz = GzipCounter()
            inner = ChunkSource(tee(pieces, [sha.update] + ([gz.feed] if gz else [])))
        if log:
            log(f"reading {name} ({m.size} bytes)")
        try:
            scan_layer(inner, ls)
        except TruncatedStream as exc:
            raise TruncatedStream(f"layer {name}: {exc}") from None
        except CorruptStream as exc:
            raise CorruptStream(f"layer {name}: {exc}") from None
        inner.drain()
        if kind == "gzip":
            ls.tar_size = inner.pos
        ls.digest = "sha256:" + sha.hexdigest()
        if gz is not None:
            ls.gzip_size = gz.finish()
        layers[name] = ls
    save_bytes = src.pos + src.drain()

    def resolve(n: str) -> str:
        seen = 0
        while n in links and seen < 16:
            n = links[n]
            seen += 1
        return n

    if "manifest.json" not in jsons:
        raise CorruptStream("the save stream has no manifest.json")
    try:
        manifest = json.loads(jsons["manifest.json"])[0]
        config = json.loads(jsons[resolve(manifest["Config"])])
        keys = [resolve(k) for k in manifest["Layers"]]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise CorruptStream(f"manifest.json or the image config is unreadable ({type(exc).__name__}: {exc})") from None
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    ordered: list[LayerScan] = []
    for i, k in enumerate(keys):
        if k not in layers:
            raise CorruptStream(f"layer {k} named in manifest.json is missing from the save stream")
        ls = layers[k]
        if i < len(diff_ids) and diff_ids[i] != ls.digest:
            raise CorruptStream(f"layer {i} ({k}) does not match its diff_id: read {ls.digest[:19]}…, "
                                f"config says {diff_ids[i][:19]}…")
        ordered.append(ls)
    all_history = config.get("history") or []
    hist = [h for h in all_history if not h.get("empty_layer")]
    if len(hist) != len(ordered):
        hist = [{} for _ in ordered]
    return ImageScan(ordered, config, manifest, hist, all_history, save_bytes)
