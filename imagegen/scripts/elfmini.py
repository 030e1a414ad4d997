"""The one stdlib-only reader of ELF64 little-endian files, for code that runs where pyelftools is
not installed: the builder stage (prune.py, fatbin.py, fatprune.py) and the image-test probes
(imagegen/imagetest/container.py copies this file beside them). The host imports it as
`imagegen.scripts.elfmini` (fatbin's section locator, the strip predicate).

`ElfFile` reads the ELF header, the program headers (`phdrs`, `segments`), the section headers
(`shdrs`, `sections`) and the dynamic section (DT_SONAME, DT_NEEDED, DT_RUNPATH, DT_RPATH, and every
tag in `dynamic`); on demand the RELA relocations (`relas`), the defined symbols (`symbols`), the
exported dynamic symbols (`exported_symbols`) and one section's file span (`locate`). `Phdr` and
`Shdr` pack back into their on-disk form, for a rewriter (fatprune.py). This module also holds the
one predicate that decides whether `strip` may touch a file (`strip_hazard`), shared by the prune
rule, the audit's strip suggestion and the policy rule `stripped`.

Layouts: ELF-64 Object File Format, version 1.5 (the System V gABI); only ELFCLASS64/ELFDATA2LSB
is read. Anything else raises `NotELF`; headers that point outside the file raise `BadELF` (a
`NotELF`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

ELF_MAGIC = b"\x7fELF"
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # e_ident, e_type, e_machine, ..., e_shstrndx (64 bytes)
EHDR_FMT = EHDR.format
PHDR_SIZE = 56
SHDR_SIZE = 64
ET_DYN = 3
EM_X86_64 = 62
PT_LOAD, PT_DYNAMIC, PT_PHDR = 1, 2, 6
SHT_SYMTAB, SHT_RELA, SHT_DYNAMIC, SHT_NOBITS, SHT_DYNSYM = 2, 4, 6, 8, 11
SHF_ALLOC = 2
SHN_ABS, SHN_LORESERVE, SHN_XINDEX = 0xFFF1, 0xFF00, 0xFFFF
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RELA, DT_RELASZ = 0, 1, 5, 7, 8
DT_SONAME, DT_RPATH, DT_RUNPATH, DT_RELR = 14, 15, 29, 36
RELA_SIZE = SYM_SIZE = 24


class NotELF(ValueError):
    """The data is not a readable ELF64 little-endian file (or is truncated)."""


class BadELF(NotELF):
    """ELF64 little-endian data whose headers point outside the file (truncated or corrupt)."""


@dataclass
class Phdr:
    """One program header (Elf64_Phdr); `pack()` gives its 56 bytes."""
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    FMT = "<IIQQQQQQ"

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.type, self.flags, self.offset, self.vaddr, self.paddr, self.filesz,
                           self.memsz, self.align)


@dataclass
class Shdr:
    """One section header (Elf64_Shdr) and its name; `pack()` gives its 64 bytes."""
    name_off: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int
    name: str = ""

    FMT = "<IIQQQQIIQQ"

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.name_off, self.type, self.flags, self.addr, self.offset, self.size,
                           self.link, self.info, self.addralign, self.entsize)


def _cstr(table: bytes, off: int) -> str:
    """The NUL-terminated string at `off` of a string table ("" outside it)."""
    if off >= len(table):
        return ""
    end = table.find(b"\0", off)
    return table[off:end if end >= 0 else len(table)].decode("utf-8", "replace")


class ElfFile:
    """Parsed headers of one ELF file.

    Attributes (all offsets and sizes in bytes):
      buf: the data read (bytes, bytearray, memoryview or mmap; kept, not copied)
      ehdr: the ELF header's fields as a list, in EHDR's order (e_ident first)
      e_type: ET_* value (2 executable, 3 shared object); e_machine: EM_* value
      phoff, shoff: file offsets of the program and section header tables
      phdrs: list of Phdr; segments: the same as tuples
        (p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align)
      shdrs: list of Shdr (named), in file order; sections: dict name -> (sh_type, sh_offset, sh_addr,
        sh_size) (the last of equal names); both empty when the file has no section headers
      soname, needed, runpath, rpath: from the dynamic section (runpath/rpath split on ':')
      dynamic: every tag of the dynamic section -> its values, in order

    Raises NotELF for data that is not ELF64 LE, BadELF when its header tables run past the end of
    the file (the section header count and name-table index may be extended through section 0).
    """

    def __init__(self, data) -> None:
        self.buf = d = data
        if len(d) < EHDR.size or bytes(d[:4]) != ELF_MAGIC:
            raise NotELF("not an ELF file")
        if d[4] != 2 or d[5] != 1:
            raise NotELF("not ELF64 little-endian")
        self.ehdr = list(EHDR.unpack_from(d, 0))
        (_ident, self.e_type, self.e_machine, _ver, _entry, self.phoff, self.shoff, _flags, _ehsize,
         phentsize, phnum, _shentsize, _shnum, _shstrndx) = self.ehdr
        self.phdrs: list[Phdr] = []
        for i in range(phnum):
            off = self.phoff + i * phentsize
            if off + PHDR_SIZE > len(d):
                raise BadELF("truncated ELF headers")
            self.phdrs.append(Phdr(*struct.unpack_from(Phdr.FMT, d, off)))
        self.segments = [(p.type, p.flags, p.offset, p.vaddr, p.filesz, p.memsz, p.align) for p in self.phdrs]
        self.names_in_file = True  # False: the section-name table lies (partly) outside the file
        self.shdrs: list[Shdr] = self._read_shdrs()
        self.sections: dict[str, tuple[int, int, int, int]] = {
            s.name: (s.type, s.offset, s.addr, s.size) for s in self.shdrs}
        self.soname: str | None = None
        self.needed: list[str] = []
        self.runpath: list[str] = []
        self.rpath: list[str] = []
        self.dynamic: dict[int, list[int]] = {}
        self._read_dynamic()

    def _read_shdrs(self) -> list[Shdr]:
        d, n = self.buf, len(self.buf)
        shentsize, shnum, shstrndx = self.ehdr[11:14]
        self.shstrndx = shstrndx
        if not self.shoff:
            return []
        if shentsize < SHDR_SIZE:
            raise BadELF(f"ELF section header size {shentsize}")
        if shnum == 0 and self.shoff + SHDR_SIZE <= n:  # > 0xff00 sections: the count is in shdr[0].sh_size
            shnum = struct.unpack_from(Shdr.FMT, d, self.shoff)[5]
        if shstrndx == SHN_XINDEX and self.shoff + SHDR_SIZE <= n:  # ... and the index in shdr[0].sh_link
            shstrndx = struct.unpack_from(Shdr.FMT, d, self.shoff)[6]
        if self.shoff + shnum * shentsize > n:
            raise BadELF(f"ELF section headers (0x{self.shoff:x} + {shnum}x{shentsize}) run past the end "
                         f"of the file ({n} bytes)")
        shdrs = [Shdr(*struct.unpack_from(Shdr.FMT, d, self.shoff + i * shentsize)) for i in range(shnum)]
        self.shstrndx = shstrndx
        if shstrndx < len(shdrs):
            names = shdrs[shstrndx]
            self.names_in_file = names.offset + names.size <= n
            table = bytes(d[names.offset:names.offset + names.size])
            for s in shdrs:
                s.name = _cstr(table, s.name_off)
        return shdrs

    def _str_at(self, off: int) -> str:
        """The NUL-terminated string at file offset `off` ("" past the end)."""
        d, n, out = self.buf, len(self.buf), b""
        while off < n:
            chunk = bytes(d[off:off + 256])
            end = chunk.find(b"\0")
            if end >= 0:
                return (out + chunk[:end]).decode("utf-8", "replace")
            out, off = out + chunk, off + 256
        return out.decode("utf-8", "replace")

    def vaddr_to_offset(self, vaddr: int, size: int = 1) -> int | None:
        """File offset of the `size` bytes at virtual address `vaddr`, when one PT_LOAD's file bytes
        hold them all, else None."""
        for p in self.phdrs:
            if p.type == PT_LOAD and p.vaddr <= vaddr and vaddr + size <= p.vaddr + p.filesz:
                return p.offset + (vaddr - p.vaddr)
        return None

    def _read_dynamic(self) -> None:
        dyn = next((p for p in self.phdrs if p.type == PT_DYNAMIC), None)
        if dyn is None:
            return
        entries = []
        for i in range(0, min(dyn.filesz, max(0, len(self.buf) - dyn.offset)) // 16):
            tag, val = struct.unpack_from("<qQ", self.buf, dyn.offset + 16 * i)
            if tag == DT_NULL:
                break
            entries.append((tag, val))
            self.dynamic.setdefault(tag, []).append(val)
        strtab_vaddr = self.dynamic.get(DT_STRTAB, [None])[-1]
        strtab = self.vaddr_to_offset(strtab_vaddr) if strtab_vaddr is not None else None
        if strtab is None:
            dynstr = self.sections.get(".dynstr")
            strtab = dynstr[1] if dynstr else None
        if strtab is None:
            return
        for tag, val in entries:
            if tag == DT_SONAME:
                self.soname = self._str_at(strtab + val)
            elif tag == DT_NEEDED:
                self.needed.append(self._str_at(strtab + val))
            elif tag == DT_RUNPATH:
                self.runpath = [p for p in self._str_at(strtab + val).split(":") if p]
            elif tag == DT_RPATH:
                self.rpath = [p for p in self._str_at(strtab + val).split(":") if p]

    # -- sections ---------------------------------------------------------------------------------

    def named(self, name: str) -> list[Shdr]:
        """The section headers called `name`, in file order."""
        return [s for s in self.shdrs if s.name == name]

    def locate(self, name: str) -> tuple[int, int, int] | None:
        """(file_offset, size, addr) of the first section called `name` (size 0 for SHT_NOBITS: no
        bytes in the file), or None. Raises BadELF when the section-name table or that section runs
        past the end of the file."""
        if not self.shdrs:
            return None
        if self.shstrndx >= len(self.shdrs):
            raise BadELF(f"ELF section-name table index {self.shstrndx} >= {len(self.shdrs)} sections")
        if not self.names_in_file:
            raise BadELF("ELF section-name table runs past the end of the file")
        s = next((s for s in self.shdrs if s.name == name), None)
        if s is None:
            return None
        if s.type == SHT_NOBITS:
            return (s.offset, 0, s.addr)
        if s.offset + s.size > len(self.buf):
            raise BadELF(f"section {name} (0x{s.offset:x} + {s.size}) runs past the end of the file "
                         f"({len(self.buf)} bytes)")
        return (s.offset, s.size, s.addr)

    def loads(self) -> list[Phdr]:
        return [p for p in self.phdrs if p.type == PT_LOAD]

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.buf, off)[0]

    # -- relocations and symbols ------------------------------------------------------------------

    def relas(self) -> list[tuple[int, int, int, int]]:
        """(file offset of the entry, r_offset, r_info, r_addend) of every SHT_RELA entry."""
        out = []
        for s in self.shdrs:
            if s.type != SHT_RELA or s.entsize not in (0, RELA_SIZE):
                continue
            for i in range(s.size // RELA_SIZE):
                at = s.offset + RELA_SIZE * i
                r_offset, r_info, r_addend = struct.unpack_from("<QQq", self.buf, at)
                out.append((at, r_offset, r_info, r_addend))
        return out

    def symbols(self) -> list[tuple[int, int, int]]:
        """(file offset of st_value, st_value, st_shndx) of every defined symbol in .symtab/.dynsym."""
        out = []
        for s in self.shdrs:
            if s.type not in (SHT_SYMTAB, SHT_DYNSYM) or s.entsize != SYM_SIZE:
                continue
            for i in range(1, s.size // SYM_SIZE):
                at = s.offset + SYM_SIZE * i
                _name, _info, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", self.buf, at)
                if shndx:
                    out.append((at + 8, value, shndx))
        return out

    def exported_symbols(self) -> list[str]:
        """Names of the defined global/weak FUNC/OBJECT symbols in .dynsym (sorted, unique)."""
        dynsym = next((s for s in self.shdrs if s.type == SHT_DYNSYM), None)
        if dynsym is None:
            return []
        strtab = self.shdrs[dynsym.link]
        strs = bytes(self.buf[strtab.offset:strtab.offset + strtab.size])
        out = []
        for i in range(1, dynsym.size // SYM_SIZE):
            name, info, _other, shndx, _value, _size = struct.unpack_from("<IBBHQQ", self.buf,
                                                                          dynsym.offset + SYM_SIZE * i)
            if shndx and shndx < SHN_LORESERVE and (info >> 4) in (1, 2) and (info & 0xF) in (1, 2):
                out.append(strs[name:strs.find(b"\0", name)].decode("ascii", "replace"))
        return sorted(set(out))

    def patchelf_layout(self) -> bool:
        """True when the file carries the layout patchelf leaves after growing the dynamic string
        table: `.dynstr` moved behind the code (`.text`), into an extra PT_LOAD near the end.
        A linker always places `.dynstr` before `.text`."""
        dynstr, text = self.sections.get(".dynstr"), self.sections.get(".text")
        if dynstr and text:
            return dynstr[1] > text[1]
        return False


def read_file(path: str) -> ElfFile:
    """Parse the headers of the ELF file at `path` through a read-only mmap, so that a 2 GB
    library costs only the pages the headers live on. Raises NotELF or OSError."""
    import mmap

    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise NotELF("empty file") from None
    return ElfFile(mm)  # which keeps the mapping (its `buf`) alive as long as the object


def strip_hazard(rel_path: str, runpaths: "list[str] | tuple[str, ...]" = (), patchelf_layout: bool = False) -> str | None:
    """Why `strip` must not touch this ELF file, or None when stripping is safe.

    `strip` rewrites files that patchelf has already rewritten (auditwheel's repair) into broken
    ones: "ELF load command address/offset not page-aligned" (pypa/manylinux#119, numpy#20101;
    FACTS trap 1). Such files are recognised three ways:
      - they live in a `*.libs/` directory (auditwheel's vendored libraries);
      - their DT_RUNPATH/DT_RPATH (`runpaths`) points into a `*.libs` directory (extension modules
        auditwheel patched to find those vendored libraries);
      - their layout is patchelf's (`patchelf_layout`, see `ElfFile.patchelf_layout`).
    `rel_path` is the file's path inside the image or environment ('/'-separated). The prune rule
    `strip`, the audit's strip suggestion and the image-policy rule `stripped` all ask this.
    """
    parts = rel_path.strip("/").split("/")
    if any(p.endswith(".libs") for p in parts[:-1]):
        return "inside a *.libs directory (auditwheel-repaired)"
    for entry in runpaths:
        if any(seg.endswith(".libs") for seg in entry.split("/")):
            return f"RUNPATH {entry} points into a *.libs directory (patched by auditwheel)"
    if patchelf_layout:
        return "rewritten by patchelf (.dynstr moved behind .text)"
    return None


def same_memory_image(before: ElfFile, after: ElfFile) -> str | None:
    """Why `after` (a stripped copy of `before`) would not load the way `before` does, or None.

    The loader needs every PT_LOAD's file offset congruent with its address modulo its alignment
    (the "ELF load command address/offset not page-aligned" failure of pypa/manylinux#119), and
    stripping must not move the memory image: the same PT_LOAD addresses and permissions (a segment
    may get shorter: strip trims the string table patchelf appended, e.g. oneDNN in Paddle 3.3.1)."""
    loads_a = [(v, f) for t, f, _o, v, _fs, _m, _al in before.segments if t == PT_LOAD]
    loads_b = [(v, f) for t, f, _o, v, _fs, _m, _al in after.segments if t == PT_LOAD]
    if loads_a != loads_b:  # sizes may shrink (strip trims patchelf's .dynstr segment), addresses may not move
        return "its PT_LOAD segments moved"
    for t, _f, off, vaddr, _fs, _m, align in after.segments:
        if t == PT_LOAD and align > 1 and off % align != vaddr % align:
            return f"a PT_LOAD at 0x{vaddr:x} is no longer congruent with its file offset 0x{off:x}"
    return None


def strip_hazard_of(rel_path: str, elf: ElfFile) -> str | None:
    """`strip_hazard` for a parsed file."""
    return strip_hazard(rel_path, elf.runpath + elf.rpath, elf.patchelf_layout())
