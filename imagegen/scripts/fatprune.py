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

try:  # imagegen.scripts.fatprune in the package; a plain script beside its siblings in the build
    from . import contract, elfmini, fatbin
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import contract  # type: ignore[no-redef]  # noqa: E402
    import elfmini  # type: ignore[no-redef]  # noqa: E402
    import fatbin  # type: ignore[no-redef]  # noqa: E402

Phdr, Shdr = elfmini.Phdr, elfmini.Shdr
PAGE = 0x1000
PHDR_SIZE, SHDR_SIZE = elfmini.PHDR_SIZE, elfmini.SHDR_SIZE
PT_LOAD, PT_PHDR = elfmini.PT_LOAD, elfmini.PT_PHDR
SHT_NOBITS = elfmini.SHT_NOBITS
R_X86_64_RELATIVE = 8
FATBIN_SECTION = fatbin.SECTION
COPY_CHUNK = 16 << 20


class Refused(Exception):
    """The library's layout is not one this rewriter understands: it is left untouched."""


class VerifyFailed(Exception):
    """A rewrite did not pass verification (a bug): the original stays, the build fails."""


# -- reading: elfmini's headers, and what this rewriter needs of them ------------------------------


def read_elf(buf) -> elfmini.ElfFile:
    """The headers of a file this rewriter can handle: ELF64 little-endian x86-64, standard header
    entry sizes, fewer than 0xff00 sections, header tables inside the file. Raises Refused."""
    if len(buf) < 64 or bytes(buf[:4]) != elfmini.ELF_MAGIC:
        raise Refused("not an ELF file")
    (ident, _type, machine, _v, _e, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, shnum,
     _strndx) = elfmini.EHDR.unpack_from(buf, 0)
    if ident[4] != 2 or ident[5] != 1 or machine != elfmini.EM_X86_64:
        raise Refused("not a little-endian ELF64 x86-64 file")
    if phentsize != PHDR_SIZE or shentsize != SHDR_SIZE or not shnum or shnum >= elfmini.SHN_LORESERVE:
        raise Refused("unusual ELF header (entry sizes or section count)")
    if phoff + phnum * PHDR_SIZE > len(buf) or shoff + shnum * SHDR_SIZE > len(buf):
        raise Refused("header tables lie outside the file")
    try:
        return elfmini.ElfFile(buf)
    except elfmini.NotELF as exc:
        raise Refused(str(exc)) from None


def section(elf: elfmini.ElfFile, name: str) -> Shdr | None:
    """The one section called `name`, or None. Raises Refused when there are several."""
    hits = elf.named(name)
    if len(hits) > 1:
        raise Refused(f"{len(hits)} sections named {name}")
    return hits[0] if hits else None


def file_offset(elf: elfmini.ElfFile, vaddr: int, size: int = 1) -> int:
    """File offset of `size` bytes at `vaddr`, backed by one PT_LOAD's file bytes. Raises Refused."""
    off = elf.vaddr_to_offset(vaddr, size)
    if off is None:
        raise Refused(f"address {vaddr:#x} is not backed by file bytes of any PT_LOAD")
    return off


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


@dataclass
class References:
    """What points into .nv_fatbin (offsets relative to the section), each at a container's start."""
    relocs: list[tuple[int, int, int]]        # RELATIVE relocations: (entry file offset, r_offset, container)
    wrappers: list[tuple[int, int, int]]      # every wrapper of .nvFatBinSegment (fatbin.wrappers)
    symbols: list[tuple[int, int]]            # (file offset of st_value, container or the section's end)
    containers: set[int]                      # the containers referenced


def make_plan(path: Path, buf, targets: list[str], keep_ptx: bool) -> Plan | None:
    """Plan the rewrite of one library, or None when it has no .nv_fatbin. Raises Refused.

    Phases: the layout's refusals, the containers tiling the section, the references into it, the
    placement of the kept entries, the pages cut out of the file (with the new program headers),
    and the values to patch."""
    elf = read_elf(buf)
    sec = section(elf, FATBIN_SECTION)
    if sec is None or sec.type == SHT_NOBITS or sec.size == 0:
        return None
    seg_i = check_layout(elf, sec)
    containers = tiled_containers(buf, sec)
    refs = find_references(elf, sec, {container_span(c)[0] for c in containers})
    placed, new_sec_size = place(containers, refs.containers, targets, keep_ptx)
    counts = dict(entries_before=sum(len(p.container.entries) for p in placed),
                  entries_after=sum(len(p.kept) for p in placed),
                  archs_before=sorted({e.name for p in placed for e in p.container.entries}),
                  archs_after=sorted({e.name for p in placed for e in p.kept}))
    phdr_at, cut = page_cut(elf, sec, seg_i, new_sec_size)
    hi = sec.offset + sec.size
    if cut <= 0:
        return Plan(path, len(buf), sec, placed, new_sec_size, seg_i, None, hi, 0, elf.phdrs, **counts)
    new_phdrs = program_headers(elf, sec, seg_i, new_sec_size, phdr_at, cut)
    plan = Plan(path, len(buf), sec, placed, new_sec_size, seg_i, phdr_at, hi - cut, cut, new_phdrs, **counts)
    plan.patches = value_patches(elf, sec, refs, {p.old: p.new for p in placed}, {sec.size: new_sec_size})
    return plan


def check_layout(elf: elfmini.ElfFile, sec: Shdr) -> int:
    """Refuse a layout this rewriter does not handle; the index of the PT_LOAD holding .nv_fatbin."""
    if elf.e_type != elfmini.ET_DYN:
        raise Refused("not a shared object (ET_DYN)")
    if elfmini.DT_RELR in elf.dynamic:
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
        if s.flags & elfmini.SHF_ALLOC and s.addr < ahi and alo < s.addr + s.size:
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
        if i != seg_i and p.filesz and p.offset < hi and lo < p.offset + p.filesz:
            raise Refused(f"program header {i} (type {p.type:#x}) overlaps {FATBIN_SECTION}")
    return seg_i


def tiled_containers(buf, sec: Shdr) -> list:
    """The section's containers (fatbin.Container), which must tile it up to zero padding."""
    data = memoryview(buf)[sec.offset:sec.offset + sec.size]
    try:
        containers = fatbin.parse_fatbin(data)
    except fatbin.FatbinError as exc:
        raise Refused(f"{FATBIN_SECTION}: {exc}") from None
    if not containers:
        raise Refused(f"{FATBIN_SECTION} holds no fat-binary container")
    pos = 0
    for c in containers:
        off, length = container_span(c)
        if off < pos or any(data[pos:off]):
            raise Refused(f"unparsed bytes in {FATBIN_SECTION} at {pos:#x}")
        if struct.unpack_from("<I", data, off)[0] != fatbin.CONTAINER_MAGIC:
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
    return containers


def find_references(elf: elfmini.ElfFile, sec: Shdr, starts: set[int]) -> References:
    """Everything that points into .nv_fatbin: RELATIVE relocations (and the value stored at their
    offset), the wrappers' data pointers, symbols. Each must point at a container's start."""
    alo, ahi = sec.addr, sec.addr + sec.size
    relocs, referenced = [], set()
    for at, r_offset, r_info, addend in elf.relas():
        if alo <= r_offset < ahi:
            raise Refused(f"a relocation applies inside {FATBIN_SECTION} (at {r_offset:#x})")
        if r_info & 0xFFFFFFFF != R_X86_64_RELATIVE:
            continue
        if alo <= addend < ahi:
            rel = addend - alo
            if rel not in starts:
                raise Refused(f"a relocation points inside {FATBIN_SECTION} at {addend:#x}, not at a container")
            referenced.add(rel)
            relocs.append((at, r_offset, rel))
    wraps = fatbin.wrappers(elf)  # FatbinError (a ValueError) for records it cannot read
    for _slot, value, _version in wraps:
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
        elif alo <= value < ahi and shndx != elfmini.SHN_ABS:
            raise Refused(f"a symbol of section {shndx} points inside {FATBIN_SECTION} at {value:#x}")
    return References(relocs, wraps, syms, referenced)


def place(containers: list, referenced: set[int], targets: list[str], keep_ptx: bool) -> tuple[list[Placed], int]:
    """Kept entries compacted per container (8-byte aligned); containers nothing references
    (orphans) keep their bytes and their address. Returns the placement and the new section size."""
    placed: list[Placed] = []
    cursor = 0
    for c in containers:
        off, length = container_span(c)
        if off not in referenced:
            placed.append(Placed(off, off, c.header_size, list(c.entries), c, True, length))
            cursor = off + length
            continue
        kept_ids = {id(e) for e in fatbin.select(c.entries, targets, keep_ptx=keep_ptx)}
        p = Placed(off, (cursor + 7) & ~7, c.header_size, [e for e in c.entries if id(e) in kept_ids], c, False,
                   length)
        placed.append(p)
        cursor = p.new + p.new_len
    return placed, cursor


def page_cut(elf: elfmini.ElfFile, sec: Shdr, seg_i: int, new_sec_size: int) -> tuple[int | None, int]:
    """(phdr_at, cut): `cut` bytes, whole pages, come out of the freed range [lo + new_sec_size, hi).
    When the PT_LOAD holding .nv_fatbin goes on past it, that segment splits in two and the program
    header table (one entry more) moves to `phdr_at`, 8-byte aligned after the compacted fatbin (the
    old table, right after the ELF header, has no spare slot); the pages are cut after it. Else
    `phdr_at` is None."""
    lo, hi = sec.offset, sec.offset + sec.size
    seg = elf.phdrs[seg_i]
    split = seg.offset + seg.filesz > hi or seg.memsz > seg.filesz
    nph = len(elf.phdrs) + (1 if split else 0)
    phdr_at = (lo + new_sec_size + 7) & ~7 if split else None
    room_from = phdr_at + nph * PHDR_SIZE if split else lo + new_sec_size
    return phdr_at, ((hi - room_from) // PAGE) * PAGE


def program_headers(elf: elfmini.ElfFile, sec: Shdr, seg_i: int, new_sec_size: int, phdr_at: int | None,
                    cut: int) -> list[Phdr]:
    """The new program header table: the PT_LOAD holding .nv_fatbin ends after it (split: a second
    PT_LOAD maps what followed it, and the table moves to `phdr_at`), later offsets move down by
    `cut`, and every PT_LOAD gets p_align 0x1000. Raises Refused."""
    lo, hi = sec.offset, sec.offset + sec.size
    seg = elf.phdrs[seg_i]
    nph = len(elf.phdrs) + (1 if phdr_at is not None else 0)
    out: list[Phdr] = []
    for i, p in enumerate(elf.phdrs):
        q = Phdr(**p.__dict__)
        if i == seg_i:
            q.filesz = q.memsz = (phdr_at + nph * PHDR_SIZE if phdr_at is not None else lo + new_sec_size) - p.offset
            q.align = PAGE
            out.append(q)
            if phdr_at is not None:
                delta = hi - p.offset
                out.append(Phdr(PT_LOAD, p.flags, hi - cut, p.vaddr + delta, p.paddr + delta, p.filesz - delta,
                                p.memsz - delta, PAGE))
            continue
        if p.type == PT_PHDR:
            if phdr_at is not None:
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
        out.append(q)
    loads = [p for p in out if p.type == PT_LOAD]
    if [p.vaddr for p in loads] != sorted(p.vaddr for p in loads):
        raise Refused("PT_LOAD entries are not sorted by address")
    return out


def value_patches(elf: elfmini.ElfFile, sec: Shdr, refs: References, moved: dict[int, int],
                  moved_end: dict[int, int]) -> dict[int, int]:
    """{original file offset: new u64 value} (all outside .nv_fatbin): relocation addends and the
    values stored at their offsets, wrapper data pointers without a relocation, symbol values."""
    lo, hi, alo = sec.offset, sec.offset + sec.size, sec.addr
    patches: dict[int, int] = {}
    for at, r_offset, rel in refs.relocs:
        new_addr = alo + moved[rel]
        patches[at + 16] = new_addr
        slot = file_offset(elf, r_offset, 8)
        stored = elf.u64(slot)
        if stored == alo + rel:
            patches[slot] = new_addr
        elif stored != 0:
            raise Refused(f"the value at {r_offset:#x} ({stored:#x}) disagrees with its relocation")
    reloc_slots = {r for _a, r, _rel in refs.relocs}
    for slot_addr, value, _version in refs.wrappers:
        if alo <= value < alo + sec.size and slot_addr not in reloc_slots:
            patches[file_offset(elf, slot_addr, 8)] = alo + moved[value - alo]
    for at, rel in refs.symbols:
        patches[at] = alo + (moved[rel] if rel in moved else moved_end[rel])
    for off in patches:
        if lo <= off < hi:
            raise Refused("a patched value lies inside the fatbin")
    return patches


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
    elf = read_elf(buf)
    ehdr = list(elf.ehdr)
    if plan.phdr_at is not None:
        ehdr[5] = plan.phdr_at
        ehdr[10] = len(plan.new_phdrs)
    else:
        table = b"".join(p.pack() for p in plan.new_phdrs)
        os.pwrite(dst_fd, table, ehdr[5])
    ehdr[6] = plan.new_offset(ehdr[6])
    os.pwrite(dst_fd, elfmini.EHDR.pack(*ehdr), 0)
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
    at = [(e.name, base + entry_span(c, e)[0], e.size) for e in entries]
    return [(name, hashlib.sha256(buf[o:o + n]).hexdigest()) for name, o, n in at]


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
    old = read_elf(orig_buf)
    try:
        new = read_elf(new_buf)
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
        if sn.flags & elfmini.SHF_ALLOC:
            at = new.vaddr_to_offset(sn.addr, sn.size)
            if at is None:
                problems.append(f"section {sn.name} at {sn.addr:#x} is not mapped by one PT_LOAD")
                continue
            if at != sn.offset:
                problems.append(f"section {sn.name}: its address maps to {at:#x}, its offset is {sn.offset:#x}")
                continue
        problems += _compare(orig_buf, so.offset, new_buf, sn.offset, sn.size, patched_new, sn.name)
    problems += _check_fatbin(old, new, targets, keep_ptx)
    nsec = section(new, FATBIN_SECTION)
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


def _containers(elf: elfmini.ElfFile):
    sec = section(elf, FATBIN_SECTION)
    data = memoryview(elf.buf)[sec.offset:sec.offset + sec.size]
    return sec, {container_span(c)[0]: c for c in fatbin.parse_fatbin(data)}


def _pointers(elf: elfmini.ElfFile) -> list[int]:
    """The run-time data pointer of each wrapper: its RELATIVE addend if relocated, else the stored value."""
    addends = {}
    for _at, r_offset, r_info, addend in elf.relas():
        if r_info & 0xFFFFFFFF == R_X86_64_RELATIVE:
            addends[r_offset] = addend
    out = []
    for slot, value, _version in fatbin.wrappers(elf):
        if slot in addends and value not in (0, addends[slot]):
            out.append(-1)  # stored value disagrees with relocation
        else:
            out.append(addends.get(slot, value))
    return out


def _check_fatbin(old: elfmini.ElfFile, new: elfmini.ElfFile, targets: list[str], keep_ptx: bool) -> list[str]:
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
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        names = "\n".join(read_elf(buf).exported_symbols())  # the defined global/weak FUNC/OBJECT ones
    r = subprocess.run([sys.executable, "-c", code, str(path)], input=names, capture_output=True, text=True,
                       env=env, timeout=600)
    if r.returncode == 0 and r.stdout.strip() == "ok":
        return None
    msg = (r.stdout.strip() + " " + r.stderr.strip()).strip().splitlines()
    return msg[-1][:300] if msg else f"exit {r.returncode}"


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
                return section(read_elf(buf), FATBIN_SECTION) is not None
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
    ap.add_argument("--stage", type=Path, help=f"merge the report into <stage>/{contract.PRUNE_REPORT}")
    ap.add_argument("--no-dlopen", action="store_true", help="skip the dlopen check")
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text()) if args.config else {}
    contract.check_config(cfg, "fatprune")
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
        out = args.stage / contract.PRUNE_REPORT
        full = contract.merge_cuda_archs(json.loads(out.read_text()) if out.exists() else {"rules": {}}, report)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    print(contract.FATPRUNE_REPORT_MARK + json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
