"""The one host-side ELF reader (pyelftools), for the audit, the image tests' policy, the closure
and the fat-binary reader.

Two ways in:

- :func:`read` opens a path, bytes or a seekable binary file and gives :class:`ElfFacts`: type,
  machine, class, SONAME, NEEDED, RPATH/RUNPATH, section sizes, `stripped`, `patchelf_touched`;
  :func:`read_dynamic` is its dynamic-section part on a lazily read stream (zip members);
- :class:`ElfProbe` is fed a file's bytes as they stream past (the `docker save` reader) and gives
  :class:`ElfInfo`: section-size summary (`.debug_*`, `.symtab`/`.strtab`, `.nv_fatbin`), whether a
  `.symtab` is left, and whether the layout is the one patchelf leaves. The dynamic section is not
  read there (it sits in the middle of the file and would need a second pass).

Streamed section reading:

pyelftools needs a seekable file, but only ever reads the ELF header, the section header table
and the section-name string table to list sections and their sizes. Linkers put the last two at
the end of the file, so while a file streams past we keep its first 64 KiB and its last 1 MiB and
give pyelftools a sparse view of just those. If the section header table is not in that tail (rare
layouts, known from e_shoff in the first bytes), the file is spooled to a temporary file on disk,
read, and deleted at once. Memory stays bounded either way.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.common.utils import parse_cstring_from_stream, struct_parse
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

HEAD = 64 << 10
TAIL = 1 << 20
SPOOL_MAX = 64 << 20   # larger files with the section headers mid-file keep a window instead
WINDOW = 1 << 20       # bytes kept before such a section header table (.shstrtab sits there)
MAGIC = b"\x7fELF"


@dataclass(slots=True)
class ElfInfo:
    """Section summary of one ELF file (bytes)."""

    debug: int = 0      # .debug_* and .zdebug_* sections
    symbols: int = 0    # .symtab + .strtab (also removed by strip)
    fatbin: int = 0     # .nv_fatbin (CUDA kernels)
    ok: bool = True     # False: the section headers could not be read
    symtab: bool = False          # a SHT_SYMTAB section is left (not stripped)
    patchelf_layout: bool = False  # .dynstr sits after .text: patchelf moved the dynamic strings

    @property
    def stripped(self) -> bool:
        return self.ok and not self.symtab


class _OutOfView(Exception):
    pass


class _SparseView(io.RawIOBase):
    """A read-only, seekable file of `size` bytes of which only some ranges are known:
    `ranges` is a list of (offset, bytes). Reading elsewhere raises _OutOfView."""

    def __init__(self, size: int, ranges: list[tuple[int, bytes]]):
        self._size = size
        self._ranges = [(at, data) for at, data in ranges if data]
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
        for at, data in self._ranges:
            if at <= start and end <= at + len(data):
                self._pos = end
                return data[start - at:end - at]
        raise _OutOfView(start)

    def readinto(self, b) -> int:  # pragma: no cover - pyelftools uses read()
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _sections(f) -> ElfInfo:
    """Section names and sizes from the section header table only. (ELFFile.iter_sections would
    build section objects, and some of those, e.g. GNU hash tables, read section contents.)"""
    return _summarise(section_table(f))


_SHT = {2: "SHT_SYMTAB", 8: "SHT_NOBITS", 6: "SHT_DYNAMIC", 11: "SHT_DYNSYM", 3: "SHT_STRTAB", 1: "SHT_PROGBITS"}


def section_table(f) -> list[tuple[str, str, int, int]]:
    """(name, sh_type, file offset, size) of every section, from the section header table and
    the section-name string table only (sh_type as pyelftools names it for the types used here,
    else "SHT_<number>").

    The table is a flat array of fixed records, so it is read with `struct` (a pyelftools
    ELFFile costs ~10 ms per file to set up, which dominated the audit of images with thousands
    of libraries); pyelftools reads it when that fast path meets something unusual."""
    try:
        return _section_table_fast(f)
    except (_OutOfView, OSError):
        raise
    except Exception:  # noqa: BLE001 - unusual layouts: let pyelftools decide
        return _section_table_pyelftools(f)


def _section_table_fast(f) -> list[tuple[str, str, int, int]]:
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 52 or ident[:4] != MAGIC or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise ValueError("not a plain ELF header")
    end = "<" if ident[5] == 1 else ">"
    if ident[4] == 2:
        shoff, = struct.unpack_from(end + "Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", ident, 0x3A)
        fmt, want = end + "IIQQQQIIQQ", 64
    else:
        shoff, = struct.unpack_from(end + "I", ident, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", ident, 0x2E)
        fmt, want = end + "IIIIIIIIII", 40
    if shoff == 0:
        return []
    if shentsize != want or shnum == 0 or shstrndx >= 0xFF00:
        raise ValueError("extended section numbering")
    f.seek(shoff)
    raw = f.read(shnum * shentsize)
    if len(raw) != shnum * shentsize:
        raise ValueError("section header table past the end")
    rows = [struct.unpack_from(fmt, raw, i * shentsize) for i in range(shnum)]
    # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, ...)
    str_off, str_size = rows[shstrndx][4], rows[shstrndx][5]
    f.seek(str_off)
    names = f.read(str_size)
    out = []
    for r in rows:
        i = r[0]
        j = names.find(b"\0", i)
        name = names[i:j if j >= 0 else len(names)].decode("latin-1")
        out.append((name, _SHT.get(r[1], f"SHT_{r[1]}"), r[4], r[5]))
    return out


def _section_table_pyelftools(f) -> list[tuple[str, str, int, int]]:
    elf = ELFFile(f)
    shoff, entsize = elf["e_shoff"], elf["e_shentsize"]
    shdr = elf.structs.Elf_Shdr
    n = elf.num_sections()
    strndx = elf.get_shstrndx()
    names_at = struct_parse(shdr, f, shoff + strndx * entsize)["sh_offset"]
    out = []
    for i in range(n):
        h = struct_parse(shdr, f, shoff + i * entsize)
        raw = parse_cstring_from_stream(f, names_at + h["sh_name"]) or b""
        out.append((raw.decode("latin-1"), h["sh_type"], h["sh_offset"], h["sh_size"]))
    return out


def _summarise(table: list[tuple[str, str, int, int]]) -> ElfInfo:
    info = ElfInfo()
    at: dict[str, int] = {}
    for name, sh_type, off, size in table:
        if sh_type == "SHT_SYMTAB":
            info.symtab = True
        if sh_type == "SHT_NOBITS":
            continue
        at.setdefault(name, off)
        if name.startswith(".debug") or name.startswith(".zdebug"):
            info.debug += size
        elif name in (".symtab", ".strtab"):
            info.symbols += size
        elif name == ".nv_fatbin":
            info.fatbin += size
    if ".dynstr" in at and ".text" in at and at[".dynstr"] > at[".text"]:
        info.patchelf_layout = True
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
        self._win: bytearray | None = None
        self._win_range = (0, 0)
        self._win_at = -1

    def _decide(self) -> None:
        self._decided = True
        head = bytes(self._head[:64])
        self._is_elf = head[:4] == MAGIC
        if not self._is_elf:
            return
        sh = _shoff(head)
        if sh is None:
            return
        shoff, shend = sh
        # section header table outside the kept head/tail (patchelf's layout, e.g. auditwheel):
        # a small file is spooled to disk whole; a large one keeps a window ending at the table
        if shoff < self.size - TAIL and shoff + 1 > HEAD:
            if self.size <= SPOOL_MAX:
                self._spool = tempfile.TemporaryFile(prefix="imagegen-audit-elf-")
                self._spool.write(self._head)
            else:
                self._win = bytearray()
                self._win_range = (max(0, shoff - WINDOW), min(self.size, shend))

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
        start = self._pos
        self._pos += n
        if self._win is not None:
            a, b = max(start, self._win_range[0]), min(self._pos, self._win_range[1])
            if a < b:
                if self._win_at < 0:
                    self._win_at = a
                self._win += mv[a - start:b - start]
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
            ranges = [(0, bytes(self._head)), (self.size - len(tail), tail)]
            if self._win is not None and self._win_at >= 0:
                ranges.append((self._win_at, bytes(self._win)))
            return _sections(_SparseView(self.size, ranges))
        except (ELFError, _OutOfView, struct.error, ValueError, KeyError, AttributeError, IndexError, OSError,
                Exception):  # noqa: BLE001 - a broken ELF must never stop an audit
            return ElfInfo(ok=False)


# --- whole files: path, bytes or a seekable stream ---------------------------------------------


@dataclass(frozen=True)
class Dynamic:
    """The dynamic-linking facts of one ELF file."""

    type: str                      # ET_DYN | ET_EXEC
    machine: str                   # EM_X86_64, ... (pyelftools names)
    elfclass: int                  # 32 | 64
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]         # DT_RPATH entries, split on ':'
    runpath: tuple[str, ...]       # DT_RUNPATH entries


@dataclass(frozen=True)
class ElfFacts:
    """Everything :func:`read` learns about one ELF file."""

    dynamic: Dynamic | None        # None for relocatable objects and files without PT_DYNAMIC tags
    sections: dict[str, int] = field(default_factory=dict)   # name -> size in the file (bytes)
    info: ElfInfo = field(default_factory=ElfInfo)

    @property
    def soname(self) -> str | None:
        return self.dynamic.soname if self.dynamic else None

    @property
    def needed(self) -> tuple[str, ...]:
        return self.dynamic.needed if self.dynamic else ()

    @property
    def rpath(self) -> tuple[str, ...]:
        return self.dynamic.rpath if self.dynamic else ()

    @property
    def runpath(self) -> tuple[str, ...]:
        return self.dynamic.runpath if self.dynamic else ()

    @property
    def stripped(self) -> bool:
        """No `.symtab` section is left (what `strip --strip-unneeded` removes)."""
        return self.info.stripped

    @property
    def patchelf_touched(self) -> bool:
        return patchelf_touched(self.rpath + self.runpath, self.info)


def patchelf_touched(search_paths: tuple[str, ...] | list[str], info: ElfInfo | None = None) -> bool:
    """Whether patchelf (auditwheel repair) rewrote this file: an RPATH/RUNPATH entry that points
    into a `*.libs` directory, or the layout patchelf leaves (`.dynstr` moved behind `.text`).
    Stripping such files corrupts them (pypa/manylinux#119, numpy#20101)."""
    for p in search_paths:
        if any(part.endswith(".libs") for part in p.split("/")):
            return True
    return bool(info is not None and info.patchelf_layout)


def is_elf(data: bytes) -> bool:
    return data[:4] == MAGIC


def read(src) -> ElfFacts | None:
    """ELF facts of a path (str/PathLike), bytes, or a seekable binary file; None if not ELF.
    Raises ELFError-free: a malformed ELF gives ElfFacts with dynamic None and info.ok False."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _read_stream(io.BytesIO(bytes(src)))
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as fh:
            return _read_stream(fh)
    return _read_stream(src)


def _read_stream(f) -> ElfFacts | None:
    f.seek(0)
    if f.read(4) != MAGIC:
        return None
    f.seek(0)
    dyn = read_dynamic(f)
    try:
        table = section_table(f)
    except Exception:  # noqa: BLE001 - broken section headers: the dynamic facts may still hold
        return ElfFacts(dyn if isinstance(dyn, Dynamic) else None, {}, ElfInfo(ok=False))
    sections = {}
    for name, sh_type, _off, size in table:
        if name and sh_type != "SHT_NOBITS":
            sections[name] = sections.get(name, 0) + size
    return ElfFacts(dyn if isinstance(dyn, Dynamic) else None, sections, _summarise(table))


def read_dynamic(stream) -> Dynamic | str:
    """The dynamic section of one ELF file, or the reason it has none usable.

    Reads in the order a forward-only stream likes: ELF header, program headers, the PT_DYNAMIC
    bytes (one read), then the wanted strings by ascending offset (`stream` needs seek/read/tell)."""
    try:
        elf = ELFFile(stream)
        etype, machine, elfclass = elf["e_type"], elf["e_machine"], elf.elfclass
        if etype not in ("ET_DYN", "ET_EXEC"):
            return f"not loadable ({etype})"
        phdrs = [
            struct_parse(elf.structs.Elf_Phdr, stream, stream_pos=elf["e_phoff"] + i * elf["e_phentsize"])
            for i in range(elf["e_phnum"])
        ]
        loads = [p for p in phdrs if p["p_type"] == "PT_LOAD"]
        dyn = next((p for p in phdrs if p["p_type"] == "PT_DYNAMIC"), None)
        tags: list[tuple[str, int]] = []
        if dyn is not None and dyn["p_filesz"]:
            size = elf.structs.Elf_Dyn.sizeof()
            stream.seek(dyn["p_offset"])
            raw = stream.read(dyn["p_filesz"])  # one forward read; small (a few hundred bytes)
            for i in range(len(raw) // size):
                t = elf.structs.Elf_Dyn.parse(raw[i * size: (i + 1) * size])
                if t["d_tag"] == "DT_NULL":
                    break
                tags.append((t["d_tag"], t["d_val"]))
        strtab = next((v for k, v in tags if k == "DT_STRTAB"), None)
        wanted = [(k, v) for k, v in tags if k in ("DT_NEEDED", "DT_SONAME", "DT_RPATH", "DT_RUNPATH")]
        strings: dict[int, str] = {}
        if wanted:
            if strtab is None:
                return "dynamic section without DT_STRTAB"
            base = next(
                (strtab - p["p_vaddr"] + p["p_offset"] for p in loads
                 if p["p_vaddr"] <= strtab < p["p_vaddr"] + p["p_filesz"]),
                None,
            )
            if base is None:
                return "DT_STRTAB outside every PT_LOAD segment"
            for off in sorted({v for _, v in wanted}):  # ascending: one forward pass over the table
                s = parse_cstring_from_stream(stream, base + off)
                if s is None:
                    return "unterminated string in the dynamic string table"
                strings[off] = s.decode("utf-8", "replace")

        def values(tag: str) -> list[str]:
            return [strings[v] for k, v in wanted if k == tag]

        def paths(tag: str) -> tuple[str, ...]:
            return tuple(p for s in values(tag) for p in s.split(":") if p)

        sonames = values("DT_SONAME")
        return Dynamic(type=etype, machine=str(machine), elfclass=elfclass,
                       soname=sonames[0] if sonames else None, needed=tuple(values("DT_NEEDED")),
                       rpath=paths("DT_RPATH"), runpath=paths("DT_RUNPATH"))
    except (ELFError, ConstructError, EOFError, KeyError, ValueError, struct.error) as exc:
        return f"malformed ELF: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def is_static_executable(path) -> bool:
    """True for a 64-bit ELF file without a PT_INTERP program header (a static executable, also
    static-pie): it runs with no loader in the image. False for anything else or unreadable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:4] != MAGIC or head[4] != 2 or head[5] not in (1, 2):
                return False
            end = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack_from(end + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
        return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != 3 for i in range(phnum))  # PT_INTERP
    except (OSError, struct.error):
        return False
