#!/usr/bin/env python3
"""CUDA fat-binary (`.nv_fatbin`) parser and the CUDA runtime's kernel-selection rule.
Standard library only: it is also copied into the builder stage, where only the stdlib exists.
Importable as `imagegen.scripts.fatbin` and as a plain `fatbin` module (with elfmini.py, the one ELF
reader, beside it). Shared: the host imports it too (matrix_model spells architectures with
`parse_arch`; cuda_kernels and gpu_archs read kernels with `parse_fatbin`, `select`, `find_section`).

Format (NVIDIA does not document it; measured on cuBLAS/cuDNN/Paddle, and ZLUDA and
`jiegec/fatbinary` agree; see shared FACTS "Fat-binary format details"):

A `.nv_fatbin` section is a sequence of *containers*, each starting on an 8-byte boundary:

    container header (16 bytes, little-endian)
      0  u32 magic 0xBA55ED50
      4  u16 version (1)
      6  u16 header_size (16)
      8  u64 size of the entries that follow (bytes)

followed by self-contained *entries* (entry header, then padded payload):

      0  u16 kind (1 = PTX, 2 = ELF/SASS, 8 = LTO-IR)
      4  u32 header_size (64, up to ~104 with an extension; 128 for LTO-IR)
      8  u64 padded payload size (bytes)
     16  u32 compressed size (bytes; 0 when not compressed)
     28  u32 arch (e.g. 75, 90, 100)
     40  u64 flags: 0x2000 LZ4, 0x8000 zstd, 0x100000 `a` (arch-specific, e.g. sm_90a),
                    0x200000 `f` (family, e.g. sm_100f), 0x1000000 set on every sm_100+ cubin
     56  u64 uncompressed size (bytes; 0 or the payload size when not compressed)

Kind 8 is LTO-IR (NVVM IR for link-time optimisation, nvcc's `code=lto_XX`; named 'lto_50'
here): measured on nvidia-cufft-cu12 11.3.3.83, whose `libcufft.so.11` embeds 11,151 containers of
one LTO-IR entry each (entry header 128 bytes, version 0x0101, LZ4) for its LTO callbacks, which
cuFFT hands to nvJitLink. The CUDA runtime never loads LTO-IR onto a device, so it serves no GPU;
`select` keeps it whatever the targets (an arch prune must not remove what a library's own code
may link).

Compute capabilities are ints `major*10 + minor` (75 = 7.5, 100 = 10.0, 121 = 12.1).

Compatibility (CUDA's own rules, CUDA Programming Guide "Binary/PTX compatibility"):
  * SASS sm_X.y runs on X.z with z >= y, never across a major version;
    sm_X.ya runs on exactly X.y; sm_X.yf runs on X.z, z >= y (same family = same major).
  * PTX compute_X.y is JIT-compiled for any device >= X.y; compute_X.ya only for exactly X.y;
    compute_X.yf for X.z, z >= y.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

try:  # imagegen.scripts.fatbin on the host; a plain module beside elfmini.py in the build
    from . import elfmini
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import elfmini  # type: ignore[no-redef]  # noqa: E402

__all__ = [
    "FatbinError", "Entry", "Container", "parse_fatbin", "select", "runs_on",
    "find_section", "wrappers", "parse_container", "parse_entry_header", "parse_arch", "arch_name", "parse_name", "name_key",
    "sass_serves", "ptx_serves",
    "CONTAINER_MAGIC", "FLAG_LZ4", "FLAG_ZSTD", "FLAG_ARCH_SPECIFIC", "FLAG_FAMILY", "FLAG_SM100",
]

CONTAINER_MAGIC = 0xBA55ED50
CONTAINER_HEADER = struct.Struct("<IHHQ")          # magic, version, header_size, size
ENTRY_HEADER = struct.Struct("<HHIQIIHHIIIQQQ")    # 64 bytes, see module docstring
ENTRY_MIN_HEADER = ENTRY_HEADER.size

KIND_PTX = 1
KIND_SASS = 2
KIND_LTOIR = 8
KINDS = {KIND_PTX: "ptx", KIND_SASS: "sass", KIND_LTOIR: "ltoir"}     # header code -> Entry.kind
PREFIX = {"sass": "sm", "ptx": "compute", "ltoir": "lto"}             # Entry.kind -> name prefix

FLAG_LZ4 = 0x2000
FLAG_ZSTD = 0x8000
FLAG_ARCH_SPECIFIC = 0x100000
FLAG_FAMILY = 0x200000
FLAG_SM100 = 0x1000000

SECTION = ".nv_fatbin"                  # the containers
WRAPPER_SECTION = ".nvFatBinSegment"    # the runtime's records pointing at them (`wrappers`)
WRAPPER_MAGIC = 0x466243B1
WRAPPER_SIZE = 24


class FatbinError(ValueError):
    """Corrupt or unrecognised fat-binary data. The message says what and where (byte offset)."""


@dataclass(frozen=True)
class Entry:
    """One entry of a container: a cubin (SASS) or a PTX text for one architecture.

    offset: bytes from the start of its container; header_size: entry header bytes;
    size: header + padded payload (bytes); payload_size: padded payload (bytes);
    uncompressed_size: payload bytes after decompression (== payload_size when not compressed).
    """
    offset: int
    header_size: int
    size: int
    kind: str            # 'sass' | 'ptx' | 'ltoir'
    arch: int            # e.g. 75
    variant: str         # '' | 'a' | 'f'
    compression: str | None   # None | 'lz4' | 'zstd'
    flags: int
    payload_size: int
    uncompressed_size: int

    @property
    def name(self) -> str:
        return arch_name(self.kind, self.arch, self.variant)

    @property
    def major(self) -> int:
        return self.arch // 10


@dataclass(frozen=True)
class Container:
    """One fat-binary container. offset: bytes from the start of `.nv_fatbin`;
    size: header + entries (bytes)."""
    offset: int
    header_size: int
    size: int
    entries: tuple[Entry, ...]


def arch_name(kind: str, arch: int, variant: str = "") -> str:
    """'sm_75', 'sm_90a', 'compute_70', 'compute_100f', 'lto_50'."""
    return f"{PREFIX[kind]}_{arch}{variant}"


def parse_name(name: str) -> "tuple[str, int, str]":
    """An entry name back to (kind, arch, variant): 'sm_90a' -> ('sass', 90, 'a'),
    'compute_70' -> ('ptx', 70, ''), 'lto_50' -> ('ltoir', 50, ''). Raises ValueError."""
    prefix, _, rest = name.partition("_")
    kind = next((k for k, p in PREFIX.items() if p == prefix), None)
    if kind is None or not rest:
        raise ValueError(f"not a fat-binary entry name: {name!r}")
    variant = rest[-1] if rest[-1] in "af" else ""
    return kind, parse_arch(rest), variant


def name_key(name: str) -> tuple:
    """Sort key for entry names: SASS, then PTX, then LTO-IR, each by architecture."""
    kind, arch, _ = parse_name(name)
    return (list(PREFIX).index(kind), arch, name)


def parse_arch(value: "str | int") -> int:
    """'sm_75' / 'compute_75' / '7.5' / 'sm75' / 75 -> 75. Raises ValueError on anything else.
    A trailing 'a'/'f' variant letter is accepted and dropped."""
    if isinstance(value, bool):
        raise ValueError(f"not a GPU architecture: {value!r}")
    if isinstance(value, int):
        if 10 <= value <= 199:
            return value
        raise ValueError(f"not a GPU architecture: {value!r}")
    s = str(value).strip().lower()
    for prefix in ("sm_", "compute_", "sm", "compute"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    if s.endswith(("a", "f")):
        s = s[:-1]
    if "." in s:
        major, _, minor = s.partition(".")
        if major.isdigit() and minor.isdigit() and len(minor) == 1:
            return int(major) * 10 + int(minor)
    elif s.isdigit() and 2 <= len(s) <= 3:
        v = int(s)
        if 10 <= v <= 199:
            return v
    raise ValueError(f"not a GPU architecture: {value!r} (expected e.g. sm_75 or 7.5)")


def parse_entry_header(raw, coff: int, eoff: int, left: int) -> Entry:
    """Parse one entry header from `raw` (its first 64 bytes at least). coff: the container's
    offset (for messages); eoff: the entry's offset in its container; left: bytes from the entry's
    start to the container's end. Raises FatbinError."""
    if left < ENTRY_MIN_HEADER or len(raw) < ENTRY_MIN_HEADER:
        raise FatbinError(f"container at 0x{coff:x}: entry at +0x{eoff:x} truncated "
                          f"({left} bytes left, an entry header needs {ENTRY_MIN_HEADER})")
    (kind, _ver, hsize, psize, _csize, _u2, _minor, _major, arch, _noff, _nlen, flags, _z,
     usize) = ENTRY_HEADER.unpack_from(raw, 0)
    if kind not in KINDS:
        raise FatbinError(f"container at 0x{coff:x}: entry at +0x{eoff:x} has unknown kind {kind}")
    if hsize < ENTRY_MIN_HEADER or hsize > 4096:
        raise FatbinError(f"container at 0x{coff:x}: entry at +0x{eoff:x} has header size {hsize}")
    if hsize + psize > left:
        raise FatbinError(f"container at 0x{coff:x}: entry at +0x{eoff:x} ({hsize}+{psize} bytes) "
                          f"runs past the container end ({left} bytes left)")
    if flags & FLAG_LZ4 and flags & FLAG_ZSTD:
        raise FatbinError(f"container at 0x{coff:x}: entry at +0x{eoff:x} flags 0x{flags:x} "
                          "claim both LZ4 and zstd")
    compression = "lz4" if flags & FLAG_LZ4 else "zstd" if flags & FLAG_ZSTD else None
    variant = "a" if flags & FLAG_ARCH_SPECIFIC else "f" if flags & FLAG_FAMILY else ""
    if compression is None:
        usize = psize
    elif usize == 0:
        raise FatbinError(f"container at 0x{coff:x}: entry at +0x{eoff:x} is {compression}-"
                          "compressed but records no uncompressed size")
    return Entry(offset=eoff, header_size=hsize, size=hsize + psize,
                 kind=KINDS[kind], arch=arch, variant=variant,
                 compression=compression, flags=flags, payload_size=psize, uncompressed_size=usize)


def _entry_at(buf, coff: int, eoff: int, end: int) -> Entry:
    at = coff + eoff
    return parse_entry_header(buf[at:at + ENTRY_MIN_HEADER], coff, eoff, end - at)


def parse_container(buf, offset: int = 0) -> Container:
    """Parse the container starting at byte `offset` of `buf`. Raises FatbinError."""
    n = len(buf)
    if n - offset < CONTAINER_HEADER.size:
        raise FatbinError(f"container at 0x{offset:x}: truncated header ({n - offset} bytes)")
    magic, _version, hsize, body = CONTAINER_HEADER.unpack_from(buf, offset)
    if magic != CONTAINER_MAGIC:
        raise FatbinError(f"no fat-binary container at 0x{offset:x}: magic 0x{magic:08x}, "
                          f"expected 0x{CONTAINER_MAGIC:08x}")
    if hsize < CONTAINER_HEADER.size or hsize > 4096:
        raise FatbinError(f"container at 0x{offset:x}: header size {hsize}")
    if offset + hsize + body > n:
        raise FatbinError(f"container at 0x{offset:x}: size {hsize}+{body} runs past the end of "
                          f"the section ({n - offset} bytes left)")
    end = offset + hsize + body
    entries = []
    eoff = hsize
    while offset + eoff < end:
        e = _entry_at(buf, offset, eoff, end)
        entries.append(e)
        eoff += e.size
    return Container(offset=offset, header_size=hsize, size=hsize + body, entries=tuple(entries))


def parse_fatbin(buf: "bytes | bytearray | memoryview | mmap.mmap") -> list[Container]:
    """Walk a whole `.nv_fatbin` section: containers on 8-byte boundaries, zero padding between
    them allowed. Only headers are read (the payloads are not copied), so a memoryview over an
    mmap keeps memory bounded. Raises FatbinError with the reason and byte offset on corrupt data."""
    if isinstance(buf, memoryview) and buf.format != "B":
        buf = buf.cast("B")
    n = len(buf)
    out: list[Container] = []
    off = 0
    while off < n:
        if off % 8:
            off += 8 - off % 8
            continue
        if n - off < 4 or struct.unpack_from("<I", buf, off)[0] == 0:
            # zero padding (between containers, or at the end of the section)
            pad = bytes(buf[off:off + 8])
            if pad.strip(b"\0"):
                raise FatbinError(f"unexpected bytes at 0x{off:x} between containers")
            off += 8
            continue
        c = parse_container(buf, off)
        out.append(c)
        off += c.size
    return out


# ---- the CUDA runtime's rule ---------------------------------------------------------------

def sass_serves(arch: int, variant: str, cc: int) -> bool:
    """Does SASS for `arch` (+variant) run on a device of compute capability `cc`?"""
    if variant == "a":
        return arch == cc
    return arch // 10 == cc // 10 and arch <= cc


def ptx_serves(arch: int, variant: str, cc: int) -> bool:
    """Can the driver JIT-compile PTX for `arch` (+variant) on a device of capability `cc`?"""
    if variant == "a":
        return arch == cc
    if variant == "f":
        return arch // 10 == cc // 10 and arch <= cc
    return arch <= cc


def _serves(e: Entry, cc: int) -> bool:
    """LTO-IR serves no device: only nvJitLink, called by the library itself, consumes it."""
    if e.kind == "ltoir":
        return False
    return sass_serves(e.arch, e.variant, cc) if e.kind == "sass" else ptx_serves(e.arch, e.variant, cc)


def _pick(entries: Sequence[Entry], cc: int) -> list[Entry]:
    """The entries the runtime would load for device `cc`: the best SASS, else the best PTX.
    Ties (several entries for the same best arch, e.g. sm_90 and sm_90a on 9.0) are all kept."""
    for kind in ("sass", "ptx"):
        ok = [e for e in entries if e.kind == kind and _serves(e, cc)]
        if ok:
            best = max(e.arch for e in ok)
            return [e for e in ok if e.arch == best]
    return []


def _ccs(targets: Iterable["int | str"]) -> list[int]:
    return sorted({parse_arch(t) for t in targets})


def select(entries: Iterable[Entry], targets: Iterable["int | str"], keep_ptx: bool = False) -> list[Entry]:
    """Entries of ONE container to keep so that every target GPU loads what it loads today.

    Per target cc: the SASS entry of the highest arch <= cc in the same major version (respecting
    `a`/`f` variants); where there is none, the highest PTX usable on cc; else nothing. Union over
    targets, in the container's order. With keep_ptx, every plain or family PTX entry whose arch
    is <= the newest target is kept too (so GPUs newer than the list can still JIT-compile).
    LTO-IR entries are always kept: the runtime never loads them, but the library's own code may
    link them (nvJitLink), so a prune that drops them could break it silently.
    Raises ValueError on a target that is not an architecture."""
    entries = list(entries)
    ccs = _ccs(targets)
    keep: set[int] = {id(e) for e in entries if e.kind == "ltoir"}
    for cc in ccs:
        keep.update(id(e) for e in _pick(entries, cc))
    if keep_ptx and ccs:
        newest = ccs[-1]
        keep.update(id(e) for e in entries
                    if e.kind == "ptx" and e.variant != "a" and e.arch <= newest)
    return [e for e in entries if id(e) in keep]


def runs_on(entries: Iterable[Entry], cc: "int | str") -> bool:
    """True if `entries` (one container's) offer a usable kernel path on capability `cc`:
    SASS X.y for a device X.z (z >= y, same major; `a` exactly), or PTX <= cc."""
    c = parse_arch(cc)
    return any(_serves(e, c) for e in entries)


# ---- the section locator (builder and host): elfmini, the one ELF reader ---------------------


def find_section(path_or_buf, name: str) -> "tuple[int, int, int] | None":
    """(file_offset, size, addr) of section `name` in an ELF64 little-endian file (a path or a
    bytes-like object), or None when the file has no such section (or is not ELF64-LE).
    Reads only the headers (elfmini.ElfFile), through a read-only mmap for a path.
    Raises FatbinError when the headers are truncated or point outside the file."""
    if isinstance(path_or_buf, (str, bytes, os.PathLike)) and not (
            isinstance(path_or_buf, bytes) and path_or_buf[:4] == elfmini.ELF_MAGIC):
        with open(path_or_buf, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < elfmini.EHDR.size:
                return None
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return _find_section(m, name)
    return _find_section(path_or_buf, name)


def wrappers(elf: "elfmini.ElfFile") -> "list[tuple[int, int, int]]":
    """(vaddr of the data pointer, its stored value, version) of each `__fatBinC_Wrapper_t` (24 bytes:
    u32 magic 0x466243B1, u32 version, u64 data pointer, u64 unused) in WRAPPER_SECTION, the records
    the CUDA runtime registers a library's containers from (shared FACTS "How the fat binaries are
    wired"). [] without that section. Raises FatbinError on a second such section or a bad magic."""
    hits = elf.named(WRAPPER_SECTION)
    if len(hits) > 1:
        raise FatbinError(f"{len(hits)} sections named {WRAPPER_SECTION}")
    if not hits or hits[0].type == elfmini.SHT_NOBITS:
        return []
    s, out = hits[0], []
    for i in range(s.size // WRAPPER_SIZE):
        magic, version, data, _extra = struct.unpack_from("<IIQQ", elf.buf, s.offset + WRAPPER_SIZE * i)
        if magic != WRAPPER_MAGIC:
            raise FatbinError(f"{WRAPPER_SECTION} entry {i} has magic {magic:#x}, not {WRAPPER_MAGIC:#x}")
        out.append((s.addr + WRAPPER_SIZE * i + 8, data, version))
    return out


def _find_section(buf, name: str):
    try:
        return elfmini.ElfFile(buf).locate(name)
    except elfmini.BadELF as exc:
        raise FatbinError(str(exc)) from None
    except elfmini.NotELF:
        return None


def main(argv: "list[str] | None" = None) -> int:
    """`python3 fatbin.py LIB...`: print each library's fat-binary entries (one line per arch)."""
    argv = sys.argv[1:] if argv is None else argv
    rc = 0
    for path in argv:
        try:
            loc = find_section(path, ".nv_fatbin")
            if loc is None:
                print(f"{path}: no .nv_fatbin")
                continue
            off, size, _addr = loc
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if hasattr(m, "madvise"):       # headers only: no read-ahead of the payloads
                    m.madvise(mmap.MADV_RANDOM)
                with memoryview(m) as whole, whole[off:off + size] as sec:
                    cs = parse_fatbin(sec)
                totals: dict[str, int] = {}
                for c in cs:
                    for e in c.entries:
                        totals[e.name] = totals.get(e.name, 0) + e.size
            print(f"{path}: {size} bytes of .nv_fatbin")
            for k in sorted(totals, key=name_key):
                print(f"  {k:14} {totals[k]:>14,d}")
        except (OSError, FatbinError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
