#!/usr/bin/env python3
"""Shrink CUDA fat binaries to the kernels a set of GPUs can run. Standard library only.

EXPERIMENTAL: the rewrite is verified structurally (ELF layout, relocations, container contents,
dlopen); a kernel launch on a pruned library has not yet been checked on a GPU
(bench/fatprune_on_device.py does that).

Runs in the builder stage after prune.py (imagegen/templates/partials/fatprune.j2). For every ELF
file with a ``.nv_fatbin`` section it keeps, per fat-binary container, what
``fatbin.select(entries, targets, keep_ptx)`` picks (the CUDA runtime's own choice: the best SASS
of the same major version, else the best PTX) and takes the freed bytes out of the file:

1. the kept entries are copied byte for byte, container after container (8-byte aligned), and each
   container header's size is set to the bytes of its kept entries;
2. every ``R_X86_64_RELATIVE`` relocation whose addend is a container's old address gets the
   container's new address, and so does the 8-byte value stored at its offset (the data pointer of a
   ``__fatBinC_Wrapper_t`` in ``.nvFatBinSegment``);
3. the program header table moves into the page after the compacted fatbin (the old table, right
   after the ELF header, has no spare slot);
4. the ``PT_LOAD`` holding ``.nv_fatbin`` is split in two around the freed range, keeping every
   address: no section but ``.nv_fatbin`` changes address or size;
5. every later file offset moves down by a whole number of 4 kB pages, and ``p_align`` is 0x1000 on
   every ``PT_LOAD`` (offset and address stay congruent modulo the page);
6. the section headers' offsets follow.

Containers nothing references (cuRAND has one) keep their bytes and their address. Relocatable
device code (``__nv_relfatbin``) is not touched. A library whose layout this does not understand is
left untouched and reported; a rewrite is written to a temporary file, verified (``verify``), and
only then renamed over the original. The same inputs give the same bytes.

Facts used here: ``shared/FACTS.md`` "How the fat binaries are wired" and "Fat-binary format details".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:  # imagegen.scripts.fatprune in the package; a plain script beside fatbin.py in the build
    from . import fatbin
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fatbin  # type: ignore[no-redef]  # noqa: E402

PAGE = 0x1000
PHDR_SIZE = 56
SHDR_SIZE = 64
PT_LOAD, PT_DYNAMIC, PT_PHDR = 1, 2, 6
SHT_NOBITS, SHT_RELA, SHT_SYMTAB, SHT_DYNSYM = 8, 4, 2, 11
R_X86_64_RELATIVE = 8
DT_NULL, DT_RELA, DT_RELASZ, DT_RELR = 0, 7, 8, 36
WRAPPER_MAGIC = 0x466243B1
WRAPPER_SIZE = 24
FATBIN_SECTION = ".nv_fatbin"
WRAPPER_SECTION = ".nvFatBinSegment"
CONTAINER_MAGIC = 0xBA55ED50
COPY_CHUNK = 16 << 20


class Refused(Exception):
    """The library's layout is not one this rewriter understands: it is left untouched."""


class VerifyFailed(Exception):
    """A rewrite did not pass verification (a bug): the original stays, the build fails."""


# -- ELF model ----------------------------------------------------------------------------------


@dataclass
class Phdr:
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


@dataclass
class Elf:
    """Headers of a little-endian ELF64 x86-64 file, read from a buffer (an mmap)."""

    buf: object
    ehdr: list
    phdrs: list[Phdr]
    shdrs: list[Shdr]

    EHDR_FMT = "<16sHHIQQQIHHHHHH"

    @classmethod
    def read(cls, buf) -> "Elf":
        if len(buf) < 64 or bytes(buf[:4]) != b"\x7fELF":
            raise Refused("not an ELF file")
        ehdr = list(struct.unpack_from(cls.EHDR_FMT, buf, 0))
        ident, _type, machine = ehdr[0], ehdr[1], ehdr[2]
        if ident[4] != 2 or ident[5] != 1 or machine != 62:
            raise Refused("not a little-endian ELF64 x86-64 file")
        phoff, shoff, phentsize, phnum, shentsize, shnum = ehdr[5], ehdr[6], ehdr[9], ehdr[10], ehdr[11], ehdr[12]
        if phentsize != PHDR_SIZE or shentsize != SHDR_SIZE or not shnum or shnum >= 0xFF00:
            raise Refused("unusual ELF header (entry sizes or section count)")
        if phoff + phnum * PHDR_SIZE > len(buf) or shoff + shnum * SHDR_SIZE > len(buf):
            raise Refused("header tables lie outside the file")
        phdrs = [Phdr(*struct.unpack_from(Phdr.FMT, buf, phoff + i * PHDR_SIZE)) for i in range(phnum)]
        shdrs = [Shdr(*struct.unpack_from(Shdr.FMT, buf, shoff + i * SHDR_SIZE)) for i in range(shnum)]
        strtab = shdrs[ehdr[13]]
        names = bytes(buf[strtab.offset:strtab.offset + strtab.size])
        for s in shdrs:
            s.name = names[s.name_off:names.find(b"\0", s.name_off)].decode("ascii", "replace")
        return cls(buf, ehdr, phdrs, shdrs)

    def section(self, name: str) -> Shdr | None:
        hits = [s for s in self.shdrs if s.name == name]
        if len(hits) > 1:
            raise Refused(f"{len(hits)} sections named {name}")
        return hits[0] if hits else None

    def loads(self) -> list[Phdr]:
        return [p for p in self.phdrs if p.type == PT_LOAD]

    def vaddr_to_offset(self, vaddr: int, size: int = 1) -> int:
        for p in self.loads():
            if p.vaddr <= vaddr and vaddr + size <= p.vaddr + p.filesz:
                return p.offset + (vaddr - p.vaddr)
        raise Refused(f"address {vaddr:#x} is not backed by file bytes of any PT_LOAD")

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.buf, off)[0]

    def dynamic(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for p in self.phdrs:
            if p.type != PT_DYNAMIC:
                continue
            for i in range(p.filesz // 16):
                tag, val = struct.unpack_from("<qQ", self.buf, p.offset + 16 * i)
                if tag == DT_NULL:
                    break
                out.setdefault(tag, []).append(val)
        return out

    def relas(self) -> list[tuple[int, int, int, int]]:
        """(file offset of the entry, r_offset, r_info, r_addend) of every SHT_RELA entry."""
        out = []
        for s in self.shdrs:
            if s.type != SHT_RELA or s.entsize not in (0, 24):
                continue
            for i in range(s.size // 24):
                at = s.offset + 24 * i
                r_offset, r_info, r_addend = struct.unpack_from("<QQq", self.buf, at)
                out.append((at, r_offset, r_info, r_addend))
        return out

    def symbols(self) -> list[tuple[int, int, int]]:
        """(file offset of st_value, st_value, st_shndx) of every defined symbol in .symtab/.dynsym."""
        out = []
        for s in self.shdrs:
            if s.type not in (SHT_SYMTAB, SHT_DYNSYM) or s.entsize != 24:
                continue
            for i in range(1, s.size // 24):
                at = s.offset + 24 * i
                _name, _info, _other, shndx, value, _size = struct.unpack_from("<IBBHQQ", self.buf, at)
                if shndx:
                    out.append((at + 8, value, shndx))
        return out

    def wrappers(self) -> list[tuple[int, int, int]]:
        """(vaddr of the data pointer, its stored value, version) of each wrapper in .nvFatBinSegment."""
        s = self.section(WRAPPER_SECTION)
        if s is None or s.type == SHT_NOBITS:
            return []
        out = []
        for i in range(s.size // WRAPPER_SIZE):
            magic, version, data, _extra = struct.unpack_from("<IIQQ", self.buf, s.offset + WRAPPER_SIZE * i)
            if magic != WRAPPER_MAGIC:
                raise Refused(f"{WRAPPER_SECTION} entry {i} has magic {magic:#x}, not {WRAPPER_MAGIC:#x}")
            out.append((s.addr + WRAPPER_SIZE * i + 8, data, version))
        return out


# -- the plan -----------------------------------------------------------------------------------


def entry_span(c, e) -> tuple[int, int]:
    """(offset, length) of an entry's header plus payload, relative to the section start."""
    return c.offset + e.offset, e.size


def container_span(c) -> tuple[int, int]:
    """(offset, length) of a whole container (header and entries), relative to the section start."""
    return c.offset, c.size


@dataclass
class Placed:
    old: int                      # container offset in the old section
    new: int                      # container offset in the new section
    header_size: int
    kept: list                    # kept entries (fatbin.Entry), in their original order
    container: object             # the original fatbin.Container
    orphan: bool                  # nothing references it: bytes and address kept
    old_len: int

    @property
    def new_len(self) -> int:
        if self.orphan:
            return self.old_len
        return self.header_size + sum(e.size for e in self.kept)


@dataclass
class Plan:
    path: Path
    size: int                     # bytes of the original file
    sec: Shdr                     # .nv_fatbin in the original
    containers: list[Placed]
    new_sec_size: int
    seg_index: int                # index in phdrs of the PT_LOAD holding .nv_fatbin
    phdr_at: int | None           # new file offset of the program header table (None: unchanged)
    cut_at: int                   # first removed file byte (original offsets) ...
    cut: int                      # ... and how many (a multiple of PAGE)
    new_phdrs: list[Phdr]
    patches: dict[int, int] = field(default_factory=dict)  # original file offset -> new u64 value
    entries_before: int = 0
    entries_after: int = 0
    archs_before: list[str] = field(default_factory=list)
    archs_after: list[str] = field(default_factory=list)

    @property
    def gap_end(self) -> int:
        return self.sec.offset + self.sec.size

    def new_offset(self, old: int) -> int:
        """Where a byte at original file offset `old` (outside .nv_fatbin) lands in the new file."""
        if old >= self.gap_end:
            return old - self.cut
        if self.sec.offset <= old < self.gap_end:
            raise ValueError(f"offset {old:#x} is inside {FATBIN_SECTION}")
        return old

    @property
    def new_size(self) -> int:
        return self.size - self.cut


def entry_label(e) -> str:
    return e.name


def make_plan(path: Path, buf, targets: list[str], keep_ptx: bool) -> Plan | None:
    """Plan the rewrite of one library, or None when it has no .nv_fatbin. Raises Refused."""
    elf = Elf.read(buf)
    sec = elf.section(FATBIN_SECTION)
    if sec is None or sec.type == SHT_NOBITS or sec.size == 0:
        return None
    if elf.ehdr[1] != 3:
        raise Refused("not a shared object (ET_DYN)")
    dyn = elf.dynamic()
    if DT_RELR in dyn:
        raise Refused("packed relative relocations (DT_RELR) are not handled")
    lo, hi = sec.offset, sec.offset + sec.size
    alo, ahi = sec.addr, sec.addr + sec.size
    if sec.addr % 8 or sec.offset % 8:
        raise Refused(f"{FATBIN_SECTION} is not 8-byte aligned")
    for s in elf.shdrs:
        if s is sec or s.type == SHT_NOBITS or s.size == 0:
            continue
        if s.offset < hi and lo < s.offset + s.size:
            raise Refused(f"section {s.name} overlaps {FATBIN_SECTION} in the file")
        if s.flags & 2 and s.addr < ahi and alo < s.addr + s.size:
            raise Refused(f"section {s.name} overlaps {FATBIN_SECTION} in memory")
    holders = [i for i, p in enumerate(elf.phdrs)
               if p.type == PT_LOAD and p.offset <= lo and hi <= p.offset + p.filesz]
    if len(holders) != 1:
        raise Refused(f"{FATBIN_SECTION} is not inside exactly one PT_LOAD")
    seg_i = holders[0]
    seg = elf.phdrs[seg_i]
    if seg.vaddr + (lo - seg.offset) != alo:
        raise Refused(f"{FATBIN_SECTION}'s address does not match its PT_LOAD")
    for i, p in enumerate(elf.phdrs):
        if i == seg_i or p.filesz == 0:
            continue
        if p.offset < hi and lo < p.offset + p.filesz and not (p.offset >= hi):
            raise Refused(f"program header {i} (type {p.type:#x}) overlaps {FATBIN_SECTION}")

    data = memoryview(buf)[lo:hi]
    try:
        containers = fatbin.parse_fatbin(data)
    except fatbin.FatbinError as exc:
        raise Refused(f"{FATBIN_SECTION}: {exc}") from None
    if not containers:
        raise Refused(f"{FATBIN_SECTION} holds no fat-binary container")
    # the containers must tile the section (up to alignment padding of zeros)
    pos = 0
    for c in containers:
        off, length = container_span(c)
        if off < pos or any(data[pos:off]):
            raise Refused(f"unparsed bytes in {FATBIN_SECTION} at {pos:#x}")
        if struct.unpack_from("<I", data, off)[0] != CONTAINER_MAGIC:
            raise Refused(f"container at {off:#x} has a bad magic")
        epos = off + c.header_size
        for e in c.entries:
            eo, el = entry_span(c, e)
            if eo != epos:
                raise Refused(f"container at {off:#x}: entries do not follow each other")
            epos = eo + el
        if epos != off + length:
            raise Refused(f"container at {off:#x}: entries do not fill it")
        pos = off + length
    if any(data[pos:]):
        raise Refused(f"unparsed bytes at the end of {FATBIN_SECTION}")
    starts = {container_span(c)[0]: c for c in containers}

    # references into the fatbin: RELATIVE relocations (and the value stored at their offset)
    referenced: set[int] = set()
    reloc_refs = []  # (entry file offset, r_offset, old container offset)
    for at, r_offset, r_info, addend in elf.relas():
        rtype = r_info & 0xFFFFFFFF
        if alo <= r_offset < ahi:
            raise Refused(f"a relocation applies inside {FATBIN_SECTION} (at {r_offset:#x})")
        if rtype != R_X86_64_RELATIVE:
            continue
        if alo <= addend < ahi:
            rel = addend - alo
            if rel not in starts:
                raise Refused(f"a relocation points inside {FATBIN_SECTION} at {addend:#x}, not at a container")
            referenced.add(rel)
            reloc_refs.append((at, r_offset, rel))
    wrappers = elf.wrappers()
    for _slot, value, _version in wrappers:
        if alo <= value < ahi:
            if value - alo not in starts:
                raise Refused(f"a wrapper points inside {FATBIN_SECTION} at {value:#x}, not at a container")
            referenced.add(value - alo)
    syms = []
    sec_index = elf.shdrs.index(sec)
    for at, value, shndx in elf.symbols():
        if shndx == sec_index:
            if not alo <= value <= ahi or (value - alo not in starts and value != ahi):
                raise Refused(f"a symbol points inside {FATBIN_SECTION} at {value:#x}, not at a container")
            syms.append((at, value - alo))
        elif alo <= value < ahi and shndx != 0xFFF1:
            raise Refused(f"a symbol of section {shndx} points inside {FATBIN_SECTION} at {value:#x}")

    # placement: kept entries compacted per container; orphans keep their bytes and address
    placed: list[Placed] = []
    cursor = 0
    before: set[str] = set()
    after: set[str] = set()
    n_before = n_after = 0
    for c in containers:
        off, length = container_span(c)
        n_before += len(c.entries)
        before.update(entry_label(e) for e in c.entries)
        if off not in referenced:
            placed.append(Placed(off, off, c.header_size, list(c.entries), c, True, length))
            cursor = off + length
            n_after += len(c.entries)
            after.update(entry_label(e) for e in c.entries)
            continue
        kept_ids = {id(e) for e in fatbin.select(c.entries, targets, keep_ptx=keep_ptx)}
        kept = [e for e in c.entries if id(e) in kept_ids]
        new = (cursor + 7) & ~7
        p = Placed(off, new, c.header_size, kept, c, False, length)
        placed.append(p)
        cursor = new + p.new_len
        n_after += len(kept)
        after.update(entry_label(e) for e in kept)
    new_sec_size = cursor
    moved = {p.old: p.new for p in placed}
    moved_end = {sec.size: new_sec_size}

    # the freed range [lo + new_sec_size, hi): cut whole pages out of it, after the program headers
    seg_end = seg.offset + seg.filesz
    split = seg_end > hi or seg.memsz > seg.filesz
    nph = len(elf.phdrs) + (1 if split else 0)
    phdr_at = (lo + new_sec_size + 7) & ~7 if split else None
    room_from = phdr_at + nph * PHDR_SIZE if split else lo + new_sec_size
    cut = ((hi - room_from) // PAGE) * PAGE
    if cut <= 0:
        return Plan(path, len(buf), sec, placed, new_sec_size, seg_i, None, hi, 0, elf.phdrs,
                    entries_before=n_before, entries_after=n_after, archs_before=sorted(before),
                    archs_after=sorted(after))
    cut_at = hi - cut

    new_phdrs: list[Phdr] = []
    for i, p in enumerate(elf.phdrs):
        q = Phdr(**p.__dict__)
        if i == seg_i:
            if split:
                head_end = phdr_at + nph * PHDR_SIZE
                q.filesz = q.memsz = head_end - p.offset
                q.align = PAGE
                new_phdrs.append(q)
                delta = hi - p.offset
                tail = Phdr(PT_LOAD, p.flags, hi - cut, p.vaddr + delta, p.paddr + delta,
                            p.filesz - delta, p.memsz - delta, PAGE)
                new_phdrs.append(tail)
            else:
                q.filesz = q.memsz = lo + new_sec_size - p.offset
                q.align = PAGE
                new_phdrs.append(q)
            continue
        if p.type == PT_PHDR:
            if split:
                q.offset = phdr_at
                q.vaddr = q.paddr = seg.vaddr + (phdr_at - seg.offset)
                q.filesz = q.memsz = nph * PHDR_SIZE
        elif p.offset >= hi:
            q.offset -= cut
        elif p.filesz and p.offset + p.filesz > lo:
            raise Refused(f"program header {i} (type {p.type:#x}) spans {FATBIN_SECTION}")
        if q.type == PT_LOAD:
            if q.align > PAGE:
                q.align = PAGE
            elif q.align < PAGE and p.offset >= hi:
                raise Refused(f"PT_LOAD {i} has p_align {p.align:#x} below a page")
        new_phdrs.append(q)
    new_loads = [p for p in new_phdrs if p.type == PT_LOAD]
    if [p.vaddr for p in new_loads] != sorted(p.vaddr for p in new_loads):
        raise Refused("PT_LOAD entries are not sorted by address")

    plan = Plan(path, len(buf), sec, placed, new_sec_size, seg_i, phdr_at, cut_at, cut, new_phdrs,
                entries_before=n_before, entries_after=n_after, archs_before=sorted(before),
                archs_after=sorted(after))

    # value patches, at original file offsets (all outside .nv_fatbin)
    for at, r_offset, rel in reloc_refs:
        new_addr = alo + moved[rel]
        plan.patches[at + 16] = new_addr
        slot = elf.vaddr_to_offset(r_offset, 8)
        stored = elf.u64(slot)
        if stored == alo + rel:
            plan.patches[slot] = new_addr
        elif stored != 0:
            raise Refused(f"the value at {r_offset:#x} ({stored:#x}) disagrees with its relocation")
    reloc_slots = {r for _a, r, _rel in reloc_refs}
    for slot_addr, value, _version in wrappers:
        if alo <= value < ahi and slot_addr not in reloc_slots:
            plan.patches[elf.vaddr_to_offset(slot_addr, 8)] = alo + moved[value - alo]
    for at, rel in syms:
        plan.patches[at] = alo + (moved[rel] if rel in moved else moved_end[rel])
    for off in plan.patches:
        if lo <= off < hi:
            raise Refused("a patched value lies inside the fatbin")
    return plan


# -- writing ------------------------------------------------------------------------------------


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    """Copy src[start:end] to dst at its current position (copy_file_range where the kernel has it)."""
    os.lseek(src_fd, start, os.SEEK_SET)
    remaining = end - start
    while remaining > 0:
        n = 0
        if hasattr(os, "copy_file_range"):
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30))
            except OSError:
                n = 0
        if n <= 0:
            chunk = os.read(src_fd, min(remaining, COPY_CHUNK))
            if not chunk:
                raise OSError("unexpected end of file")
            os.write(dst_fd, chunk)
            n = len(chunk)
        remaining -= n


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_plan(plan: Plan, buf, src_fd: int, dst_fd: int) -> None:
    lo = plan.sec.offset
    _copy_range(src_fd, dst_fd, 0, lo)
    pos = 0
    for p in plan.containers:
        if p.new > pos:
            _write_all(dst_fd, bytes(p.new - pos))
            pos = p.new
        if p.orphan:
            _write_all(dst_fd, buf[lo + p.old:lo + p.old + p.old_len])
        else:
            header = bytearray(buf[lo + p.old:lo + p.old + p.header_size])
            struct.pack_into("<Q", header, 8, p.new_len - p.header_size)
            _write_all(dst_fd, header)
            for e in p.kept:
                eo, el = entry_span(p.container, e)
                _write_all(dst_fd, buf[lo + eo:lo + eo + el])
        pos += p.new_len
    assert pos == plan.new_sec_size
    end_of_padding = plan.cut_at
    at = lo + pos
    if plan.phdr_at is not None:
        _write_all(dst_fd, bytes(plan.phdr_at - at))
        table = b"".join(p.pack() for p in plan.new_phdrs)
        _write_all(dst_fd, table)
        at = plan.phdr_at + len(table)
    _write_all(dst_fd, bytes(end_of_padding - at))
    _copy_range(src_fd, dst_fd, plan.gap_end, plan.size)
    # headers and values
    elf = Elf.read(buf)
    ehdr = list(elf.ehdr)
    if plan.phdr_at is not None:
        ehdr[5] = plan.phdr_at
        ehdr[10] = len(plan.new_phdrs)
    else:
        table = b"".join(p.pack() for p in plan.new_phdrs)
        os.pwrite(dst_fd, table, ehdr[5])
    ehdr[6] = plan.new_offset(ehdr[6])
    os.pwrite(dst_fd, struct.pack(Elf.EHDR_FMT, *ehdr), 0)
    shdrs = []
    for s in elf.shdrs:
        q = Shdr(**s.__dict__)
        if s.name == FATBIN_SECTION:
            q.size = plan.new_sec_size
        elif s.offset >= plan.gap_end:
            q.offset -= plan.cut
        shdrs.append(q)
    os.pwrite(dst_fd, b"".join(s.pack() for s in shdrs), ehdr[6])
    for off, value in sorted(plan.patches.items()):
        os.pwrite(dst_fd, struct.pack("<Q", value), plan.new_offset(off))


# -- verification -------------------------------------------------------------------------------


def _entry_digests(buf, base: int, c, entries) -> list[tuple[str, str]]:
    out = []
    for e in entries:
        eo, el = entry_span(c, e)
        out.append((entry_label(e), hashlib.sha256(buf[base + eo:base + eo + el]).hexdigest()))
    return out


def verify(orig_buf, new_buf, targets: list[str], keep_ptx: bool, plan: Plan) -> list[str]:
    """Check a rewrite against its original, reading both files afresh. Returns the problems (empty: ok).

    Checks: every section but .nv_fatbin has the same name, type, flags, address and size, the PT_LOAD
    segments map it at its new offset, and its bytes are the original's except at the planned pointer
    values; PT_LOADs are sorted, page-congruent and inside the file; every wrapper's data pointer (and
    its relocation addend) is the start of a valid container whose entries are exactly the original
    container's entries picked by fatbin.select (orphans: the whole container), byte for byte (sha256);
    the file shrank by exactly the planned whole pages.
    """
    problems: list[str] = []
    old = Elf.read(orig_buf)
    try:
        new = Elf.read(new_buf)
    except Refused as exc:
        return [f"rewritten file does not parse: {exc}"]
    if len(new_buf) != len(orig_buf) - plan.cut or plan.cut % PAGE:
        problems.append(f"size {len(new_buf)} is not the original {len(orig_buf)} minus {plan.cut}")
    if len(new.shdrs) != len(old.shdrs):
        return problems + ["section count changed"]
    loads = new.loads()
    for p in loads:
        if p.offset % PAGE != p.vaddr % PAGE or p.offset + p.filesz > len(new_buf) or p.memsz < p.filesz:
            problems.append(f"PT_LOAD at {p.vaddr:#x} is inconsistent (offset {p.offset:#x})")
    if [p.vaddr for p in loads] != sorted(p.vaddr for p in loads):
        problems.append("PT_LOADs are not sorted by address")
    for a, b in zip(loads, loads[1:], strict=False):
        if a.vaddr + a.memsz > b.vaddr:
            problems.append(f"PT_LOADs at {a.vaddr:#x} and {b.vaddr:#x} overlap")
    patched_new = sorted(plan.new_offset(o) for o in plan.patches)
    for so, sn in zip(old.shdrs, new.shdrs, strict=False):
        if (so.name, so.type, so.flags, so.addr, so.addralign) != (sn.name, sn.type, sn.flags, sn.addr,
                                                                   sn.addralign):
            problems.append(f"section {so.name} changed its header")
            continue
        if so.name == FATBIN_SECTION:
            if sn.size != plan.new_sec_size:
                problems.append(f"{FATBIN_SECTION} has size {sn.size}, planned {plan.new_sec_size}")
            continue
        if sn.size != so.size:
            problems.append(f"section {so.name} changed size")
            continue
        if sn.type == SHT_NOBITS or not sn.size:
            continue
        if sn.flags & 2:
            try:
                at = new.vaddr_to_offset(sn.addr, sn.size)
            except Refused:
                problems.append(f"section {sn.name} at {sn.addr:#x} is not mapped by one PT_LOAD")
                continue
            if at != sn.offset:
                problems.append(f"section {sn.name}: its address maps to {at:#x}, its offset is {sn.offset:#x}")
                continue
        problems += _compare(orig_buf, so.offset, new_buf, sn.offset, sn.size, patched_new, sn.name)
    problems += _check_fatbin(old, new, targets, keep_ptx)
    nsec = new.section(FATBIN_SECTION)
    _sec, ncont = _containers(new)
    for _at, value, shndx in new.symbols():
        if shndx == new.shdrs.index(nsec) and value - nsec.addr not in ncont and value != nsec.addr + nsec.size:
            problems.append(f"a symbol in {FATBIN_SECTION} at {value:#x} is not at a container")
    return problems


def _compare(a, ao: int, b, bo: int, size: int, allowed: list[int], name: str) -> list[str]:
    """Compare a[ao:ao+size] with b[bo:bo+size]; differing bytes may only lie in the 8-byte values
    starting at the (new-file) offsets in `allowed` (sorted)."""
    import bisect

    pos = 0
    while pos < size:
        n = min(COPY_CHUNK, size - pos)
        if a[ao + pos:ao + pos + n] != b[bo + pos:bo + pos + n]:
            for i in range(0, n, 64):
                m = min(64, n - i)
                x, y = a[ao + pos + i:ao + pos + i + m], b[bo + pos + i:bo + pos + i + m]
                if x == y:
                    continue
                for j in range(m):
                    if x[j] != y[j]:
                        at = bo + pos + i + j
                        k = bisect.bisect_right(allowed, at) - 1
                        if k < 0 or at >= allowed[k] + 8:
                            return [f"section {name}: unexpected change at file offset {at:#x}"]
        pos += n
    return []


def _containers(elf: Elf):
    sec = elf.section(FATBIN_SECTION)
    data = memoryview(elf.buf)[sec.offset:sec.offset + sec.size]
    return sec, {container_span(c)[0]: c for c in fatbin.parse_fatbin(data)}


def _pointers(elf: Elf) -> list[int]:
    """The run-time data pointer of each wrapper: its RELATIVE addend if relocated, else the stored value."""
    addends = {}
    for _at, r_offset, r_info, addend in elf.relas():
        if r_info & 0xFFFFFFFF == R_X86_64_RELATIVE:
            addends[r_offset] = addend
    out = []
    for slot, value, _version in elf.wrappers():
        if slot in addends and value not in (0, addends[slot]):
            out.append(-1)  # stored value disagrees with relocation
        else:
            out.append(addends.get(slot, value))
    return out


def _check_fatbin(old: Elf, new: Elf, targets: list[str], keep_ptx: bool) -> list[str]:
    problems = []
    osec, ocont = _containers(old)
    nsec, ncont = _containers(new)
    optrs, nptrs = _pointers(old), _pointers(new)
    if len(optrs) != len(nptrs):
        return ["wrapper count changed"]
    reached_old = set()
    for i, (op, np_) in enumerate(zip(optrs, nptrs, strict=False)):
        in_old = osec.addr <= op < osec.addr + osec.size
        if not in_old:
            if op != np_:
                problems.append(f"wrapper {i} points outside {FATBIN_SECTION} and changed")
            continue
        reached_old.add(op - osec.addr)
        if np_ < 0 or not (nsec.addr <= np_ < nsec.addr + nsec.size) or (np_ - nsec.addr) not in ncont:
            problems.append(f"wrapper {i}: data pointer {np_:#x} is not a container header")
            continue
        oc, nc = ocont[op - osec.addr], ncont[np_ - nsec.addr]
        picked = {id(e) for e in fatbin.select(oc.entries, targets, keep_ptx=keep_ptx)}
        want = _entry_digests(old.buf, osec.offset, oc, [e for e in oc.entries if id(e) in picked])
        got = _entry_digests(new.buf, nsec.offset, nc, nc.entries)
        if got != want:
            problems.append(f"wrapper {i}: kept entries {[g[0] for g in got]} differ from the rule's "
                            f"{[w[0] for w in want]} or from the original bytes")
    for off, c in ocont.items():
        if off in reached_old:
            continue
        n = container_span(c)[1]
        if off not in ncont or old.buf[osec.offset + off:osec.offset + off + n] != \
                new.buf[nsec.offset + off:nsec.offset + off + n]:
            problems.append(f"unreferenced container at {off:#x} did not keep its bytes and address")
    return problems


def readelf_check(orig: Path, new: Path) -> list[str]:
    """A second opinion from binutils' readelf (-SW): every section but .nv_fatbin keeps its address,
    size and flags; .nv_fatbin keeps its address. [] when readelf is not installed."""
    import shutil as _sh

    if _sh.which("readelf") is None:
        return []

    def table(p: Path) -> dict[str, tuple]:
        out = subprocess.run(["readelf", "-SW", str(p)], capture_output=True, text=True, timeout=120).stdout
        rows = {}
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("[") or "]" not in line:
                continue
            f = line.split("]", 1)[1].split()
            if len(f) >= 7 and f[0] != "Name" and f[1] != "NULL":
                rows[f[0]] = (f[1], f[2], f[4])  # type, address, size
        return rows

    a, b = table(orig), table(new)
    if not a:
        return ["readelf shows no sections in the original"]
    problems = []
    for name, row in a.items():
        other = b.get(name)
        if other is None:
            problems.append(f"readelf: section {name} is gone")
        elif name == FATBIN_SECTION:
            if other[1] != row[1]:
                problems.append(f"readelf: {FATBIN_SECTION} moved")
        elif other != row:
            problems.append(f"readelf: section {name} changed ({row} -> {other})")
    return problems


def check_load(path: Path, env: dict | None = None) -> str | None:
    """dlopen(path, RTLD_NOW) in a child process and dlsym every defined dynamic symbol.

    Returns None when it loads and every symbol resolves, else the loader's message."""
    code = (
        "import ctypes,sys,struct\n"
        "p=sys.argv[1]\n"
        "lib=ctypes.CDLL(p, mode=ctypes.RTLD_LOCAL|2)\n"
        "names=[l for l in sys.stdin.read().split('\\n') if l]\n"
        "dlsym=ctypes.CDLL(None).dlsym; dlsym.restype=ctypes.c_void_p; dlsym.argtypes=[ctypes.c_void_p,ctypes.c_char_p]\n"
        "bad=[n for n in names if not dlsym(lib._handle, n.encode())]\n"
        "print('unresolved: '+' '.join(bad[:5]) if bad else 'ok')\n"
    )
    names = "\n".join(exported_symbols(path))
    r = subprocess.run([sys.executable, "-c", code, str(path)], input=names, capture_output=True, text=True,
                       env=env, timeout=600)
    if r.returncode == 0 and r.stdout.strip() == "ok":
        return None
    msg = (r.stdout.strip() + " " + r.stderr.strip()).strip().splitlines()
    return msg[-1][:300] if msg else f"exit {r.returncode}"


def exported_symbols(path: Path) -> list[str]:
    """Names of the defined global/weak FUNC/OBJECT symbols in .dynsym."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        elf = Elf.read(buf)
        dynsym = next((s for s in elf.shdrs if s.type == SHT_DYNSYM), None)
        if dynsym is None:
            return []
        strtab = elf.shdrs[dynsym.link]
        strs = bytes(buf[strtab.offset:strtab.offset + strtab.size])
        out = []
        for i in range(1, dynsym.size // 24):
            name, info, _other, shndx, _value, _size = struct.unpack_from("<IBBHQQ", buf, dynsym.offset + 24 * i)
            if shndx and shndx < 0xFF00 and (info >> 4) in (1, 2) and (info & 0xF) in (1, 2):
                out.append(strs[name:strs.find(b"\0", name)].decode("ascii", "replace"))
        return sorted(set(out))


# -- one library, a tree ------------------------------------------------------------------------


def prune_file(path: Path, targets: list[str], keep_ptx: bool, *, load_env: dict | None = None,
               check_dlopen: bool = True) -> dict:
    """Rewrite one library in place. Returns its report entry; raises VerifyFailed on a bad rewrite.

    status: "pruned" (rewritten; bytes_before/after), "no-fatbin", "unchanged" (nothing to remove),
    "refused" (not understood: untouched; reason)."""
    before = path.stat().st_size
    rec: dict = {"bytes_before": before, "bytes_after": before}
    tmp = path.with_name(f".{path.name}.fatprune-tmp")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                plan = make_plan(path, buf, targets, keep_ptx)
            except (Refused, struct.error, ValueError, IndexError) as exc:
                return {**rec, "status": "refused", "reason": str(exc) or type(exc).__name__}
            if plan is None:
                return {**rec, "status": "no-fatbin"}
            rec.update(entries_before=plan.entries_before, entries_after=plan.entries_after,
                       archs_before=plan.archs_before, archs_after=plan.archs_after,
                       fatbin_before=plan.sec.size, fatbin_after=plan.new_sec_size)
            if plan.cut == 0:
                return {**rec, "status": "unchanged",
                        "reason": "what the rule drops is less than a page" if plan.new_sec_size < plan.sec.size
                        else "every entry is kept"}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_plan(plan, buf, fh.fileno(), fd)
            finally:
                os.close(fd)
            with open(tmp, "rb") as nh, mmap.mmap(nh.fileno(), 0, access=mmap.ACCESS_READ) as nbuf:
                problems = verify(buf, nbuf, targets, keep_ptx, plan)
            problems += readelf_check(path, tmp)
            if problems:
                raise VerifyFailed(f"{path}: " + "; ".join(problems[:5]))
        if check_dlopen:
            err = check_load(tmp, load_env)
            if err is not None and check_load(path, load_env) is None:
                raise VerifyFailed(f"{path}: the rewrite does not load, the original does: {err}")
            rec["dlopen"] = "ok" if err is None else f"inconclusive (the original does not load either: {err})"
        st = path.stat()
        os.chmod(tmp, st.st_mode & 0o7777)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    after = path.stat().st_size
    return {**rec, "status": "pruned", "bytes_after": after}


def has_fatbin(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                return False
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return Elf.read(buf).section(FATBIN_SECTION) is not None
    except (OSError, ValueError, Refused, struct.error):
        return False


def find_libraries(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file() or ".so" not in f:
                continue
            if has_fatbin(p):
                out.append(p)
    return sorted(out)


def load_env(root: Path) -> dict:
    """An environment where the venv's libraries find each other (every dir holding a .so)."""
    dirs = sorted({str(p.parent) for p in root.rglob("*.so*") if p.is_file()})
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(dirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def prune_tree(root: Path, targets: list[str], keep_ptx: bool, *, check_dlopen: bool = True,
               rel_to: Path | None = None) -> dict:
    """Rewrite every fat binary under root. Returns the report; raises VerifyFailed."""
    from concurrent.futures import ThreadPoolExecutor

    libs = find_libraries(root)
    env = load_env(root) if check_dlopen else None
    libs.sort(key=lambda p: -p.stat().st_size)

    def one(p: Path) -> tuple[str, dict]:
        name = str(p.relative_to(rel_to)) if rel_to else str(p)
        return name, prune_file(p, targets, keep_ptx, load_env=env, check_dlopen=check_dlopen)

    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        results = dict(sorted(pool.map(one, libs)))
    saved = sum(r["bytes_before"] - r["bytes_after"] for r in results.values())
    return {"enabled": True, "targets": list(targets), "ptx": "keep" if keep_ptx else "drop", "bytes": saved,
            "paths": sum(1 for r in results.values() if r["status"] == "pruned"),
            "refused": sorted(k for k, r in results.items() if r["status"] == "refused"),
            "libraries": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Keep only the CUDA kernels the target GPUs can run (experimental).")
    ap.add_argument("--config", type=Path, help="prune.json (reads site_packages and cuda_archs from it)")
    ap.add_argument("--root", type=Path, help="directory to rewrite (default: the config's site-packages)")
    ap.add_argument("--targets", help="comma-separated, e.g. sm_75,sm_86 (default: the config's)")
    ap.add_argument("--ptx", choices=["keep", "drop"], help="also keep the newest PTX (default: the config's)")
    ap.add_argument("--stage", type=Path, help="merge the report into <stage>/etc/imagegen/prune-report.json")
    ap.add_argument("--no-dlopen", action="store_true", help="skip the dlopen check")
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text()) if args.config else {}
    archs = cfg.get("cuda_archs") or {}
    targets = args.targets.split(",") if args.targets else archs.get("targets") or []
    ptx = (args.ptx or archs.get("ptx") or "drop") == "keep"
    root = args.root or (Path(cfg["site_packages"]) if cfg.get("site_packages") else None)
    if not targets or root is None:
        print("fatprune: no targets (cuda_archs) or no root: nothing to do", file=sys.stderr)
        return 0
    try:
        report = prune_tree(root, targets, ptx, check_dlopen=not args.no_dlopen, rel_to=root)
    except VerifyFailed as exc:
        print(f"fatprune: verification failed, build stops: {exc}", file=sys.stderr)
        return 1
    for name, r in report["libraries"].items():
        if r["status"] == "pruned":
            print(f"fatprune: {name}: {r['bytes_before']:,} -> {r['bytes_after']:,} bytes "
                  f"({', '.join(r['archs_after']) or 'no kernels'})", file=sys.stderr)
        elif r["status"] in ("refused", "unchanged"):
            print(f"fatprune: {name}: {r['status']}: {r.get('reason', '')}", file=sys.stderr)
    if args.stage:
        out = args.stage / "etc/imagegen/prune-report.json"
        full = json.loads(out.read_text()) if out.exists() else {"rules": {}}
        full.setdefault("rules", {})["cuda_archs"] = report
        if "venv_bytes_after" in full:
            full["venv_bytes_after"] -= report["bytes"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    print("IMAGEGEN-FATPRUNE-REPORT " + json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
