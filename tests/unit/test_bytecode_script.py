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
              smoke: str | None = None) -> dict:
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
           "rules": {"tests": True, "bytecode": bytecode, "strip": False}, "globs": {}, "protect": [], "cuda": None,
           "bytecode": spec}
    (tmp_path / "prune.json").write_text(json.dumps(cfg))
    stage = tmp_path / "stage"
    subprocess.check_call([sys.executable, str(SCRIPTS / "prune.py"), "--config", str(tmp_path / "prune.json"),
                           "--venv", str(venv), "--stage", str(stage)], stdout=subprocess.DEVNULL)
    return json.loads((stage / "etc/imagegen/prune-report.json").read_text())["rules"]["bytecode"]


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
    """What the first inference loads (here tinypkg.unused) is compiled too; a failing smoke
    script still leaves what the import loaded."""
    rep = run_prune(tmp_path, venv, "compile", smoke="import sys\nimport tinypkg.unused\nassert sys.argv[1] == 'cpu'\n")
    assert rep["scope"] == "import" and {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional", "unused"}
    rep = run_prune(tmp_path, venv, "compile", smoke="raise RuntimeError('no device')\n")
    assert rep["scope"] == "import" and {p.name.split(".")[0] for p in pycs(venv)} == {"__init__", "mod", "optional"}
