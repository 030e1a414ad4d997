"""The fat-binary reader against NVIDIA's own tool, on real NVIDIA libraries.

The libraries come from the locks through the project's wheel cache (`nvidia-cublas-cu11==11.11.3.6`
from the GPU flagship's lock, a 418 MB download when not cached; `nvidia-cufft-cu12==11.3.3.83`
from the ONNX Runtime GPU cell's, 193 MB), and `cuobjdump` from the PyPI wheel
`nvidia-cuda-cuobjdump` (the `test` extra). cuobjdump 13 refuses `-arch` below sm_75 and whole
libraries holding sm_35 entries: such a fatal error is inconclusive and is reported as such, never
counted as agreement. cuobjdump reads a library's `.nv_fatbin` only; the containers cuFFT embeds
in `.ldata` are checked by handing them to it as one fat-binary file.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from imagegen import cuda_kernels as ck
from imagegen import gpu_archs as ga
from imagegen import wheelhouse
from imagegen.lockfile import read_lock
from imagegen.scripts import fatbin as fb

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "locks" / "paddle-2.6.2-gpu-cuda11.8-cudnn8.6-slim.txt"
WHEEL = "nvidia-cublas-cu11"
LIBS = ("nvidia/cublas/lib/libcublas.so.11", "nvidia/cublas/lib/libcublasLt.so.11")
CUFFT_LOCK = ROOT / "locks" / "onnxruntime-1.23.2-gpu-cuda12.8-cudnn9.10-slim.txt"
CUFFT = "nvidia/cufft/lib/libcufft.so.11"
ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")


def cuobjdump() -> Path:
    found = ck.cuobjdump_path()
    if found is None:
        raise AssertionError("cuobjdump not found: pip install -e '.[test]' (nvidia-cuda-cuobjdump)")
    return found


def lz4_block(src: bytes, size: int) -> bytes:
    """Decompress one LZ4 block (the format of fat-binary entries with flag 0x2000) of known size."""
    out = bytearray()
    i = 0
    while i < len(src) and len(out) < size:
        token = src[i]
        i += 1
        n = token >> 4
        if n == 15:
            while True:
                b = src[i]
                i += 1
                n += b
                if b != 255:
                    break
        out += src[i:i + n]
        i += n
        if len(out) >= size or i >= len(src):
            break
        off = src[i] | src[i + 1] << 8
        i += 2
        m = token & 15
        if m == 15:
            while True:
                b = src[i]
                i += 1
                m += b
                if b != 255:
                    break
        m += 4
        start = len(out) - off
        if off >= m:
            out += out[start:start + m]
        else:
            for k in range(m):
                out.append(out[start + k])
    return bytes(out[:size])


def listing(kind: str, arch: str, lib: Path) -> Counter | None:
    """Entries cuobjdump lists for exactly `arch`: Counter({'sm_75': n}), or None when it stops
    with a fatal error (inconclusive)."""
    r = subprocess.run([str(cuobjdump()), f"--list-{kind}", "-arch", arch, str(lib)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or "fatal" in (r.stdout + r.stderr).lower():
        return None
    ext = "cubin" if kind == "elf" else "ptx"
    return Counter(re.findall(rf"\.(sm_\d+[af]?)\.{ext}$", r.stdout, re.M))


def extract(lock_path: Path, key: str, names, out: Path) -> dict[str, Path]:
    """Members `names` of the lock's wheel `key` (fetched into the wheel cache when missing)."""
    lock = read_lock(lock_path)
    wheel = next(w for w in lock.wheels if w.key == key)
    [path] = wheelhouse.fetch(dataclasses.replace(lock, wheels=(wheel,), tools=()))
    with zipfile.ZipFile(path) as z:
        for name in names:
            with z.open(name) as src, open(out / Path(name).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return {Path(n).name: out / Path(n).name for n in names}


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, Path]:
    return extract(LOCK, WHEEL, LIBS, tmp_path_factory.mktemp("cublas"))


@pytest.fixture(scope="module")
def cufft(tmp_path_factory) -> Path:
    return extract(CUFFT_LOCK, "nvidia-cufft-cu12", [CUFFT], tmp_path_factory.mktemp("cufft"))["libcufft.so.11"]


@pytest.mark.parametrize("name", [Path(n).name for n in LIBS])
def test_inventory_matches_cuobjdump_per_arch(libs, name):
    lib = ck.scan_file(libs[name], warn=None)
    assert lib is not None and lib.warning is None
    ours_sass = Counter(e.name for e in lib.entries if e.kind == "sass")
    ours_ptx = Counter("sm_" + e.name.split("_", 1)[1] for e in lib.entries if e.kind == "ptx")
    compared, inconclusive = 0, []
    for arch in ARCHS:
        for kind, ours in (("elf", ours_sass), ("ptx", ours_ptx)):
            theirs = listing(kind, arch, libs[name])
            if theirs is None:
                inconclusive.append(f"{kind} {arch}")
                continue
            assert theirs.get(arch, 0) == ours.get(arch, 0), f"{name} {kind} {arch}: cuobjdump {theirs}, ours {ours.get(arch, 0)}"
            compared += theirs.get(arch, 0)
    # cuobjdump 13 must have answered for the architectures it supports, on a real number of entries
    assert not inconclusive, f"cuobjdump was inconclusive for {inconclusive}"
    assert compared >= 100
    # and below sm_75 it refuses: inconclusive, never agreement
    assert listing("elf", "sm_70", libs[name]) is None


def test_payloads_are_what_cuobjdump_extracts(libs, tmp_path):
    """Byte identity of the sm_75 cubins (libcublas.so.11: 4 of them, LZ4-compressed: decompressed
    here), and the uncompressed size of every LZ4-compressed compute_90 PTX, in section order."""
    path = libs["libcublas.so.11"]
    lib = ck.scan_file(path, warn=None)
    subprocess.run([str(cuobjdump()), "-xelf", "all", "-arch", "sm_75", str(path)], cwd=tmp_path, check=True,
                   capture_output=True, timeout=600)
    subprocess.run([str(cuobjdump()), "-xptx", "all", "-arch", "sm_90", str(path)], cwd=tmp_path, check=True,
                   capture_output=True, timeout=600)

    def ordered(ext: str) -> list[Path]:
        return sorted(tmp_path.glob(f"*.{ext}"), key=lambda p: int(re.search(r"\.(\d+)\.sm_", p.name).group(1)))

    cubins = ordered("cubin")
    ours = [(c, e) for c in lib.containers for e in c.entries if e.name == "sm_75"]
    assert len(cubins) == len(ours) >= 1
    with open(path, "rb") as f:
        for file, (c, e) in zip(cubins, ours, strict=True):
            want = file.read_bytes()
            f.seek(lib.fatbin_offset + c.offset + e.offset + e.header_size)
            payload = f.read(e.payload_size)
            if e.compression == "lz4":
                assert e.uncompressed_size == len(want)
                payload = lz4_block(payload, e.uncompressed_size)
            assert e.compression in (None, "lz4")
            assert payload[:len(want)] == want, file.name
    ptx = ordered("ptx")
    ours_ptx = [e for e in lib.entries if e.kind == "ptx"]
    assert len(ptx) == len(ours_ptx) >= 100
    assert all(e.compression == "lz4" for e in ours_ptx)
    # the extracted text omits the trailing NUL that the uncompressed size counts
    assert [p.stat().st_size + 1 for p in ptx] == [e.uncompressed_size for e in ours_ptx]


def names_listed(kind: str, path: Path) -> Counter:
    """Entries cuobjdump lists (whole file, no -arch): Counter({'sm_52': 1})."""
    r = subprocess.run([str(cuobjdump()), f"--list-{kind}", str(path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "fatal" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    ext = "cubin" if kind == "elf" else "ptx"
    return Counter(re.findall(rf"\.(sm_\d+[af]?)\.{ext}$", r.stdout, re.M))


def test_cufft_nv_fatbin_part_matches_cuobjdump(cufft):
    """cuFFT 11.3's `.nv_fatbin` holds one sm_52 container, as cuobjdump sees it."""
    lib = ck.scan_file(cufft, warn=None)
    assert lib.warning is None and lib.fatbin_bytes == 400
    assert [e.name for e in lib.entries] == ["sm_52"]
    assert names_listed("elf", cufft) == Counter({"sm_52": 1}) and names_listed("ptx", cufft) == Counter()


def test_cufft_embedded_containers_match_cuobjdump(cufft, tmp_path):
    """The 23,531 containers cuFFT 11.3 embeds in `.ldata` (measured on nvidia-cufft-cu12
    11.3.3.83): each inside `.ldata`, 8-byte aligned; written out as one fat-binary file, cuobjdump
    lists exactly our SASS and PTX entries per architecture (it lists no LTO-IR); and cuFFT then
    serves every GPU from 5.0 (its compute_50 PTX)."""
    lib = ck.scan_file(cufft, warn=None)
    off, size, _ = fb.find_section(cufft, ".ldata")
    assert all(off <= c.offset and c.offset + c.size <= off + size and c.offset % 8 == 0 for c in lib.embedded)
    kinds = Counter(e.kind for c in lib.embedded for e in c.entries)
    assert kinds == {"sass": 4197, "ptx": 8183, "ltoir": 11151}
    assert len(lib.embedded) == 23531 and lib.embedded_bytes == 259_320_600
    bundle = tmp_path / "embedded.fatbin"
    with open(cufft, "rb") as f, open(bundle, "wb") as out:
        for c in lib.embedded:
            if any(e.kind != "ltoir" for e in c.entries):
                f.seek(c.offset)
                out.write(f.read(c.size))
    ours_sass = Counter(e.name for c in lib.embedded for e in c.entries if e.kind == "sass")
    ours_ptx = Counter("sm_" + e.name.split("_", 1)[1] for c in lib.embedded for e in c.entries if e.kind == "ptx")
    assert names_listed("elf", bundle) == ours_sass
    assert names_listed("ptx", bundle) == ours_ptx
    facts = ga.library_facts(lib)
    assert "compute_50" in ga.shipped(facts)
    assert ga.served(facts) == [cc for cc in ga.known_ccs() if cc >= 50]
