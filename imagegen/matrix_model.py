"""The model of matrix.yaml as written (pydantic), before expansion into cells (see matrix.py).

Also the reference rules (registry, repository component, tag) that publish reuses.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import compat
from .scripts import fatbin
from .units import parse_size

Device = Literal["cpu", "gpu"]
Flavor = Literal["slim", "full"]

# --- the matrix file's model ------------------------------------------------------------------

_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]+)?$")


def is_registry(value: str) -> bool:
    """``value`` is a registry host[:port] (what `registry:` and `publish --registry` take)."""
    return bool(_REGISTRY.match(value))


_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# The reference rules, public for the stages that check references outside a matrix (publish).
REGISTRY_RE, REPO_COMPONENT_RE, TAG_RE = _REGISTRY, _REPO_COMPONENT, _TAG
# Requirements reach the lock file, never a RUN line; still, only PEP 508 name/extras/version characters
# pass (no markers, quotes, `;`, `$`, backticks, pipes).
_REQUIREMENT_CHARS = re.compile(r"[A-Za-z0-9._\[\],<>=!~+* -]+")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Slimming(_Model):
    docs: bool | None = None
    tests: bool | None = None
    headers: bool | None = None
    caches: bool | None = None
    bytecode: Literal["compile", "all", "keep", "drop"] | None = None
    ptx: Literal["drop", "keep"] | None = Field(None, description=(
        "with gpu_archs (EXPERIMENTAL): also keep each container's PTX up to the newest target, so GPUs newer "
        "than the list can JIT-compile (keep), or only what the targets load (drop, the default)"))
    static_libs: bool | None = None
    strip: bool | None = None
    pip: bool | None = None
    cudnn_train: bool | None = None
    flashattn: bool | None = None
    warpctc: bool | None = None
    openvino: bool | None = None
    cuda_unused: bool | None = None
    cuda_extras: bool | None = None
    tensorrt_unused: bool | None = None


class Budget(_Model):
    size: int | None = None
    compressed: int | None = None

    @field_validator("size", "compressed", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)


def _check_requirement(v: str) -> str:
    try:
        req = Requirement(v)
    except InvalidRequirement as exc:
        raise ValueError(f"'{v}' is not a valid package requirement ({exc})".splitlines()[0]) from None
    if req.url:
        raise ValueError(f"'{v}': direct URL requirements are not allowed; add an index instead")
    if not _REQUIREMENT_CHARS.fullmatch(v):
        raise ValueError(f"'{v}' contains characters that are not allowed in a requirement")
    return v


def _check_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
        raise ValueError(f"'{v}' is not an http(s) or file URL")
    if re.search(r"[\s'\"`$;&|<>\\]", v):
        raise ValueError(f"'{v}' contains characters that are not allowed in a URL")
    return v


def _check_gpu_archs(v: list[Any] | None) -> list[str] | None:
    """[sm_75, "8.6", 90] -> ["sm_75", "sm_86", "sm_90"] (sorted, unique); ValueError on anything else."""
    if v is None:
        return None
    if not v:
        raise ValueError("gpu_archs needs at least one architecture, e.g. [sm_75]")
    return sorted({f"sm_{fatbin.parse_arch(x)}" for x in v}, key=fatbin.parse_arch)


GpuArchs = Annotated[list[str | int] | None, Field(
    description="GPUs the image must run on, as compute capabilities (sm_75, sm_86, ...). `imagegen validate` "
                "rejects one the framework's CUDA kernels cannot serve.")]


class IndexDef(_Model):
    kind: Literal["index", "find-links"] = "index"
    url: str

    _url = field_validator("url")(classmethod(lambda cls, v: _check_url(v)))


class CudaEntry(_Model):
    version: str
    cudnn: str | None = None
    tensorrt: str | None = None  # TensorRT major (or major.minor) from the framework's data, e.g. "10"


# `base:` is one base name, or a mapping Python version -> base name (each Python on its own base).
BaseSetting = str | dict[str, str]


class VersionEntry(_Model):
    devices: list[Device] | None = None
    cuda: list[str | CudaEntry] | None = None
    python: list[str] | None = None
    flavors: list[Flavor] | None = None
    base: BaseSetting | None = None
    extra_requirements: list[str] = Field(default_factory=list)
    gpu_archs: GpuArchs = None

    @field_validator("extra_requirements")
    @classmethod
    def _reqs(cls, v: list[str]) -> list[str]:
        return [_check_requirement(x) for x in v]

    _archs = field_validator("gpu_archs")(classmethod(lambda cls, v: _check_gpu_archs(v)))


class Defaults(_Model):
    base: BaseSetting = "bookworm"
    python: list[str] = Field(default_factory=lambda: ["3.11"])
    devices: list[Device] = Field(default_factory=lambda: ["cpu"])
    flavors: list[Flavor] = Field(default_factory=lambda: ["slim", "full"])
    slimming: Slimming = Field(default_factory=Slimming)


class Selector(_Model):
    """Selects cells by glob (`match`, against the full tag) and/or by axis values."""

    match: str | None = None
    framework: str | None = None
    version: str | None = None
    device: Device | None = None
    cuda: str | None = None
    python: str | None = None
    flavor: Flavor | None = None


class Rule(Selector):
    """A selector that may also select by base (exclude and budget rules)."""

    base: str | None = None


#: the axes a rule selects by; an override's `base` is what it sets, never a selector
_AXES = ("framework", "version", "device", "cuda", "python", "flavor")


class ExcludeRule(Rule):
    reason: str = "excluded by the matrix"


class IncludeRule(_Model):
    framework: str
    version: str
    device: Device
    cuda: str | None = None
    cudnn: str | None = None
    tensorrt: str | None = None
    python: str | None = None
    flavor: Flavor
    base: str | None = None
    gpu_archs: GpuArchs = None

    _archs = field_validator("gpu_archs")(classmethod(lambda cls, v: _check_gpu_archs(v)))


class OverrideRule(Selector):
    """Settings for the cells it selects. `base` moves them to another base (it does not select)."""

    slimming: Slimming | None = None
    base: str | None = None
    extra_requirements: list[str] | None = None
    budget: Budget | None = None
    gpu_archs: GpuArchs = None
    needs_kernels: list[str] | None = Field(
        None, description="Libraries (site-packages-relative globs) that only some operations load, which "
        "these cells' workloads need (e.g. paddle/libs/libflashattn.so): counted like every other CUDA library, "
        "so the image's GPUs and gpu_archs are judged with them.")

    accept_unreadable: list[str] | None = Field(
        None, description="CUDA libraries (site-packages-relative globs) whose fat binaries imagegen cannot read, "
        "accepted as left out of these cells' GPU verdict. Without it such a library fails validate and the build, "
        "named: the image's GPUs could not be judged with it.")

    _archs = field_validator("gpu_archs")(classmethod(lambda cls, v: _check_gpu_archs(v)))

    @field_validator("needs_kernels", "accept_unreadable")
    @classmethod
    def _globs(cls, v: list[str] | None, info) -> list[str] | None:
        if v is not None and (not v or not all(isinstance(g, str) and g.strip() and not g.startswith("/") for g in v)):
            raise ValueError(f"{info.field_name} lists site-packages-relative globs, e.g. [paddle/libs/libflashattn.so]")
        return v

    @field_validator("extra_requirements")
    @classmethod
    def _reqs(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_check_requirement(x) for x in v]


class BudgetRule(Rule):
    size: int | None = None
    compressed: int | None = None

    @field_validator("size", "compressed", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)


class AliasRule(Rule):
    """Declared aliases: every cell this rule selects also gets `tags` (in its own image repository)."""

    tags: list[str]

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TAG.match(t):
                raise ValueError(f"'{t}' is not a valid Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
        return v


class Aliases(_Model):
    """Alias tags pushed next to each cell's immutable tag (see imagegen/aliases.py)."""

    minor: bool = True  # newest patch of each major.minor gets <major.minor>-<selector>
    latest: Literal["device", "single", "none"] = "device"  # latest-<device> | latest | no latest alias
    latest_flavor: Flavor = "slim"  # the flavor that carries the latest alias(es)
    latest_device: Device = "cpu"  # with latest: single, the device that carries `latest`
    rules: list[AliasRule] = Field(default_factory=list)


class CiConfig(_Model):
    """`imagegen ci matrix`: where each cell's job runs (GitHub Actions `runs-on`)."""

    cpu_runs_on: list[str] = Field(default_factory=lambda: ["ubuntu-22.04"])  # hosted runners
    gpu_runs_on: list[str] = Field(default_factory=lambda: ["self-hosted", "linux", "x64", "gpu"])

    @field_validator("cpu_runs_on", "gpu_runs_on")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one runner label")
        for label in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", label):
                raise ValueError(f"'{label}' is not a runner label")
        return v


class MatrixFile(_Model):
    schema_: str | None = Field(default=None, alias="$schema")
    registry: str | None = None
    namespace: str | None = None
    default: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    bases: dict[str, compat.BaseSpec] = Field(default_factory=dict)
    indexes: dict[str, IndexDef] = Field(default_factory=dict)
    frameworks: dict[str, dict[str, VersionEntry]]
    include: list[IncludeRule] = Field(default_factory=list)
    exclude: list[ExcludeRule] = Field(default_factory=list)
    overrides: list[OverrideRule] = Field(default_factory=list)
    budgets: list[BudgetRule] = Field(default_factory=list)
    aliases: Aliases = Field(default_factory=Aliases)
    ci: CiConfig = Field(default_factory=CiConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Public names for matrix.py (the expansion) and the stages that check references.
AXES = _AXES
check_url = _check_url
check_gpu_archs = _check_gpu_archs
