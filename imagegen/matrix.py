"""matrix.yaml: its model, expansion into cells, validation and selector resolution.

A cell is one image: framework x version x device x CUDA x Python x flavor on a base.
Everything a cell knows about its framework, CUDA and base comes from imagegen/data (compat.py).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ValidationError

from . import compat, settings
from .errors import UserInputError
from .matrix_model import (  # noqa: F401  (the model is part of this module's API)
    AXES,
    REGISTRY_RE,
    REPO_COMPONENT_RE,
    TAG_RE,
    Aliases,
    AliasRule,
    BaseSetting,
    Budget,
    BudgetRule,
    CiConfig,
    CudaEntry,
    Defaults,
    Device,
    ExcludeRule,
    Flavor,
    IncludeRule,
    IndexDef,
    MatrixFile,
    OverrideRule,
    Rule,
    Selector,
    Slimming,
    VersionEntry,
    check_gpu_archs,
    check_url,
    is_registry,
)
from .pythonbases import pick_base as _pick_base
from .pythonbases import python_lists as _python_lists
from .pythonbases import runtime_wheels as _runtime_wheels
from .selectors import resolve_selector
from .yamlsrc import Located
from .yamlsrc import load as load_yaml

# --- cells ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlimRules:
    docs: bool
    tests: bool
    headers: bool
    caches: bool
    bytecode: str
    static_libs: bool
    strip: bool
    pip: bool
    cudnn_train: bool
    flashattn: bool
    warpctc: bool
    openvino: bool
    cuda_unused: bool
    cuda_extras: bool
    tensorrt_unused: bool
    ptx: str = "drop"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Index:
    name: str
    kind: str
    url: str


@dataclass(frozen=True)
class Cell:
    framework: str
    version: str
    device: str
    cuda: str | None
    cudnn: str | None  # full, e.g. "8.6.0"
    python: str
    flavor: str
    base: str
    image: str
    tag: str
    selector: str
    requirements: tuple[str, ...]
    indexes: tuple[Index, ...]
    slimming: SlimRules
    budget_size: int | None = None
    budget_compressed: int | None = None
    excluded: str | None = None
    origin: str = ""
    registry: str | None = None
    namespace: str | None = None
    base_spec: compat.BaseSpec | None = field(default=None, compare=False, repr=False)
    tensorrt: str | None = None  # full TensorRT version of the cell's TensorRT runtime wheels
    aliases: tuple[str, ...] = ()  # alias tags in the same repository (imagegen/aliases.py)
    gpu_archs: tuple[str, ...] = ()   # target GPUs, canonical 'sm_75' names sorted; () = not restricted
    needs_kernels: tuple[str, ...] = ()  # feature libraries (globs) its workloads need: counted in its GPUs
    accept_unreadable: tuple[str, ...] = ()  # libraries (globs) whose fat binaries may stay unread

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tag}"

    @property
    def local_ref(self) -> str:
        """The reference in the local engine: `ref`, under IMAGEGEN_LOCAL_PREFIX when set (tests build
        under their own prefix, e.g. `imagegen-test/`, so they never touch a user's images)."""
        return local_prefix() + self.ref

    @property
    def id(self) -> str:
        return f"{self.image}-{self.tag}"

    @property
    def cudnn_short(self) -> str | None:
        return ".".join(self.cudnn.split(".")[:2]) if self.cudnn else None

    @property
    def remote_ref(self) -> str:
        parts = [p for p in (self.registry, self.namespace, self.image) if p]
        return "/".join(parts) + ":" + self.tag

    @property
    def fw(self) -> compat.Framework:
        return compat.frameworks()[self.framework]

    @property
    def runtime_role(self) -> str:
        return compat.flavors()[self.flavor].runtime_role

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "id": self.id, "selector": self.selector, "framework": self.framework,
            "version": self.version, "device": self.device, "cuda": self.cuda, "cudnn": self.cudnn,
            "tensorrt": self.tensorrt,
            "python": self.python, "flavor": self.flavor, "base": self.base, "image": self.image,
            "tag": self.tag, "requirements": list(self.requirements),
            "indexes": [i.__dict__ for i in self.indexes], "slimming": self.slimming.as_dict(),
            "budget": {"size": self.budget_size, "compressed": self.budget_compressed},
            "excluded": self.excluded, "origin": self.origin, "remote_ref": self.remote_ref,
            "aliases": list(self.aliases),
            "local_ref": self.local_ref, "gpu_archs": list(self.gpu_archs), "needs_kernels": list(self.needs_kernels),
            "accept_unreadable": list(self.accept_unreadable),
        }


def local_prefix() -> str:
    """IMAGEGEN_LOCAL_PREFIX: a repository path prefix ending in '/' (e.g. `imagegen-test/`) for every
    local tag imagegen builds, tests, audits or publishes from; empty by default."""
    prefix = settings.LOCAL_PREFIX.value()
    if prefix and not (prefix.endswith("/") and all(REPO_COMPONENT_RE.match(p) for p in prefix[:-1].split("/"))):
        raise UserInputError(f"{settings.LOCAL_PREFIX.name}={prefix!r} must be lowercase repository components "
                             "ending in '/', e.g. imagegen-test/")
    return prefix


def bases_for(matrix: "Matrix") -> dict[str, compat.BaseSpec]:
    """Bases from imagegen's data, plus (and overridden by) the matrix's own `bases:`."""
    out = dict(compat.bases())
    out.update(matrix.file.bases)
    return out


@dataclass
class Matrix:
    path: Path
    file: MatrixFile
    src: Located
    cells: list[Cell] = field(default_factory=list)  # included and excluded

    @property
    def active(self) -> list[Cell]:
        return [c for c in self.cells if not c.excluded]

    @property
    def excluded(self) -> list[Cell]:
        return [c for c in self.cells if c.excluded]

    def select(self, patterns: list[str] | None, *, all_cells: bool = False) -> list[Cell]:
        if all_cells or not patterns:
            return list(self.active)
        chosen: list[Cell] = []
        for p in patterns:
            for c in resolve_selector(self, p):
                if c not in chosen:
                    chosen.append(c)
        return chosen


# --- loading and validation -------------------------------------------------------------------


def _fail(src: Located, path: tuple, message: str) -> UserInputError:
    return UserInputError(f"{src.where(path)}: {message}")


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _pydantic_error(src: Located, exc: ValidationError) -> UserInputError:
    errors = exc.errors()
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    # pydantic puts union-member names into loc (e.g. 'str', 'CudaEntry'); drop them for the path.
    noise = {"str", "int", "float", "bool", "list", "dict", "CudaEntry", "Budget", "Slimming", "IndexDef"}
    path = tuple(p for p in loc if not (isinstance(p, str) and (p in noise or p.startswith(("function-", "list[")))))
    dotted = ".".join(str(p) for p in path) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(path[-1])
        parent = _model_at(path[:-1])
        hint = _did_you_mean(key, _field_names(parent)) if parent else ""
        where = ".".join(str(p) for p in path[:-1]) or "the top level"
        return _fail(src, path, f"unknown key '{key}' in {where}{hint}")
    if err["type"] == "missing":
        where = ".".join(str(p) for p in path[:-1]) or "the top level"
        return _fail(src, path[:-1], f"missing required key '{path[-1]}' in {where}")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "literal_error":
        msg = f"{err['input']!r} is not one of {err['ctx']['expected']}"
    return _fail(src, path, f"{dotted}: {msg}")


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The pydantic model that describes the mapping at `path` (for did-you-mean)."""
    model: Any = MatrixFile
    i = 0
    while i < len(path):
        key = path[i]
        if model is MatrixFile and key == "frameworks":
            if len(path) - i <= 2:
                return None
            model, i = VersionEntry, i + 3
            continue
        if model is MatrixFile and key in ("bases",):
            return compat.BaseSpec if len(path) - i == 2 else None
        fields = {f.alias or n: f for n, f in model.model_fields.items()} if hasattr(model, "model_fields") else {}
        if key not in fields:
            return None
        ann = fields[key].annotation
        nxt = None
        for cand in (Defaults, Slimming, IncludeRule, ExcludeRule, OverrideRule, BudgetRule, Budget, IndexDef):
            if cand is ann or cand.__name__ in str(ann):
                nxt = cand
                break
        if nxt is None:
            return None
        model = nxt
        i += 1
        if i < len(path) and isinstance(path[i], int):
            i += 1
        if model is IndexDef and i < len(path):  # dict of indexes: skip the name
            i += 1
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def load(path: str | Path) -> Matrix:
    path = Path(path)
    src = load_yaml(path)
    if not isinstance(src.data, dict):
        raise _fail(src, (), "the matrix must be a mapping with a 'frameworks' key")
    try:
        mf = MatrixFile.model_validate(src.data)
    except ValidationError as exc:
        raise _pydantic_error(src, exc) from None
    m = Matrix(path=path, file=mf, src=src)
    _validate_names(m)
    m.cells = _expand(m)
    return m


def _validate_names(m: Matrix) -> None:
    src, mf = m.src, m.file
    if mf.registry is not None and not REGISTRY_RE.match(mf.registry):
        raise _fail(src, ("registry",), f"'{mf.registry}' is not a valid registry host[:port]")
    if mf.namespace is not None:
        for part in mf.namespace.split("/"):
            if not REPO_COMPONENT_RE.match(part):
                raise _fail(src, ("namespace",), f"'{mf.namespace}' is not a valid image namespace "
                            "(lowercase letters, digits and . _ - separators)")
    for name, spec in mf.bases.items():
        for role, r in spec.roles.items():
            if spec.source == "registry" and (not r.ref or not re.search(r"@sha256:[0-9a-f]{64}$", r.ref)):
                raise _fail(src, ("bases", name, "roles", role), f"registry base '{name}' role {role} must be "
                            "pinned by digest (name:tag@sha256:<64 hex digits>)")
            if spec.source == "registry" and r.variant is not None:
                raise _fail(src, ("bases", name, "roles", role, "variant"), "'variant' is an mmdebstrap setting; "
                            "a registry base has none")
            if spec.source == "bootstrap" and r.ref is not None:
                raise _fail(src, ("bases", name, "roles", role, "ref"), "'ref' is for registry bases; a bootstrap "
                            "base is built from its packages (set source: registry to pull a ref)")
            for pkg in r.packages:
                if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?", pkg):
                    raise _fail(src, ("bases", name, "roles", role, "packages"), f"'{pkg}' is not a Debian package name")
        _check_mirror = spec.mirror
        try:
            check_url(_check_mirror)
        except ValueError as exc:
            raise _fail(src, ("bases", name, "mirror"), str(exc)) from None
    for fw_name, versions in mf.frameworks.items():
        if fw_name not in compat.frameworks():
            raise _fail(src, ("frameworks", fw_name), f"unknown framework '{fw_name}'"
                        f"{_did_you_mean(fw_name, compat.frameworks())}; known: {', '.join(sorted(compat.frameworks()))}")
        seen: dict[Version, str] = {}
        for ver in versions:
            try:
                parsed = Version(ver)
            except InvalidVersion:
                raise _fail(src, ("frameworks", fw_name, ver), f"'{ver}' is not a valid version (PEP 440)") from None
            if parsed in seen:
                raise _fail(src, ("frameworks", fw_name, ver),
                            f"duplicate cells: version '{ver}' is the same as '{seen[parsed]}'")
            seen[parsed] = ver


def _pyver_ok(v: str) -> bool:
    return re.fullmatch(r"3\.[0-9]{1,2}", v) is not None


def _normalize_cuda(entry: str | CudaEntry) -> CudaEntry:
    return entry if isinstance(entry, CudaEntry) else CudaEntry(version=str(entry))


def _rule_matches(rule: Selector, cell: Cell) -> bool:
    for axis in AXES + (("base",) if isinstance(rule, Rule) else ()):
        want = getattr(rule, axis)
        if want is not None and str(want) != str(getattr(cell, axis)):
            return False
    if rule.match is not None and not any(
        fnmatch.fnmatchcase(name, rule.match) for name in (cell.ref, f"{cell.framework}:{cell.tag}", cell.tag)
    ):
        return False
    return True


def _expand(m: Matrix) -> list[Cell]:
    """The matrix file's cells: the frameworks' axes and the `include:` entries, each checked against
    the compatibility data (:class:`_Expander`); then overrides, budgets and excludes in file order
    (later rules win), unused rules and indexes refused, aliases computed."""
    ex = _Expander(m)
    ex.from_frameworks()
    ex.from_include()
    out = ex.apply_rules()
    ex.check_indexes_used(out)
    out = _with_aliases(m, out)
    if m.file.default:
        _check_default(m, out)
    if not [c for c in out if not c.excluded]:
        raise _fail(m.src, ("frameworks",), "the matrix defines no cells")
    return out


class _Expander:
    """The cells of one matrix file, emitted in file order; `where_of` finds duplicates."""

    def __init__(self, m: Matrix):
        self.m, self.src, self.mf = m, m.src, m.file
        self.cuda_data = compat.cuda()
        self.all_bases = bases_for(m)
        self.cells: list[Cell] = []
        self.where_of: dict[str, str] = {}
        self.pythons = _python_lists(self.mf)

    def from_frameworks(self) -> None:
        """Every axis combination of every `frameworks:` version entry."""
        mf, src = self.mf, self.src
        for fw_name, versions in mf.frameworks.items():
            for ver, entry in versions.items():
                vpath = ("frameworks", fw_name, ver)
                devices = entry.devices or mf.defaults.devices
                pys = [str(p) for p in (entry.python or mf.defaults.python)]
                flavs = entry.flavors or mf.defaults.flavors
                base_setting = entry.base if entry.base is not None else mf.defaults.base
                for dup_list, key in ((devices, "devices"), (pys, "python"), (flavs, "flavors")):
                    if len(set(dup_list)) != len(dup_list):
                        raise _fail(src, vpath + (key,), f"duplicate cells: {key} lists a value twice")
                cudas = [_normalize_cuda(c) for c in (entry.cuda or [])]
                if len({(c.version, c.tensorrt) for c in cudas}) != len(cudas):
                    raise _fail(src, vpath + ("cuda",), "duplicate cells: cuda lists a version twice")
                if "gpu" in devices and not cudas:
                    raise _fail(src, vpath, f"{fw_name} {ver} lists device gpu but no cuda versions")
                if cudas and "gpu" not in devices:
                    raise _fail(src, vpath + ("cuda",), "cuda versions given but devices has no gpu")
                for device in devices:
                    for ci, cuda_e in enumerate(cudas if device == "gpu" else [None]):
                        for py in pys:
                            for flavor in flavs:
                                path = vpath + (("cuda", ci) if cuda_e else ("devices",))
                                self.emit(fw_name, ver, device, cuda_e, py, flavor, base_setting,
                                          entry.extra_requirements, path, entry.base is not None, entry.gpu_archs)

    def from_include(self) -> None:
        """One cell per `include:` entry."""
        mf, src = self.mf, self.src
        for i, inc in enumerate(mf.include):
            path = ("include", i)
            if inc.framework not in compat.frameworks():
                raise _fail(src, path, f"unknown framework '{inc.framework}'"
                                       f"{_did_you_mean(inc.framework, compat.frameworks())}")
            try:
                Version(inc.version)
            except InvalidVersion:
                raise _fail(src, path + ("version",), f"'{inc.version}' is not a valid version (PEP 440)") from None
            cuda_e = CudaEntry(version=inc.cuda, cudnn=inc.cudnn, tensorrt=inc.tensorrt) if inc.cuda else None
            py = inc.python or self.pythons[(inc.framework, inc.version)][0]
            self.emit(inc.framework, inc.version, inc.device, cuda_e, py, inc.flavor,
                      inc.base if inc.base is not None else mf.defaults.base, [], path, inc.base is not None,
                      inc.gpu_archs)

    def emit(self, fw_name: str, ver: str, device: str, cuda_e: CudaEntry | None, py: str, flavor: str,
             base_setting: BaseSetting, extra: list[str], path: tuple, explicit_base: bool,
             gpu_archs: list[str] | None = None) -> None:
        """One cell, checked against the compatibility data; UserInputError with the file and line."""
        fw = compat.frameworks()[fw_name]
        where = self.src.where(path)
        base_name = _pick_base(base_setting, py, explicit=explicit_base, all_bases=self.all_bases, where=where)
        py_list = self.pythons.get((fw_name, ver), [py])  # -py3.X for all but the primary: no published tag moves
        multi_py = len(py_list) > 1 and py != py_list[0]
        self._check_placement(where, fw, ver, base_name, py)
        base = self.all_bases[base_name]
        reqs, index_names, cuda_v, cudnn_v, trt = self._build_of(where, fw, ver, device, cuda_e, gpu_archs, path)
        trt_v = trt.version if trt else None
        indexes: list[Index] = []
        for name in index_names:
            idx = self.mf.indexes.get(name) or fw.indexes.get(name)
            if idx is None:
                raise UserInputError(f"{where}: index '{name}' is not defined")
            indexes.append(Index(name, idx.kind, idx.url))
        reqs.extend(extra)
        tag, selector = _tag_of(where, ver, device, cuda_v, cudnn_v, trt_v, f"py{py}" if multi_py else None,
                                gpu_archs if device == "gpu" and path and path[0] == "include" else None, flavor)
        if not REPO_COMPONENT_RE.match(fw.image):
            raise UserInputError(f"{where}: '{fw.image}' would not be a valid image name")
        mf = self.mf
        proto = Cell(
            framework=fw_name, version=ver, device=device, cuda=cuda_v, cudnn=cudnn_v, python=py,
            flavor=flavor, base=base_name, image=fw.image, tag=tag, selector=selector,
            requirements=tuple(reqs), indexes=tuple(indexes), slimming=_slim_rules(self.m, None, flavor),
            origin=where, registry=mf.registry, namespace=mf.namespace, base_spec=base, tensorrt=trt_v,
            gpu_archs=tuple(gpu_archs or ()) if device == "gpu" else (),
        )
        if proto.ref in self.where_of:
            raise UserInputError(f"{where}: duplicate cells: {proto.ref} is already defined at "
                                 f"{self.where_of[proto.ref]}")
        self.where_of[proto.ref] = where
        self.cells.append(proto)

    def _check_placement(self, where: str, fw: compat.Framework, ver: str, base_name: str, py: str) -> None:
        """The framework version exists, its wheels run on the base's libc, and the base gives the Python."""
        all_bases = self.all_bases
        if ver not in fw.versions:
            raise UserInputError(f"{where}: {fw.name} {ver} is not in imagegen's compatibility data "
                                 f"(known versions: {', '.join(fw.versions)})")
        fv = fw.versions[ver]
        if base_name not in all_bases:
            raise UserInputError(f"{where}: unknown base '{base_name}'{_did_you_mean(base_name, all_bases)}; "
                                 f"known: {', '.join(sorted(all_bases))}")
        base = all_bases[base_name]
        if base.libc not in fw.libc:
            raise UserInputError(
                f"{where}: {fw.name} publishes only manylinux ({'/'.join(fw.libc)}) wheels, which do not run on "
                f"{base.libc}; base '{base_name}' cannot carry it (use a glibc base such as 'bookworm')")
        if not _pyver_ok(py):
            raise UserInputError(f"{where}: '{py}' is not a Python version like 3.11")
        if py not in fv.python:
            raise UserInputError(f"{where}: {fw.name} {ver} supports Python {', '.join(fv.python)}, not {py}")
        if py != base.python:
            others = sorted(n for n, b in all_bases.items() if b.python == py)
            hint = (f"; base {others[0]} provides it" if len(others) == 1 else f"; bases {', '.join(others)} provide it"
                    if others else f", and no base in imagegen's data or the matrix provides {py}")
            raise UserInputError(f"{where}: base '{base_name}' provides Python {base.python}, not {py}{hint}")

    def _build_of(self, where: str, fw: compat.Framework, ver: str, device: str, cuda_e: CudaEntry | None,
                  gpu_archs: list[str] | None, path: tuple):
        """(requirements, index names, CUDA, cuDNN, TensorRT build) of the framework's CPU or GPU build."""
        fv = fw.versions[ver]
        cuda_v = cudnn_v = None
        trt: compat.TensorRTBuild | None = None
        if device == "cpu":
            if cuda_e is not None:
                raise UserInputError(f"{where}: a cpu cell takes no CUDA version")
            if gpu_archs and path and path[0] == "include":
                raise UserInputError(f"{where}: a cpu cell takes no gpu_archs")
            if fv.cpu is None:
                raise UserInputError(f"{where}: {fw.name} {ver} has no CPU build in imagegen's data")
            reqs, index_name = list(fv.cpu.requirements), fv.cpu.index
        else:
            reqs, index_name, cuda_v, cudnn_v, trt = self._gpu_build(where, fw, ver, cuda_e)
        index_names = [index_name] if index_name else []
        if trt is not None:
            reqs.extend(trt.requirements)
            if trt.index and trt.index not in index_names:
                index_names.append(trt.index)
        return reqs, index_names, cuda_v, cudnn_v, trt

    def _gpu_build(self, where: str, fw: compat.Framework, ver: str, cuda_e: CudaEntry | None):
        fv = fw.versions[ver]
        if fv.gpu is None:
            raise UserInputError(f"{where}: {fw.name} {ver} has no GPU build in imagegen's data")
        if cuda_e is None:
            raise UserInputError(f"{where}: a gpu cell needs a CUDA version; {fw.name} {ver} supports "
                                 f"{', '.join(fv.gpu.builds)}")
        cuda_v = cuda_e.version
        if cuda_v not in fv.gpu.builds:
            raise UserInputError(f"{where}: {fw.name} {ver} has no CUDA {cuda_v} build; it supports "
                                 f"{', '.join(fv.gpu.builds)}")
        build = fv.gpu.builds[cuda_v]
        cudnn_v = build.cudnn
        trt = None
        if cuda_e.tensorrt is not None:
            trt = build.tensorrt.get(str(cuda_e.tensorrt))
            if trt is None:
                known = ", ".join(build.tensorrt) or "none"
                raise UserInputError(f"{where}: {fw.name} {ver} with CUDA {cuda_v} has no TensorRT "
                                     f"{cuda_e.tensorrt} runtime in imagegen's data (TensorRT majors: {known})")
        if cuda_e.cudnn and not (cudnn_v == cuda_e.cudnn or cudnn_v.startswith(cuda_e.cudnn + ".")):
            raise UserInputError(f"{where}: {fw.name} {ver} with CUDA {cuda_v} is built with cuDNN {cudnn_v}, "
                                 f"not {cuda_e.cudnn}")
        if cuda_v not in self.cuda_data.releases:
            raise UserInputError(f"{where}: CUDA {cuda_v} is not in imagegen's CUDA data")
        reqs = list(build.requirements)
        if fv.gpu.runtime_wheels == "imagegen":
            reqs += _runtime_wheels(fv.gpu, cuda_v, cudnn_v, f"{where}: {fw.name} {ver}")
        return reqs, build.index, cuda_v, cudnn_v, trt

    def apply_rules(self) -> list[Cell]:
        """Overrides, budgets and excludes on every emitted cell, in file order (later rules win); a rule
        that matches no cell is an error."""
        out: list[Cell] = []
        used: dict[str, set[int]] = {"exclude": set(), "overrides": set(), "budgets": set()}
        for cell in self.cells:
            out.append(self._ruled(cell, used))
        for section, hits in used.items():
            for i in range(len(getattr(self.mf, section))):
                if i not in hits:
                    raise _fail(self.src, (section, i), f"this {section} rule matches no cell (check the pattern)")
        return out

    def _ruled(self, cell: Cell, used: dict[str, set[int]]) -> Cell:
        mf, all_bases = self.mf, self.all_bases
        slim_override: dict[str, Any] = {}
        extra: list[str] = []
        base_name, base_from = cell.base, None
        size = comp = None
        archs, needs, accept = cell.gpu_archs, list(cell.needs_kernels), list(cell.accept_unreadable)
        for i, rule in enumerate(mf.overrides):
            if _rule_matches(rule, cell):
                used["overrides"].add(i)
                if rule.gpu_archs and cell.device == "gpu":
                    archs = tuple(rule.gpu_archs)
                if rule.needs_kernels and cell.device == "gpu":
                    needs += [g for g in rule.needs_kernels if g not in needs]
                if rule.accept_unreadable and cell.device == "gpu":
                    accept += [g for g in rule.accept_unreadable if g not in accept]
                if rule.slimming:
                    slim_override.update(rule.slimming.model_dump(exclude_none=True))
                if rule.extra_requirements:
                    extra.extend(rule.extra_requirements)
                if rule.base:
                    base_name, base_from = rule.base, ("overrides", i, "base")
                if rule.budget:
                    size = rule.budget.size if rule.budget.size is not None else size
                    comp = rule.budget.compressed if rule.budget.compressed is not None else comp
        for i, rule in enumerate(mf.budgets):
            if _rule_matches(rule, cell):
                used["budgets"].add(i)
                size = rule.size if rule.size is not None else size
                comp = rule.compressed if rule.compressed is not None else comp
        excluded = None
        for i, rule in enumerate(mf.exclude):
            if _rule_matches(rule, cell):
                excluded = rule.reason
                used["exclude"].add(i)
        if base_from is not None:
            self._check_override_base(cell, base_name, base_from)
        lacking = [r for r in ("builder", cell.runtime_role) if r not in all_bases[base_name].roles]
        if lacking:
            where = self.src.where(("bases", base_name)) if base_name in mf.bases else cell.origin
            raise UserInputError(f"{where}: base '{base_name}' has no {' or '.join(lacking)} role, which "
                                 f"{cell.ref} needs (roles: runtime for slim, dev for full, builder for both)")
        return _replace(cell, slimming=_slim_rules(self.m, slim_override, cell.flavor),
                        requirements=cell.requirements + tuple(extra), base=base_name,
                        budget_size=size, budget_compressed=comp, excluded=excluded,
                        base_spec=all_bases[base_name], gpu_archs=archs, needs_kernels=tuple(needs),
                        accept_unreadable=tuple(accept))

    def _check_override_base(self, cell: Cell, base_name: str, base_from: tuple) -> None:
        all_bases, src = self.all_bases, self.src
        if base_name not in all_bases:
            raise _fail(src, base_from, f"override sets unknown base '{base_name}'"
                        f"{_did_you_mean(base_name, all_bases)}; known: {', '.join(sorted(all_bases))}")
        new_base = all_bases[base_name]
        if new_base.libc not in cell.fw.libc:
            raise _fail(src, base_from, f"{cell.framework} publishes only manylinux wheels, which do not run on "
                        f"{new_base.libc}; this override puts {cell.ref} on '{base_name}'")
        if new_base.python != cell.python:
            raise _fail(src, base_from, f"base '{base_name}' provides Python {new_base.python}, but "
                        f"{cell.ref} is a Python {cell.python} cell; this override cannot move it there")

    def check_indexes_used(self, out: list[Cell]) -> None:
        used_indexes = {i.name for c in out for i in c.indexes}
        for name in self.mf.indexes:
            if name not in used_indexes:
                known = sorted({n for c in out for n in c.fw.indexes})
                raise _fail(self.src, ("indexes", name), f"index '{name}' is used by no cell: a matrix index "
                            f"replaces a framework's index of the same name ({', '.join(known) or 'none in this matrix'})")


def _tag_of(where: str, ver: str, device: str, cuda_v: str | None, cudnn_v: str | None, trt_v: str | None,
            py_part: str | None, gpu_archs: list[str] | None, flavor: str) -> tuple[str, str]:
    """(tag, selector) of a cell: version-device[-cudaX-cudnnY][-trtZ][-pyP][-smNN...]-flavor."""
    tag_parts = [ver, device]
    sel_parts = [device]
    if cuda_v:
        tag_parts += [f"cuda{cuda_v}", f"cudnn{'.'.join(cudnn_v.split('.')[:2])}"]
        sel_parts += [f"cuda{cuda_v}"]
    if trt_v:  # like Paddle's and ONNX Runtime's own TensorRT images: -trt<major.minor>
        trt_part = "trt" + ".".join(trt_v.split(".")[:2])
        tag_parts.append(trt_part)
        sel_parts.append(trt_part)
    if py_part:
        tag_parts.append(py_part)
        sel_parts.append(py_part)
    if gpu_archs:
        # an arch-targeted twin of a cell (issue 12): its kernels are cut to these GPUs, so its tag says
        # so (gpu_archs on a version entry or an override retargets that cell under its own tag)
        arch_part = "-".join(a.replace("_", "") for a in check_gpu_archs(list(gpu_archs)))
        tag_parts.append(arch_part)
        sel_parts.append(arch_part)
    tag_parts.append(flavor)
    sel_parts.append(flavor)
    tag = "-".join(tag_parts)
    if not TAG_RE.match(tag):
        raise UserInputError(f"{where}: '{tag}' would not be a valid Docker tag")
    return tag, "-".join(sel_parts)


def _with_aliases(m: Matrix, cells: list[Cell]) -> list[Cell]:
    """Computed and declared aliases of the active cells; two cells claiming one alias is an error."""
    from . import aliases

    cfg = m.file.aliases
    rules = [((lambda c, r=r: _rule_matches(r, c)), r.tags, m.src.where(("aliases", "rules", i)))
             for i, r in enumerate(cfg.rules)]
    active = [c for c in cells if not c.excluded]
    claims = aliases.compute(active, minor=cfg.minor, latest=cfg.latest, latest_flavor=cfg.latest_flavor,
                             latest_device=cfg.latest_device, rules=rules,
                             where=m.src.where(("aliases",)) if "aliases" in (m.src.data or {}) else "computed")
    problems = aliases.conflicts(claims, {c.ref: c.origin for c in cells})
    if problems:
        raise UserInputError(f"{m.path}: {problems[0]}")
    for i, r in enumerate(cfg.rules):
        if not any(_rule_matches(r, c) for c in active):
            raise _fail(m.src, ("aliases", "rules", i), "this alias rule matches no cell (check the pattern)")
    mine = aliases.by_cell(claims)
    return [_replace(c, aliases=mine.get(c.ref, ())) for c in cells]


def _check_default(m: Matrix, cells: list[Cell]) -> None:
    fw, _, ver = (m.file.default or "").partition(":")
    if not any(c.framework == fw and (not ver or c.version == ver) for c in cells):
        raise _fail(m.src, ("default",), f"default '{m.file.default}' matches no framework:version in the matrix")


def _replace(cell: Cell, **changes: Any) -> Cell:
    import dataclasses

    return dataclasses.replace(cell, **changes)


def _slim_rules(m: Matrix, override: dict[str, Any] | None, flavor: str) -> SlimRules:
    values = dict(compat.flavors()[flavor].slimming)
    values.update(m.file.defaults.slimming.model_dump(exclude_none=True) if flavor == "slim" else {})
    values.update(override or {})
    return SlimRules(**values)


# --- JSON Schema ------------------------------------------------------------------------------


def json_schema() -> dict:
    schema = MatrixFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "imagegen matrix.yaml"
    schema["properties"]["frameworks"]["propertyNames"] = {"enum": sorted(compat.frameworks())}
    return schema
