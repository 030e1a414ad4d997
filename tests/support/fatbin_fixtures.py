"""Writers for synthetic CUDA fat binaries and ELF files holding them (test fixtures).

The layout follows imagegen/scripts/fatbin.py's docstring (the measured format). ELF files are
made with binutils (`as` + `ld -shared`, installed by scripts/setup.sh), so they are real ELF
shared objects that pyelftools, readelf and cuobjdump all read.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

MAGIC = struct.pack("<I", 0xBA55ED50)   # a container's first 4 bytes
FLAGS_64BIT_HOST = 0x11          # seen on every real entry (64-bit, Linux host)
LZ4, ZSTD, ARCH_A, FAMILY_F, SM100 = 0x2000, 0x8000, 0x100000, 0x200000, 0x1000000


def entry(kind: str, arch: int, payload: bytes | int = 64, *, variant: str = "",
          compression: str | None = None, header_size: int = 64, extra_flags: int = 0,
          uncompressed: int | None = None, kind_code: int | None = None) -> bytes:
    """One entry: 64-byte header (+ zero extension up to header_size) + payload padded to 8."""
    if isinstance(payload, int):
        payload = bytes((arch + i) & 0xFF for i in range(payload))
    padded = payload + b"\0" * (-len(payload) % 8)
    flags = FLAGS_64BIT_HOST | extra_flags
    flags |= {"": 0, "a": ARCH_A, "f": FAMILY_F}[variant]
    flags |= {None: 0, "lz4": LZ4, "zstd": ZSTD}[compression]
    if arch >= 100 and kind == "sass":
        flags |= SM100
    code = kind_code if kind_code is not None else {"ptx": 1, "sass": 2, "ltoir": 8}[kind]
    usize = 0 if compression is None else (uncompressed if uncompressed is not None else 4 * len(padded))
    csize = len(payload) if compression else 0
    head = struct.pack("<HHIQIIHHIIIQQQ", code, 0x0101, header_size, len(padded), csize, 0,
                       arch % 10, arch // 10, arch, 0, 0, flags, 0, usize)
    return head + b"\0" * (header_size - 64) + padded


def container(*entries: bytes, body_size: int | None = None, magic: int = 0xBA55ED50) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", magic, 1, 16, len(body) if body_size is None else body_size) + body


def section(*containers: bytes) -> bytes:
    """Containers on 8-byte boundaries (zero padding between them)."""
    out = b""
    for c in containers:
        out += c + b"\0" * (-len(c) % 8)
    return out


def elf_with_sections(path: Path, sections: dict[str, bytes], flags: dict[str, str] | None = None) -> Path:
    """Write a real ELF64 shared object at `path` holding each {name: bytes} as a PROGBITS
    section (8-byte aligned), allocated ("a") unless `flags` gives other assembler flags for
    that name (e.g. "aw" for writable data, "ax" for code)."""
    path = Path(path)
    work = path.parent / (path.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    asm = []
    for i, (name, data) in enumerate(sections.items()):
        blob = work / f"s{i}.bin"
        blob.write_bytes(data)
        fl = (flags or {}).get(name, "a")
        asm.append(f'.section {name},"{fl}",@progbits\n.balign 8\n.incbin "{blob}"\n')
    asm.append('.text\n.globl f\nf: ret\n')
    (work / "a.s").write_text("".join(asm))
    subprocess.run(["as", "--64", "-o", str(work / "a.o"), str(work / "a.s")], check=True)
    subprocess.run(["ld", "-shared", "-o", str(path), str(work / "a.o")], check=True)
    return path
