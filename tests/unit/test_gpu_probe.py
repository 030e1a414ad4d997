"""GPU readiness probe (imagegen/imagetest/probes/gpu.py) on stub libraries built here with gcc: names
come from DT_SONAME, a load that leaves dlerror() pending fails (pytorch#97041), NEEDED entries of
an execution provider are loaded one by one, host-provided names are skipped. Plus the data-driven
probe arguments for the ONNX Runtime GPU and TensorRT cells, and the TensorRT prune rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import compat, matrix, recipe
from imagegen.imagetest import gpuready as ready
from imagegen.imagetest.target import TestTarget

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "imagegen" / "imagetest" / "probes" / "gpu.py"
PRUNE = ROOT / "imagegen" / "scripts" / "prune.py"

GOOD = "int good(void) { return 1; }\n"
# what cuDNN >= 8.7 does: dlopen an unversioned name from its constructor and ignore the failure
PENDING = """
#include <dlfcn.h>
__attribute__((constructor)) static void init(void) { dlopen("libnvrtc-imagegen-missing.so", RTLD_LAZY); }
int pending(void) { return 2; }
"""
# what cuDNN 9.10's engines library does: look up an optional hook with dlsym at load time
OPTIONAL = """
#include <dlfcn.h>
__attribute__((constructor)) static void init(void) { dlsym(RTLD_DEFAULT, "imagegen_optional_hook"); }
int optional(void) { return 3; }
"""
PROVIDER = "#include <unistd.h>\nint good(void); int provider(void) { return good() + (int)getpid(); }\n"


def _cc(src: str, out: Path, soname: str, *extra: str) -> None:
    c = out.with_suffix(".c")
    c.write_text(src)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(c), f"-Wl,-soname,{soname}", *extra],
                   check=True, capture_output=True)
    c.unlink()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """site-packages/nvidia/stub/lib with: libgood-imagegen.so.11.2 (SONAME libgood-imagegen.so.11.2,
    which truncation would call .so.11), libpending-imagegen.so.9, and a provider NEEDing the first."""
    root = tmp_path_factory.mktemp("probe")
    site = root / "lib" / "site-packages"
    lib = site / "nvidia" / "stub" / "lib"
    lib.mkdir(parents=True)
    _cc(GOOD, lib / "libgood-imagegen.so.11.2", "libgood-imagegen.so.11.2")
    _cc(PENDING, lib / "libpending-imagegen.so.9.1.0", "libpending-imagegen.so.9", "-ldl")
    (lib / "libpending-imagegen.so.9").symlink_to("libpending-imagegen.so.9.1.0")
    opt = site / "nvidia" / "opt" / "lib"
    opt.mkdir(parents=True)
    _cc(OPTIONAL, opt / "liboptional-imagegen.so.9", "liboptional-imagegen.so.9", "-ldl")
    prov = site / "fw" / "libfw_provider.so"
    prov.parent.mkdir()
    _cc(PROVIDER, prov, "libfw_provider.so", f"-L{lib}", "-l:libgood-imagegen.so.11.2")
    # libraries that NEED the host driver (absent here, like libcuda.so.1 on a host without a GPU)
    drv = root / "driver"
    drv.mkdir()
    _cc("int cuInit(int f) { return f; }\n", drv / "libfakecuda-imagegen.so.1", "libfakecuda-imagegen.so.1")
    _cc("int gone(void) { return 0; }\n", drv / "libgone-imagegen.so.1", "libgone-imagegen.so.1")
    dl = site / "nvidia" / "drv" / "lib"
    dl.mkdir(parents=True)
    use = "int cuInit(int); int ok9(void) { return cuInit(0); }\n"
    _cc(use, dl / "libneedsdriver-imagegen.so.9", "libneedsdriver-imagegen.so.9", f"-L{drv}",
        "-l:libfakecuda-imagegen.so.1", f"-L{lib}", "-l:libgood-imagegen.so.11.2", "-Wl,--no-as-needed")
    _cc("int cuInit(int); int gone(void); int b(void) { return cuInit(0) + gone(); }\n",
        dl / "libbroken-imagegen.so.9", "libbroken-imagegen.so.9", "-Wl,--no-as-needed", f"-L{drv}",
        "-l:libfakecuda-imagegen.so.1", "-l:libgone-imagegen.so.1")
    # a framework's own libraries beside the one it loads (PyTorch's torch/lib): found through
    # RUNPATH $ORIGIN only, and one of them uses a sibling's symbol it does not NEED (underlinked,
    # like libtorch_nvshmem.so and c10::cuda's allocator)
    fw = site / "fw2"
    fw.mkdir()
    _cc("int sib_a(void) { return 4; }\n", fw / "libsib_a.so", "libsib_a.so")
    _cc("int sib_a(void); int sib_b(void) { return sib_a(); }\n", fw / "libsib_b.so", "libsib_b.so")
    _cc("int sib_b(void); int good(void); int fw_main(void) { return sib_b() + good(); }\n", fw / "libfw_main.so",
        "libfw_main.so", "-Wl,--no-as-needed", f"-L{fw}", "-l:libsib_a.so", "-l:libsib_b.so", f"-L{lib}",
        "-l:libgood-imagegen.so.11.2", "-Wl,--enable-new-dtags,-rpath,$ORIGIN:$ORIGIN/../nvidia/stub/lib")
    _cc("int sib_c(void) { return 5; }\n", fw / "libsib_c.so", "libsib_c.so")
    _cc("int sib_c(void); int fw_broken(void) { return sib_c(); }\n", fw / "libfw_broken.so", "libfw_broken.so",
        "-Wl,--no-as-needed", f"-L{fw}", "-l:libsib_c.so", "-Wl,--enable-new-dtags,-rpath,$ORIGIN")
    (fw / "libsib_c.so").unlink()  # a framework library the image lacks
    return site, lib


def _run(stubs, *args: str) -> dict:
    site, lib = stubs
    # the image's ld.so.conf.d lists every loader dir; here LD_LIBRARY_PATH does
    env = dict(os.environ, PYTHONPATH=f"{site}:{ROOT / 'imagegen' / 'scripts'}", LD_LIBRARY_PATH=f"{lib}:{site / 'nvidia' / 'drv' / 'lib'}:{site / 'nvidia' / 'opt' / 'lib'}")
    cp = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, env=env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    line = [x for x in cp.stdout.splitlines() if x.startswith("IMAGEGEN-RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])


pytestmark = pytest.mark.unit


def test_names_are_the_elf_sonames(stubs):
    out = _run(stubs, "--dirs", "nvidia/stub/lib")
    names = [r["name"] for r in out["results"]]
    assert names == ["libgood-imagegen.so.11.2", "libpending-imagegen.so.9"]  # not libgood-imagegen.so.11


def test_pending_dlerror_fails_the_load(stubs):
    res = {r["name"]: r for r in _run(stubs, "--dirs", "nvidia/stub/lib")["results"]}
    assert res["libgood-imagegen.so.11.2"]["ok"] is True
    bad = res["libpending-imagegen.so.9"]
    assert bad["ok"] is False
    assert "pending in dlerror()" in bad["error"] and "libnvrtc-imagegen-missing.so" in bad["error"]


def test_benign_pending_dlerror_is_reported_not_failed(stubs):
    (r,) = _run(stubs, "--dirs", "nvidia/opt/lib")["results"]
    assert r["ok"] is False and "undefined symbol: imagegen_optional_hook" in r["error"]
    (r,) = _run(stubs, "--dirs", "nvidia/opt/lib", "--benign", "undefined symbol: imagegen_optional_hook")["results"]
    assert r["ok"] is True and "imagegen_optional_hook" in r["pending_benign"]
    # the data names exactly one such text (cuDNN 9.10, measured); a missing library is never benign
    assert compat.cuda().dlerror_benign == ["undefined symbol: InitializeInjectionCaskEnhanced"]


def test_needed_entries_of_a_provider_and_skips(stubs):
    out = _run(stubs, "--needed-of", "fw/libfw_provider.so", "--skip", "libc.so.6")
    names = [r["name"] for r in out["results"]]
    assert "libgood-imagegen.so.11.2" in names and "libc.so.6" not in names
    assert out["skipped"] == ["libc.so.6"]
    assert all(r["ok"] for r in out["results"])


def test_a_library_missing_only_the_host_driver_passes_with_needs_host(stubs):
    res = {r["name"]: r for r in _run(stubs, "--dirs", "nvidia/drv/lib", "--skip", "libfakecuda-imagegen.so.1")["results"]}
    ok = res["libneedsdriver-imagegen.so.9"]
    assert ok["ok"] is True and ok["needs_host"] == "libfakecuda-imagegen.so.1"
    broken = res["libbroken-imagegen.so.9"]
    assert broken["ok"] is False and "libgone-imagegen.so.1" in broken["error"]
    # without --skip, the driver's absence is a plain failure
    res = {r["name"]: r for r in _run(stubs, "--dirs", "nvidia/drv/lib")["results"]}
    assert res["libneedsdriver-imagegen.so.9"]["ok"] is False


def test_needed_entries_resolve_through_the_dependents_runpath(stubs):
    """The framework's own libraries load as the loader loads them for their dependent (RUNPATH
    $ORIGIN, together, so an underlinked sibling finds its symbols); the CUDA libraries it NEEDs
    are loaded from the file its RUNPATH finds."""
    out = _run(stubs, "--needed-of", "fw2/libfw_main.so", "--skip", "libc.so.6")
    res = {r["name"]: r for r in out["results"]}
    assert set(res) == {"libfw_main.so", "libgood-imagegen.so.11.2"}, res  # not libsib_a.so one by one
    assert all(r["ok"] for r in res.values()), res
    assert res["libgood-imagegen.so.11.2"]["path"].endswith("nvidia/stub/lib/libgood-imagegen.so.11.2")
    out = _run(stubs, "--needed-of", "fw2/libfw_broken.so", "--skip", "libc.so.6")
    (bad,) = [r for r in out["results"] if not r["ok"]]
    assert bad["name"] == "libsib_c.so" and "cannot open shared object file" in bad["error"]


def test_missing_provider_library_is_a_failure(stubs):
    out = _run(stubs, "--needed-of", "fw/nope.so")
    assert out["results"][0]["ok"] is False and "fw/nope.so not found" in out["results"][0]["error"]


def test_elf_reader_matches_readelf():
    sys.path[:0] = [str(PROBE.parent), str(ROOT / "imagegen" / "scripts")]
    try:
        import gpu  # the in-image probe module (elfmini beside it, as in the image)
    finally:
        del sys.path[:2]
    libz = next(p for p in ("/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1") if Path(p).exists())
    soname, needed = gpu.elf_dynamic(libz)
    assert soname == "libz.so.1" and "libc.so.6" in needed
    assert gpu.elf_dynamic(str(PROBE)) == (None, [])


# --- what the readiness check asks the probe, from data ----------------------------------------

def _target(ref: str) -> TestTarget:
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select([ref])
    return TestTarget.from_cell(cell)


def test_probe_args_for_onnxruntime_cuda_cell():
    t = _target("onnxruntime:gpu-cuda12.8-slim")
    args = ready.probe_args(t)
    assert args[:2] == ["--needed-of", "onnxruntime/capi/libonnxruntime_providers_cuda.so"]
    assert "onnxruntime/capi/libonnxruntime_providers_tensorrt.so" not in args  # no TensorRT in this cell
    assert ["--dirs", "nvidia/*/lib,tensorrt_libs"] == args[2:4]
    # the host driver: never probed, and a library's own failed dlopen of it is expected without one
    assert ["--skip", "libcuda.so.1", "--benign", "libcuda.so.1: cannot open shared object file"] == args[4:8]
    assert args[-4:-2] == ["--benign", "undefined symbol: InitializeInjectionCaskEnhanced"]
    assert [p.name for p in ready.providers(t)] == ["CUDAExecutionProvider"]


def test_probe_args_for_tensorrt_cell():
    t = _target("onnxruntime:gpu-cuda12.8-trt10.13-slim")
    assert t.tensorrt == "10.13.3.9"
    assert [p.name for p in ready.providers(t)] == ["CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert "onnxruntime/capi/libonnxruntime_providers_tensorrt.so" in ready.probe_args(t)


def test_paddle_flagship_still_probes_its_dlopen_names(monkeypatch):
    t = _target("gpu-cuda11.8-slim")
    args = ready.probe_args(t)
    assert "libcudnn.so" in args and "--dirs" not in args and "--needed-of" not in args
    assert args[-2:] == ["--timeout", "60"]
    monkeypatch.setenv("IMAGEGEN_DLOPEN_TIMEOUT", "2.5")  # the host's setting reaches the in-image probe
    assert ready.probe_args(t)[-2:] == ["--timeout", "2.5"]


# --- the TensorRT prune rule on a fixture environment ------------------------------------------

def test_tensorrt_unused_rule_reports_bytes_and_keeps_what_the_provider_loads(tmp_path):
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["onnxruntime:gpu-cuda12.8-trt10.13-slim"])
    assert cell.slimming.tensorrt_unused  # opted in by the default matrix
    cfg = recipe.of(cell).prune_json()
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    cfg["venv"], cfg["site_packages"] = str(venv), str(site)
    cfg["rules"]["strip"] = False
    trt = site / "tensorrt_libs"
    trt.mkdir(parents=True)
    sizes = {"libnvinfer.so.10": 1000, "libnvonnxparser.so.10": 100, "libnvinfer_plugin.so.10": 300,
             "libnvinfer_builder_resource.so.10.13.3": 2000, "libnvinfer_lean.so.10": 700,
             "libnvinfer_dispatch.so.10": 50, "libnvinfer_vc_plugin.so.10": 250}
    for name, size in sizes.items():
        (trt / name).write_bytes(b"\0" * size)
    (tmp_path / "prune.json").write_text(json.dumps(cfg))
    cp = subprocess.run([sys.executable, str(PRUNE), "--config", str(tmp_path / "prune.json"), "--venv", str(venv),
                         "--stage", str(tmp_path / "stage")], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    report = json.loads((tmp_path / "stage/etc/imagegen/prune-report.json").read_text())
    assert report["rules"]["tensorrt_unused"]["bytes"] == 700 + 50 + 250
    assert sorted(p.name for p in trt.iterdir()) == ["libnvinfer.so.10", "libnvinfer_builder_resource.so.10.13.3",
                                                     "libnvinfer_plugin.so.10", "libnvonnxparser.so.10"]
    conf = (tmp_path / "stage" / cfg["cuda"]["ldconf"].lstrip("/")).read_text()
    assert str(trt) in conf  # the loader knows tensorrt_libs/
    assert compat.cuda().loader_dirs == ["nvidia/*/lib", "tensorrt_libs"]
