"""The builder's bytecode step (imagegen/scripts/prune.py + compile_bytecode.py), run for real on a
host venv: unchecked-hash .pyc files that Python loads without consulting the source again."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "imagegen" / "scripts"
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def pyc_flags(path: Path) -> int:
    """PEP 552 flags: 0 timestamp, 1 unchecked hash, 3 checked hash."""
    return struct.unpack("<I", path.read_bytes()[4:8])[0]


@pytest.fixture
def venv(tmp_path) -> Path:
    v = tmp_path / "venv"
    subprocess.check_call([sys.executable, "-m", "venv", "--without-pip", str(v)])
    site = v / "lib" / PY / "site-packages"
    pkg = site / "tinypkg"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import json\nfrom . import mod\nVALUE = 42\n")
    (pkg / "mod.py").write_text("def f():\n    return 'compiled'\n")
    (pkg / "unused.py").write_text("X = 1\n")  # never imported by `import tinypkg`
    # imported, fails, caught, so gone from sys.modules again: compiled on every start all the same
    (pkg / "optional.py").write_text("import no_such_dependency\n")
    (pkg / "__init__.py").write_text("import json\nfrom . import mod\nVALUE = 42\n"
                                     "try:\n    from . import optional\nexcept ImportError:\n    pass\n")
    (pkg / "py2_template.py").write_text("print 'python 2'\n")  # does not compile: counted, not fatal
    (pkg / "tests" / "test_x.py").write_text("X = 1\n")
    stale = pkg / "__pycache__"
    stale.mkdir()
    (stale / "old.cpython-311.pyc").write_bytes(b"stale")
    return v


STDLIB = Path(json.__file__).parent.parent  # this interpreter's standard library


def run_prune(tmp_path: Path, venv: Path, bytecode: str, stdlib: bool = False, module: str = "tinypkg",
              smoke: str | None = None, cuda: dict | None = None) -> dict:
    spec = {"trace": True, "import": module, "python": str(venv / "bin" / "python"), "libdirs": [], "stdlib": None,
            "smoke": None}
    if smoke is not None:
        (tmp_path / "smoke.py").write_text(smoke)
        spec["smoke"] = str(tmp_path / "smoke.py")
    if stdlib:  # a copy of part of the "runtime's" standard library: json only
        src = tmp_path / "stdlib"
        if not src.exists():
            shutil.copytree(STDLIB / "json", src / "json", ignore=shutil.ignore_patterns("__pycache__"))
        spec["stdlib"] = {"src": str(src), "ddir": str(STDLIB)}
    cfg = {"cell": "x:1-cpu-slim", "site_packages": str(venv / "lib" / PY / "site-packages"),
           "rules": {"tests": True, "bytecode": bytecode, "strip": False}, "globs": {}, "protect": [], "cuda": cuda,
           "bytecode": spec}
    (tmp_path / "prune.json").write_text(json.dumps(cfg))
    stage = tmp_path / "stage"
    r = subprocess.run([sys.executable, str(SCRIPTS / "prune.py"), "--config", str(tmp_path / "prune.json"),
                        "--venv", str(venv), "--stage", str(stage)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, check=True)
    rep = json.loads((stage / "etc/imagegen/prune-report.json").read_text())["rules"]["bytecode"]
    rep["_stderr"] = r.stderr
    return rep


RESULT_OK = "import json\nprint('IMAGEGEN-RESULT ' + json.dumps({'ok': True}))\n"


def start_writes_bytecode(venv: Path, smoke: str, env: dict | None = None) -> list[str]:
    """The start the image check `bytecode.start_rewrites_no_bytecode` makes, on the host venv: the
    smoke script straight from the environment's Python, `cpu`, where Python *could* write bytecode
    (writable tree, PYTHONDONTWRITEBYTECODE unset). Returns the .pyc files it wrote in the venv."""
    before = set(pycs(venv))
    script = venv.parent / "start" / "smoke.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(smoke)
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    run_env.update(env or {})
    r = subprocess.run([str(venv / "bin" / "python"), str(script), "cpu"], env=run_env, capture_output=True,
                       text=True, cwd=script.parent, check=False)
    assert r.returncode == 0 and "IMAGEGEN-RESULT" in r.stdout, r.stderr
    return sorted(str(p.relative_to(venv)) for p in set(pycs(venv)) - before)


def pycs(venv: Path) -> list[Path]:
    return sorted(venv.rglob("*.pyc"))


def test_compile_writes_unchecked_hash_pyc_for_what_the_import_loads(tmp_path, venv):
    rep = run_prune(tmp_path, venv, "compile", stdlib=True)
    site = venv / "lib" / PY / "site-packages"
    found = pycs(venv)
    # what `import tinypkg` loads; not unused.py, the pruned tests, the stale .pyc or the py2 file
    assert {p.name.split(".")[0] for p in found} == {"__init__", "mod", "optional"}
    assert all(pyc_flags(p) == 1 for p in found)
    assert rep["scope"] == "import" and rep["trace_error"] == "" and rep["paths"] == 3
    assert rep["bytes"] == sum(p.stat().st_size for p in found) and rep["invalidation_mode"] == "unchecked-hash"
    # the runtime stdlib's part of the import, compiled from the copy into the stage, named by its runtime path
    staged = sorted(p.relative_to(tmp_path / "stage") for p in (tmp_path / "stage").rglob("*.pyc"))
    assert staged and all(str(p).startswith(str(STDLIB).lstrip("/") + "/json/__pycache__/") for p in staged)
    assert rep["stdlib"]["files"] == len(staged) and rep["stdlib"]["errors"] == 0
    import marshal

    code = marshal.loads((tmp_path / "stage" / staged[0]).read_bytes()[16:])
    assert code.co_filename.startswith(str(STDLIB / "json") + "/")
    # Python loads the .pyc without looking at the source: an edited source is not noticed, and
    # with a read-only tree and PYTHONDONTWRITEBYTECODE nothing is rewritten
    (site / "tinypkg" / "mod.py").write_text("def f():\n    return 'edited'\n")
    before = {p: p.read_bytes() for p in found}
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                   "import tinypkg.mod as m; print(m.f(), m.__spec__.cached)"], env=env, text=True)
    assert out.split()[0] == "compiled"
    assert {p: p.read_bytes() for p in pycs(venv)} == before


def test_compile_is_reproducible(tmp_path, venv):
    run_prune(tmp_path, venv, "compile")
    first = {p.relative_to(venv): p.read_bytes() for p in pycs(venv)}
    run_prune(tmp_path, venv, "compile")
    assert {p.relative_to(venv): p.read_bytes() for p in pycs(venv)} == first


def test_drop_ships_none_and_reports_what_it_saves(tmp_path, venv):
    rep = run_prune(tmp_path, venv, "drop")
    assert pycs(venv) == []
    assert rep["enabled"] is True and rep["mode"] == "drop" and rep["bytes"] > 0 and rep["paths"] == 3


def test_failed_trace_compiles_everything(tmp_path, venv):
    rep = run_prune(tmp_path, venv, "compile", module="no_such_framework")
    assert rep["scope"] == "all" and "No module named" in rep["trace_error"]
    assert {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional", "unused"}
    assert rep["compile_errors"] == 1  # the py2 file: counted, not fatal


def test_all_compiles_every_source(tmp_path, venv):
    rep = run_prune(tmp_path, venv, "all")
    assert rep["scope"] == "all" and {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional", "unused"}


def test_keep_writes_timestamp_pyc(tmp_path, venv):
    run_prune(tmp_path, venv, "keep")
    assert pycs(venv) and all(pyc_flags(p) == 0 for p in pycs(venv))


def test_compile_covers_the_smoke_inference(tmp_path, venv):
    """What the first inference loads (here tinypkg.unused) is compiled too, so the start the image
    check makes writes no bytecode."""
    smoke = "import sys\nimport tinypkg.unused\nassert sys.argv[1] == 'cpu'\n" + RESULT_OK
    rep = run_prune(tmp_path, venv, "compile", smoke=smoke)
    assert rep["scope"] == "import" and rep["trace_error"] == ""
    assert {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional", "unused"}
    assert start_writes_bytecode(venv, smoke) == []


def test_import_only_trace_misses_what_the_start_loads(tmp_path, venv):
    """The failure the Paddle 2.6.2 GPU cells had (GPU cells traced `import paddle` only, and their
    start, the CPU smoke inference, wrote 122 .pyc files): the start check's property on a host venv
    fails when the trace leaves the smoke out. Guards start_writes_bytecode itself against passing
    vacuously."""
    smoke = "import tinypkg.unused\n" + RESULT_OK
    rep = run_prune(tmp_path, venv, "compile")  # no smoke traced
    assert rep["scope"] == "import"
    unused = f"lib/{PY}/site-packages/tinypkg/__pycache__/unused.{sys.implementation.cache_tag}.pyc"
    assert start_writes_bytecode(venv, smoke) == [unused]


def _shared_library() -> Path:
    """Any ELF shared object to stand in for an NVIDIA library (dlopen'd by name only, never called)."""
    import importlib

    for name in ("_ctypes", "_json", "zlib", "_struct", "math", "_socket"):
        f = getattr(importlib.import_module(name), "__file__", None) or ""
        if f.endswith(".so"):
            return Path(f)
    pytest.fail("no extension module on this Python to stand in for a shared library")


@pytest.fixture
def gpu_venv(venv) -> tuple[Path, dict]:
    """The venv plus an NVIDIA-wheel-like library (nvidia/fakecudnn/lib/libfakecudnn.so.8) and the
    prune config's `cuda` block that links libfakecudnn.so to it and registers its directory."""
    lib = venv / "lib" / PY / "site-packages" / "nvidia" / "fakecudnn" / "lib"
    lib.mkdir(parents=True)
    shutil.copyfile(_shared_library(), lib / "libfakecudnn.so.8")
    cuda = {"libdirs": ["nvidia/fakecudnn/lib"], "pruned_links": [], "loader_dirs": ["nvidia/*/lib"],
            "ldconf": "/etc/ld.so.conf.d/imagegen-cuda.conf",
            "links": {"libfakecudnn.so": {"dir": "nvidia/fakecudnn/lib", "target_glob": "libfakecudnn.so.*"}}}
    return venv, cuda


# a GPU framework's CPU inference that dlopens its CUDA library by the unversioned name (as Paddle
# 2.6.2 does cuDNN): only the link prune.py makes and the loader directories the runtime registers find it
GPU_SMOKE = ("import ctypes, sys\nctypes.CDLL('libfakecudnn.so')\nimport tinypkg.unused\n"
             "assert sys.argv[1] == 'cpu'\n" + RESULT_OK)


def test_gpu_cell_traces_the_smoke_with_the_runtime_loader_view(tmp_path, gpu_venv):
    """A GPU cell's trace runs after the unversioned links exist, with the NVIDIA directories the
    runtime registers (ld.so.conf.d) on the loader path: the smoke inference runs, its modules are
    compiled, and the start (with the runtime's loader view) writes no bytecode."""
    venv, cuda = gpu_venv
    rep = run_prune(tmp_path, venv, "compile", smoke=GPU_SMOKE, cuda=cuda)
    assert rep["trace_error"] == "" and rep["scope"] == "import"
    assert {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional", "unused"}
    conf = (tmp_path / "stage" / "etc/ld.so.conf.d/imagegen-cuda.conf").read_text().split("\n")
    libdir = str(venv / "lib" / PY / "site-packages" / "nvidia" / "fakecudnn" / "lib")
    assert libdir in conf
    assert start_writes_bytecode(venv, GPU_SMOKE, env={"LD_LIBRARY_PATH": libdir}) == []


def test_a_failing_smoke_is_loud_and_compiles_everything(tmp_path, venv):
    """A smoke inference that fails, or reports a failure, in the builder never passes for a complete
    trace: everything is compiled (bigger, never wrong), and the report and stderr say why."""
    for smoke, why in [("raise RuntimeError('no device')\n", "RuntimeError: no device"),
                       ("import sys\nsys.exit(3)\n", "exited with 3"),
                       ("import tinypkg.unused\n", "no IMAGEGEN-RESULT line"),
                       ("import json\nprint('IMAGEGEN-RESULT ' + json.dumps({'ok': False, 'error': 'mismatch'}))\n",
                        "ok=false: mismatch")]:
        rep = run_prune(tmp_path, venv, "compile", smoke=smoke)
        assert rep["scope"] == "all", smoke
        assert "smoke inference" in rep["trace_error"] and why in rep["trace_error"], rep["trace_error"]
        assert "bytecode trace failed" in rep["_stderr"] and why in rep["_stderr"]
        assert {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional", "unused"}


def test_a_smoke_that_hangs_is_killed_and_reported(tmp_path, venv):
    """Paddle's abort handler can sleep forever: the trace's process group is killed at the timeout,
    and the result is a failed trace, not the import's list."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import compile_bytecode as bc
    finally:
        sys.path.remove(str(SCRIPTS))
    (tmp_path / "smoke.py").write_text("import time\ntime.sleep(60)\n")
    files, why = bc.trace_import(str(venv / "bin" / "python"), "tinypkg", libdirs=[], smoke=str(tmp_path / "smoke.py"),
                                 timeout=3)
    assert files is None and "timed out after 3 s" in why and "smoke inference" in why
