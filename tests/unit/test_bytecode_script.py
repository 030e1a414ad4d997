"""The builder's bytecode step (imagegen/scripts/prune.py + compile_bytecode.py), run for real on a
host venv: unchecked-hash .pyc files that Python loads without consulting the source again."""

from __future__ import annotations

import json
import os
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
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    (pkg / "mod.py").write_text("def f():\n    return 'compiled'\n")
    (pkg / "py2_template.py").write_text("print 'python 2'\n")  # does not compile: counted, not fatal
    (pkg / "tests" / "test_x.py").write_text("X = 1\n")
    stale = pkg / "__pycache__"
    stale.mkdir()
    (stale / "old.cpython-311.pyc").write_bytes(b"stale")
    return v


def run_prune(tmp_path: Path, venv: Path, bytecode: str) -> dict:
    cfg = {"cell": "x:1-cpu-slim", "site_packages": str(venv / "lib" / PY / "site-packages"),
           "rules": {"tests": True, "bytecode": bytecode, "strip": False}, "globs": {}, "protect": [], "cuda": None}
    (tmp_path / "prune.json").write_text(json.dumps(cfg))
    stage = tmp_path / "stage"
    subprocess.check_call([sys.executable, str(SCRIPTS / "prune.py"), "--config", str(tmp_path / "prune.json"),
                           "--venv", str(venv), "--stage", str(stage)], stdout=subprocess.DEVNULL)
    return json.loads((stage / "etc/imagegen/prune-report.json").read_text())["rules"]["bytecode"]


def pycs(venv: Path) -> list[Path]:
    return sorted(venv.rglob("*.pyc"))


def test_compile_writes_unchecked_hash_pyc_after_pruning(tmp_path, venv):
    rep = run_prune(tmp_path, venv, "compile")
    site = venv / "lib" / PY / "site-packages"
    found = pycs(venv)
    assert {p.name.split(".")[0] for p in found} == {"__init__", "mod"}  # not the pruned tests, not the stale one
    assert all(pyc_flags(p) == 1 for p in found)
    assert rep == {"enabled": False, "mode": "compile", "bytes": sum(p.stat().st_size for p in found),
                   "paths": 2, "invalidation_mode": "unchecked-hash", "compile_errors": 1,
                   "compile_seconds": rep["compile_seconds"]}
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
    assert rep["enabled"] is True and rep["mode"] == "drop" and rep["bytes"] > 0 and rep["paths"] == 2


def test_keep_writes_timestamp_pyc(tmp_path, venv):
    run_prune(tmp_path, venv, "keep")
    assert pycs(venv) and all(pyc_flags(p) == 0 for p in pycs(venv))


def test_stdlib_mode_moves_only_pycache(tmp_path):
    src = tmp_path / "stdlib"
    (src / "json").mkdir(parents=True)
    (src / "json" / "__init__.py").write_text("A = 1\n")
    (src / "abc2.py").write_text("B = 2\n")
    out = tmp_path / "sysroot"
    res = subprocess.run([sys.executable, str(SCRIPTS / "compile_bytecode.py"), "--stdlib", str(src),
                          "--ddir", "/usr/lib/python3.11", "--out", str(out)], capture_output=True, text=True, check=True)
    stats = json.loads(res.stdout.split("IMAGEGEN-STDLIB-BYTECODE ", 1)[1])
    assert stats["files"] == 2 and stats["errors"] == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    tag = sys.implementation.cache_tag
    assert files == [f"usr/lib/python3.11/__pycache__/abc2.{tag}.pyc", f"usr/lib/python3.11/json/__pycache__/__init__.{tag}.pyc"]
    # tracebacks name the runtime's path, not the builder's copy
    import marshal

    code = marshal.loads((out / files[0]).read_bytes()[16:])
    assert code.co_filename == "/usr/lib/python3.11/abc2.py"
