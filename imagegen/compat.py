"""Compatibility knowledge: pydantic models of the data files in imagegen/data/.

Frameworks, CUDA releases and bases are facts kept as YAML; this module only loads and
types them. Nothing here decides by framework name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .errors import UserInputError

DATA = Path(str(resources.files("imagegen") / "data"))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- frameworks -------------------------------------------------------------------------------


class IndexSpec(_Model):
    kind: Literal["index", "find-links"] = "index"
    url: str


class DeviceSpec(_Model):
    requirements: list[str]
    index: str | None = None  # a name from Framework.indexes; None = the host's default index (PyPI)


class TensorRTBuild(_Model):
    """NVIDIA's TensorRT runtime wheels for one TensorRT major version a build can load."""

    version: str  # full TensorRT version, e.g. "10.13.3.9"; the tag shows major.minor
    requirements: list[str]
    index: str | None = None
    why: str = ""  # where the major version comes from (the provider's NEEDED entries)


class GpuBuild(_Model):
    cudnn: str
    requirements: list[str]
    index: str | None = None
    tensorrt: dict[str, TensorRTBuild] = Field(default_factory=dict)  # TensorRT major -> its wheels


class ProviderSpec(_Model):
    """An execution provider the framework dlopens by path (ONNX Runtime's CUDA / TensorRT providers)."""

    name: str  # as the framework lists it, e.g. CUDAExecutionProvider
    library: str  # relative to site-packages
    needs: Literal["tensorrt"] | None = None  # only in cells with that part


class GpuSpec(_Model):
    runtime_wheels: Literal["imagegen", "framework"] = "framework"
    # runtime_wheels: imagegen -> the CUDA components (cuda.yaml) whose wheels the cell gets; None = all
    components: list[str] | None = None
    cudart: Literal["static", "shared"] = "shared"
    dlopen: list[str] = Field(default_factory=list)
    # execution providers: readiness checks each is listed as available and loads every NEEDED entry
    # of its library one by one, by name
    providers: list[ProviderSpec] = Field(default_factory=list)
    # the framework's own CUDA libraries (relative to site-packages): readiness loads every NEEDED entry
    needed_of: list[str] = Field(default_factory=list)
    # sonames the ELF closure leaves out (soname -> why): NEEDED only by a library the framework loads
    # on request, whose dependencies other wheels bring in the cells that use it
    closure_ignore: dict[str, str] = Field(default_factory=dict)
    builds: dict[str, GpuBuild]


class FrameworkVersion(_Model):
    python: list[str]
    cpu: DeviceSpec | None = None
    gpu: GpuSpec | None = None
    # Debian packages the framework needs at run time that no ELF NEEDED entry reveals
    # (package -> why). They join the cell's closure; a shell here also relaxes the no-shell policy.
    runtime_packages: dict[str, str] = Field(default_factory=dict)


class TestProfile(_Model):
    smoke: str
    writable_home: bool = False


class Framework(_Model):
    name: str
    title: str
    image: str
    import_name: str
    libc: list[Literal["glibc", "musl"]]
    indexes: dict[str, IndexSpec] = Field(default_factory=dict)
    test: TestProfile
    inference_prune: dict[str, list[str]] = Field(default_factory=dict)
    versions: dict[str, FrameworkVersion]


# --- CUDA -------------------------------------------------------------------------------------


class CudaComponent(_Model):
    package: str  # with {major}
    libdir: str  # relative to site-packages
    provides: dict[str, str]  # unversioned name -> glob of the versioned file in libdir

    def package_for(self, cuda: str) -> str:
        return self.package.format(major=cuda.split(".")[0])


class CudaRelease(_Model):
    driver_min: str
    wheels: dict[str, str] = Field(default_factory=dict)


class CudnnDlopen(_Model):
    """Unversioned names cuDNN itself dlopens while it loads, for a range of cuDNN versions."""
    cudnn: str  # PEP 440 specifier over the full cuDNN version, e.g. ">=8.7,<9"
    names: list[str]
    source: str  # where the fact comes from (upstream issue, NVIDIA doc)


class CudaData(_Model):
    host_provided: list[str]
    components: dict[str, CudaComponent]
    # site-packages globs of the directories NVIDIA's wheels put shared libraries in; every one present
    # in a GPU image is listed in its ld.so.conf.d file (FACTS trap 4: versioned names load each other)
    loader_dirs: list[str] = Field(default_factory=lambda: ["nvidia/*/lib"])
    dlerror_benign: list[str] = Field(default_factory=list)  # pending dlerror() texts reported, not failed
    releases: dict[str, CudaRelease]
    cudnn_wheels: dict[str, str] = Field(default_factory=dict)
    cudnn_dlopen: list[CudnnDlopen] = Field(default_factory=list)

    def cudnn_dlopen_names(self, cudnn: str | None) -> list[str]:
        """Names the given cuDNN version dlopens by itself ([] for None or no matching rule)."""
        if not cudnn:
            return []
        from packaging.specifiers import SpecifierSet

        out: list[str] = []
        for rule in self.cudnn_dlopen:
            if SpecifierSet(rule.cudnn).contains(cudnn, prereleases=True):
                out += [n for n in rule.names if n not in out]
        return out

    def component_for_soname(self, name: str) -> tuple[str, CudaComponent] | None:
        for key, comp in self.components.items():
            if name in comp.provides:
                return key, comp
        return None


# --- bases ------------------------------------------------------------------------------------


class BaseRole(_Model):
    variant: str | None = None  # mmdebstrap variant (bootstrap bases)
    packages: list[str] = Field(default_factory=list)
    ref: str | None = None  # registry bases: image reference pinned by digest


class BaseSpec(_Model):
    description: str = ""
    source: Literal["bootstrap", "registry"]
    libc: Literal["glibc", "musl"]
    glibc: str | None = None
    python: str
    suite: str | None = None
    mirror: str = "http://deb.debian.org/debian"
    snapshot: str | None = None
    roles: dict[Literal["runtime", "builder", "dev"], BaseRole]

    def role(self, role: str) -> BaseRole:
        return self.roles[role]  # type: ignore[index]

    def inputs(self, role: str) -> dict:
        """Everything that determines a bootstrapped role image."""
        r = self.role(role)
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "snapshot": self.snapshot,
            "variant": r.variant,
            "packages": sorted(r.packages),
            "recipe": BOOTSTRAP_RECIPE_VERSION,
        }

    def role_ref(self, name: str, role: str) -> str:
        """The image reference a Dockerfile uses for this role.

        Registry roles: their digest-pinned ref. Bootstrapped roles: a local tag derived from
        the role's inputs, so a changed package list or snapshot is a different image."""
        r = self.role(role)
        if self.source == "registry":
            assert r.ref
            return r.ref
        digest = hashlib.sha256(json.dumps(self.inputs(role), sort_keys=True).encode()).hexdigest()[:12]
        return f"imagegen/base-{name}-{role}:{digest}"


# Bumped when the bootstrap recipe in imagegen/bases.py changes in a way that changes the image.
BOOTSTRAP_RECIPE_VERSION = 1


# --- loading ----------------------------------------------------------------------------------


def _load_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: malformed YAML: {exc}".splitlines()[0]) from None


@functools.lru_cache(maxsize=None)
def frameworks(data_dir: Path = DATA) -> dict[str, Framework]:
    out: dict[str, Framework] = {}
    for path in sorted((data_dir / "frameworks").glob("*.yaml")):
        fw = Framework.model_validate(_load_yaml(path))
        out[fw.name] = fw
    return out


@functools.lru_cache(maxsize=None)
def cuda(data_dir: Path = DATA) -> CudaData:
    return CudaData.model_validate(_load_yaml(data_dir / "cuda.yaml"))


@functools.lru_cache(maxsize=None)
def bases(data_dir: Path = DATA) -> dict[str, BaseSpec]:
    raw = _load_yaml(data_dir / "bases.yaml").get("bases", {})
    return {name: BaseSpec.model_validate(spec) for name, spec in raw.items()}


class Flavor(_Model):
    """One flavor of flavors.yaml: what its images are for, the base role its runtime stage uses, HOME in
    the image, its default slimming switches and the contents policy its image tests enforce."""
    description: str
    runtime_role: Literal["runtime", "dev"]
    home: str | None = None
    slimming: dict[str, bool | str]
    policy: dict[str, bool] = Field(default_factory=dict)


class GpuData(_Model):
    """gpus.yaml: NVIDIA's x86_64 compute capabilities (sm_XX -> GPUs, from NVIDIA's "CUDA GPUs - Compute
    Capability" table), the container share below which an entry is a stray object, and the libraries
    that only some operations load (glob -> what they are)."""
    compute_capabilities: dict[str, str]
    min_container_share: float = Field(gt=0, lt=1)
    feature_libraries: dict[str, str] = Field(default_factory=dict)


def _validated(model, path: Path):
    """The data file at `path` through `model`; UserInputError naming the file and the first problem."""
    from pydantic import ValidationError

    try:
        return model.model_validate(_load_yaml(path))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserInputError(f"{path}: {'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None


@functools.lru_cache(maxsize=None)
def flavors(data_dir: Path = DATA) -> dict[str, Flavor]:
    """What each flavor means (flavors.yaml): {flavor: Flavor}. The contents policy the image tests
    enforce comes from here only."""
    from pydantic import RootModel

    return _validated(RootModel[dict[str, Flavor]], data_dir / "flavors.yaml").root


@functools.lru_cache(maxsize=None)
def prune_rules(data_dir: Path = DATA) -> dict[str, list[str]]:
    """The paths each slimming rule removes (prune.yaml): {rule: [glob, ...], "protect": [glob, ...]}."""
    from pydantic import RootModel

    return _validated(RootModel[dict[str, list[str]]], data_dir / "prune.yaml").root


@functools.lru_cache(maxsize=None)
def build_tools(data_dir: Path = DATA) -> tuple[str, ...]:
    """Builder-stage tools (build.yaml), locked with every cell, never in the image's environment."""
    return tuple(_load_yaml(data_dir / "build.yaml").get("tools", []))


@functools.lru_cache(maxsize=None)
def gpus(data_dir: Path = DATA) -> dict:
    """NVIDIA's GPUs and their compute capabilities, the container share rule and the feature
    libraries (gpus.yaml, checked through :class:`GpuData`): {compute_capabilities: {...},
    min_container_share, feature_libraries} (a plain dict: bench/gpu_archs_on_device.py supplies the same
    shape where no YAML reader is installed)."""
    return _validated(GpuData, data_dir / "gpus.yaml").model_dump()


@functools.lru_cache(maxsize=None)
def secret_allowlist(data_dir: Path = DATA) -> list[dict]:
    """Known third-party test keys, each with a reason (secrets-allow.yaml): [{rule, path, reason}]."""
    path = data_dir / "secrets-allow.yaml"
    return list(_load_yaml(path).get("allow", [])) if path.exists() else []


@functools.lru_cache(maxsize=None)
def image_skips(data_dir: Path = DATA) -> tuple[tuple[re.Pattern, str], ...]:
    """The skip reasons of the image test suite that still let a run pass (image-skips.yaml):
    ((compiled pattern, why), ...). UserInputError for a malformed pattern."""
    out = []
    for i, entry in enumerate(_load_yaml(data_dir / "image-skips.yaml").get("allowed", [])):
        try:
            out.append((re.compile(entry["reason"]), str(entry.get("why", ""))))
        except (re.error, KeyError, TypeError) as exc:
            raise UserInputError(f"{data_dir / 'image-skips.yaml'}: allowed[{i}]: {exc}") from None
    return tuple(out)


def smoke_script(framework: Framework) -> Path:
    return DATA / "smoke" / framework.test.smoke
