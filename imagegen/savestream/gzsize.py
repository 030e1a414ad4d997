"""Compressed size of a layer as a registry stores it: the gzip of the uncompressed layer tar.

What the number is, exactly: the layer tar is cut into 4 MiB blocks; each block is deflated at
level 6 (window 32 KiB) with the previous block's last 32 KiB as preset dictionary, ending with a
sync flush (the last one with a final flush); the block outputs are counted and 18 bytes of gzip
header and trailer added. Those concatenated blocks ARE one valid gzip member (tested: it
decompresses to the layer tar), as pigz writes it; blocks compress in parallel on every core.
The deflate engine is zlib-ng (2-3x faster than zlib at the same level; its level-6 output is
about 1 % larger than zlib's).

What it is not: byte-identical to what `docker push` uploads. The engine gzips with Go's
compress/gzip (level 6 by default, a third implementation of the same format), serially;
docs/audit.md gives the measured difference against blobs pushed to a local registry.

Results are cached by layer diff_id (content address of the uncompressed tar) under
$IMAGEGEN_CACHE/audit/gzip/ (`paths.audit_gzip_dir`), keyed also by METHOD, so base layers shared by a family of
images are compressed once, and a change of method recomputes.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .. import paths, settings

try:  # zlib-ng: the same deflate format and levels, 2-3x faster than zlib at level 6
    from zlib_ng import zlib_ng as _deflate
    ENGINE = "zlib-ng"
except ImportError:  # pragma: no cover - a declared dependency; zlib keeps the audit working
    _deflate = zlib
    ENGINE = "zlib"

LEVEL = 6
BLOCK = 4 << 20
WINDOW = 32 << 10
GZIP_OVERHEAD = 10 + 8  # header + CRC32/ISIZE trailer
METHOD = f"gzip-{LEVEL} {ENGINE} blocks {BLOCK >> 20}MiB+dict"


def _deflate_block(pieces: list, zdict: bytes, final: bool, level: int, keep: bool) -> tuple[int, bytes | None]:
    if zdict:
        c = _deflate.compressobj(level, _deflate.DEFLATED, -15, 8, _deflate.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = _deflate.compressobj(level, _deflate.DEFLATED, -15, 8, _deflate.Z_DEFAULT_STRATEGY)
    n = 0
    kept = [] if keep else None
    for p in pieces:
        out = c.compress(p)
        n += len(out)
        if kept is not None:
            kept.append(out)
    out = c.flush(_deflate.Z_FINISH if final else _deflate.Z_SYNC_FLUSH)
    n += len(out)
    if kept is not None:
        kept.append(out)
        return n, b"".join(kept)
    return n, None


def _tail(pieces: list, n: int) -> bytes:
    out = []
    need = n
    for p in reversed(pieces):
        if need <= 0:
            break
        if len(p) >= need:
            out.append(bytes(p[len(p) - need:]))
            need = 0
        else:
            out.append(bytes(p))
            need -= len(p)
    return b"".join(reversed(out))


class _Pool:
    _lock = threading.Lock()
    _pool: ThreadPoolExecutor | None = None

    @classmethod
    def get(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._pool is None:
                cls._pool = ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="imagegen-gzip")
            return cls._pool


def workers() -> int:
    return settings.AUDIT_GZIP_THREADS.value()


class GzipCounter:
    """Feed bytes in order (memoryviews are fine: they are not copied); `finish()` returns the size
    of the gzip stream. Memory: at most ~2 blocks per worker are in flight."""

    def __init__(self, *, level: int = LEVEL, block: int = BLOCK, keep_output: bool = False,
                 pool: ThreadPoolExecutor | None = None):
        self._level = level
        self._block = block
        self._keep = keep_output
        self._pool = pool or _Pool.get()
        self._pieces: list = []
        self._n = 0
        self._dict = b""
        self._futs: deque[Future] = deque()
        self._max_inflight = workers() + 1
        self._size = 0
        self._out: list[bytes] = []
        self.raw = 0

    def feed(self, data) -> None:
        self._pieces.append(data)
        self._n += len(data)
        self.raw += len(data)
        if self._n >= self._block:
            self._submit(final=False)

    __call__ = feed

    def _collect(self, fut: Future) -> None:
        n, out = fut.result()
        self._size += n
        if out is not None:
            self._out.append(out)

    def _submit(self, final: bool) -> None:
        pieces, self._pieces, self._n = self._pieces, [], 0
        zdict = self._dict
        if not final:
            self._dict = _tail(pieces, WINDOW)
        self._futs.append(self._pool.submit(_deflate_block, pieces, zdict, final, self._level, self._keep))
        while len(self._futs) > self._max_inflight:
            self._collect(self._futs.popleft())

    def finish(self) -> int:
        self._submit(final=True)
        while self._futs:
            self._collect(self._futs.popleft())
        return self._size + GZIP_OVERHEAD

    def gzip_bytes(self, crc: int) -> bytes:
        """The full gzip stream (only with keep_output=True; for tests)."""
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        return header + b"".join(self._out) + crc.to_bytes(4, "little") + (self.raw & 0xFFFFFFFF).to_bytes(4, "little")


def cache_dir() -> Path:
    return paths.audit_gzip_dir()


def cache_get(diff_id: str) -> tuple[int, int] | None:
    """(tar_size, gzip_size) cached for a diff_id, or None."""
    try:
        text = (cache_dir() / diff_id.replace(":", "_")).read_text()
        tar_size, gz_size, method = text.split(" ", 2)
        if method.strip() != METHOD:
            return None
        return int(tar_size), int(gz_size)
    except (OSError, ValueError):
        return None


def cache_put(diff_id: str, tar_size: int, gz_size: int) -> None:
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{diff_id.replace(':', '_')}.{os.getpid()}"
        tmp.write_text(f"{tar_size} {gz_size} {METHOD}\n")
        os.replace(tmp, d / diff_id.replace(":", "_"))
    except OSError:
        pass  # a cache is an optimisation
