"""The fat-binary rewriter on real NVIDIA libraries from the GPU cell's lock (issue 12).

CI set (about 190 MB fetched once, a few minutes): cuBLAS 11.11 `libcublas.so.11`, cuDNN 8.6
`libcudnn_ops_infer.so.8` (patchelf-rewritten: an extra PT_LOAD) and cuRAND 10.3 `libcurand.so.10`
(an orphan container nothing references). The multi-GB ones (cuBLASLt, cuDNN cnn_infer, Paddle's
libphi/libpaddle) are in the `gpu_cell` test (several GB; deselect with -m 'not gpu_cell').

Each rewrite is checked with other readers than the rewriter's own: pyelftools (relocations,
wrappers), readelf (sections, segments), cuobjdump (kept architectures), the dynamic loader.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from imagegen import wheelhouse
from imagegen.scripts import fatbin, fatprune

ROOT = Path(__file__).resolve().parents[2]


import fatprune_checks as chk  # noqa: E402  (tests/support, on sys.path by conftest)
import nvlibs as nv  # noqa: E402  (tests/support, on sys.path by conftest)


def sass_counts(path: Path) -> Counter:
    _addr, data = chk.fatbin_section(path)
    return Counter(e.name for c in fatbin.parse_fatbin(data) for e in c.entries if e.kind == "sass")


def check_cuobjdump(orig: Path, new: Path) -> str:
    """cuobjdump lists exactly the SASS entries left in the new file: all at once when it can, else
    per -arch (>= sm_75, which cuobjdump 13 accepts). A fatal error on both files: inconclusive."""
    want = sass_counts(new)
    listed = chk.cuobjdump_elf_archs(new)
    if listed is not None:
        assert Counter(listed) == want, f"cuobjdump lists {Counter(listed)}, the file holds {want}"
        return "whole file"
    checked = []
    for arch in ("sm_75", "sm_80", "sm_86", "sm_90"):
        got = chk.cuobjdump_elf_archs(new, arch)
        if got is None:
            continue
        assert len(got) == want.get(arch, 0), f"cuobjdump -arch {arch}: {len(got)}, the file holds {want.get(arch, 0)}"
        checked.append(arch)
    return "per arch " + ",".join(checked) if checked else "inconclusive"


def rewrite_and_check(lib_path: Path, tmp: Path, targets: list[str], keep_ptx: bool = False,
                      deps: Path | None = None) -> dict:
    orig = tmp / "orig" / lib_path.name
    orig.parent.mkdir(exist_ok=True)
    shutil.copyfile(lib_path, orig)
    ld = [lib_path.parent] + ([deps] if deps else [])
    rec = fatprune.prune_file(lib_path, targets, keep_ptx,
                              load_env={**os.environ, "LD_LIBRARY_PATH": ":".join(map(str, ld))})
    assert rec["status"] == "pruned", rec
    assert rec["dlopen"] == "ok", rec
    counts = chk.check_containers(orig, lib_path, targets, keep_ptx)
    layout = chk.check_layout(orig, lib_path)
    chk.dlopen_check(lib_path, ld)
    how = check_cuobjdump(orig, lib_path)
    kept = {a for a in sass_counts(lib_path)}
    return {**rec, **counts, **layout, "cuobjdump": how, "kept_sass": kept}


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    d = tmp_path_factory.mktemp("nvlibs")
    out = {lib.name: nv.library(lib, d / "src") for lib in (nv.LIBCUBLAS, nv.LIBCUDNN_OPS, nv.LIBCURAND)}
    # cuBLAS and cuDNN link cuBLASLt (574 MB): a stub defining exactly what they import stands in
    chk.stub_library("libcublasLt.so.11", [out["libcublas.so.11"], out["libcudnn_ops_infer.so.8"]], d / "deps")
    shutil.copyfile(out["libcublas.so.11"], d / "deps" / "libcublas.so.11")
    out["deps"] = d / "deps"
    return out


def _fresh(libs, name: str, tmp_path: Path) -> Path:
    dest = tmp_path / "lib"
    dest.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(libs[name], dest / name))


def test_cublas_to_sm75(libs, tmp_path):
    r = rewrite_and_check(_fresh(libs, "libcublas.so.11", tmp_path), tmp_path, ["sm_75"], deps=libs["deps"])
    assert r["kept_sass"] == {"sm_70", "sm_75"}        # sm_70 serves 7.5 where no sm_75 kernel exists
    assert r["bytes_after"] < 25_000_000 < 90_000_000 < r["bytes_before"]
    assert r["cuobjdump"] == "whole file"


def test_cudnn_ops_infer_patchelf_layout_to_sm86_with_ptx(libs, tmp_path):
    r = rewrite_and_check(_fresh(libs, "libcudnn_ops_infer.so.8", tmp_path), tmp_path, ["sm_86"], keep_ptx=True,
                          deps=libs["deps"])
    assert r["kept_sass"] == {"sm_86"}
    assert r["bytes_after"] < r["bytes_before"] // 3
    assert r["cuobjdump"] == "whole file"


def test_curand_orphan_container_keeps_its_place(libs, tmp_path):
    lib = _fresh(libs, "libcurand.so.10", tmp_path)
    r = rewrite_and_check(lib, tmp_path, ["sm_75"])
    # the unreferenced first container keeps all its architectures (sm_35 included, so cuobjdump 13
    # can only be asked per -arch)
    assert "sm_35" in r["kept_sass"] and r["cuobjdump"].startswith("per arch")
    assert r["bytes_after"] < r["bytes_before"] // 2


def test_same_input_same_bytes(libs, tmp_path):
    a = _fresh(libs, "libcublas.so.11", tmp_path / "a")
    b = _fresh(libs, "libcublas.so.11", tmp_path / "b")
    for p in (a, b):
        fatprune.prune_file(p, ["sm_75", "sm_86"], False, check_dlopen=False)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


# -- the multi-GB libraries (gpu_cell) ----------------------------------------------------------

PADDLE_WHEEL = ("paddlepaddle_gpu-2.6.2-cp311-cp311-manylinux1_x86_64.whl",
                "29694686383d935fb0966dd393f9af32a87d2d6674c8603583df5b08f9457f45")


@pytest.mark.gpu_cell
def test_large_libraries_to_sm75(tmp_path):
    """cuBLASLt, cuDNN cnn_infer (patchelf, 1,705 containers) and Paddle's libphi (673 wrappers, 7 of them
    relocatable device code) and libpaddle. Paddle's come from its wheel in imagegen's cache, which the
    GPU cell's build fills (`imagegen fetch locks/paddle-2.6.2-gpu-cuda11.8-cudnn8.6-slim.txt`)."""
    d = tmp_path / "lib"
    paths = [nv.library(lib, d) for lib in (nv.LIBCUBLASLT, nv.LIBCUBLAS, nv.LIBCUDNN_OPS, nv.LIBCUDNN_CNN)]
    whl = wheelhouse.cas_path(PADDLE_WHEEL[1], PADDLE_WHEEL[0])
    assert whl.exists(), f"{whl.name} is not in the wheel cache: run imagegen fetch on the GPU cell's lock"
    with zipfile.ZipFile(whl) as z:
        for member in ("paddle/libs/libphi.so", "paddle/base/libpaddle.so"):
            out = d / member.rsplit("/", 1)[1]
            with z.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            paths.append(out)
    for p in paths:
        orig = tmp_path / "orig" / p.name
        orig.parent.mkdir(exist_ok=True)
        shutil.copyfile(p, orig)
        rec = fatprune.prune_file(p, ["sm_75"], False, check_dlopen=False)
        assert rec["status"] == "pruned", (p.name, rec)
        chk.check_containers(orig, p, ["sm_75"])
        chk.check_layout(orig, p)
        if p.name.startswith("libcu"):
            chk.dlopen_check(p, [d])
            check_cuobjdump(orig, p)
        orig.unlink()
