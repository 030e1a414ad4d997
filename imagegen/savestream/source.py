"""Where a save stream comes from: the local engine (`GET /images/{id}/get`, streamed) or a
`docker save` / OCI-layout tarball on disk. Both end in one :func:`read_save_stream` pass and
one gzip cache (by layer diff_id, :mod:`imagegen.savestream.gzsize`).

Errors: UserInputError (exit 2: no such image or file, an unsupported media type), EngineError
(exit 3: engine down or refusing), ImagegenError (exit 1: a truncated or corrupt stream).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from ..errors import EngineError, ImagegenError, UserInputError
from . import gzsize
from .layers import ImageScan, read_save_stream
from .prefetch import prefetch
from .tar import ChunkSource, CorruptStream, TruncatedStream, UnsupportedStream

CHUNK = 1 << 20


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


@contextlib.contextmanager
def _stream_errors(what: str) -> Iterator[None]:
    """The reader's stream errors as imagegen's, each naming `what` (an image's save stream, a file)."""
    try:
        yield
    except TruncatedStream as exc:
        raise ImagegenError(f"{what} is truncated: {exc}") from None
    except CorruptStream as exc:
        raise ImagegenError(f"{what} is corrupt: {exc}") from None
    except UnsupportedStream as exc:
        raise UserInputError(f"{what} is unsupported: {exc}") from None


def file_chunks(path: str, chunk: int = CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return
            yield b


def inspect(ref: str) -> dict:
    """The engine's inspect dict for a local image (:func:`imagegen.engine.inspect_image`): UserInputError
    if absent or not a reference, EngineError if the engine fails."""
    from .. import engine

    return engine.inspect_image(ref)


def read_image(ref: str, *, compressed: bool = True, log: Callable[[str], None] | None = None,
               info: dict | None = None, strong: bool = False) -> tuple[ImageScan, dict, str]:
    """(ImageScan, inspect dict, gzip mode) for a local image, read from its save stream.

    compressed: compute (or take from the cache) each uncompressed layer's gzip -6 size.
    gzip mode: "off" | "computed" | "cached" | "computed+cached". strong: full sha256 per file.
    The engine wrote the config from these very layers, so their diff_ids are not hashed again unless
    `strong` (verify: the layers are checked against the diff_ids too)."""
    import docker.errors
    import requests.exceptions

    from .. import engine

    info = info or inspect(ref)
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

    src = ChunkSource(prefetch(chunks), on_error=on_error)
    try:
        with _stream_errors(f"the save stream of {ref}"):
            # the engine wrote the config from these very layers: their diff_ids are not hashed again
            scan = read_save_stream(src, want_gzip=want, log=log, verify=strong, strong=strong)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    mode = settle_gzip(scan, compressed, cached)
    return scan, info, mode


def settle_gzip(scan: ImageScan, compressed: bool, cached: dict) -> str:
    """Fill each layer's gzip_size from the cache where it was not computed; store new ones."""
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


def read_tarball(path: str, *, compressed: bool = True, log: Callable[[str], None] | None = None,
                 strong: bool = False) -> tuple[ImageScan, dict, str]:
    """(ImageScan, {}, gzip mode) for a `docker save` tarball or an OCI-layout tarball."""
    if not os.path.isfile(path):
        raise UserInputError(f"no such file: {path}")
    src = ChunkSource(prefetch(file_chunks(path)))
    try:
        with _stream_errors(path):
            scan = read_save_stream(src, want_gzip=lambda n: compressed, log=log, strong=strong)
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {_short(exc)}") from None
    return scan, {}, settle_gzip(scan, compressed, {})
