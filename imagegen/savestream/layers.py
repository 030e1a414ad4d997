"""Read a `docker save` stream, layer by layer, without extracting anything.

Two archive layouts are read:

- **docker-archive** (engine ≤ 24, and 25+ with the classic store): `manifest.json`, the image
  config, one `<id>/layer.tar` per layer (uncompressed);
- **OCI image layout** (Docker 25+ with the containerd image store, skopeo, buildah): `oci-layout`,
  `index.json`, `blobs/sha256/<hex>`; layers are `tar`, `tar+gzip` or `tar+zstd` blobs, named
  by the manifest's media types. When both `manifest.json` and `index.json` are present (Docker
  25+ writes both), `manifest.json` is used.

Layer blobs are recognised by their first bytes (gzip, zstd or ustar magic), because the save
stream may put the blobs before `index.json`/`manifest.json` (lexical order). A layer whose media
type this module does not read raises :class:`UnsupportedStream`, naming the layer, the type and a
remedy, never :class:`CorruptStream`.

Per file we keep a small record (path, mode, owner, size, 16-byte content hash, ELF facts); file
contents are never kept, except the few small files that say who owns what (pip RECORD, dpkg status
and lists, conda-meta), capped in size. Per-layer records are put in layer order once the
manifest and the image config have been read.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain

from ..cuda_kernels import KernelScan, is_library_name, kernel_result
from ..elf import MAGIC, ElfInfo, ElfProbe
from ..labels import OCI_REF_NAME
from .gzsize import GzipCounter
from .tar import BLOCK, ChunkSource, CorruptStream, Member, TruncatedStream, UnsupportedStream, iter_tar, normalize, tee

CAPTURE_MAX = 64 << 20
_CAPTURE = re.compile(
    r"(\.dist-info/RECORD|\.egg-info/installed-files\.txt|^/var/lib/dpkg/status|^/var/lib/dpkg/info/[^/]+\.list"
    r"|^/var/lib/dpkg/status\.d/[^/]+|/conda-meta/[^/]+\.json)$")
ELF_MIN = 64

#: layer media types -> how the blob is stored (docker v2 schema 2 and OCI image spec v1.1)
LAYER_MEDIA_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar": "tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
}
_MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json")
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
REMEDY = ("convert it to a readable layout, e.g. `skopeo copy --dest-compress-format gzip oci-archive:IN "
          "docker-archive:OUT`, or `docker load` it and audit the local image")


class Rec:
    """One tar entry of one layer. kind: f file, d dir, l symlink, h hardlink, o other.
    For a hard link, `link` is the absolute path of the name it links to (same layer)."""

    __slots__ = ("path", "kind", "size", "digest", "link", "elf", "data", "layer", "mode", "uid", "gid", "kernels",
                 "mtime", "xattrs")

    def __init__(self, path: str, kind: str, size: int = 0, digest: bytes | None = None, link: str | None = None,
                 elf: ElfInfo | None = None, data: bytes | None = None, layer: int = -1, mode: int = 0,
                 uid: int = 0, gid: int = 0):
        self.path = path
        self.kind = kind
        self.size = size
        self.digest = digest
        self.link = link
        self.elf = elf
        self.data = data
        self.layer = layer
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.kernels = None  # cuda_kernels.LibraryKernels of a shared library with CUDA kernels
        self.mtime = 0  # seconds since the epoch, from the tar header
        self.xattrs: tuple[tuple[str, str], ...] = ()

    def copy(self, **changes) -> "Rec":
        r = Rec(self.path, self.kind, self.size, self.digest, self.link, self.elf, self.data, self.layer,
                self.mode, self.uid, self.gid)
        r.kernels = self.kernels
        r.mtime, r.xattrs = self.mtime, self.xattrs
        for k, v in changes.items():
            setattr(r, k, v)
        return r


@dataclass
class LayerScan:
    key: str
    tar_size: int = 0
    digest: str = ""           # sha256 of the uncompressed tar = the diff_id
    gzip_size: int | None = None   # compressed size as a registry stores it (the blob itself if compressed)
    blob_compressed: bool = False
    compression: str = "tar"   # how the blob was stored in the save: tar | gzip | zstd
    blob_size: int = 0         # bytes of the blob in the save stream
    media_type: str = ""       # from the OCI manifest, when there is one
    entries: list[Rec] = field(default_factory=list)
    whiteouts: list[str] = field(default_factory=list)   # absolute paths removed from lower layers
    opaques: list[str] = field(default_factory=list)     # directories whose lower contents are hidden
    content_bytes: int = 0


@dataclass
class ImageScan:
    layers: list[LayerScan]            # in layer order, bottom first
    config: dict
    manifest: dict                     # docker-archive manifest.json entry (synthesised for OCI layouts)
    history: list[dict]                # one per layer (non-empty history entries), same order
    all_history: list[dict]
    save_bytes: int = 0
    layout: str = "docker-archive"     # or "oci"


def _abs(name: str) -> str:
    return "/" + name if name else "/"


def scan_layer(src: ChunkSource, ls: LayerScan, *, on_file: Callable[[Rec], None] | None = None,
               strong: bool = False) -> None:
    """Records of every entry of one layer tar into `ls`. strong: every file's `digest` is its full sha256
    (32 bytes), as `verify` needs (see _file for the default)."""
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
            rec = _file(path, m, data, strong=strong)
            ls.content_bytes += m.size
        elif m.isdir:
            rec = Rec(path, "d", mode=m.mode, uid=m.uid, gid=m.gid)
        elif m.issym:
            rec = Rec(path, "l", link=m.linkname, mode=m.mode, uid=m.uid, gid=m.gid)
        elif m.islnk:
            rec = Rec(path, "h", link=_abs(normalize(m.linkname)), mode=m.mode, uid=m.uid, gid=m.gid)
        else:
            rec = Rec(path, "o", mode=m.mode, uid=m.uid, gid=m.gid)
        rec.mtime, rec.xattrs = m.mtime, m.xattrs
        ls.entries.append(rec)
        if on_file is not None:
            on_file(rec)


try:  # zlib-ng's CRC-32 and Adler-32 run at several GB/s (SIMD); sha256 at about 1 GB/s
    from zlib_ng import zlib_ng as _ng
except ImportError:  # pragma: no cover - a declared dependency
    _ng = None

#: files of at least this size get a 64-bit checksum fingerprint instead of sha256 (see _file)
FINGERPRINT_MIN = 1 << 20


def _file(path: str, m: Member, src: ChunkSource, *, strong: bool = False) -> Rec:
    """A regular file's record. Its `digest` (16 bytes) identifies its content for the duplicate
    report, together with its size: sha256 (first 16 bytes) for files under 1 MiB, and for larger
    ones, which hold nearly all the bytes, CRC-32 + Adler-32 from zlib-ng (a 64-bit fingerprint,
    6x cheaper than sha256: a false duplicate needs two same-size files of over 1 MiB that
    collide in both checksums). strong: the full sha256 of every file (32 bytes), which tampering
    cannot match."""
    size = m.size
    fast = _ng is not None and size >= FINGERPRINT_MIN and not strong
    h = None if fast else hashlib.sha256()
    crc, adler = 0, 1
    probe = None
    kscan = None
    capture = [] if size <= CAPTURE_MAX and _CAPTURE.search(path) else None
    first = True
    for mv in src.pieces(size):
        if fast:
            crc = _ng.crc32(mv, crc)
            adler = _ng.adler32(mv, adler)
        else:
            h.update(mv)
        if first:
            first = False
            # an ELF probe only for files that start like one (most files do not)
            if size >= ELF_MIN and (len(mv) < 4 or mv[:4] == MAGIC):
                probe = ElfProbe(size)
                # CUDA kernels per architecture, for shared libraries (cuda_kernels, streamed)
                kscan = KernelScan(path, size) if is_library_name(path) else None
        if probe is not None:
            probe.feed(mv)
        if kscan is not None:
            kscan.feed(mv)
        if capture is not None:
            capture.append(bytes(mv))
    elf = probe.result() if probe is not None else None
    digest = b"ck64" + crc.to_bytes(4, "little") + adler.to_bytes(4, "little") + bytes(4) if fast \
        else (h.digest() if strong else h.digest()[:16])
    rec = Rec(path, "f", size, digest, elf=elf,
              data=b"".join(capture) if capture is not None else None, mode=m.mode, uid=m.uid, gid=m.gid)
    if kscan is not None and elf is not None and elf.fatbin:
        rec.kernels = kernel_result(kscan)
    return rec


def sniff(head: bytes) -> str:
    """How a blob is stored, from its first bytes: gzip | zstd | tar | other."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(head) >= 512 and (head[257:262] == b"ustar" or head == bytes(512)):
        return "tar"
    if len(head) >= 512 and _v7_tar(head):
        return "tar"
    return "other"


def _v7_tar(head: bytes) -> bool:
    """A pre-POSIX tar header (no ustar magic) with a valid checksum."""
    try:
        tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
        return head[0] != 0x7B  # "{": never a JSON document
    except Exception:  # noqa: BLE001 - anything that is not a header
        return False


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


def _unzstd(pieces: Iterable) -> Iterable[bytes]:
    """zstd frames (one or more, concatenated), decompressed with the `zstandard` library."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    for mv in pieces:
        try:
            out = d.decompress(mv)
            while d.eof and d.unused_data:
                rest = d.unused_data
                d = dctx.decompressobj()
                out += d.decompress(rest)
        except zstandard.ZstdError as exc:
            raise CorruptStream(f"invalid zstd data in layer ({exc})") from None
        if out:
            yield out
    if not d.eof:
        raise TruncatedStream("zstd layer ends early")


def read_save_stream(src: ChunkSource, *, want_gzip: Callable[[int], bool] = lambda n: True,
                     log: Callable[[str], None] | None = None, verify: bool = True, strong: bool = False) -> ImageScan:
    """Parse a whole save stream (docker-archive or OCI layout) from `src`.

    verify: hash every uncompressed layer and check it against the config's diff_id (one more
    sha256 pass over the image). Without it (the engine's own stream, whose config the engine
    wrote), each layer's digest is taken from the config's diff_ids. strong: full sha256 per file
    (scan_layer).

    Raises TruncatedStream, CorruptStream or UnsupportedStream (all StreamError) on bad input."""
    layers: dict[str, LayerScan] = {}
    jsons: dict[str, bytes] = {}
    links: dict[str, str] = {}
    skipped: dict[str, str] = {}   # blob name -> what its first bytes looked like
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
        if not is_layer and name.startswith("blobs/"):
            head = data.read_exact(min(BLOCK, m.size))
            kind = sniff(head)
            if kind == "other":
                if m.size <= CAPTURE_MAX:
                    jsons[name] = head + data.read_exact(m.size - len(head))
                else:
                    skipped[name] = "other"
                continue
        if kind is None:
            if m.size <= CAPTURE_MAX:
                jsons[name] = data.read_exact(m.size)
            continue
        ls = LayerScan(key=name, tar_size=m.size, blob_size=m.size, compression=kind)
        sha = hashlib.sha256() if verify else None
        sinks = [sha.update] if sha is not None else []
        pieces = chain([memoryview(head)] if head else [], data.pieces(m.size - len(head)))
        gz = None
        if kind in ("gzip", "zstd"):
            # stored compressed: the registry keeps this very blob, so its size is the compressed size
            ls.blob_compressed = True
            ls.gzip_size = m.size
            plain = _gunzip(pieces) if kind == "gzip" else _unzstd(pieces)
            inner = ChunkSource(tee(plain, sinks) if sinks else plain)
        else:
            if want_gzip(m.size):
                gz = GzipCounter()
            sinks += [gz.feed] if gz else []
            inner = ChunkSource(tee(pieces, sinks) if sinks else pieces)
        if log:
            log(f"reading {name} ({m.size} bytes, {kind})")
        try:
            scan_layer(inner, ls, strong=strong)
        except TruncatedStream as exc:
            raise TruncatedStream(f"layer {name}: {exc}") from None
        except CorruptStream as exc:
            raise CorruptStream(f"layer {name}: {exc}") from None
        inner.drain()
        if kind != "tar":
            ls.tar_size = inner.pos
        ls.digest = "sha256:" + sha.hexdigest() if sha is not None else ""
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

    media: dict[str, str] = {}
    layout = "docker-archive"
    if "manifest.json" in jsons:
        try:
            manifest = json.loads(jsons["manifest.json"])[0]
            config = json.loads(jsons[resolve(manifest["Config"])])
            keys = [resolve(k) for k in manifest["Layers"]]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CorruptStream(f"manifest.json or the image config is unreadable ({type(exc).__name__}: {exc})") \
                from None
        if "index.json" in jsons:  # Docker 25+: media types from the OCI manifest, when it is there
            try:
                media = _oci_layers(jsons)[2]
            except (CorruptStream, UnsupportedStream):
                media = {}
    elif "index.json" in jsons:
        layout = "oci"
        config_key, keys, media = _oci_layers(jsons)
        try:
            config = json.loads(jsons[config_key])
        except (KeyError, ValueError) as exc:
            raise CorruptStream(f"the image config {config_key} is missing or unreadable ({exc})") from None
        manifest = {"Config": config_key, "Layers": keys, "RepoTags": _oci_tags(jsons)}
    else:
        raise CorruptStream("the save stream has neither manifest.json (docker-archive) nor index.json (OCI layout)")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    ordered: list[LayerScan] = []
    for i, k in enumerate(keys):
        mt = media.get(k, "")
        if k not in layers:
            if mt and mt not in LAYER_MEDIA_TYPES:
                raise UnsupportedStream(f"layer {i} ({k}) has media type {mt}, which imagegen does not read "
                                        f"(it reads tar, tar+gzip and tar+zstd layers); {REMEDY}")
            raise CorruptStream(f"layer {k} named in the manifest is missing from the save stream"
                                + (" or is not a tar, gzip or zstd blob" if k in skipped or k in jsons else ""))
        ls = layers[k]
        ls.media_type = mt
        if not verify and i < len(diff_ids):
            ls.digest = diff_ids[i]
        if mt and mt not in LAYER_MEDIA_TYPES:
            raise UnsupportedStream(f"layer {i} ({k}) has media type {mt}, which imagegen does not read "
                                    f"(it reads tar, tar+gzip and tar+zstd layers); {REMEDY}")
        if i < len(diff_ids) and diff_ids[i] != ls.digest:
            raise CorruptStream(f"layer {i} ({k}) does not match its diff_id: read {ls.digest[:19]}…, "
                                f"config says {diff_ids[i][:19]}…")
        ordered.append(ls)
    all_history = config.get("history") or []
    hist = [h for h in all_history if not h.get("empty_layer")]
    if len(hist) != len(ordered):
        hist = [{} for _ in ordered]
    return ImageScan(ordered, config, manifest, hist, all_history, save_bytes, layout)


def _blob(digest: str) -> str:
    algo, _, hexd = (digest or "").partition(":")
    if not algo or not hexd or "/" in hexd or "/" in algo:
        raise CorruptStream(f"invalid digest {digest!r} in the OCI layout")
    return f"blobs/{algo}/{hexd}"


def _oci_json(jsons: dict[str, bytes], name: str, what: str) -> dict:
    if name not in jsons:
        raise CorruptStream(f"{what} {name} is missing from the OCI layout")
    try:
        doc = json.loads(jsons[name])
    except ValueError as exc:
        raise CorruptStream(f"{what} {name} is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CorruptStream(f"{what} {name} is not a JSON object")
    return doc


def _oci_manifest(jsons: dict[str, bytes]) -> dict:
    """The image manifest an OCI layout's index.json leads to: the single image in it, or the
    linux/amd64 one of a multi-platform index (nested indexes followed)."""
    doc = _oci_json(jsons, "index.json", "the image index")
    for _ in range(8):
        manifests = [d for d in doc.get("manifests") or [] if isinstance(d, dict)]
        if not manifests:
            raise CorruptStream("the OCI index lists no manifests")
        images = [d for d in manifests if d.get("mediaType") in _MANIFEST_TYPES + _INDEX_TYPES]
        if not images:
            types = sorted({str(d.get("mediaType")) for d in manifests})
            raise UnsupportedStream(f"the OCI index lists no image manifest (media types: {', '.join(types)}); "
                                    f"{REMEDY}")
        plat = [d for d in images if (d.get("platform") or {}).get("os") == "linux"
                and (d.get("platform") or {}).get("architecture") == "amd64"]
        pick = (plat or images)[0]
        nxt = _oci_json(jsons, _blob(pick.get("digest", "")), "manifest")
        if pick.get("mediaType") in _INDEX_TYPES or nxt.get("mediaType") in _INDEX_TYPES:
            doc = nxt
            continue
        return nxt
    raise CorruptStream("the OCI index nests more than 8 levels")


def _oci_layers(jsons: dict[str, bytes]) -> tuple[str, list[str], dict[str, str]]:
    """(config blob name, layer blob names, blob name -> media type) of an OCI layout."""
    man = _oci_manifest(jsons)
    try:
        config_key = _blob(man["config"]["digest"])
        layers = man.get("layers") or []
        keys = [_blob(d["digest"]) for d in layers]
        media = {_blob(d["digest"]): str(d.get("mediaType") or "") for d in layers}
    except (KeyError, TypeError) as exc:
        raise CorruptStream(f"the OCI manifest is malformed ({type(exc).__name__}: {exc})") from None
    return config_key, keys, media


def _oci_tags(jsons: dict[str, bytes]) -> list[str]:
    try:
        doc = json.loads(jsons["index.json"])
        names = [(d.get("annotations") or {}).get("io.containerd.image.name")
                 or (d.get("annotations") or {}).get(OCI_REF_NAME)
                 for d in doc.get("manifests") or []]
        return [n for n in names if n]
    except (KeyError, ValueError, AttributeError):
        return []
