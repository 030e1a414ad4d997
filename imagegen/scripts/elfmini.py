"""A small stdlib-only reader of ELF64 little-endian shared objects, for code that runs where
pyelftools is not installed: the builder stage (prune.py) and the image-test probes.

Host-side code reads ELF files with pyelftools; this module covers what the in-image steps need:
section headers, program headers and the dynamic section (DT_SONAME, DT_NEEDED, DT_RUNPATH,
DT_RPATH). It also holds the one predicate that decides whether `strip` may touch a file
(`strip_hazard`), shared by the prune rule, the audit's strip suggestion and the policy rule
`stripped`.

Layouts: ELF-64 Object File Format, version 1.5 (the System V gABI); only ELFCLASS64/ELFDATA2LSB
is read. Anything else raises `NotELF`.
"""
from __future__ import annotations

import struct

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_DYNAMIC = 2
SHT_DYNAMIC = 6
DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 14, 15, 29


class NotELF(ValueError):
    """The data is not a readable ELF64 little-endian file (or is truncated)."""


class ElfFile:
    """Parsed headers of one ELF file.

    Attributes (all offsets and sizes in bytes):
      e_type: ET_* value (2 executable, 3 shared object)
      phoff: file offset of the program header table
      segments: list of (p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align)
      sections: dict name -> (sh_type, sh_offset, sh_addr, sh_size); empty when the file has no
        section headers
      soname, needed, runpath, rpath: from the dynamic section (runpath/rpath split on ':')

    Raises NotELF for data that is not ELF64 LE or whose headers run past the end of the file.
    """

    def __init__(self, data: bytes | memoryview) -> None:
        self._d = memoryview(data)
        d = self._d
        if len(d) < 64 or bytes(d[:4]) != ELF_MAGIC:
            raise NotELF("not an ELF file")
        if d[4] != 2 or d[5] != 1:
            raise NotELF("not ELF64 little-endian")
        (self.e_type, _mach, _ver, _entry, self.phoff, self.shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", d, 16)
        self.segments = []
        for i in range(phnum):
            off = self.phoff + i * phentsize
            self._need(off, 56)
            p_type, p_flags, p_off, p_vaddr, _paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
                "<IIQQQQQQ", d, off)
            self.segments.append((p_type, p_flags, p_off, p_vaddr, p_filesz, p_memsz, p_align))
        self.sections: dict[str, tuple[int, int, int, int]] = {}
        raw = []
        if self.shoff and shnum:
            for i in range(shnum):
                off = self.shoff + i * shentsize
                self._need(off, 64)
                raw.append(struct.unpack_from("<IIQQQQIIQQ", d, off))
            if shstrndx < len(raw):
                names_off = raw[shstrndx][4]
                for sh in raw:
                    self.sections[self._cstr(names_off + sh[0])] = (sh[1], sh[4], sh[3], sh[5])
        self._raw_sections = raw
        self.soname: str | None = None
        self.needed: list[str] = []
        self.runpath: list[str] = []
        self.rpath: list[str] = []
        self._read_dynamic()

    def _need(self, off: int, size: int) -> None:
        if off < 0 or off + size > len(self._d):
            raise NotELF("truncated ELF headers")

    def _cstr(self, off: int) -> str:
        if off >= len(self._d):
            return ""
        end = off
        d = self._d
        while end < len(d) and d[end] != 0:
            end += 1
        return bytes(d[off:end]).decode("utf-8", "replace")

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset of a virtual address inside a PT_LOAD segment, or None."""
        for p_type, _f, p_off, p_vaddr, p_filesz, _m, _a in self.segments:
            if p_type == PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
                return p_off + (vaddr - p_vaddr)
        return None

    def _read_dynamic(self) -> None:
        dyn = next(((off, size) for t, _f, off, _v, size, _m, _a in self.segments if t == PT_DYNAMIC), None)
        if dyn is None:
            return
        off, size = dyn
        entries = []
        strtab_vaddr = None
        for i in range(0, min(size, max(0, len(self._d) - off)) // 16):
            tag, val = struct.unpack_from("<qQ", self._d, off + 16 * i)
            if tag == 0:
                break
            if tag == DT_STRTAB:
                strtab_vaddr = val
            entries.append((tag, val))
        strtab = self.vaddr_to_offset(strtab_vaddr) if strtab_vaddr is not None else None
        if strtab is None:
            dynstr = self.sections.get(".dynstr")
            strtab = dynstr[1] if dynstr else None
        if strtab is None:
            return
        for tag, val in entries:
            if tag == DT_SONAME:
                self.soname = self._cstr(strtab + val)
            elif tag == DT_NEEDED:
                self.needed.append(self._cstr(strtab + val))
            elif tag == DT_RUNPATH:
                self.runpath = [p for p in self._cstr(strtab + val).split(":") if p]
            elif tag == DT_RPATH:
                self.rpath = [p for p in self._cstr(strtab + val).split(":") if p]

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
    f = ElfFile(mm)
    f._mm = mm  # keeps the mapping alive as long as the object
    return f


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
