"""Writing `docker load` input (the docker-archive layout of `docker save`) as a stream, and loading it.

    config_bytes(config) -> bytes           canonical JSON: the image ID is sha256 of exactly these bytes
    stream(config, layers) -> chunks        manifest.json, the config and one `<diff-id hex>/layer.tar` each
    load(chunks) -> image ID                POST /images/load (the engine's `docker load`)

Used to give images an identity that comes from their contents alone: a base from its rootfs tarball
(`docker import` stamps the clock into `created`, so two imports of one tarball get two IDs), and an
image whose config was rewritten (reproduce.py). The layout: moby's image/tarexport (manifest.json's
`Config`, `RepoTags`, `Layers`), which both image stores load: the graph-driver store keeps the config
bytes, so the image ID is their sha256; the containerd store (Docker 29's default) wraps them in a
manifest whose digest is the ID, and the config digest is still theirs.

A layer whose diff_id the engine already has is not unpacked again on the graph-driver store (moby
checks the chain ID first), but its bytes are still read from the stream: `stream(..., skip=...)`
leaves them out, which only the graph-driver store accepts.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .errors import EngineError

CHUNK = 1 << 20


def config_bytes(config: dict) -> bytes:
    """The canonical bytes of an image config (sorted keys, no spaces)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def config_digest(config: dict) -> str:
    return "sha256:" + hashlib.sha256(config_bytes(config)).hexdigest()


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer tar: `size` bytes that `chunks()` yields, whose sha256 is `diff_id`."""

    diff_id: str
    size: int
    chunks: Callable[[], Iterable[bytes]]

    @classmethod
    def from_file(cls, path, diff_id: str | None = None) -> "Layer":
        """A layer from a tar file; its diff_id computed when not given (one read of the file)."""
        import os

        size = os.path.getsize(path)
        if diff_id is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while b := f.read(CHUNK):
                    h.update(b)
            diff_id = "sha256:" + h.hexdigest()

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while b := f.read(CHUNK):
                    yield b

        return cls(diff_id, size, chunks)


def _header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _member(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data
    if len(data) % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE)


def stream(config: dict, layers: list[Layer], *, tags: Iterable[str] = (), skip: Iterable[str] = ()
           ) -> Iterator[bytes]:
    """The docker-archive bytes for one image: `config` (whose `rootfs.diff_ids` must be the layers'
    diff_ids, in order), the layers (bottom first), `tags` (RepoTags; none: loaded untagged). The layers
    in `skip` (diff_ids) are named in manifest.json but not written (graph-driver store only, see the
    module docstring). Raises ValueError when a layer yields another size than it declared."""
    ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if ids != [layer.diff_id for layer in layers]:
        raise ValueError("the config's rootfs.diff_ids are not the layers' diff_ids")
    skip = set(skip)
    names = []
    for layer in layers:
        name = f"{layer.diff_id.split(':', 1)[1]}/layer.tar"
        names.append(name)
        if layer.diff_id in skip:
            continue
        yield _header(name, layer.size)
        n = 0
        for c in layer.chunks():
            n += len(c)
            yield c
        if n != layer.size:
            raise ValueError(f"layer {layer.diff_id}: {n} bytes, declared {layer.size}")
        if n % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - n % tarfile.BLOCKSIZE)
    cfg = config_bytes(config)
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    yield from _member(cfg_name, cfg)
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": list(tags) or None, "Layers": names}]).encode()
    yield from _member("manifest.json", manifest)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def load(chunks: Iterable[bytes], *, what: str = "image") -> str:
    """`docker load` the stream; returns the loaded image's ID ("sha256:<hex>"). Raises EngineError
    (one line) when the engine refuses it or names no image."""
    import docker.errors
    import requests

    from . import engine

    image_id = None
    seen: list[str] = []
    try:
        for msg in engine.api().load_image(_bounded(chunks), quiet=True):
            if not isinstance(msg, dict):
                continue
            if msg.get("error") or msg.get("errorDetail"):
                detail = msg.get("error") or (msg.get("errorDetail") or {}).get("message")
                raise EngineError(f"docker load of {what} failed: {str(detail).splitlines()[0][:200]}")
            text = str(msg.get("stream", "")).strip()
            seen.append(text)
            for prefix in ("Loaded image ID: ", "Loaded image: "):
                if text.startswith(prefix):
                    image_id = text[len(prefix):].strip()
    except docker.errors.APIError as exc:
        raise EngineError(f"docker load of {what} failed: {str(exc.explanation or exc).splitlines()[0][:200]}") \
            from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"docker load of {what} failed: {str(exc).splitlines()[0][:200]}") from None
    if not image_id:
        raise EngineError(f"docker load of {what} named no image: {' '.join(seen)[:200]!r}")
    if not image_id.startswith("sha256:"):  # "Loaded image: name:tag" (a tagged load)
        image_id = engine.api().inspect_image(image_id)["Id"]
    return image_id


def _bounded(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Coalesce small pieces (tar headers) into writes of about CHUNK bytes."""
    buf = io.BytesIO()
    for c in chunks:
        buf.write(c)
        if buf.tell() >= CHUNK:
            yield buf.getvalue()
            buf = io.BytesIO()
    if buf.tell():
        yield buf.getvalue()
