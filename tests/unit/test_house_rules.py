"""The house rules of docs/ARCHITECTURE.md, kept by tests (architecture review 3, §6 item 1).

Each rule has an allowlist of today's exceptions that may only shrink: a new exception fails the
test, and so does an allowlisted one that is gone (remove it from the list)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pysource import docstring_ids  # tests/support, on sys.path by conftest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_ruff_is_clean():
    """pyflakes, import order and bugbear ([tool.ruff] in pyproject.toml) on the package, tests and bench."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is not installed: pip install -e '.[test]'"
    r = subprocess.run([ruff, "check", "--no-cache", "imagegen", "tests", "bench"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the checker: one pass over imagegen/ with `ast` ------------------------------------------------

PKG = REPO / "imagegen"
LABEL_PREFIXES = ("io.imagegen.", "org.opencontainers.")
#: a path into the package's data directory spelled as a string ("data/gpus.yaml", "imagegen.data")
DATA_PATH_RE = re.compile(r"^[\w./-]*\bdata/[\w.-]+\.(yaml|json|py)$|^imagegen\.data$")
ENV_RE = re.compile(r"^IMAGEGEN_[A-Z0-9_]*$")  # a name, or the prefix of one built at run time
MAX_FUNCTION_LINES = 80
#: modules the probes find beside them in the container (imagetest.container copies elfmini there)
COPIED_BESIDE = {"elfmini"}


def _modules(pkg: Path) -> dict[str, Path]:
    return {p.relative_to(pkg).with_suffix("").as_posix().replace("/", "."): p for p in sorted(pkg.rglob("*.py"))}


def _strings(tree: ast.AST) -> list[ast.Constant]:
    docs = docstring_ids(tree)
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def _leftmost(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        node = node.left
    return node


def _foreign_imports(tree: ast.AST, here: Path) -> set[str]:
    """Top-level names imported that are neither the standard library nor a sibling file. Files copied
    into a build context or a container (imagegen/scripts/, imagegen/imagetest/probes/) run on a Python
    that has only the standard library and their siblings."""
    siblings = {p.stem for p in here.glob("*.py")} | COPIED_BESIDE
    names = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 1:  # `from . import x`: x must be a sibling
            names |= {a.name for a in n.names} if not n.module else {n.module.split(".")[0]}
        elif isinstance(n, ast.ImportFrom) and n.level > 1:  # the package above: not in the build context
            names.add("." * n.level + (n.module or ""))
        elif isinstance(n, ast.ImportFrom):
            names.add((n.module or "").split(".")[0])
    return {x for x in names if x not in sys.stdlib_module_names and x not in siblings and x != "__future__"}


def _from_package_dir(node: ast.AST) -> bool:
    """An expression built from `__file__` or importlib.resources' `files(...)`: the package's directory."""
    return any((isinstance(n, ast.Name) and n.id == "__file__") or _called(n, "files") for n in ast.walk(node))


def _called(node: ast.AST, name: str) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name)


def violations(pkg: Path = PKG) -> dict[str, set[str]]:
    """{rule: {"module: what"}} for every rule below, over the package at `pkg` (and the templates beside it)."""
    data_files = {p.name for p in (pkg / "data").rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".py")}
    found: dict[str, set[str]] = {r: set() for r in ("data", "cache", "labels", "settings", "functions", "stdlib")}
    in_image = {*(pkg / "scripts").glob("*.py"), *(pkg / "imagetest" / "probes").glob("*.py")}
    for mod, path in _modules(pkg).items():
        tree = ast.parse(path.read_text(), filename=str(path))
        strings = _strings(tree)
        if mod != "compat":
            for c in strings:
                if c.value in data_files or DATA_PATH_RE.search(c.value):
                    found["data"].add(f"{mod}: {c.value}")
            for n in ast.walk(tree):
                if isinstance(n, ast.Attribute) and n.attr == "DATA":
                    found["data"].add(f"{mod}: .DATA")
                if (isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and isinstance(n.right, ast.Constant)
                        and n.right.value == "data" and _from_package_dir(n.left)):
                    found["data"].add(f"{mod}: <package> / 'data'")
        if mod != "paths":
            roots = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and _called(n.value, "cache_root")
                     for t in n.targets if isinstance(t, ast.Name)}  # `root = paths.cache_root()`
            for n in ast.walk(tree):
                left = _leftmost(n) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) else None
                if left is not None and (_called(left, "cache_root") or (isinstance(left, ast.Name)
                                                                         and left.id in roots)):
                    found["cache"].add(f"{mod}: cache_root() / ...")
                if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "joinpath"
                        and _called(n.func.value, "cache_root")):
                    found["cache"].add(f"{mod}: cache_root().joinpath(...)")
        if mod != "labels":
            for c in strings:
                if c.value.startswith(LABEL_PREFIXES):
                    found["labels"].add(f"{mod}: {c.value}")
        if mod != "settings":
            for c in strings:
                if ENV_RE.match(c.value):
                    found["settings"].add(f"{mod}: {c.value}")
            for n in ast.walk(tree):
                if isinstance(n, ast.keyword) and n.arg and ENV_RE.match(n.arg):
                    found["settings"].add(f"{mod}: {n.arg}=")
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = n.end_lineno - n.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found["functions"].add(f"{mod}: {n.name}")
        if path in in_image:
            found["stdlib"] |= {f"{mod}: {name}" for name in _foreign_imports(tree, path.parent)}
    for path in sorted((pkg.parent / "templates").rglob("*.j2")):  # comment lines aside: they only mention them
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        for m in re.finditer(r"(?:io\.imagegen|org\.opencontainers)\.[a-z0-9.-]+", code):
            found["labels"].add(f"templates/{path.relative_to(pkg.parent / 'templates').as_posix()}: {m.group(0)}")
    return found


def _shrink_only(rule: str, allowed: set[str]) -> None:
    found = violations()[rule]
    new, gone = sorted(found - allowed), sorted(allowed - found)
    assert not new, f"{rule}: new violations (see the rule's docstring):\n" + "\n".join(new)
    assert not gone, f"{rule}: fixed, remove them from the allowlist:\n" + "\n".join(gone)


# --- the rules ---------------------------------------------------------------------------------------

#: today's exceptions; the list may only shrink
DATA_ALLOWED = {"secretscan: imagegen/data/secrets-allow.yaml"}  # the name it shows for an allowed finding
CACHE_ALLOWED: set[str] = set()
LABELS_ALLOWED: set[str] = set()
SETTINGS_ALLOWED: set[str] = set()
FUNCTIONS_ALLOWED = {  # the aim: at most 3 (the save stream's and the overlay's state machines)
    "savestream.fsview: apply_layers", "savestream.layers: read_save_stream",
}


def test_data_is_read_only_by_compat():
    """imagegen/data/ is read only through imagegen.compat (its loaders), never by path elsewhere."""
    _shrink_only("data", DATA_ALLOWED)


def test_cache_paths_are_built_only_in_paths():
    """Every path under the cache root is built in imagegen.paths (its layout docstring lists them)."""
    _shrink_only("cache", CACHE_ALLOWED)


def test_label_names_live_only_in_labels():
    """Label names (io.imagegen.*, org.opencontainers.*) are spelled only in imagegen.labels."""
    _shrink_only("labels", LABELS_ALLOWED)


def test_settings_are_read_only_in_settings():
    """IMAGEGEN_* variables are named only in imagegen.settings (messages and docstrings may mention them)."""
    _shrink_only("settings", SETTINGS_ALLOWED)


def test_functions_are_at_most_80_lines():
    _shrink_only("functions", FUNCTIONS_ALLOWED)


def test_files_copied_into_images_import_only_the_standard_library():
    """imagegen/scripts/ and imagegen/imagetest/probes/ run inside builds and containers: stdlib and siblings only."""
    _shrink_only("stdlib", set())


def test_every_imagegen_variable_is_declared_in_settings_and_documented():
    """Every IMAGEGEN_* name the package, README or docs mention is a declared setting; docs/settings.md
    holds the table settings.markdown_table() makes, and the README names every user setting."""
    from imagegen import settings

    declared = {s.name for s in settings.ALL}
    mentioned: dict[str, set[str]] = {}
    for path in [*PKG.rglob("*.py"), REPO / "README.md", *(REPO / "docs").rglob("*.md")]:
        for name in re.findall(r"IMAGEGEN_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            mentioned.setdefault(name, set()).add(path.relative_to(REPO).as_posix())
    setup = set(re.findall(r"\$\{(IMAGEGEN_[A-Z0-9_]+)", (REPO / "scripts" / "setup.sh").read_text()))
    unknown = {n: sorted(w) for n, w in mentioned.items() if n not in declared | setup}  # setup.sh's own: docs/bases.md
    assert not unknown, f"IMAGEGEN_* names that imagegen/settings.py does not declare: {unknown}"
    assert settings.markdown_table() in (REPO / "docs" / "settings.md").read_text(), \
        "docs/settings.md is stale: paste settings.markdown_table() into it"
    readme = (REPO / "README.md").read_text()
    assert not [s.name for s in settings.ALL if not s.internal and f"`{s.name}`" not in readme]


def test_a_malformed_setting_is_one_line_naming_it(monkeypatch):
    from imagegen import settings
    from imagegen.errors import UserInputError

    monkeypatch.setenv("IMAGEGEN_INDEX_TIMEOUT", "soon")
    with pytest.raises(UserInputError, match=r"^IMAGEGEN_INDEX_TIMEOUT='soon' is not a positive number of seconds \(at most 86400\) \(it sets"):
        settings.INDEX_TIMEOUT.value()
    monkeypatch.setenv("IMAGEGEN_INDEX_TIMEOUT", "  ")  # empty is unset
    assert settings.INDEX_TIMEOUT.value() == 8.0
    monkeypatch.setenv("IMAGEGEN_PIP_FAST_DEPS", "Off")
    assert settings.PIP_FAST_DEPS.value() is False
    monkeypatch.setenv("IMAGEGEN_SKIP_UNREACHABLE_INDEXES", " a, ,b ")
    assert settings.SKIP_UNREACHABLE_INDEXES.value() == {"a", "b"}
    r = subprocess.run([sys.executable, "-m", "imagegen", "list"], cwd=REPO,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "IMAGEGEN_INDEX_TIMEOUT": "-1"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "IMAGEGEN_INDEX_TIMEOUT='-1' is not" in r.stderr, r.stderr


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    pkg = tmp_path / "imagegen"
    files = {
        "data/gpus.yaml": "x: 1\n",
        "compat.py": "DATA = 'here'\n",
        "paths.py": "def cache_root(): ...\n",
        "gpu.py": "import yaml\nfrom pathlib import Path\nfrom . import compat, paths\n"
                  "A = Path(__file__).parent / 'data'\nB = compat.DATA / 'gpus.yaml'\nC = paths.cache_root() / 'x' / 'y'\n"
                  "L = {'io.imagegen.cell': 1, 'org.opencontainers.image.title': 2}\n"
                  "import os\nE = os.environ.get('IMAGEGEN_SOMETHING')\nF = dict(os.environ, IMAGEGEN_OTHER='1')\n"
                  "def long():\n" + "    x = 1\n" * 80,
        "scripts/tool.py": "import json\nimport sibling\nimport yaml\nfrom imagegen import paths\n",
        "scripts/sibling.py": "import os\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "l.j2").write_text("# io.imagegen.comment is fine\nLABEL io.imagegen.framework=x\n")
    found = violations(pkg)
    assert found["data"] == {"gpu: <package> / 'data'", "gpu: .DATA", "gpu: gpus.yaml"}
    assert found["cache"] == {"gpu: cache_root() / ..."}
    assert found["labels"] == {"gpu: io.imagegen.cell", "gpu: org.opencontainers.image.title",
                               "templates/l.j2: io.imagegen.framework"}
    assert found["settings"] == {"gpu: IMAGEGEN_SOMETHING", "gpu: IMAGEGEN_OTHER="}
    assert found["functions"] == {"gpu: long"}
    assert found["stdlib"] == {"scripts.tool: yaml", "scripts.tool: imagegen"}


def test_the_checker_sees_through_indirection(tmp_path):
    """Names built at run time, a cache root held in a variable, parent-package imports from a copied
    script, data paths spelled as one string."""
    pkg = tmp_path / "imagegen"
    files = {
        "compat.py": "", "paths.py": "def cache_root(): ...\n", "data/smoke/tiny.py": "",
        "a.py": "import os\nfrom . import paths\nX = os.environ.get('IMAGEGEN_' + 'FOO')\n"
                "Y = [k for k in os.environ if k.startswith('IMAGEGEN_')]\n"
                "def f():\n    root = paths.cache_root()\n    return root / 'x', paths.cache_root().joinpath('y')\n"
                "from pathlib import Path\nZ = Path(__file__).parent / 'data/gpus.yaml'\nW = 'imagegen.data'\n"
                "V = 'tiny.py'\nM = 'see imagegen/data/cuda.yaml for the facts'\n",
        "scripts/tool.py": "from .. import settings\nfrom . import sibling\nfrom . import missing\n",
        "scripts/sibling.py": "",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    found = violations(pkg)
    assert found["settings"] == {"a: IMAGEGEN_"}
    assert found["cache"] == {"a: cache_root() / ...", "a: cache_root().joinpath(...)"}
    assert found["data"] == {"a: data/gpus.yaml", "a: imagegen.data", "a: tiny.py"}  # a message is not a read
    assert found["stdlib"] == {"scripts.tool: ..", "scripts.tool: missing"}
