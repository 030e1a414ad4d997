"""Which GPUs a library, a wheel or an image can run on: the CUDA kernels in its ELF files.

One reader for the audit, the lock and the tests. It reads the `.nv_fatbin` section (see
`imagegen/scripts/fatbin.py` for the format and the CUDA runtime's rule) **while the file's bytes
stream past** (a wheel member being inflated, a file in a `docker save` layer, or a file on disk
read in chunks), with bounded memory: it keeps a few header bytes per fat-binary container and
entry, never a payload. How:

* every 8-byte-aligned occurrence of the container magic is a candidate container; the reader
  then wants the bytes of its header and of each of its entry headers, at known offsets ahead;
* the ELF section header table (its offset is in the first 64 bytes) is captured as it passes,
  and a rolling tail keeps the section-name table, which linkers put just before it;
* at the end, `.nv_fatbin` is the section of that name (or, if the name table was out of view,
  the allocated section that candidate containers tile exactly); the containers that chain
  from its start to its end are the answer;
* fat binaries *embedded as data* are reported apart (`LibraryKernels.embedded`): containers in
  the file's other allocated, non-executable PROGBITS sections (`.rodata`, `.lrodata`, `.data`,
  `.data.rel.ro`, `.ldata`, cuBLASLt's `.cask_resource`, ...), which the CUDA runtime never
  registers but the library loads itself through the driver API (`cuModuleLoadData`) or hands
  to nvJitLink. cuFFT does this: nvidia-cufft-cu12 11.3.3.83's `libcufft.so.11` has a 400-byte
  `.nv_fatbin` (sm_52) and 23,531 containers (259 MB: SASS sm_50..sm_101, PTX from compute_50,
  LTO-IR) in its `.ldata`; cuFFT 10.9 (nvidia-cufft-cu11 10.9.0.58) has them in `.data`.
  `__nv_relfatbin` does not count: it holds relocatable device code (nvcc -rdc) kept for a later
  device link, never loaded as is (libphi.so, libnccl.so.2, libcufft.so.10 have one). A
  candidate counts only when its header parses, its entries chain exactly to its end, it lies
  wholly inside one such section and not inside another counted container: magic bytes that
  happen to sit in data are ignored.

A file whose fat-binary data is corrupt gives a `LibraryKernels` with `warning` set, never an
exception. Compute capabilities are ints (75 = 7.5); names 'sm_75' / 'compute_70'.
"""

from __future__ import annotations

import bisect
import heapq
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .scripts import fatbin as fb
from .scripts.fatbin import Container, Entry, FatbinError

MAGIC = struct.pack("<I", fb.CONTAINER_MAGIC)
_MAGIC_RE = re.compile(re.escape(MAGIC))
ELF_MAGIC = b"\x7fELF"
TAIL = 1 << 20          # rolling tail kept for the section-name table (bytes)
CHUNK = 1 << 20
MIN_ELF = 4096          # smaller files hold no fat binary worth reporting

SHT_PROGBITS, SHT_NOBITS = 1, 8
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
NOT_EMBEDDED = (b".nv_fatbin", b"__nv_relfatbin")   # sections whose containers are not `embedded`
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")


@dataclass
class LibraryKernels:
    """The fat-binary inventory of one ELF file.

    path: as given (a path inside a wheel or an image); size: file bytes; fatbin_offset /
    fatbin_bytes: the `.nv_fatbin` section's file offset and size (bytes); containers: parsed
    containers (offsets from the section start); embedded: containers embedded in other data
    sections (offsets are FILE offsets; see the module docstring); warning: why the data could
    not be read (then `containers` is empty and the library is left out of coverage answers)."""
    path: str
    size: int
    fatbin_offset: int = 0
    fatbin_bytes: int = 0
    containers: tuple[Container, ...] = ()
    warning: str | None = None
    embedded: tuple[Container, ...] = ()

    @property
    def entries(self) -> Iterator[Entry]:
        for c in self.containers:
            yield from c.entries

    @property
    def embedded_bytes(self) -> int:
        """Bytes of the embedded containers (headers + entries; padding between them not counted)."""
        return sum(c.size for c in self.embedded)

    def bytes_by_arch(self, embedded: bool = False) -> dict[str, int]:
        """Entry name ('sm_75', 'compute_70', 'sm_90a', 'lto_50') -> bytes (entry header + padded
        payload), over `.nv_fatbin` (or, with embedded=True, over the embedded containers)."""
        out: dict[str, int] = {}
        for c in self.embedded if embedded else self.containers:
            for e in c.entries:
                out[e.name] = out.get(e.name, 0) + e.size
        return dict(sorted(out.items(), key=lambda kv: fb.name_key(kv[0])))

    def containers_by_arch(self, embedded: bool = False) -> dict[str, int]:
        """Entry name -> number of containers holding at least one entry of that name."""
        out: dict[str, int] = {}
        for c in self.embedded if embedded else self.containers:
            for n in {e.name for e in c.entries}:
                out[n] = out.get(n, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: fb.name_key(kv[0])))

    def kernel_containers(self, embedded: bool = False) -> int:
        """Containers holding at least one entry a device can load (SASS or PTX, not only LTO-IR)."""
        return sum(1 for c in (self.embedded if embedded else self.containers)
                   if any(e.kind != "ltoir" for e in c.entries))

    def compressed_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.compression)

    def kept_bytes(self, targets: Iterable[int | str], keep_ptx: bool = False) -> int:
        """Bytes of the entries the CUDA runtime could load on `targets` (fatbin.select per
        container), plus container headers: what the section would hold after an arch prune."""
        ts = list(targets)
        total = 0
        for c in self.containers:
            kept = fb.select(c.entries, ts, keep_ptx)
            if kept:
                total += c.header_size + sum(e.size for e in kept)
        return total


# ---- the streaming reader ---------------------------------------------------------------------

class KernelScan:
    """Feed a file's bytes in order (`feed`), then `result()`. Memory: the pending header reads,
    the section header table and a 1 MiB rolling tail."""

    def __init__(self, path: str, size: int):
        self.path = path
        self.size = size
        self._pos = 0
        self._carry = b""            # last bytes of the previous chunk (for straddling headers)
        self._head = b""
        self._is_elf: bool | None = None
        self._sh: tuple[int, int, int, int] | None = None  # shoff, shentsize, shnum, shstrndx
        self._shdr_bytes = bytearray()
        self._tail: list[tuple[int, bytes]] = []
        self._tail_len = 0
        self._pending: list[tuple[int, int, int, int]] = []   # (offset, need, kind, container)
        self._containers: dict[int, dict] = {}   # file offset -> {"hsize", "body", "entries", "error"}
        self._seen_magic: set[int] = set()
        self._zeros: set[int] = set()            # 8-byte zero words found right after containers

    # -- input
    def feed(self, mv) -> None:
        if self._is_elf is False:
            return
        data = mv       # bytes or memoryview: searched and sliced in place, never copied whole
        if isinstance(data, memoryview) and data.format != "B":
            data = data.cast("B")
        if self._is_elf is None:
            self._head += bytes(data[:64 - len(self._head)])
            if len(self._head) >= 64 or len(self._head) >= self.size:
                self._decide()
                if not self._is_elf:
                    return
        self._scan(data, self._pos)
        self._capture_shdrs(data, self._pos)
        self._pos += len(data)
        if self._pos > self.size - TAIL:          # only the file's last TAIL bytes are kept
            self._tail.append((self._pos - len(data), bytes(data)))
            self._tail_len += len(data)
            while self._tail and self._tail_len - len(self._tail[0][1]) >= TAIL:
                self._tail_len -= len(self._tail.pop(0)[1])
        self._carry = (self._carry + bytes(data))[-256:] if len(data) < 256 else bytes(data[-256:])

    def _decide(self) -> None:
        h = self._head
        self._is_elf = len(h) >= 64 and h[:4] == ELF_MAGIC and h[4] == 2 and h[5] == 1
        if self._is_elf:
            f = _EHDR.unpack_from(h, 0)
            shoff, shentsize, shnum, shstrndx = f[6], f[11], f[12], f[13]
            if shoff and shentsize >= _SHDR.size and shnum:
                self._sh = (shoff, shentsize, shnum, shstrndx)

    def _capture_shdrs(self, data: bytes, pos: int) -> None:
        if self._sh is None:
            return
        shoff, entsize, num, _ = self._sh
        lo, hi = max(shoff, pos), min(shoff + entsize * num, pos + len(data))
        if lo < hi:
            self._shdr_bytes += bytes(data[lo - pos:hi - pos])

    def _scan(self, data: bytes, pos: int) -> None:
        carry = self._carry
        end = pos + len(data)
        # new candidate containers (aligned magic), also one straddling the previous chunk
        hits = [pos + m.start() for m in _MAGIC_RE.finditer(data)]
        if carry:
            edge = carry[-3:] + bytes(data[:3])
            j = edge.find(MAGIC)
            if j != -1 and j < len(edge[:len(carry[-3:])]):
                hits.append(pos - len(carry[-3:]) + j)
        for off in hits:
            if off % 8 == 0 and off not in self._seen_magic:
                self._seen_magic.add(off)
                heapq.heappush(self._pending, (off, fb.CONTAINER_HEADER.size, 0, off))
        # header reads whose bytes are now in view
        window = None
        while self._pending and self._pending[0][0] + self._pending[0][1] <= end:
            off, need, kind, coff = heapq.heappop(self._pending)
            if off >= pos:
                raw = bytes(data[off - pos:off - pos + need])
            else:
                if window is None:
                    window = carry + bytes(data[:4096])
                wbase = pos - len(carry)
                if off < wbase:     # passed before we could read it (cannot happen: headers < 256 bytes)
                    self._fail(coff, f"header at 0x{off:x} out of view")
                    continue
                raw = window[off - wbase:off - wbase + need]
            if kind == 0:
                self._on_container(off, raw)
            elif kind == 1:
                self._on_entry(coff, off, raw)
            elif raw == bytes(8):                 # zero padding after a container
                self._zeros.add(off)
                if off + 16 <= self.size:
                    heapq.heappush(self._pending, (off + 8, 8, 2, coff))

    def _fail(self, coff: int, why: str) -> None:
        c = self._containers.setdefault(coff, {"hsize": 0, "body": 0, "entries": [], "error": None})
        if c["error"] is None:
            c["error"] = why

    def _on_container(self, off: int, raw: bytes) -> None:
        magic, _v, hsize, body = fb.CONTAINER_HEADER.unpack_from(raw, 0)
        c = {"hsize": hsize, "body": body, "entries": [], "error": None}
        self._containers[off] = c
        if hsize < fb.CONTAINER_HEADER.size or hsize > 4096:
            c["error"] = f"container at file offset 0x{off:x}: header size {hsize}"
        elif off + hsize + body > self.size:
            c["error"] = f"container at file offset 0x{off:x}: size {hsize}+{body} runs past the end of the file"
        else:
            if body:
                self._want_entry(off, off + hsize)
            nxt = off + hsize + body
            nxt += -nxt % 8
            if nxt + 8 <= self.size:
                heapq.heappush(self._pending, (nxt, 8, 2, off))

    def _want_entry(self, coff: int, at: int) -> None:
        c = self._containers[coff]
        end = coff + c["hsize"] + c["body"]
        if at >= end:
            return
        if end - at < fb.ENTRY_MIN_HEADER:
            c["error"] = (f"container at file offset 0x{coff:x}: entry at +0x{at - coff:x} truncated "
                          f"({end - at} bytes left)")
            return
        heapq.heappush(self._pending, (at, fb.ENTRY_MIN_HEADER, 1, coff))

    def _on_entry(self, coff: int, at: int, raw: bytes) -> None:
        c = self._containers[coff]
        if c["error"]:
            return
        end = coff + c["hsize"] + c["body"]
        # parse with the shared rules: a buffer holding just this header, bounded by the container
        try:
            e = fb.parse_entry_header(raw, coff, at - coff, end - at)
        except FatbinError as exc:
            c["error"] = f"{exc} (file offset 0x{coff:x})"
            return
        c["entries"].append(e)
        self._want_entry(coff, at + e.size)

    # -- output
    def result(self) -> LibraryKernels | None:
        """The inventory, or None when the file is not ELF64-LE or has neither a `.nv_fatbin`
        nor an embedded container."""
        if not self._is_elf:
            return None
        lib = LibraryKernels(self.path, self.size)
        try:
            secs = self._sections()
            sec = self._fatbin_section(secs)
        except FatbinError as exc:
            lib.warning = str(exc)
            return lib
        if self._pos < self.size:
            if sec is None:
                return None
            lib.warning = f"file ends early ({self._pos} of {self.size} bytes read)"
            return lib
        lib.embedded = self._embedded(secs, sec)
        if sec is None:
            return lib if lib.embedded else None
        off, size = sec
        lib.fatbin_offset, lib.fatbin_bytes = off, size
        out = []
        at, end = off, off + size
        while at < end:
            if at % 8:
                at += 8 - at % 8
                continue
            c = self._containers.get(at)
            if c is None:
                if at in self._zeros:
                    at += 8
                    continue
                lib.warning = f"no fat-binary container at section offset 0x{at - off:x}"
                return lib
            if c["error"]:
                lib.warning = c["error"]
                return lib
            csize = c["hsize"] + c["body"]
            if at + csize > end:
                lib.warning = (f"container at section offset 0x{at - off:x} ({csize} bytes) runs past "
                               f"the end of .nv_fatbin")
                return lib
            out.append(Container(offset=at - off, header_size=c["hsize"], size=csize,
                                 entries=tuple(c["entries"])))
            at += csize
        lib.containers = tuple(out)
        return lib

    def _sections(self) -> list[tuple[bytes | None, int, int, int, int]] | None:
        """(name, sh_type, sh_flags, file offset, size) per section header; name None when the
        section-name table was out of view. None when the file has no section headers."""
        if self._sh is None:
            return None
        shoff, entsize, num, strndx = self._sh
        if len(self._shdr_bytes) < entsize * num:
            raise FatbinError("ELF section header table runs past the end of the file")
        hdrs = [_SHDR.unpack_from(self._shdr_bytes, i * entsize) for i in range(num)]
        names = self._from_tail(hdrs[strndx][4], hdrs[strndx][5]) if strndx < num else None
        return [(names[h[0]:names.find(b"\0", h[0])] if names is not None and h[0] < len(names) else
                 b"" if names is not None else None, h[1], h[2], h[4], h[5]) for h in hdrs]

    def _fatbin_section(self, secs) -> tuple[int, int] | None:
        if not secs:
            return None
        if secs[0][0] is not None:
            for name, typ, _fl, off, size in secs:
                if name == b".nv_fatbin":
                    return (off, size) if typ != SHT_NOBITS and size else None
            return None
        # name table out of view: the allocated PROGBITS section that candidate containers tile
        for _n, typ, flags, off, size in secs:
            if typ == SHT_PROGBITS and flags & SHF_ALLOC and size and off in self._containers:
                at, end = off, off + size
                while at < end and at in self._containers and not self._containers[at]["error"]:
                    c = self._containers[at]
                    at += c["hsize"] + c["body"]
                    at += -at % 8
                if at == end:
                    return off, size
        return None

    def _embedded(self, secs, fatbin: tuple[int, int] | None) -> tuple[Container, ...]:
        """Complete candidate containers wholly inside one allocated, non-executable PROGBITS
        section other than `.nv_fatbin` (and `__nv_relfatbin`, when the section names are in
        view), in file order, none inside another."""
        spans = sorted((off, off + size) for name, typ, flags, off, size in secs or ()
                       if typ == SHT_PROGBITS and flags & SHF_ALLOC and not flags & SHF_EXECINSTR
                       and size and name not in NOT_EMBEDDED and (off, size) != fatbin)
        starts = [lo for lo, _ in spans]
        out: list[Container] = []
        taken = 0                                   # end of the last counted container
        for off in sorted(self._containers):
            c = self._containers[off]
            size = c["hsize"] + c["body"]
            if c["error"] or off < taken or not c["entries"] or \
                    c["hsize"] + sum(e.size for e in c["entries"]) != size:
                continue
            i = bisect.bisect_right(starts, off) - 1
            if i < 0 or off + size > spans[i][1]:
                continue
            out.append(Container(offset=off, header_size=c["hsize"], size=size, entries=tuple(c["entries"])))
            taken = off + size
        return tuple(out)

    def _from_tail(self, off: int, size: int) -> bytes | None:
        for start, data in self._tail:
            if start <= off and off + size <= start + len(data):
                return data[off - start:off - start + size]
        joined_start = self._tail[0][0] if self._tail else 0
        if self._tail and joined_start <= off and off + size <= self._pos:
            blob = b"".join(d for _, d in self._tail)
            return blob[off - joined_start:off - joined_start + size]
        return None


# ---- entry points ------------------------------------------------------------------------------

Warn = Callable[[str], None]


def _warn_default(msg: str) -> None:
    from .console import err
    err.print(f"warning: {msg}", markup=False, highlight=False)


def kernel_result(scan: KernelScan, warn: Warn | None = _warn_default) -> LibraryKernels | None:
    """`scan.result()`, never raising: odd data gives a LibraryKernels with `warning` (and a
    warning line naming the file through `warn`)."""
    try:
        lib = scan.result()
    except Exception as exc:  # noqa: BLE001 - a library we cannot read never crashes a run
        lib = LibraryKernels(scan.path, scan.size, warning=f"unreadable fat-binary data ({exc})")
    if lib is not None and lib.warning and warn is not None:
        warn(f"{scan.path}: CUDA kernels not read: {lib.warning}")
    return lib


def scan_stream(path: str, size: int, pieces: Iterable, warn: Warn | None = _warn_default) -> LibraryKernels | None:
    """Inventory of one file whose bytes arrive as `pieces` (bytes-like, in order)."""
    s = KernelScan(path, size)
    for mv in pieces:
        s.feed(mv)
    return kernel_result(s, warn)


def scan_file(path: str | os.PathLike, name: str | None = None, warn: Warn | None = _warn_default) -> LibraryKernels | None:
    """Inventory of an ELF file on disk (read in 1 MiB chunks). None when it has no fat binary."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size < MIN_ELF:
            return None
        with open(p, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return None
            f.seek(0)
            return scan_stream(name or str(p), size, iter(lambda: f.read(CHUNK), b""), warn)
    except OSError as exc:
        if warn is not None:
            warn(f"{name or p}: CUDA kernels not read: {exc}")
        return None


def cuobjdump_path() -> Path | None:
    """NVIDIA's `cuobjdump` (the cross-check for this reader): on PATH, else from the PyPI wheel
    `nvidia-cuda-cuobjdump` (`nvidia/*/bin/cuobjdump` in site-packages); None when neither exists."""
    import importlib.util
    import shutil

    hit = shutil.which("cuobjdump")
    if hit:
        return Path(hit)
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for p in sorted(Path(root).glob("*/bin/cuobjdump")):
            return p
    return None


def is_library_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return ".so" in base


def scan_wheel(wheel: str | os.PathLike, warn: Warn | None = _warn_default) -> list[LibraryKernels]:
    """Inventories of the shared libraries inside a wheel, inflating each member as a stream
    (nothing is extracted to disk; memory stays bounded)."""
    out = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not is_library_name(info.filename) or info.file_size < MIN_ELF:
                continue
            with z.open(info) as f:
                if f.read(4) != ELF_MAGIC:
                    continue
            with z.open(info) as f:
                lib = scan_stream(info.filename, info.file_size, iter(lambda: f.read(CHUNK), b""), warn)
            if lib is not None:
                out.append(lib)
    return sorted(out, key=lambda l: l.path)
