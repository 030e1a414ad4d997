"""Entry points: audit a local image through the engine's save stream, or a `docker save` tarball."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from ..errors import EngineError, ImagegenError, UserInputError
from . import gzsize
from .fsview import apply_layers
from .packages import ownership
from .report import Analysis, analyze
from .scan import read_save_stream
from .stream import ChunkSource, CorruptStream, TruncatedStream

CHUNK = 1 << 20


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                return
            yield b


def _inspect(ref: str) -> dict:
    import docker.errors
    import requests.exceptions

    from .. import engine

    api = engine.api()
    try:
        return api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise UserInputError(f"image not found in the local engine: {ref}",
                             hint="`docker images` lists local images; no registry is consulted") from None
    except docker.errors.APIError as exc:
        if getattr(exc, "status_code", None) == 404:
            raise UserInputError(f"image not found in the local engine: {ref}") from None
        raise EngineError(f"engine refused to inspect {ref}: {_short(exc)}") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"Docker engine connection failed while inspecting {ref}: {_short(exc)}") from None


def scan_image(ref: str, *, compressed: bool = True, log: Callable[[str], None] | None = None):
    """(ImageScan, inspect dict, gzip mode) for a local image, read from its save stream."""
    import docker.errors
    import requests.exceptions

    from .. import engine

    info = _inspect(ref)
    diff_ids = (info.get("RootFS") or {}).get("Layers") or []
    cached = {d: gzsize.cache_get(d) for d in diff_ids} if compressed else {}
    cached_sizes = {v[0] for v in cached.values() if v}

    def want(tar_size: int) -> bool:
        return compressed and tar_size not in cached_sizes

    try:
        chunks = engine.api().get_image(info["Id"], chunk_size=CHUNK)
    except docker.errors.APIError as exc:
        raise EngineError(f"engine refused to save {ref}: {_short(exc)}") from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise EngineError(f"Docker engine connection failed while saving {ref}: {_short(exc)}") from None

    def on_error(exc: BaseException) -> Exception:
        return EngineError(f"the save stream of {ref} broke off: {_short(exc)}")

    src = ChunkSource(chunks, on_error=on_error)
    try:
        scan = read_save_stream(src, want_gzip=want, log=log)
    except TruncatedStream as exc:
        raise ImagegenError(f"the save stream of {ref} is truncated: {exc}") from None
    except CorruptStream as exc:
        raise ImagegenError(f"the save stream of {ref} is corrupt: {exc}") from None
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    mode = _settle_gzip(scan, compressed, cached)
    return scan, info, mode


def _settle_gzip(scan, compressed: bool, cached: dict) -> str:
    if not compressed:
        for ls in scan.layers:
            if not ls.blob_compressed:
                ls.gzip_size = None
        return "off"
    used_cache = computed = 0
    for ls in scan.layers:
        if ls.blob_compressed:
            continue
        if ls.gzip_size is None:
            hit = cached.get(ls.digest) or gzsize.cache_get(ls.digest)
            if hit and hit[0] == ls.tar_size:
                ls.gzip_size = hit[1]
                used_cache += 1
        else:
            computed += 1
            gzsize.cache_put(ls.digest, ls.tar_size, ls.gzip_size)
    if used_cache and computed:
        return "computed+cached"
    return "cached" if used_cache else "computed"


def scan_tarball(path: str, *, compressed: bool = True, log: Callable[[str], None] | None = None):
    if not os.path.isfile(path):
        raise UserInputError(f"no such file: {path}")
    src = ChunkSource(_file_chunks(path))
    try:
        scan = read_save_stream(src, want_gzip=lambda n: compressed, log=log)
    except TruncatedStream as exc:
        raise ImagegenError(f"{path} is truncated: {exc}") from None
    except CorruptStream as exc:
        raise ImagegenError(f"{path} is corrupt: {exc}") from None
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {_short(exc)}") from None
    return scan, {}, _settle_gzip(scan, compressed, {})


def audit(ref: str | None = None, *, tarball: str | None = None, compressed: bool = True, top: int = 20,
          log: Callable[[str], None] | None = None) -> Analysis:
    """Audit a local image (by reference) or a `docker save` tarball. Raises ImagegenError subclasses."""
    t0 = time.monotonic()
    if tarball:
        scan, info, mode = scan_tarball(tarball, compressed=compressed, log=log)
        name, image_id, engine_size = tarball, scan.manifest.get("Config", ""), None
        tags = scan.manifest.get("RepoTags") or []
        if tags:
            name = f"{tags[0]} ({tarball})"
    else:
        assert ref is not None
        scan, info, mode = scan_image(ref, compressed=compressed, log=log)
        name, image_id, engine_size = ref, info.get("Id", ""), info.get("Size")
    view = apply_layers(scan)
    own = ownership(view)
    a = analyze(scan, view, own, image=name, image_id=image_id, engine_size=engine_size, top=top, gzip_mode=mode)
    a.report["seconds"] = round(time.monotonic() - t0, 3)
    return a
