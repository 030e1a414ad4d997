"""Render templates/ into one build folder per cell, deterministically, and check for drift."""

from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from . import compat, recipe
from .errors import UserInputError
from .matrix import Cell, Matrix
from .scripts import contract


def templates_dir(matrix_path: Path | None = None) -> Path:
    """templates/ beside the matrix, else the repository's, else the copy shipped in the wheel."""
    candidates = []
    if matrix_path is not None:
        candidates.append(matrix_path.resolve().parent / "templates")
    candidates.append(Path(__file__).resolve().parent.parent / "templates")
    candidates.append(Path(str(resources.files("imagegen") / "_templates")))
    for c in candidates:
        if (c / "Dockerfile.j2").is_file():
            return c
    raise UserInputError("no templates/ directory with Dockerfile.j2 found next to the matrix")


def _env(tdir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(tdir)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shell_quote"] = lambda v: shlex.quote(str(v))
    env.filters["dirname"] = lambda v: str(v).rsplit("/", 1)[0] or "/"
    return env


#: The GPU runtime stage's one RUN (exec form: the slim runtime has no shell; `-B`: no bytecode
#: written): the loader cache for the NVIDIA wheels' library directories, without its aux-cache (inode
#: numbers, ctimes); then what it changed (/etc/ld.so.cache, the directories it wrote in) gets
#: SOURCE_DATE_EPOCH when the build passes it. Other filesystems (/proc, the bind-mounted /etc/hosts)
#: are never entered, and no file but the cache is touched.
LDCONFIG_STEP = """import os, subprocess
subprocess.run(['/sbin/ldconfig'], check=True)
c = '/var/cache/ldconfig/aux-cache'
os.path.exists(c) and os.unlink(c)
e = os.environ.get('SOURCE_DATE_EPOCH', '')
if e:
    e = int(e)
    if os.lstat('/etc/ld.so.cache').st_mtime > e:
        os.utime('/etc/ld.so.cache', (e, e))
    dev = os.lstat('/').st_dev
    for root, dirs, files in os.walk('/'):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(root, d)).st_dev == dev]
        if os.lstat(root).st_mtime > e:
            os.utime(root, (e, e), follow_symlinks=False)
"""


def runtime_step(gpu_libdirs: bool) -> str:
    """The GPU runtime stage's RUN program (LDCONFIG_STEP) as a JSON string for the exec form ("" for
    a cell without NVIDIA library directories)."""
    return json.dumps(LDCONFIG_STEP) if gpu_libdirs else ""


@dataclass(frozen=True)
class Rendered:
    cell: Cell
    files: dict[str, str]  # relative path -> content


def render_cell(m: Matrix, cell: Cell, tdir: Path | None = None, *, buildkit: bool = True) -> Rendered:
    """The files of ``cell``'s build: its Dockerfile and prune.json. ``buildkit``: the Dockerfile for
    BuildKit (committed in dockerfiles/; the wheelhouse is bind-mounted, `RUN --mount`), else the classic
    builder's form (the wheelhouse is copied into the builder stage, then removed). Both give the same
    files in the image. Raises UserInputError on a template error."""
    tdir = tdir or templates_dir(m.path)
    env = _env(tdir)
    base = cell.base_spec
    assert base is not None
    roles = {r: base.role(r) for r in ("runtime", "builder", "dev") if r in base.roles}
    refs = {r: base.role_ref(cell.base, r) for r in roles}
    rec = recipe.of(cell)
    cfg = rec.prune_json()
    ctx = {
        "cell": cell,
        "origin": _portable_origin(cell.origin),
        "framework": cell.fw,
        "flavor": compat.flavors()[cell.flavor],
        "base": base,
        "roles": roles,
        "refs": refs,
        "venv": recipe.VENV,
        "paths": TEMPLATE_PATHS,
        "builder_files": builder_files(rec),
        "sysroot_files": [f"{contract.CONTEXT_DIR}/{name}" for name in (*recipe.SYSROOT_SCRIPTS, "closure.txt")],
        "user": recipe.USER,
        "gpu_libdirs": rec.gpu_libdirs,
        "runtime_step": runtime_step(bool(rec.gpu_libdirs)),
        "cuda_archs": rec.kernel_targets,
        "driver_min": compat.cuda().releases[cell.cuda].driver_min if cell.cuda else None,  # older templates
        "static_labels": list(rec.static_labels),
        "env": [f"{k}={shlex.quote(v)}" for k, v in rec.runtime_env],
        "bytecode": cfg["bytecode"],
        "buildkit": buildkit,
    }
    try:
        dockerfile = env.get_template("Dockerfile.j2").render(**ctx)
    except jinja2.TemplateError as exc:
        raise UserInputError(f"template error: {exc}") from None
    dockerfile = _tidy(dockerfile)
    files = {
        "Dockerfile": dockerfile,
        "imagegen/prune.json": json.dumps(cfg, indent=2, sort_keys=True) + "\n",
    }
    return Rendered(cell=cell, files=files)


def _portable_origin(origin: str) -> str:
    """'some/dir/matrix.yaml:17' -> 'matrix.yaml:17', so output doesn't depend on the working directory."""
    file, _, line = origin.rpartition(":")
    return f"{Path(file).name}:{line}" if file else origin


def _tidy(text: str) -> str:
    """Collapse runs of blank lines so partial boundaries don't leave gaps; end with one newline."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def write(rendered: list[Rendered], out_dir: Path) -> list[Path]:
    """Write each cell's folder atomically enough: render everything first, then write."""
    written = []
    for r in rendered:
        folder = out_dir / r.cell.id
        for rel, content in sorted(r.files.items()):
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != content:
                path.write_text(content)
            written.append(path)
    return written


def check(rendered: list[Rendered], out_dir: Path, all_cells: bool) -> list[str]:
    """Drift between committed files and a fresh render: a list of problems (empty = clean)."""
    problems: list[str] = []
    expected_dirs = {r.cell.id for r in rendered}
    for r in rendered:
        for rel, content in sorted(r.files.items()):
            path = out_dir / r.cell.id / rel
            if not path.exists():
                problems.append(f"{path}: missing (run `imagegen render`)")
                continue
            current = path.read_text()
            if current != content:
                diff = difflib.unified_diff(current.splitlines(), content.splitlines(), str(path), "rendered", n=0,
                                            lineterm="")
                first = next((d for d in list(diff)[2:] if d[:1] in "+-"), "")
                problems.append(f"{path}: drifted from the templates ({first.strip()[:120]})")
    if all_cells and out_dir.is_dir():
        for stale in sorted(p.name for p in out_dir.iterdir() if p.is_dir() and p.name not in expected_dirs):
            problems.append(f"{out_dir / stale}: no longer in the matrix (delete it)")
    return problems


#: the in-image paths the templates spell (imagegen/scripts/contract.py owns them)
TEMPLATE_PATHS = {"build": contract.BUILD_DIR, "stage": contract.STAGE_DIR, "venvroot": contract.VENV_ROOT,
                  "sysroot": contract.SYSROOT_OUT, "builder_sysroot": contract.BUILDER_SYSROOT,
                  "wheels": contract.WHEELS_DIR, "prune_config": contract.PRUNE_CONFIG}


def builder_files(rec: recipe.Recipe) -> list[str]:
    """The build context's files the builder stage copies to contract.BUILD_DIR (templates/partials/
    builder.j2): its scripts, prune.json, fatprune's scripts for cells with kernel targets, the smoke
    script when the bytecode trace runs it."""
    names = [*recipe.BUILDER_SCRIPTS, "prune.json"]
    if rec.kernel_targets:
        names += recipe.FATPRUNE_SCRIPTS
    if rec.bytecode.smoke:
        names.append("smoke.py")
    return [f"{contract.CONTEXT_DIR}/{name}" for name in names]
