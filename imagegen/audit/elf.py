"""Section sizes of ELF files seen in a stream: `.debug_*` (what `strip` removes), `.symtab`/
`.strtab`, and `.nv_fatbin` (CUDA kernels), read with pyelftools.

pyelftools needs a seekable file, but only ever reads the ELF header, the section header table
and the section-name string table to list sections and their sizes. Linkers put the last two at
the end of the file, so while a file streams past we keep its first 64 KiB and its last 1 MiB and
give pyelftools a sparse view of just those. If the section header table is not in that tail (rare
layouts, known from e_shoff in the first bytes), the file is spooled to a temporary file on disk,
read, and deleted at once. Memory stays bounded either way.
"""

from __future__ import annotations

import io
import struct
import tempfile
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.common.utils import parse_cstring_from_stream, struct_parse
from elftools.elf.elffile import ELFFile

HEAD = 64 << 10
TAIL = 1 << 20
MAGIC = b"\x7fELF"


@dataclass(slots=True)
class ElfInfo:
    debug: int = 0      # .debug_* and .zdebug_* sections
    symbols: int = 0    # .symtab + .strtab (also removed by strip)
    fatbin: int = 0     # .nv_fatbin (CUDA kernels)
    ok: bool = True


class _OutOfView(Exception):
    pass


class _SparseView(io.RawIOBase):
    """A read-only, seekable file of `size` bytes of which only head and tail are known."""

    def __init__(self, size: int, head: bytes, tail: bytes):
        self._size = size
        self._head = head
        self._tail = tail
        self._tail_at = size - len(tail)
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += self._size
        self._pos = max(0, pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        end = self._size if n is None or n < 0 else min(self._size, start + n)
        if start >= end:
            return b""
        if end <= len(self._head):
            out = self._head[start:end]
        elif start >= self._tail_at:
            out = self._tail[start - self._tail_at:end - self._tail_at]
        else:
            raise _OutOfView(start)
        self._pos = end
        return out

    def readinto(self, b) -> int:  # pragma: no cover - pyelftools uses read()
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _sections(f) -> ElfInfo:
    """Section names and sizes from the section header table only. (ELFFile.iter_sections would
    build section objects, and some of those, e.g. GNU hash tables, read section contents.)"""
    info = ElfInfo()
    elf = ELFFile(f)
    shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
    shdr = elf.structs.Elf_Shdr
    n = elf.num_sections()
    strndx = elf.get_shstrndx()
    names_at = struct_parse(shdr, f, shoff + strndx * entsize)["sh_offset"]
    for i in range(n):
        h = struct_parse(shdr, f, shoff + i * entsize)
        if h["sh_type"] == "SHT_NOBITS":
            continue
        raw = parse_cstring_from_stream(f, names_at + h["sh_name"]) or b""
        name = raw.decode("latin-1")
        size = h["sh_size"]
        if name.startswith(".debug") or name.startswith(".zdebug"):
            info.debug += size
        elif name in (".symtab", ".strtab"):
            info.symbols += size
        elif name == ".nv_fatbin":
            info.fatbin += size
    return info


def _shoff(head: bytes) -> tuple[int, int] | None:
    """(e_shoff, end of the section header table) from the ELF header, or None."""
    if len(head) < 64 or head[:4] != MAGIC:
        return None
    cls, data = head[4], head[5]
    end = "<" if data == 1 else ">"
    try:
        if cls == 2:
            shoff = struct.unpack_from(end + "Q", head, 0x28)[0]
            shentsize, shnum = struct.unpack_from(end + "HH", head, 0x3A)
        elif cls == 1:
            shoff = struct.unpack_from(end + "I", head, 0x20)[0]
            shentsize, shnum = struct.unpack_from(end + "HH", head, 0x2E)
        else:
            return None
    except struct.error:
        return None
    return shoff, shoff + shentsize * shnum


class ElfProbe:
    """Feed a file's bytes in order; `result()` gives its ElfInfo (or None if it is not ELF)."""

    def __init__(self, size: int):
        self.size = size
        self._head = bytearray()
        self._tail: list = []
        self._tail_len = 0
        self._pos = 0
        self._spool = None
        self._decided = False
        self._is_elf = False

    def _decide(self) -> None:
        self._decided = True
        head = bytes(self._head[:64])
        self._is_elf = head[:4] == MAGIC
        if not self._is_elf:
            return
        sh = _shoff(head)
        if sh is None:
            return
        shoff, _ = sh
        # section header table outside the kept head/tail: spool the whole file to disk
        if shoff < self.size - TAIL and shoff + 1 > HEAD:
            self._spool = tempfile.TemporaryFile(prefix="imagegen-audit-elf-")
            self._spool.write(self._head)

    def feed(self, mv) -> None:
        if self._decided and not self._is_elf:
            return
        n = len(mv)
        if self._spool is not None:
            self._spool.write(mv)
            self._pos += n
            return
        if len(self._head) < HEAD:
            take = min(HEAD - len(self._head), n)
            self._head += mv[:take]
            if not self._decided and len(self._head) >= min(64, self.size):
                self._decide()
                if not self._is_elf:
                    return
                if self._spool is not None:  # it holds the head already
                    if take < n:
                        self._spool.write(mv[take:])
                    self._pos += n
                    return
        self._pos += n
        if self._pos > self.size - TAIL:
            self._tail.append(bytes(mv))
            self._tail_len += n
            while self._tail and self._tail_len - len(self._tail[0]) >= TAIL:
                self._tail_len -= len(self._tail.pop(0))

    def result(self) -> ElfInfo | None:
        if not self._decided:
            self._decide()
        if not self._is_elf:
            return None
        try:
            if self._spool is not None:
                try:
                    self._spool.seek(0)
                    return _sections(self._spool)
                finally:
                    self._spool.close()
            tail = b"".join(self._tail)
            tail = tail[len(tail) - min(len(tail), TAIL, self.size):]
            return _sections(_SparseView(self.size, bytes(self._head), tail))
        except (ELFError, _OutOfView, struct.error, ValueError, KeyError, AttributeError, IndexError, OSError,
                Exception):  # noqa: BLE001 - a broken ELF must never stop an audit
            return ElfInfo(ok=False)
