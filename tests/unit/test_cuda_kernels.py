"""The streaming CUDA-kernel reader (imagegen.cuda_kernels) and what-it-runs-on (imagegen.gpu_archs),
on ELF files and wheels written here."""

from __future__ import annotations

import mmap
import random
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from imagegen import cuda_kernels as ck
from imagegen import gpu_archs as ga
from imagegen.scripts import fatbin as fb

ROOT = Path(__file__).resolve().parents[2]
import fatbin_fixtures as fx  # noqa: E402  (tests/support, on sys.path by conftest)


def section():
    return fx.section(
        fx.container(fx.entry("sass", 61, 300), fx.entry("sass", 70, 200), fx.entry("sass", 75, 100)),
        fx.container(fx.entry("sass", 80, 64), fx.entry("ptx", 70, 50, compression="lz4", header_size=72)),
        fx.container(fx.entry("sass", 90, 40, variant="a"), fx.entry("sass", 100, 40, variant="f",
                                                                       compression="zstd", uncompressed=800)),
    )


def reference(path: Path):
    off, size, _ = fb.find_section(path, ".nv_fatbin")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        with memoryview(m) as mv, mv[off:off + size] as sec:
            return tuple(fb.parse_fatbin(sec)), off, size


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096, 1 << 20])
def test_streaming_equals_whole_section_parse(tmp_path, chunk):
    decoy = fx.container(fx.entry("sass", 35, 16), body_size=10**9)   # magic + absurd size in other data
    so = fx.elf_with_sections(tmp_path / "libk.so", {".rodata.decoy": b"\0" * 8 + decoy, ".nv_fatbin": section()})
    want, off, size = reference(so)
    data = so.read_bytes()
    pieces = (data[i:i + chunk] for i in range(0, len(data), chunk))
    lib = ck.scan_stream("libk.so", len(data), pieces, warn=None)
    assert lib.warning is None
    assert (lib.fatbin_offset, lib.fatbin_bytes) == (off, size)
    assert lib.containers == want
    assert [e.name for e in lib.entries] == ["sm_61", "sm_70", "sm_75", "sm_80", "compute_70", "sm_90a", "sm_100f"]
    assert lib.compressed_bytes() == sum(e.size for e in lib.entries if e.compression)
    assert lib.bytes_by_arch()["sm_61"] == 64 + 304


def test_per_arch_totals_and_pruned_size(tmp_path):
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": section()})
    lib = ck.scan_file(so, warn=None)
    by = lib.bytes_by_arch()
    assert sum(by.values()) + sum(c.header_size for c in lib.containers) == lib.fatbin_bytes
    assert lib.containers_by_arch() == {"sm_61": 1, "sm_70": 1, "sm_75": 1, "sm_80": 1, "sm_90a": 1,
                                        "sm_100f": 1, "compute_70": 1}
    # for sm_75: container 1 keeps sm_75, container 2 keeps the compute_70 PTX, container 3 nothing
    c1, c2, _ = lib.containers
    assert lib.kept_bytes([75]) == 16 + c1.entries[2].size + 16 + c2.entries[1].size


def test_zero_padding_between_containers(tmp_path):
    sec = fx.container(fx.entry("sass", 75, 8)) + b"\0" * 16 + fx.container(fx.entry("sass", 86, 8))
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": sec})
    lib = ck.scan_file(so, warn=None)
    assert lib.warning is None and [c.offset for c in lib.containers] == [0, 16 + 72 + 16]


@pytest.mark.parametrize("sec, reason", [
    (fx.container(fx.entry("sass", 75, kind_code=9)), "unknown kind 9"),
    (fx.section(fx.container(fx.entry("sass", 75))) + b"junkjunk", "no fat-binary container at section offset 0x90"),
    (fx.container(fx.entry("sass", 75), body_size=8), "truncated"),
])
def test_corrupt_fatbin_warns_with_file_name_never_raises(tmp_path, sec, reason):
    so = fx.elf_with_sections(tmp_path / "libodd.so", {".nv_fatbin": sec})
    seen = []
    lib = ck.scan_file(so, "site-packages/libodd.so", warn=seen.append)
    assert lib is not None and reason in lib.warning and lib.containers == ()
    assert len(seen) == 1 and seen[0].startswith("site-packages/libodd.so: CUDA kernels not read:")


def test_truncated_file_warns(tmp_path):
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": section()})
    data = so.read_bytes()
    seen = []
    lib = ck.scan_stream("libk.so", len(data), [data[: len(data) // 2]], warn=seen.append)
    assert lib is None or lib.warning        # section headers never arrived: nothing to report, or a warning


def test_no_fatbin_and_not_elf(tmp_path):
    so = fx.elf_with_sections(tmp_path / "libplain.so", {".rodata.x": b"hello" * 1000})
    assert ck.scan_file(so, warn=None) is None
    txt = tmp_path / "libfake.so"
    txt.write_bytes(b"INPUT(-lfoo)\n" * 1000)
    assert ck.scan_file(txt, warn=None) is None


def test_section_found_when_name_table_out_of_view(tmp_path, monkeypatch):
    big = b"\x01" * (300 << 10)           # pushes the name table out of a 64 kB tail
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": section(), ".zz_after": big})
    monkeypatch.setattr(ck, "TAIL", 64 << 10)
    lib = ck.scan_file(so, warn=None)
    want, off, size = reference(so)
    assert lib.containers == want and lib.fatbin_offset == off


def test_wheel_members_are_streamed(tmp_path):
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": section()})
    whl = tmp_path / "pkg-1.0-py3-none-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(so, "pkg/lib/libk.so.1")
        z.writestr("pkg/lib/libnot.so", b"not an elf" * 1000)
        z.writestr("pkg/__init__.py", "")
    libs = ck.scan_wheel(whl, warn=None)
    assert [l.path for l in libs] == ["pkg/lib/libk.so.1"]
    assert libs[0].containers == reference(so)[0]


@pytest.mark.parametrize("where", [".nv_fatbin", ".lrodata"])
def test_memory_stays_bounded_on_a_large_section(tmp_path, where):
    entries = [fx.entry("sass", a, 4 << 20) for a in (61, 70, 75, 80, 86)]
    sec = fx.section(*[fx.container(*entries) for _ in range(2)])      # 40 MB of kernels
    so = fx.elf_with_sections(tmp_path / "libbig.so", {where: sec})
    tracemalloc.start()
    try:
        lib = ck.scan_file(so, warn=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if where == ".nv_fatbin":
        assert lib.fatbin_bytes == len(sec) and len(lib.containers) == 2
    else:
        assert lib.fatbin_bytes == 0 and lib.embedded_bytes == len(sec) and len(lib.embedded) == 2
    assert peak < 8 << 20, f"peak {peak} bytes"


# ---- fat binaries embedded in data sections (cuFFT) --------------------------------------------
# libcufft.so.11 (nvidia-cufft-cu12 11.3.3.83): one sm_52 container in .nv_fatbin, 23,531 in .ldata.

NV52 = fx.section(fx.container(fx.entry("sass", 52, 32)))
PTX50 = fx.container(fx.entry("ptx", 50, 100, compression="lz4", header_size=72))
SASS80 = fx.container(fx.entry("sass", 80, 200))
LTO50 = fx.container(fx.entry("ltoir", 50, 120, header_size=128, compression="lz4"))


def file_containers(path: Path, offsets) -> tuple:
    """The reference: fatbin.parse_container on the whole file at each file offset."""
    data = path.read_bytes()
    return tuple(fb.parse_container(data, o) for o in offsets)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_containers_embedded_in_data_are_reported_apart(tmp_path, chunk):
    data = b"\x11" * 24 + PTX50 + b"\x22" * 8 + SASS80 + LTO50 + b"\x33" * 16
    so = fx.elf_with_sections(tmp_path / "libcufft.so.11", {".nv_fatbin": NV52, ".data": data}, flags={".data": "aw"})
    off = fb.find_section(so, ".data")[0]
    at = [off + 24, off + 24 + len(PTX50) + 8, off + 24 + len(PTX50) + 8 + len(SASS80)]
    raw = so.read_bytes()
    lib = ck.scan_stream("libcufft.so.11", len(raw), (raw[i:i + chunk] for i in range(0, len(raw), chunk)), warn=None)
    assert lib.warning is None
    assert [e.name for e in lib.entries] == ["sm_52"]                    # .nv_fatbin as before
    assert lib.embedded == file_containers(so, at)                      # offsets are file offsets
    assert lib.embedded_bytes == len(PTX50) + len(SASS80) + len(LTO50)
    assert lib.bytes_by_arch(embedded=True) == {"sm_80": 264, "compute_50": 72 + 104, "lto_50": 128 + 120}
    assert lib.containers_by_arch(embedded=True) == {"sm_80": 1, "compute_50": 1, "lto_50": 1}
    assert lib.kernel_containers(embedded=True) == 2 and lib.kernel_containers() == 1
    # what it runs on: the embedded compute_50 PTX serves every GPU from 5.0 (the .nv_fatbin alone: 5.2 only)
    f = ga.library_facts(lib)
    assert (f["embedded_bytes"], f["embedded_containers"], f["embedded_kernel_containers"]) == (lib.embedded_bytes, 3, 2)
    assert ga.shipped(f) == ["sm_52", "sm_80", "compute_50", "lto_50"]
    assert ga.served(f) == [cc for cc in ga.known_ccs() if cc >= 50]
    assert ga.served({**f, "embedded_kernel_containers": 0}) == [52]
    assert ga.describe(f) == "SASS for sm_52, sm_80; PTX for compute_50"


def test_magic_bytes_in_data_and_containers_outside_data_do_not_count(tmp_path):
    rnd = random.Random(13)
    outer = fx.container(fx.entry("sass", 75, SASS80))                 # a container inside a payload
    loose = fx.container(fx.entry("sass", 75, 64), body_size=64 + 64 + 8)   # entries stop 8 bytes short
    data = (fx.MAGIC + b"\x01\x00\x10\x00" + (10**9).to_bytes(8, "little")   # absurd size
            + fx.MAGIC + rnd.randbytes(252)                              # magic, then noise
            + fx.section(loose) + b"\xff" * 8 + outer)
    split = fx.container(fx.entry("sass", 86, 64), fx.entry("sass", 89, 64))
    secs = {".nv_fatbin": NV52, ".data": data, ".text.k": SASS80, "__nv_relfatbin": SASS80,
            ".note.k": SASS80, "kdata_a": split[:16 + 128], "kdata_b": split[16 + 128:]}
    so = fx.elf_with_sections(tmp_path / "libdecoy.so", secs,
                              flags={".data": "aw", ".text.k": "ax", ".note.k": ""})
    a, b = fb.find_section(so, "kdata_a"), fb.find_section(so, "kdata_b")
    assert a[0] + a[1] == b[0]             # the split container is contiguous in the file, across two sections
    raw = so.read_bytes()
    assert raw.count(fx.MAGIC) >= 9
    lib = ck.scan_file(so, warn=None)
    assert lib.warning is None and [e.name for e in lib.entries] == ["sm_52"]
    d = fb.find_section(so, ".data")[0]
    assert lib.embedded == file_containers(so, [d + len(data) - len(outer)])   # the outer one only


def test_embedded_only_library_and_ltoir_only_library(tmp_path):
    so = fx.elf_with_sections(tmp_path / "libcupti.so", {".rodata": fx.section(SASS80, PTX50)})
    lib = ck.scan_file(so, warn=None)
    assert lib is not None and lib.containers == () and lib.fatbin_bytes == 0 and len(lib.embedded) == 2
    lto = ck.scan_file(fx.elf_with_sections(tmp_path / "liblto.so", {".lrodata": LTO50}), warn=None)
    assert [e.name for c in lto.embedded for e in c.entries] == ["lto_50"] and lto.kernel_containers(True) == 0
    cov = ga.coverage([ga.library_facts(lib), ga.library_facts(lto)])
    assert cov.libraries == 1 and cov.archs == [cc for cc in ga.known_ccs() if cc >= 50]
    assert not any(ga.serves(ga.library_facts(lto), cc) for cc in ga.known_ccs())


# ---- what a set of libraries runs on ------------------------------------------------------------

def facts(path, counts: dict[str, int], n: int, wheel="w==1", size=1000, embedded: dict[str, int] | None = None,
          n_embedded: int = 0):
    return {"path": path, "wheel": wheel, "size": size, "fatbin_bytes": size, "containers": n,
            "kernel_containers": n, "compressed_bytes": 0, "bytes": {k: 1 for k in counts},
            "containers_by_arch": counts, "kept_bytes": {}, "warning": None,
            "embedded_bytes": n_embedded * 100, "embedded_containers": n_embedded,
            "embedded_kernel_containers": n_embedded, "embedded_containers_by_arch": embedded or {},
            "embedded_bytes_by_arch": {k: 100 for k in embedded or {}}}


PHI = facts("paddle/libs/libphi.so", {"sm_35": 1, "sm_61": 666, "sm_70": 666, "sm_75": 665, "sm_80": 665,
                                      "sm_86": 665, "sm_90": 1}, 666, "paddlepaddle-gpu==2.6.2")
LT = facts("nvidia/cublas/lib/libcublasLt.so.11", {"sm_35": 86, "sm_50": 96, "sm_60": 97, "sm_61": 88, "sm_70": 145, "sm_75": 126, "sm_80": 496,
                                                    "sm_86": 103, "sm_90": 694, "compute_90": 87}, 796,
           "nvidia-cublas-cu11==11.11.3.6")
FLASH = facts("paddle/libs/libflashattn.so", {"sm_80": 43, "sm_86": 43}, 43, "paddlepaddle-gpu==2.6.2")


def test_stray_container_does_not_count():
    assert ga.shipped(PHI) == ["sm_61", "sm_70", "sm_75", "sm_80", "sm_86"]
    assert not ga.serves(PHI, 90) and ga.serves(PHI, 89) and not ga.serves(PHI, 60)
    assert ga.describe(PHI) == "SASS for sm_61, sm_70, sm_75, sm_80, sm_86; no PTX"


def test_ptx_serves_newer_gpus():
    assert ga.serves(LT, 120) and ga.serves(LT, 90) and ga.serves(LT, 75) and not ga.serves(LT, 30)


def test_coverage_intersection_narrowing_and_feature_libraries():
    cov = ga.coverage([PHI, LT, FLASH, {**LT, "path": "libodd.so", "warning": "bad"}])
    assert cov.label == "sm_61,sm_70,sm_75,sm_80,sm_86,sm_89"
    assert cov.narrowing == {"paddle/libs/libphi.so": [35, 37, 50, 52, 60, 90, 100, 103, 120, 121]}
    two = ga.coverage([PHI, {**PHI, "path": "paddle/base/libpaddle.so"}, LT])
    assert set(two.narrowing) == {"paddle/libs/libphi.so", "paddle/base/libpaddle.so"}
    assert cov.feature == {"paddle/libs/libflashattn.so": [80, 86, 89]}
    assert cov.unreadable == {"libodd.so": "bad"} and cov.libraries == 2


def _Cell(archs):
    """The Paddle 2.6.2 flagship cell of matrix.yaml, aimed at `archs`, with every slimming rule off."""
    import dataclasses
    from pathlib import Path

    import imagegen.matrix as mx

    m = mx.load(Path(__file__).resolve().parents[2] / "matrix.yaml")
    (cell,) = m.select(["gpu-cuda11.8-slim"])
    off = mx.SlimRules(**{k: False for k in mx.SlimRules.__dataclass_fields__ if k != "bytecode"}, bytecode="keep")
    return dataclasses.replace(cell, gpu_archs=tuple(archs), slimming=off)


def test_check_targets_message():
    f = {"wheels": {"paddlepaddle-gpu==2.6.2": {"libraries": [PHI, FLASH]},
                    "nvidia-cublas-cu11==11.11.3.6": {"libraries": [LT]}}}
    assert ga.check_targets(_Cell(["sm_75", "sm_86"]), f) is None
    assert ga.check_targets(_Cell(["sm_90"]), f) == (
        "paddle 2.6.2 ships no kernels for sm_90 (SASS for sm_61, sm_70, sm_75, sm_80, sm_86; no PTX)")
    assert ga.check_targets(_Cell(["sm_52"]), f).startswith("paddle 2.6.2 ships no kernels for sm_52")
