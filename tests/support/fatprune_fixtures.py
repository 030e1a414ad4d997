"""A small but real CUDA-style shared library for the fat-binary rewriter's tests.

Built with binutils (`as` + `ld -shared`, installed by scripts/setup.sh) the way nvcc and the
host linker lay out real ones (shared/FACTS.md "How the fat binaries are wired"): containers in
`.nv_fatbin`, one 24-byte `__fatBinC_Wrapper_t` per referenced container in `.nvFatBinSegment`
whose data pointer becomes an `R_X86_64_RELATIVE` relocation, relocatable device code in
`__nv_relfatbin` with its own wrapper, code with unwind tables (`.eh_frame`) and exported symbols.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def fat_library(path: Path, containers: list[bytes], wrapped: list[int], *, relfatbin: bytes | None = None,
                rodata_after: bool = True) -> Path:
    """Write a shared object at `path`. containers: raw container bytes (8-byte aligned each);
    wrapped: indexes of the containers that get a wrapper (the others are orphans)."""
    path = Path(path)
    work = path.parent / (path.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    asm = ['.section .nv_fatbin,"a",@progbits\n.balign 8\n']
    for i, c in enumerate(containers):
        blob = work / f"c{i}.bin"
        blob.write_bytes(c + b"\0" * (-len(c) % 8))
        asm.append(f"fatbin{i}:\n.incbin \"{blob}\"\n")
    if relfatbin is not None:
        blob = work / "rel.bin"
        blob.write_bytes(relfatbin)
        asm.append(f'.section __nv_relfatbin,"a",@progbits\n.balign 8\nrelfatbin0:\n.incbin "{blob}"\n')
    asm.append('.section .nvFatBinSegment,"aw",@progbits\n.balign 8\n')
    for i in wrapped:
        asm.append(f".long 0x466243b1, 1\n.quad fatbin{i}\n.quad 0\n")
    if relfatbin is not None:
        asm.append(".long 0x466243b1, 2\n.quad relfatbin0\n.quad 0\n")
    if rodata_after:
        asm.append('.section .rodata.after,"a",@progbits\n.balign 16\nafter: .ascii "rodata after the fatbin"\n')
    asm.append(
        ".data\n.balign 8\n.type table,@object\n.size table,8\ntable: .quad answer\n"
        ".text\n.globl fatbin_getter\n.type fatbin_getter,@function\nfatbin_getter:\n.cfi_startproc\n"
        "pushq %rbp\n.cfi_def_cfa_offset 16\nleaq table(%rip), %rax\npopq %rbp\n.cfi_def_cfa_offset 8\nret\n"
        ".cfi_endproc\n.size fatbin_getter,.-fatbin_getter\n"
        ".globl answer\n.type answer,@function\nanswer:\n.cfi_startproc\nmovl $42, %eax\nret\n.cfi_endproc\n"
    )
    (work / "a.s").write_text("".join(asm))
    subprocess.run(["as", "--64", "-o", str(work / "a.o"), str(work / "a.s")], check=True)
    subprocess.run(["ld", "-shared", "--eh-frame-hdr", "-soname", path.name, "-o", str(path), str(work / "a.o")],
                   check=True)
    return path
