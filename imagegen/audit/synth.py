"""Synthetic images with exactly known contents, for tests and the bench: writes a `docker save`
tarball (manifest.json, config, one layer.tar per layer) that `docker load` accepts and that
`imagegen audit --from-tar` reads directly. Layers can hold what no Dockerfile can make without
a shell: whiteouts, opaque directories, odd names, symlink loops.

Entry specs, one tuple each:
  ("file", path, data)            data: bytes, or a callable yielding chunks, with ("file", path, gen, size)
  ("dir", path)                   ("symlink", path, target)       ("hardlink", path, target)
  ("whiteout", path)              ("opaque", dir)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from ..labels import OCI_REF_NAME


def _add_data(tf: tarfile.TarFile, ti: tarfile.TarInfo, chunks: Iterable[bytes]) -> None:
    """Write a member whose data comes from chunks (size set in ti), streaming."""
    buf = ti.tobuf(tf.format, tf.encoding, tf.errors)
    tf.fileobj.write(buf)
    tf.offset += len(buf)
    n = 0
    for c in chunks:
        tf.fileobj.write(c)
        n += len(c)
    if n != ti.size:
        raise ValueError(f"{ti.name}: wrote {n} bytes, declared {ti.size}")
    pad = -n % tarfile.BLOCKSIZE
    if pad:
        tf.fileobj.write(b"\0" * pad)
    tf.offset += n + pad
    tf.members.append(ti)


def write_layer(f: BinaryIO, entries: list[tuple]) -> None:
    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tf:
        for e in entries:
            kind, path = e[0], e[1].lstrip("/")
            if kind == "whiteout":
                d, _, base = path.rpartition("/")
                ti = tarfile.TarInfo((d + "/" if d else "") + ".wh." + base)
                tf.addfile(ti, io.BytesIO(b""))
            elif kind == "opaque":
                ti = tarfile.TarInfo(path.rstrip("/") + "/.wh..wh..opq")
                tf.addfile(ti, io.BytesIO(b""))
            elif kind == "dir":
                ti = tarfile.TarInfo(path)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            elif kind in ("symlink", "hardlink"):
                ti = tarfile.TarInfo(path)
                ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                ti.linkname = e[2].lstrip("/") if kind == "hardlink" else e[2]
                tf.addfile(ti)
            elif kind == "file":
                ti = tarfile.TarInfo(path)
                ti.mode = e[4] if len(e) > 4 else 0o644
                data = e[2]
                if callable(data):
                    ti.size = e[3]
                    _add_data(tf, ti, data())
                else:
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
            else:
                raise ValueError(f"unknown entry kind {kind}")


def write_save_tar(out: BinaryIO, layers: list[list[tuple]], *, tag: str = "imagegen-test/audit:latest",
                   history: list[str] | None = None, labels: dict[str, str] | None = None,
                   tmpdir: str | None = None) -> dict:
    """Write a save tarball to `out`; return the config written."""
    diff_ids, files = [], []
    try:
        for entries in layers:
            tmp = tempfile.TemporaryFile(dir=tmpdir, prefix="imagegen-synth-")
            write_layer(tmp, entries)
            size = tmp.tell()
            tmp.seek(0)
            h = hashlib.sha256()
            while b := tmp.read(1 << 20):
                h.update(b)
            tmp.seek(0)
            diff_ids.append("sha256:" + h.hexdigest())
            files.append((tmp, size))
        hist = history or [f"synthetic layer {i}" for i in range(len(layers))]
        config = {
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"imagegen.test": "1", **(labels or {})}, "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": h} for h in hist],
        }
        cfg = json.dumps(config).encode()
        cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
        names = []
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for i, ((tmp, size), did) in enumerate(zip(files, diff_ids, strict=True)):
                d = hashlib.sha256(f"{i}{did}".encode()).hexdigest()
                ti = tarfile.TarInfo(f"{d}/layer.tar")
                ti.size = size
                _add_data(tf, ti, iter(lambda t=tmp: t.read(1 << 20), b""))
                names.append(f"{d}/layer.tar")
            ti = tarfile.TarInfo(cfg_name)
            ti.size = len(cfg)
            tf.addfile(ti, io.BytesIO(cfg))
            man = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": names}]).encode()
            ti = tarfile.TarInfo("manifest.json")
            ti.size = len(man)
            tf.addfile(ti, io.BytesIO(man))
    finally:
        for tmp, _ in files:
            tmp.close()
    return config


def pattern(seed: int, size: int, *, random: bool = False, chunk: int = 1 << 20) -> Callable[[], Iterator[bytes]]:
    """Deterministic file content of `size` bytes: compressible text-ish, or incompressible."""
    def gen() -> Iterator[bytes]:
        left = size
        if random:
            h = hashlib.shake_256(f"seed{seed}".encode())
            block = h.digest(min(chunk, max(size, 1)))
            i = 0
            while left > 0:
                b = block if i == 0 else hashlib.shake_256(block[:64] + i.to_bytes(8, "little")).digest(
                    min(chunk, left))
                b = b[:left]
                i += 1
                left -= len(b)
                yield b
        else:
            unit = (f"line {seed} of a compressible file; " * 50).encode()
            blk = (unit * (chunk // len(unit) + 1))[:chunk]
            while left > 0:
                b = blk[:left]
                left -= len(b)
                yield b
    return gen


def load(path_or_bytes, api=None) -> list[str]:
    """docker load a save tarball; return the loaded image names/ids."""
    from .. import engine

    api = api or engine.api()
    if isinstance(path_or_bytes, (bytes, bytearray)):
        res = api.load_image(bytes(path_or_bytes))
    else:
        with open(path_or_bytes, "rb") as f:
            res = api.load_image(f)
    out = []
    for item in res:
        s = item.get("stream", "") if isinstance(item, dict) else str(item)
        if "Loaded image" in s:
            out.append(s.split(":", 1)[1].strip())
        if isinstance(item, dict) and item.get("error"):
            raise RuntimeError(item["error"])
    return out


def tmp_root() -> str:
    return os.environ.get("TMPDIR", "/tmp")


OCI_LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def write_oci_tar(out: BinaryIO, layers: list[list[tuple]], *, compressions: list[str] | None = None,
                  media_types: list[str] | None = None, tag: str = "imagegen-test/oci:latest",
                  with_manifest_json: bool = False, nested_index: bool = False) -> dict:
    """Write an OCI image layout tarball (`oci-layout`, `index.json`, `blobs/sha256/…`), as Docker
    25+ with the containerd store, skopeo or buildah export it. Each layer is stored as `tar`,
    `gzip` or `zstd` (per `compressions`); `media_types` overrides the manifest's media types (to
    test unsupported ones, whose blob is then stored as given by `compressions`). Returns the config."""
    import gzip as _gzip

    compressions = compressions or ["gzip"] * len(layers)
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return d

    diff_ids, descs = [], []
    for i, (entries, comp) in enumerate(zip(layers, compressions, strict=True)):
        buf = io.BytesIO()
        write_layer(buf, entries)
        raw = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        if comp == "gzip":
            blob = _gzip.compress(raw, 6, mtime=0)
        elif comp == "zstd":
            import zstandard

            blob = zstandard.ZstdCompressor(level=3).compress(raw)
        elif comp == "bzip2":
            import bz2

            blob = bz2.compress(raw)
        else:
            blob = raw
        mt = (media_types[i] if media_types else None) or OCI_LAYER_TYPES.get(comp, f"application/x-{comp}")
        descs.append({"mediaType": mt, "digest": put(blob), "size": len(blob)})
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"imagegen.test": "1"}, "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
    }
    cfg = json.dumps(config).encode()
    cfg_d = put(cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d,
                                 "size": len(cfg)},
                      "layers": descs}).encode()
    man_d = put(man)
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d, "size": len(man),
           "annotations": {"io.containerd.image.name": tag, OCI_REF_NAME: tag.rsplit(":", 1)[-1]},
           "platform": {"architecture": "amd64", "os": "linux"}}
    if nested_index:
        inner = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{**top, "annotations": {}}]}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(inner), "size": len(inner),
               "annotations": top["annotations"]}
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [top]}).encode()
    members: list[tuple[str, bytes]] = [(f"blobs/sha256/{d.split(':')[1]}", b) for d, b in sorted(blobs.items())]
    members += [("index.json", index), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    if with_manifest_json:
        members.append(("manifest.json", json.dumps([{
            "Config": f"blobs/sha256/{cfg_d.split(':')[1]}", "RepoTags": [tag],
            "Layers": [f"blobs/sha256/{d['digest'].split(':')[1]}" for d in descs]}]).encode()))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("blobs")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return config
