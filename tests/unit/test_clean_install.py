"""A fresh install runs the CLI (issue 9 item 1).

The package is installed from this tree into a clean virtual environment (no system site-packages;
dependencies resolved by pip from pyproject.toml with the host's pip configuration), and the REAL
console script is run: --help, a valid command, and usage errors, each exactly one line on stderr
and exit 2. The environment with the dependencies is cached under $IMAGEGEN_CACHE/test-venvs/,
keyed by pyproject.toml and the interpreter, so only the first run downloads; imagegen itself is
reinstalled from the tree on every run (non-editable, so the installed copy is what runs).

Also: every module imagegen imports is the stdlib, imagegen, or a distribution declared in
pyproject.toml (the fault was an undeclared `click`).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cache() -> Path:
    return Path(os.environ.get("IMAGEGEN_CACHE", Path.home() / ".cache" / "imagegen")) / "test-venvs"


def _pip(venv: Path, *args: str) -> None:
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"pip {' '.join(args)}: {res.stderr[-2000:]}"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    key = hashlib.sha256(pyproject + sys.version.encode()).hexdigest()[:16]
    root = _cache()
    root.mkdir(parents=True, exist_ok=True)
    env_dir = root / f"clean-{key}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others reuse its result
        if not (env_dir / ".complete").exists():  # a half-built one (killed run) is started over
            shutil.rmtree(env_dir, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)  # no system site-packages
            toml = tomllib.loads(pyproject.decode())
            _pip(env_dir, "install", *toml["project"]["dependencies"], *toml["build-system"]["requires"])
            (env_dir / ".complete").write_text("")
        os.utime(env_dir / ".complete")  # last use; the least recently used beyond 3 are removed
        stale = sorted(root.glob("clean-*/.complete"), key=lambda p: p.stat().st_mtime, reverse=True)[3:]
        for mark in stale:
            shutil.rmtree(mark.parent, ignore_errors=True)
    # imagegen itself, from this tree, every run (deps already there: no resolution, no network)
    _pip(env_dir, "install", "--no-deps", "--no-build-isolation", "--force-reinstall", str(ROOT))
    return env_dir


def _run(venv: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "NO_COLOR": "1", "HOME": os.environ.get("HOME", "/root"),
           "IMAGEGEN_CACHE": os.environ.get("IMAGEGEN_CACHE", str(Path.home() / ".cache" / "imagegen"))}
    return subprocess.run([str(venv / "bin" / "imagegen"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_the_venv_is_clean_and_runs_the_installed_copy(venv):
    cfg = (venv / "pyvenv.cfg").read_text()
    assert re.search(r"include-system-site-packages\s*=\s*false", cfg)
    res = subprocess.run([str(venv / "bin" / "python"), "-c", "import imagegen, sys; print(imagegen.__file__)"],
                         cwd="/", capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert res.stdout.startswith(str(venv)), res.stdout


def test_help(venv):
    res = _run(venv, "--help")
    assert res.returncode == 0 and "Usage" in res.stdout and "validate" in res.stdout, res.stderr
    assert res.stderr == ""


def test_valid_command(venv):
    res = _run(venv, "validate")
    assert res.returncode == 0 and re.match(r"matrix\.yaml: valid, \d+ cells", res.stdout), res.stderr


@pytest.mark.parametrize("args", [
    ["nosuchcmd"],
    ["build", "--nosuchflag"],
    ["build", "--all", "-j", "0"],
    ["audit", "IMG", "--top", "-1"],
    ["render", "--variant", "gpu-cuda11.8-slim", "--out", "/proc/x"],
    ["validate", "--matrix", "/nonexistent.yaml"],
], ids=lambda a: " ".join(a))
def test_usage_error_is_one_line_exit_2(venv, args):
    res = _run(venv, *args)
    lines = res.stderr.splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and res.stdout == ""


def _imports() -> set[str]:
    """Top-level names imported by imagegen's modules, less in-image scripts' own siblings (files
    copied next to each other into an image, e.g. `import elfmini`)."""
    local = {p.stem for p in (ROOT / "imagegen").rglob("*.py")}
    names = set()
    for path in (ROOT / "imagegen").rglob("*.py"):
        if "smoke" in path.relative_to(ROOT / "imagegen").parts:
            continue  # smoke scripts run inside the framework's image, with its framework
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - local


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_norm(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for mod in sorted(_imports()):
        if mod in sys.stdlib_module_names or mod in ("imagegen", "__future__"):
            continue
        dists = {_norm(d) for d in providers.get(mod, [])}
        assert dists, f"imagegen imports {mod!r}, which no installed distribution provides"
        if not dists & declared:
            undeclared[mod] = sorted(dists)
    assert not undeclared, f"imported but not declared in pyproject.toml dependencies: {undeclared}"


def test_dependencies_are_bounded():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    unbounded = [d for d in project["dependencies"] if "<" not in d and "==" not in d]
    assert not unbounded, f"dependencies without an upper bound: {unbounded}"
