"""Independent checks of a fat-binary rewrite (imagegen/scripts/fatprune.py), for the tests.

They read the files with other tools than the rewriter does: pyelftools for relocations and the
wrappers, binutils' `readelf` for the section and program header tables, NVIDIA's `cuobjdump`
(PyPI `nvidia-cuda-cuobjdump`) for the kept architectures, and the dynamic loader (`dlopen`).
Only the fat-binary container format comes from imagegen/scripts/fatbin.py (the one parser).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from imagegen import cuda_kernels
from imagegen.scripts import fatbin

PAGE = 0x1000
WRAPPER_MAGIC = 0x466243B1


# -- readelf ----------------------------------------------------------------------------------

def readelf_sections(path: Path) -> dict[str, dict]:
    """`readelf -SW`: name -> {type, addr, off, size, flags, align}."""
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    secs = {}
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+"
                     r"(\S*)\s+\d+\s+\d+\s+(\d+)", line)
        if m and m.group(1) != "NULL":
            name, typ, addr, off, size, flags, align = m.groups()
            secs[name] = {"type": typ, "addr": int(addr, 16), "off": int(off, 16), "size": int(size, 16),
                          "flags": flags, "align": int(align)}
    return secs


def readelf_loads(path: Path) -> list[dict]:
    """`readelf -lW`: the PT_LOAD lines, {off, vaddr, filesz, memsz, flags, align}."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    loads = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            loads.append({"off": int(f[1], 16), "vaddr": int(f[2], 16), "filesz": int(f[4], 16),
                          "memsz": int(f[5], 16), "flags": " ".join(f[6:-1]), "align": int(f[-1], 16)})
    return loads


# -- pyelftools: wrappers, relocations, containers ---------------------------------------------

def wrapper_targets(path: Path) -> list[int]:
    """The run-time data pointer of each `.nvFatBinSegment` wrapper: its R_X86_64_RELATIVE addend
    when relocated, else the stored value (pyelftools)."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        seg = elf.get_section_by_name(".nvFatBinSegment")
        if seg is None:
            return []
        addends = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec.is_RELA():
                for r in sec.iter_relocations():
                    if r["r_info_type"] == 8:  # R_X86_64_RELATIVE
                        addends[r["r_offset"]] = r["r_addend"]
        data = seg.data()
        out = []
        for i in range(len(data) // 24):
            magic, _version, value, _x = struct.unpack_from("<IIQQ", data, 24 * i)
            assert magic == WRAPPER_MAGIC, f"wrapper {i} of {path} has magic {magic:#x}"
            slot = seg["sh_addr"] + 24 * i + 8
            if slot in addends:
                assert value in (0, addends[slot]), f"wrapper {i}: stored {value:#x} != addend {addends[slot]:#x}"
            out.append(addends.get(slot, value))
        return out


def fatbin_section(path: Path) -> tuple[int, bytes]:
    with open(path, "rb") as fh:
        sec = ELFFile(fh).get_section_by_name(".nv_fatbin")
        return sec["sh_addr"], sec.data()


def entry_digests(data: bytes, c: fatbin.Container, entries) -> list[tuple[str, str]]:
    return [(e.name, hashlib.sha256(data[c.offset + e.offset:c.offset + e.offset + e.size]).hexdigest())
            for e in entries]


def check_containers(orig: Path, new: Path, targets, keep_ptx: bool = False) -> dict:
    """Every wrapper's data pointer in `new` is a valid container header, and per container the
    kept entries are the original's entries filtered by fatbin.select, byte for byte (sha256).
    Containers nothing references keep their bytes and address. Returns counts."""
    oaddr, odata = fatbin_section(orig)
    naddr, ndata = fatbin_section(new)
    optrs, nptrs = wrapper_targets(orig), wrapper_targets(new)
    assert len(optrs) == len(nptrs)
    ocont = {c.offset: c for c in fatbin.parse_fatbin(odata)}
    checked = kept = dropped = 0
    reached = set()
    for i, (op, np_) in enumerate(zip(optrs, nptrs, strict=False)):
        if not oaddr <= op < oaddr + len(odata):
            assert op == np_, f"wrapper {i} outside .nv_fatbin changed"
            continue
        oc = ocont[op - oaddr]
        reached.add(oc.offset)
        assert naddr <= np_ < naddr + len(ndata), f"wrapper {i} points outside the new .nv_fatbin"
        nc = fatbin.parse_container(ndata, np_ - naddr)  # raises on an invalid header
        want = entry_digests(odata, oc, fatbin.select(oc.entries, targets, keep_ptx=keep_ptx))
        got = entry_digests(ndata, nc, nc.entries)
        assert got == want, f"wrapper {i}: kept {[g[0] for g in got]}, the rule picks {[w[0] for w in want]}"
        checked += 1
        kept += len(got)
        dropped += len(oc.entries) - len(got)
    for off, c in ocont.items():
        if off not in reached:
            assert ndata[off:off + c.size] == odata[off:off + c.size], f"orphan container at {off:#x} moved"
    return {"wrappers": checked, "kept": kept, "dropped": dropped}


# -- layout -----------------------------------------------------------------------------------

def check_layout(orig: Path, new: Path) -> dict:
    """readelf: every section but .nv_fatbin keeps its address, size, type and flags; .nv_fatbin
    keeps its address and shrinks; PT_LOADs are page-congruent; the file is smaller by the freed
    fatbin bytes, in whole pages, within one page plus the relocated program header table."""
    so, sn = readelf_sections(orig), readelf_sections(new)
    assert set(so) == set(sn)
    for name, a in so.items():
        b = sn[name]
        if name == ".nv_fatbin":
            assert b["addr"] == a["addr"] and b["size"] <= a["size"]
            continue
        assert (a["addr"], a["size"], a["type"], a["flags"], a["align"]) == \
            (b["addr"], b["size"], b["type"], b["flags"], b["align"]), f"section {name} moved or changed"
    for p in readelf_loads(new):
        assert p["off"] % PAGE == p["vaddr"] % PAGE, f"PT_LOAD at {p['vaddr']:#x} is not page-congruent"
    freed = so[".nv_fatbin"]["size"] - sn[".nv_fatbin"]["size"]
    shrunk = orig.stat().st_size - new.stat().st_size
    phdrs = len(readelf_loads(new)) * 0 + _phnum(new) * 56
    assert shrunk % PAGE == 0
    assert 0 <= freed - shrunk < PAGE + phdrs + 8, f"freed {freed} bytes but the file shrank by {shrunk}"
    return {"freed": freed, "shrunk": shrunk}


def _phnum(path: Path) -> int:
    with open(path, "rb") as fh:
        return ELFFile(fh)["e_phnum"]


# -- the loader ---------------------------------------------------------------------------------

def dlopen_check(path: Path, ld_path: list[Path] | None = None) -> None:
    """dlopen(RTLD_NOW) in a child process, then dlsym every defined exported symbol (pyelftools)."""
    with open(path, "rb") as fh:
        dynsym = ELFFile(fh).get_section_by_name(".dynsym")
        names = sorted({s.name for s in dynsym.iter_symbols()
                        if s.name and s["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS")
                        and s["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK")
                        and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT")})
    code = ("import ctypes,sys\nlib=ctypes.CDLL(sys.argv[1], mode=2)\n"
            "d=ctypes.CDLL(None).dlsym; d.restype=ctypes.c_void_p; d.argtypes=[ctypes.c_void_p, ctypes.c_char_p]\n"
            "bad=[n for n in sys.stdin.read().split() if not d(lib._handle, n.encode())]\n"
            "print(len(bad), bad[:3])\n")
    env = dict(os.environ)
    if ld_path:
        env["LD_LIBRARY_PATH"] = ":".join(str(p) for p in ld_path)
    r = subprocess.run([sys.executable, "-c", code, str(path)], input="\n".join(names), capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, f"dlopen {path.name} failed: {r.stderr.strip()[-400:]}"
    assert r.stdout.startswith("0 "), f"{path.name}: unresolved symbols {r.stdout.strip()}"


# -- cuobjdump ----------------------------------------------------------------------------------

def cuobjdump() -> Path:
    """NVIDIA's cuobjdump from the `nvidia-cuda-cuobjdump` wheel (the `test` extra)."""
    found = cuda_kernels.cuobjdump_path()
    if found is None:
        raise AssertionError("cuobjdump not found: pip install 'nvidia-cuda-cuobjdump' (the test extra has it)")
    return found


def cuobjdump_elf_archs(path: Path, arch: str | None = None) -> list[str] | None:
    """`cuobjdump --list-elf` -> the sm_XX of each listed ELF, or None when cuobjdump stops with a
    fatal error (13.x refuses sm_35 entries and -arch below sm_75: inconclusive, not a failure)."""
    cmd = [str(cuobjdump()), "--list-elf"] + (["-arch", arch] if arch else []) + [str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or "fatal" in r.stderr.lower():
        return None
    return re.findall(r"\.(sm_\d+[af]?)\.cubin", r.stdout)


def stub_library(soname: str, users: list[Path], dest_dir: Path) -> Path:
    """A stand-in for a dependency the tests do not fetch (cuBLASLt, 574 MB, for libcublas and
    cuDNN): a shared object named `soname` that defines, with their symbol versions, exactly the
    symbols `users` import from it, so dlopen(RTLD_NOW) of the users really binds every symbol."""
    from elftools.elf.gnuversions import GNUVerNeedSection, GNUVerSymSection

    wanted: dict[str, dict[str, str]] = {}   # version -> {symbol: type}
    for user in users:
        with open(user, "rb") as fh:
            elf = ELFFile(fh)
            versym = next((s for s in elf.iter_sections() if isinstance(s, GNUVerSymSection)), None)
            verneed = next((s for s in elf.iter_sections() if isinstance(s, GNUVerNeedSection)), None)
            index_to = {}
            for vn, auxes in (verneed.iter_versions() if verneed else []):
                for aux in auxes:
                    index_to[aux["vna_other"]] = (vn.name, aux.name)
            for i, sym in enumerate(elf.get_section_by_name(".dynsym").iter_symbols()):
                if sym["st_shndx"] != "SHN_UNDEF" or not sym.name or versym is None:
                    continue
                ndx = versym.get_symbol(i)["ndx"]
                hit = index_to.get(ndx if isinstance(ndx, int) else -1)
                if hit and hit[0] == soname:
                    kind = "object" if sym["st_info"]["type"] == "STT_OBJECT" else "function"
                    wanted.setdefault(hit[1], {})[sym.name] = kind
    work = dest_dir / f".{soname}.stub"
    work.mkdir(parents=True, exist_ok=True)
    asm, vmap = [], []
    for version, syms in sorted(wanted.items()):
        vmap.append(f"{version} {{ global: {' '.join(f'{s};' for s in sorted(syms))} }};")
        for s, kind in sorted(syms.items()):
            if kind == "object":
                asm.append(f".data\n.globl {s}\n.type {s},@object\n.size {s},8\n{s}: .quad 0\n")
            else:
                asm.append(f".text\n.globl {s}\n.type {s},@function\n{s}: ret\n")
    (work / "stub.s").write_text("".join(asm))
    (work / "stub.map").write_text("\n".join(vmap) + "\n")
    subprocess.run(["as", "--64", "-o", str(work / "stub.o"), str(work / "stub.s")], check=True)
    out = dest_dir / soname
    subprocess.run(["ld", "-shared", "-soname", soname, "--version-script", str(work / "stub.map"), "-o", str(out),
                    str(work / "stub.o")], check=True)
    return out
