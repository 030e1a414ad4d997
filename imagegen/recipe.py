"""What goes into one cell's image, computed once: the recipe of a matrix cell.

A :class:`Recipe` holds every fact about a cell's image that more than one stage needs: the
environment and user of the runtime, the paths each slimming rule removes, the CUDA libraries the
framework dlopens (and those an opt-in rule prunes), the builder's bytecode plan, the kernel targets,
the build-context files, the static labels and the contents policy its tests enforce. `render` writes
it into the Dockerfile and prune.json, `pipeline` stages what it names, `testrun` turns it into the
image suite's target and `gpu_archs` reads which libraries the image keeps; none works it out again.

Facts come from imagegen/data/ (through compat) and the cell; nothing here reads the engine or the
network. :func:`of` computes a cell's recipe once and returns the same read-only object after that
(its mappings are MappingProxyType, its lists tuples), keyed by the cell and its base's definition.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import compat, labels
from .errors import UserInputError
from .matrix import Cell
from .scripts import contract

VENV = contract.VENV
USER = {"name": "app", "uid": 1000, "gid": 1000}
SCRIPTS = Path(str(resources.files("imagegen") / "scripts"))
#: the closure's libraries in the builder (the sysroot stage's output), on the loader path while tracing
SYSROOT_LIBDIRS = tuple(f"{contract.BUILDER_SYSROOT}/{d}/x86_64-linux-gnu" for d in ("usr/lib", "lib"))
#: the scripts each stage runs, in their COPY line's order (templates/partials/builder.j2 and sysroot.j2
#: copy what render.builder_files and the sysroot list name): the builder's always, fatprune's for cells
#: with kernel targets
BUILDER_SCRIPTS = ("install.py", "prune.py", "elfmini.py", "compile_bytecode.py", "sde.py", "contract.py")
FATPRUNE_SCRIPTS = ("fatbin.py", "fatprune.py")
SYSROOT_SCRIPTS = ("sysroot.py", "sde.py")
#: packages that give an image a shell; a framework that needs one at run time relaxes `no_shell`
SHELL_PACKAGES = frozenset({"dash", "bash", "busybox", "busybox-static", "zsh"})


@dataclass(frozen=True)
class BytecodePlan:
    """What the builder's bytecode step does (imagegen/scripts/compile_bytecode.py).

    trace: `compile` and `drop` trace what `import <framework>` loads, with the closure's libraries on
    the loader path; smoke: the in-build path of the framework's CPU smoke inference, traced too (every
    cell whose smoke script needs no host-made data; the build stages it); stdlib: the runtime's
    standard library to compile, when the runtime role was unpacked without maintainer scripts
    (mmdebstrap `extract`: Debian's py3compile never ran); its sources are copied to `src`."""

    trace: bool
    import_name: str | None
    smoke: str | None
    python: str
    libdirs: tuple[str, ...]
    stdlib: dict[str, str] | None

    def as_dict(self) -> dict[str, Any]:
        """The `bytecode` section of prune.json."""
        return {"trace": self.trace, "import": self.import_name, "smoke": self.smoke, "python": self.python,
                "libdirs": list(self.libdirs), "stdlib": self.stdlib}


@dataclass(frozen=True)
class Recipe:
    """One cell's image, before it is built. Build with :func:`of`."""

    cell: Cell
    site_packages: str
    runtime_env: tuple[tuple[str, str], ...]
    rules: Mapping[str, Any]  # the slimming switches prune.py reads (`ptx` is fatprune's: see kernel_targets)
    globs: Mapping[str, tuple[str, ...]]  # every path rule's globs: prune.yaml's, then the framework's inference_prune
    protect: tuple[str, ...]  # globs no rule may remove (prune.yaml `protect`)
    dlopen: tuple[str, ...]  # unversioned CUDA names the runtime dlopens (framework + its cuDNN)
    dlopen_links: Mapping[str, Mapping[str, str]]  # name -> {dir, target_glob}: the links the image gets
    pruned_dlopen: tuple[str, ...]  # dlopen names whose library an enabled opt-in rule removes
    bytecode: BytecodePlan
    kernel_targets: Mapping[str, Any] | None  # {targets: [sm_XX], ptx}: what fatprune.py keeps; None = untouched
    context_files: Mapping[str, Path]  # build-context path -> the file imagegen ships
    static_labels: tuple[tuple[str, str], ...]  # the Dockerfile's LABEL, in order
    policy: Mapping[str, bool]  # the contents rules the image suite enforces
    policy_notes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # rule -> why relaxed

    @property
    def removed_globs(self) -> list[str]:
        """Globs (site-packages relative) of what the enabled path rules remove (venv-relative rules aside)."""
        return [g for name, globs in self.globs.items() if self.rules.get(name) is True and name != "protect"
                for g in globs if not g.startswith("venv:")]

    @property
    def gpu_libdirs(self) -> list[str]:
        """The NVIDIA wheels' library directories (ld.so.conf) of a GPU cell; [] for a CPU cell."""
        return sorted({c.libdir for c in compat.cuda().components.values()}) if self.cell.device == "gpu" else []

    def prune_json(self) -> dict[str, Any]:
        """prune.json: the rules in force and the paths they act on, as the builder's prune.py reads them."""
        cfg: dict[str, Any] = {
            "schema": contract.PRUNE_CONFIG_SCHEMA,
            "cell": self.cell.ref,
            "venv": VENV,
            "site_packages": self.site_packages,
            "rules": dict(self.rules),
            "globs": {k: list(v) for k, v in self.globs.items()},
            "protect": list(self.protect),
            "bytecode": self.bytecode.as_dict(),
            "cuda": None,
        }
        if self.kernel_targets:
            cfg["cuda_archs"] = {**self.kernel_targets, "targets": list(self.kernel_targets["targets"])}
        if self.cell.device == "gpu":
            pruned = set(self.pruned_dlopen)
            cfg["cuda"] = {
                "libdirs": self.gpu_libdirs,
                "links": {k: dict(v) for k, v in self.dlopen_links.items() if k not in pruned},
                "pruned_links": sorted(pruned),
                "ldconf": contract.CUDA_LDCONF,
                "loader_dirs": list(compat.cuda().loader_dirs),
            }
        return cfg


def of(cell: Cell) -> Recipe:
    """The recipe of `cell` (computed on the first call, then the same object). Raises UserInputError
    when the framework dlopens a library no CUDA component in imagegen/data/cuda.yaml provides."""
    return _of(cell, cell.base_spec.model_dump_json() if cell.base_spec is not None else "")


@functools.lru_cache(maxsize=512)
def _of(cell: Cell, base_key: str) -> Recipe:  # base_key: Cell's hash leaves its base's definition out
    data = compat.prune_rules()
    rules = cell.slimming.as_dict()
    rules.pop("ptx", None)  # read by fatprune.py from kernel_targets, not a path rule
    globs = {k: list(v) for k, v in data.items() if k != "protect"}
    for name, paths in cell.fw.inference_prune.items():
        globs.setdefault(name, []).extend(paths)
    dlopen = _dlopen_names(cell)
    policy, notes = _policy(cell)
    targets = _kernel_targets(cell)
    ro = MappingProxyType
    return Recipe(
        cell=cell, site_packages=f"{VENV}/lib/python{cell.python}/site-packages", runtime_env=_runtime_env(cell),
        rules=ro(rules), globs=ro({k: tuple(v) for k, v in globs.items()}), protect=tuple(data.get("protect", [])),
        dlopen=tuple(dlopen), dlopen_links=ro({k: ro(v) for k, v in _links(cell, dlopen).items()}),
        pruned_dlopen=tuple(_pruned(cell, dlopen)), bytecode=_bytecode(cell),
        kernel_targets=ro({**targets, "targets": tuple(targets["targets"])}) if targets else None,
        context_files=ro(context_files(with_fatprune=targets is not None)),
        static_labels=tuple(labels.static(
            title=f"{cell.fw.title} {cell.version} ({cell.tag})", tag=cell.tag,
            base_ref=cell.base_spec.role_ref(cell.base, cell.runtime_role) if cell.base_spec else "",
            framework=cell.framework, version=cell.version, device=cell.device, cuda=cell.cuda, cudnn=cell.cudnn,
            python=cell.python, flavor=cell.flavor, base=cell.base,
            driver_min=compat.cuda().releases[cell.cuda].driver_min if cell.cuda else None)),
        policy=ro(policy), policy_notes=ro(notes))


def context_files(*, with_fatprune: bool = False) -> dict[str, Path]:
    """The static helper scripts every build context carries (not committed per cell); cells with
    kernel targets also carry the fat-binary rewriter and its parser."""
    names = dict.fromkeys((*BUILDER_SCRIPTS, *SYSROOT_SCRIPTS, *(FATPRUNE_SCRIPTS if with_fatprune else ())))
    return {f"{contract.CONTEXT_DIR}/{name}": SCRIPTS / name for name in names}


def needs_host_prepare(framework: compat.Framework) -> bool:
    """The framework's smoke test needs a model prepared on the host first (its script defines
    `host_prepare`): it cannot run from the image alone."""
    return "def host_prepare(" in compat.smoke_script(framework).read_text()


def _runtime_env(cell: Cell) -> tuple[tuple[str, str], ...]:
    env = [
        ("PATH", f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"),
        ("VIRTUAL_ENV", VENV),
        ("HOME", compat.flavors()[cell.flavor].home or f"/home/{USER['name']}"),
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
    return tuple(env)


def _bytecode(cell: Cell) -> BytecodePlan:
    mode = cell.slimming.bytecode
    base = cell.base_spec
    role = base.role(cell.runtime_role) if base is not None and cell.runtime_role in base.roles else None
    trace = mode in ("compile", "drop")
    stdlib = None
    if mode in ("compile", "all") and role is not None and role.variant == "extract":
        stdlib = {"src": contract.STDLIB_COPY, "ddir": f"/usr/lib/python{cell.python}"}
    smoke = contract.SMOKE_SCRIPT if trace and not needs_host_prepare(cell.fw) else None
    return BytecodePlan(trace=trace, import_name=cell.fw.import_name if trace else None, smoke=smoke,
                        python=f"{VENV}/bin/python", libdirs=SYSROOT_LIBDIRS if trace else (), stdlib=stdlib)


def _dlopen_names(cell: Cell) -> list[str]:
    """Unversioned CUDA library names a GPU cell's runtime dlopens: the framework's own
    (frameworks/*.yaml gpu.dlopen) plus those its cuDNN version loads by itself (cuda.yaml
    cudnn_dlopen). Each gets a link in the image and is probed by the readiness check."""
    gpu = cell.fw.versions[cell.version].gpu
    if cell.device != "gpu" or gpu is None:
        return []
    names = list(gpu.dlopen)
    names += [n for n in compat.cuda().cudnn_dlopen_names(cell.cudnn) if n not in names]
    return names


def _links(cell: Cell, names: list[str]) -> dict[str, dict[str, str]]:
    cuda = compat.cuda()
    links = {}
    for name in names:
        hit = cuda.component_for_soname(name)
        if hit is None:
            raise UserInputError(f"{cell.fw.name} {cell.version} dlopens {name}, which no CUDA component in "
                                 "imagegen/data/cuda.yaml provides")
        _, comp = hit
        links[name] = {"dir": comp.libdir, "target_glob": comp.provides[name]}
    return links


def _pruned(cell: Cell, names: list[str]) -> list[str]:
    """Unversioned names the framework dlopens whose library an enabled opt-in rule removes."""
    rules = cell.slimming.as_dict()
    removed = [g for name, globs in cell.fw.inference_prune.items() if rules.get(name) for g in globs]
    removed += [g for g in compat.prune_rules().get("cudnn_train", []) if rules.get("cudnn_train")]
    out = []
    for name in names:
        hit = compat.cuda().component_for_soname(name)
        if hit is None:
            continue
        comp = hit[1]
        example = f"{comp.libdir}/{comp.provides[name].replace('*', '0')}"
        if any(fnmatch.fnmatch(example, g) for g in removed):
            out.append(name)
    return sorted(out)


def _kernel_targets(cell: Cell) -> dict[str, Any] | None:
    """What the builder's fatprune.py keeps (EXPERIMENTAL): the cell's `gpu_archs` and its `ptx` slimming
    option, or None when the cell declares no target GPUs (nothing is rewritten)."""
    targets = list(cell.gpu_archs or ())
    if cell.device != "gpu" or not targets:
        return None
    return {"targets": targets, "ptx": cell.slimming.ptx}


def _policy(cell: Cell) -> tuple[dict[str, bool], dict[str, str]]:
    """The flavor's contents policy (flavors.yaml) narrowed by the cell's slimming switches
    (imagetest.policy_for), and `no_shell` relaxed for a framework that needs a shell at run time
    (runtime_packages in its data file)."""
    from .imagetest.target import policy_for

    policy = policy_for(cell.flavor, cell.slimming.as_dict())
    notes: dict[str, str] = {}
    needs = cell.fw.versions[cell.version].runtime_packages
    shells = sorted(set(needs) & SHELL_PACKAGES)
    if shells and policy.get("no_shell"):
        policy["no_shell"] = False
        notes["no_shell"] = (f"relaxed: {cell.framework} {cell.version} needs {', '.join(shells)} "
                             f"({needs[shells[0]]})")
    return policy, notes
