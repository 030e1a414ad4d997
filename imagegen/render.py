"""Render templates/ into one build folder per cell, deterministically, and check for drift."""

from __future__ import annotations

import difflib
import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from . import compat, labels
from .errors import UserInputError
from .matrix import Cell, Matrix
from .scripts import contract

VENV = contract.VENV
USER = {"name": "app", "uid": 1000, "gid": 1000}
SCRIPTS = Path(str(resources.files("imagegen") / "scripts"))


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


def site_packages(cell: Cell) -> str:
    return f"{VENV}/lib/python{cell.python}/site-packages"


def prune_config(cell: Cell) -> dict:
    """The rules in force and the paths they act on, as the builder's prune.py reads them."""
    data = compat.prune_rules()
    rules = cell.slimming.as_dict()
    rules.pop("ptx", None)  # read by fatprune.py from cuda_archs, not a path rule
    fw = cell.fw
    globs = {k: list(v) for k, v in data.items() if k != "protect"}
    for name, paths in fw.inference_prune.items():
        globs.setdefault(name, []).extend(paths)
    cfg: dict = {
        "schema": contract.PRUNE_CONFIG_SCHEMA,
        "cell": cell.ref,
        "venv": VENV,
        "site_packages": site_packages(cell),
        "rules": rules,
        "globs": globs,
        "protect": data.get("protect", []),
        "bytecode": bytecode_config(cell),
        "cuda": None,
    }
    archs = cuda_archs(cell)
    if archs:
        cfg["cuda_archs"] = archs
    if cell.device == "gpu":
        cuda = compat.cuda()
        links = {}
        for name in dlopen_names(cell):
            hit = cuda.component_for_soname(name)
            if hit is None:
                raise UserInputError(f"{fw.name} {cell.version} dlopens {name}, which no CUDA component in "
                                     "imagegen/data/cuda.yaml provides")
            _, comp = hit
            links[name] = {"dir": comp.libdir, "target_glob": comp.provides[name]}
        pruned = set(pruned_dlopen_names(cell))
        cfg["cuda"] = {
            "libdirs": sorted({c.libdir for c in cuda.components.values()}),
            "links": {k: v for k, v in links.items() if k not in pruned},
            "pruned_links": sorted(pruned),
            "ldconf": contract.CUDA_LDCONF,
            "loader_dirs": list(cuda.loader_dirs),
        }
    return cfg


def cuda_archs(cell: Cell) -> dict | None:
    """What the builder's fatprune.py keeps (EXPERIMENTAL): the cell's `gpu_archs` and its `ptx` slimming
    option, or None when the cell declares no target GPUs (nothing is rewritten)."""
    targets = list(getattr(cell, "gpu_archs", ()) or ())
    if cell.device != "gpu" or not targets:
        return None
    return {"targets": targets, "ptx": cell.slimming.ptx}


def runtime_env(cell: Cell) -> list[tuple[str, str]]:
    env = [
        ("PATH", f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"),
        ("VIRTUAL_ENV", VENV),
        ("HOME", compat.flavors()[cell.flavor].get("home") or f"/home/{USER['name']}"),
        ("LANG", "C.UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
    ]
    if cell.slimming.bytecode in ("compile", "drop"):
        # compile: the shipped .pyc files are unchecked-hash and are read, never rewritten; this
        # only keeps Python from writing .pyc files for anything else (e.g. a mounted script)
        env.append(("PYTHONDONTWRITEBYTECODE", "1"))
    if cell.device == "gpu":
        env += [
            ("NVIDIA_VISIBLE_DEVICES", "all"),
            ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
            ("NVIDIA_REQUIRE_CUDA", f"cuda>={cell.cuda}"),
        ]
    return env


def bytecode_config(cell: Cell) -> dict:
    """What the builder's bytecode step needs (imagegen/scripts/compile_bytecode.py):
    trace: `compile` and `drop` trace what `import <framework>` loads, with the closure's
    libraries (the sysroot stage's output, copied to /tmp/sysroot) on the loader path;
    smoke: and what the framework's CPU smoke inference loads (every cell whose smoke script needs
    no host-made data, GPU cells too: their start on a host without a GPU, and the image test's
    `bytecode.start_rewrites_no_bytecode`, run the CPU path; the build stages the script as
    imagegen/smoke.py, and prune.py traces it with the NVIDIA wheels' libraries on the loader path);
    stdlib: the runtime's standard library, when the cell ships bytecode and its runtime role was
    unpacked without maintainer scripts (mmdebstrap `extract`: Debian's py3compile never ran, so
    it has no .pyc); its sources are copied to `src` in the builder."""
    mode = cell.slimming.bytecode
    base = cell.base_spec
    role = base.role(cell.runtime_role) if base is not None and cell.runtime_role in base.roles else None
    trace = mode in ("compile", "drop")
    stdlib = None
    if mode in ("compile", "all") and role is not None and role.variant == "extract":
        stdlib = {"src": contract.STDLIB_COPY, "ddir": f"/usr/lib/python{cell.python}"}
    smoke = None
    if trace and "def host_prepare(" not in compat.smoke_script(cell.fw).read_text():
        smoke = contract.SMOKE_SCRIPT  # staged by the build (imagegen/smoke.py in the context)
    return {
        "trace": trace,
        "import": cell.fw.import_name if trace else None,
        "smoke": smoke,
        "python": f"{VENV}/bin/python",
        "libdirs": [f"{contract.BUILDER_SYSROOT}/{d}/x86_64-linux-gnu" for d in ("usr/lib", "lib")] if trace else [],
        "stdlib": stdlib,
    }


def dlopen_names(cell: Cell) -> list[str]:
    """Unversioned CUDA library names a GPU cell's runtime dlopens: the framework's own
    (frameworks/*.yaml gpu.dlopen) plus those its cuDNN version loads by itself (cuda.yaml
    cudnn_dlopen). Each gets a link in the image and is probed by the readiness check."""
    gpu = cell.fw.versions[cell.version].gpu
    if cell.device != "gpu" or gpu is None:
        return []
    names = list(gpu.dlopen)
    names += [n for n in compat.cuda().cudnn_dlopen_names(cell.cudnn) if n not in names]
    return names


def pruned_dlopen_names(cell: Cell) -> list[str]:
    """Unversioned names the framework dlopens whose library an enabled opt-in rule removes."""
    import fnmatch

    gpu = cell.fw.versions[cell.version].gpu
    if cell.device != "gpu" or gpu is None:
        return []
    rules = cell.slimming.as_dict()
    removed = [g for name, globs in cell.fw.inference_prune.items() if rules.get(name) for g in globs]
    removed += [g for g in compat.prune_rules().get("cudnn_train", []) if rules.get("cudnn_train")]
    out = []
    for name in dlopen_names(cell):
        hit = compat.cuda().component_for_soname(name)
        if hit is None:
            continue
        comp = hit[1]
        example = f"{comp.libdir}/{comp.provides[name].replace('*', '0')}"
        if any(fnmatch.fnmatch(example, g) for g in removed):
            out.append(name)
    return sorted(out)


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
    cfg = prune_config(cell)
    ctx = {
        "cell": cell,
        "origin": _portable_origin(cell.origin),
        "framework": cell.fw,
        "flavor": compat.flavors()[cell.flavor],
        "base": base,
        "roles": roles,
        "refs": refs,
        "venv": VENV,
        "paths": TEMPLATE_PATHS,
        "builder_files": builder_files(cell, cfg),
        "sysroot_files": [f"{contract.CONTEXT_DIR}/{name}" for name in (*SYSROOT_SCRIPTS, "closure.txt")],
        "user": USER,
        "gpu_libdirs": (cfg["cuda"] or {}).get("libdirs", []),
        "runtime_step": runtime_step(bool((cfg["cuda"] or {}).get("libdirs"))),
        "cuda_archs": cfg.get("cuda_archs"),
        "driver_min": compat.cuda().releases[cell.cuda].driver_min if cell.cuda else None,  # older templates
        "static_labels": labels.static(
            title=f"{cell.fw.title} {cell.version} ({cell.tag})", tag=cell.tag, base_ref=refs[cell.runtime_role],
            framework=cell.framework, version=cell.version, device=cell.device, cuda=cell.cuda, cudnn=cell.cudnn,
            python=cell.python, flavor=cell.flavor, base=cell.base,
            driver_min=compat.cuda().releases[cell.cuda].driver_min if cell.cuda else None),
        "env": [f"{k}={shlex.quote(v)}" for k, v in runtime_env(cell)],
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


#: the scripts each stage runs, in their COPY line's order (templates/partials/builder.j2 and
#: sysroot.j2 copy what `builder_files` and `sysroot_files` list): the builder's always, fatprune's
#: for cells with `gpu_archs`
BUILDER_SCRIPTS = ("install.py", "prune.py", "elfmini.py", "compile_bytecode.py", "sde.py", "contract.py")
FATPRUNE_SCRIPTS = ("fatbin.py", "fatprune.py")
SYSROOT_SCRIPTS = ("sysroot.py", "sde.py")

#: the in-image paths the templates spell (imagegen/scripts/contract.py owns them)
TEMPLATE_PATHS = {"build": contract.BUILD_DIR, "stage": contract.STAGE_DIR, "venvroot": contract.VENV_ROOT,
                  "sysroot": contract.SYSROOT_OUT, "builder_sysroot": contract.BUILDER_SYSROOT,
                  "wheels": contract.WHEELS_DIR, "prune_config": contract.PRUNE_CONFIG}


def builder_files(cell: Cell, cfg: dict) -> list[str]:
    """The build context's files the builder stage copies to contract.BUILD_DIR: its scripts, prune.json
    (`cfg`), fatprune's scripts for cells with `gpu_archs`, the smoke script when the bytecode trace
    runs it."""
    names = [*BUILDER_SCRIPTS, "prune.json"]
    if cfg.get("cuda_archs"):
        names += FATPRUNE_SCRIPTS
    if cfg["bytecode"]["smoke"]:
        names.append("smoke.py")
    return [f"{contract.CONTEXT_DIR}/{name}" for name in names]


def build_context_files(cell: Cell | None = None) -> dict[str, Path]:
    """Static helper scripts every build context carries (not committed per cell); cells with
    `gpu_archs` also carry the fat-binary rewriter and its parser."""
    names = dict.fromkeys((*BUILDER_SCRIPTS, *SYSROOT_SCRIPTS))
    if cell is not None and cuda_archs(cell):
        names.update(dict.fromkeys(FATPRUNE_SCRIPTS))
    return {f"{contract.CONTEXT_DIR}/{name}": SCRIPTS / name for name in names}
