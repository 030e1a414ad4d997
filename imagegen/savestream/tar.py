"""A forward-only tar reader for `docker save` streams and the layer tars inside them.

Why not `tarfile` in stream mode: its `_Stream` copies its whole read buffer on every
512-byte header read, which is quadratic-ish on layers with many small files. This reader
hands out zero-copy memoryview slices of the chunks the Docker SDK yields, never holds
more than one chunk plus the current header, and reports truncation and corruption as
clear errors. Header parsing itself is `tarfile.TarInfo.frombuf` (checksums, base-256
numbers, ustar prefixes); PAX and GNU long-name records are handled here.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

BLOCK = 512
_ZERO = bytes(BLOCK)
_DATA_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)


def tee(pieces: Iterable, sinks: list[Callable[[memoryview], object]]) -> Iterator:
    """Pass pieces through, giving each to every sink first (layer digest, compressed-size counter)."""
    for mv in pieces:
        for s in sinks:
            s(mv)
        yield mv


class StreamError(Exception):
    """Base for stream problems; turned into ImagegenError by the caller (which knows the image)."""


class TruncatedStream(StreamError):
    pass


class CorruptStream(StreamError):
    pass


class UnsupportedStream(StreamError):
    """A valid input in a format this reader does not read (e.g. an unknown layer media type).
    Never reported as corruption: the message names the layer, the type and a remedy."""


class ChunkSource:
    """Bytes from an iterator of chunks, read forward only. `pos` counts bytes consumed."""

    def __init__(self, chunks: Iterable[bytes], *, on_error: Callable[[BaseException], Exception] | None = None):
        self._it = iter(chunks)
        self._cur: bytes = b""
        self._off = 0
        self.pos = 0
        self._on_error = on_error

    def _fill(self) -> bool:
        while True:
            try:
                chunk = next(self._it)
            except StopIteration:
                return False
            except Exception as exc:  # transport errors from the SDK
                if self._on_error is not None:
                    raise self._on_error(exc) from None
                raise
            if chunk:
                self._cur = chunk
                self._off = 0
                return True

    def pieces(self, n: int) -> Iterator[memoryview]:
        """Yield zero-copy slices totalling exactly n bytes; TruncatedStream if the source ends first."""
        if 0 < n <= len(self._cur) - self._off:  # fast path: inside the current chunk
            mv = memoryview(self._cur)[self._off:self._off + n]
            self._off += n
            self.pos += n
            yield mv
            return
        while n > 0:
            avail = len(self._cur) - self._off
            if avail <= 0:
                if not self._fill():
                    raise TruncatedStream(f"stream ended at byte {self.pos}, {n} bytes short")
                avail = len(self._cur)
            take = avail if avail < n else n
            mv = memoryview(self._cur)[self._off:self._off + take]
            self._off += take
            self.pos += take
            n -= take
            yield mv

    def read_exact(self, n: int) -> bytes:
        if len(self._cur) - self._off >= n:  # fast path: within the current chunk
            b = self._cur[self._off:self._off + n]
            self._off += n
            self.pos += n
            return b if type(b) is bytes else bytes(b)
        return b"".join(self.pieces(n))

    def read_upto(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the stream)."""
        out = []
        got = 0
        while got < n:
            avail = len(self._cur) - self._off
            if avail <= 0:
                if not self._fill():
                    break
                continue
            take = min(avail, n - got)
            out.append(bytes(self._cur[self._off:self._off + take]))
            self._off += take
            self.pos += take
            got += take
        return b"".join(out)

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass

    def drain(self) -> int:
        """Consume everything left; return the byte count."""
        n = len(self._cur) - self._off
        self.pos += n
        self._cur, self._off = b"", 0
        while self._fill():
            self.pos += len(self._cur)
            n += len(self._cur)
            self._cur, self._off = b"", 0
        return n


@dataclass(slots=True)
class Member:
    name: str            # normalised: no leading "./" or "/", no trailing "/"
    type: bytes
    size: int            # data bytes (0 for links, dirs, devices)
    linkname: str
    mode: int
    offset: int          # byte offset of the header in its archive
    uid: int = 0
    gid: int = 0
    mtime: int = 0       # seconds since the epoch (PAX `mtime` truncated)
    xattrs: tuple[tuple[str, str], ...] = ()  # PAX SCHILY.xattr.* records, sorted (e.g. security.capability)

    @property
    def isreg(self) -> bool:
        return self.type in _DATA_TYPES

    @property
    def isdir(self) -> bool:
        return self.type == tarfile.DIRTYPE

    @property
    def issym(self) -> bool:
        return self.type == tarfile.SYMTYPE

    @property
    def islnk(self) -> bool:
        return self.type == tarfile.LNKTYPE


def normalize(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/") if name not in ("", ".", "/") else ""


class _Hdr:
    """The fields of one tar header this reader uses (tarfile.TarInfo's names)."""

    __slots__ = ("name", "mode", "uid", "gid", "size", "type", "linkname", "mtime")


def _octal(field: bytes) -> int:
    s = field.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _header(hdr: bytes, start: int):
    """Parse a 512-byte header: a fast path for plain octal ustar/GNU/v7 headers, and
    `tarfile.TarInfo.frombuf` (checksums, base-256 numbers, sparse) for anything else."""
    try:
        if not (hdr[124] & 0x80 or hdr[100] & 0x80 or hdr[108] & 0x80 or hdr[116] & 0x80) and hdr[156:157] != b"S":
            chksum = _octal(hdr[148:156])
            u = sum(hdr) - sum(hdr[148:156]) + 256
            if chksum == u:
                h = _Hdr()
                name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                t = hdr[156:157]
                h.mode = _octal(hdr[100:108])
                h.uid = _octal(hdr[108:116])
                h.gid = _octal(hdr[116:124])
                h.size = _octal(hdr[124:136])
                h.mtime = _octal(hdr[136:148])
                h.linkname = hdr[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if t == tarfile.AREGTYPE and name.endswith("/"):
                    t = tarfile.DIRTYPE
                if t == tarfile.DIRTYPE:
                    name = name.rstrip("/")
                if hdr[345] and t not in tarfile.GNU_TYPES:
                    prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if prefix:
                        name = prefix + "/" + name
                h.name = name
                h.type = t
                return h
        return tarfile.TarInfo.frombuf(hdr, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise CorruptStream(f"invalid tar header at byte {start} ({exc})") from None
    except ValueError as exc:
        raise CorruptStream(f"invalid tar header at byte {start} ({exc})") from None


def _num(pax: dict[str, str], key: str, default: int) -> int:
    try:
        return int(pax[key]) if key in pax else default
    except ValueError:
        return default


def _mtime(pax: dict[str, str], default) -> int:
    try:
        return int(float(pax["mtime"])) if "mtime" in pax else int(default)
    except ValueError:
        return int(default)


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    n = len(data)
    while pos < n:
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise CorruptStream("malformed PAX header record") from None
        if length <= 0:
            raise CorruptStream("malformed PAX header record")
        rec = data[sp + 1:pos + length]
        pos += length
        if rec.endswith(b"\n"):
            rec = rec[:-1]
        key, eq, value = rec.partition(b"=")
        if not eq:
            continue
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return out


def iter_tar(src: ChunkSource) -> Iterator[tuple[Member, ChunkSource]]:
    """Members of a tar read from `src`. For each member the caller may read up to `size` bytes
    from the yielded source; whatever it leaves (and the block padding) is skipped here."""
    glob: dict[str, str] = {}
    pending: dict[str, str] = {}
    while True:
        start = src.pos
        try:
            hdr = src.read_exact(BLOCK)
        except TruncatedStream:
            raise TruncatedStream(f"archive ends inside a header at byte {start}") from None
        if hdr == _ZERO:
            return  # end of archive (the second zero block and padding are the caller's to drain)
        ti = _header(hdr, start)
        if ti.type in _META_TYPES:
            padded = -(-ti.size // BLOCK) * BLOCK
            data = src.read_exact(padded)[:ti.size]
            if ti.type == tarfile.GNUTYPE_LONGNAME:
                pending["path"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif ti.type == tarfile.GNUTYPE_LONGLINK:
                pending["linkpath"] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif ti.type == tarfile.XGLTYPE:
                glob.update(_parse_pax(data))
            else:
                pending.update(_parse_pax(data))
            continue
        pax = {**glob, **pending} if glob else pending
        name = pax.get("path", ti.name)
        linkname = pax.get("linkpath", ti.linkname)
        size = ti.size
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise CorruptStream(f"invalid PAX size at byte {start}") from None
        pending = {}
        has_data = ti.type in _DATA_TYPES or ti.type not in tarfile.SUPPORTED_TYPES
        data_len = size if has_data else 0
        member = Member(normalize(name), ti.type, data_len if ti.type in _DATA_TYPES else 0,
                        linkname, ti.mode, start, _num(pax, "uid", ti.uid), _num(pax, "gid", ti.gid),
                        _mtime(pax, ti.mtime),
                        tuple(sorted((k[13:], v) for k, v in pax.items() if k.startswith("SCHILY.xattr.")))
                        if pax else ())
        before = src.pos
        yield member, src
        used = src.pos - before
        if used > data_len:
            raise CorruptStream("reader consumed past the member")
        rest = data_len - used + (-data_len % BLOCK)
        try:
            src.skip(rest)
        except TruncatedStream:
            raise TruncatedStream(f"archive ends inside member {member.name!r}") from None
