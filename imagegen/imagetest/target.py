"""What an image is tested against: the TestTarget, built from a matrix cell.

A target is plain data (JSON round-trip) so that the pytest session that runs the checks can
receive it through a file, whether it is started by `run_targets` or by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import compat, labels
from ..errors import UserInputError

# Every rule the contents policy knows. A target says which apply (True) to its image.
POLICY_RULES: dict[str, str] = {
    "non_root": "the image's default user is not root",
    "arbitrary_uid": "the framework imports and runs under an arbitrary UID with no passwd entry",
    "no_docs": "no /usr/share/doc beyond copyright files",
    "no_man": "no man or info pages",
    "no_tests_dirs": "no tests/ directories in site-packages",
    "no_headers": "no C/C++ headers",
    "no_pkg_caches": "no pip or apt caches",
    "no_apt_lists": "no apt lists",
    "stripped": "no unstripped ELF objects (auditwheel *.libs/ dirs exempt)",
    "no_shell": "no shell in the image",
    "no_pip": "no pip in the image",
    "single_python": "exactly one Python installation",
    "deps_consistent": "every installed distribution's requirements are satisfied (pip check)",
    "labels": "OCI and imagegen labels present and matching the cell",
    "bytecode_compiled": "what `import <framework>` loads has unchecked-hash bytecode, and a start rewrites none",
}

# Labels every image must carry; values for the ones a cell determines are in TestTarget.labels.
REQUIRED_LABELS: tuple[str, ...] = labels.REQUIRED
GPU_LABELS: tuple[str, ...] = labels.REQUIRED_GPU


@dataclass
class TestTarget:
    """One image and what its tag claims. `framework` is the compat profile (data)."""

    __test__ = False  # not a pytest class

    image: str  # a reference or ID the local engine knows
    framework: compat.Framework
    version: str
    device: str  # "cpu" | "gpu"
    python: str  # "3.11"
    flavor: str = "slim"
    cuda: str | None = None  # "11.8"
    cudnn: str | None = None  # "8.6.0" (full) or "8.6"
    tensorrt: str | None = None  # "10.13.3.9": the cell carries NVIDIA's TensorRT runtime
    budget_bytes: int | None = None  # uncompressed (engine) size budget
    budget_compressed_bytes: int | None = None  # sum of gzip(-6) layer sizes budget
    policy: dict[str, bool] = field(default_factory=lambda: policy_for("slim"))
    labels: dict[str, str] = field(default_factory=dict)  # expected label values ("" = present)
    allow: list[str] = field(default_factory=list)  # fnmatch globs exempt from contents rules
    pruned_libs: list[str] = field(default_factory=list)  # dlopen names removed on purpose (opt-in pruning)
    dlopen: list[str] | None = None  # names the runtime dlopens (framework + cuDNN); None: framework data only
    policy_notes: dict[str, str] = field(default_factory=dict)  # rule -> why it is relaxed for this image
    python_exe: str = "python3"  # resolved through the image's PATH
    smoke_script: str | None = None  # default: imagegen/data/smoke/<framework.test.smoke>
    name: str | None = None  # display id; default: the image reference

    @property
    def id(self) -> str:
        return self.name or self.image

    @property
    def smoke_path(self) -> Path:
        return Path(self.smoke_script) if self.smoke_script else compat.smoke_script(self.framework)

    def rule(self, name: str) -> bool:
        return bool(self.policy.get(name, False))

    def expected_labels(self) -> dict[str, str]:
        """Required labels (value "" = must be present) overlaid with the cell's known values."""
        out = {k: "" for k in REQUIRED_LABELS}
        if self.device == "gpu":
            out.update({k: "" for k in GPU_LABELS})
        out.update({
            labels.FRAMEWORK: self.framework.name,
            labels.FRAMEWORK_VERSION: self.version,
            labels.DEVICE: self.device,
            labels.PYTHON: self.python,
            labels.FLAVOR: self.flavor,
        })
        if self.device == "gpu":
            out[labels.CUDA] = self.cuda or ""
            out[labels.CUDNN] = self.cudnn or ""
        out.update(self.labels)
        return out

    # --- serialisation -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["framework"] = self.framework.model_dump(mode="json")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TestTarget":
        d = dict(d)
        d["framework"] = compat.Framework.model_validate(d["framework"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_cell(cls, cell: Any, image: str | None = None, **overrides: Any) -> "TestTarget":
        """A target from a matrix Cell (duck-typed: framework/version/device/... attributes)."""
        slimming = cell.slimming.as_dict() if hasattr(cell.slimming, "as_dict") else dict(cell.slimming or {})
        kw: dict[str, Any] = dict(
            image=image or cell.ref,
            framework=cell.fw,
            version=cell.version,
            device=cell.device,
            python=cell.python,
            flavor=cell.flavor,
            cuda=cell.cuda,
            cudnn=cell.cudnn,
            tensorrt=getattr(cell, "tensorrt", None),
            budget_bytes=cell.budget_size,
            budget_compressed_bytes=cell.budget_compressed,
            policy=policy_for(cell.flavor, slimming),
            name=getattr(cell, "ref", None),
        )
        kw.update(overrides)
        return cls(**kw)


def policy_for(flavor: str, slimming: dict[str, Any] | None = None) -> dict[str, bool]:
    """The rules that apply to a flavor: its policy in imagegen/data/flavors.yaml (the only place it
    is defined), narrowed by the cell's slimming switches: a contents rule is only enforced when the
    build was asked to remove that content. A switch relaxes the flavor's policy, never tightens it.
    Raises UserInputError for a flavor flavors.yaml does not define."""
    known = compat.flavors()
    if flavor not in known:
        raise UserInputError(f"unknown flavor {flavor!r} (imagegen/data/flavors.yaml defines "
                             f"{', '.join(sorted(known))})")
    declared = known[flavor].policy
    base = {name: bool(declared.get(name, False)) for name in POLICY_RULES}
    s = slimming or {}
    switch = {  # slimming key -> policy rules it governs
        "docs": ("no_docs", "no_man"),
        "tests": ("no_tests_dirs",),
        "headers": ("no_headers",),
        "caches": ("no_pkg_caches", "no_apt_lists"),
        "strip": ("stripped",),
        "pip": ("no_pip",),
    }
    for key, rules in switch.items():
        if s.get(key) is not None:
            for r in rules:
                base[r] = base[r] and bool(s[key])
    # bytecode_compiled is a promise of imagegen's build (`slimming: {bytecode: compile}`)
    base["bytecode_compiled"] = base["bytecode_compiled"] and s.get("bytecode") == "compile"
    return base


def dump_targets(targets: list[TestTarget], path: Path) -> None:
    path.write_text(json.dumps([t.to_json() for t in targets], indent=1))


def load_targets(path: Path) -> list[TestTarget]:
    return [TestTarget.from_json(d) for d in json.loads(Path(path).read_text())]
