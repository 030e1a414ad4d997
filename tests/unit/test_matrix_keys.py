"""Every key of matrix.yaml either takes effect or is an error (issue 9 item 7).

For each field of every model of the matrix file, one mutation of a small matrix must either change
what the matrix produces (its cells, the rendered build files, the lock requests, how selectors
resolve) or be refused with a one-line UserInputError. The field list is read from the pydantic
models themselves, so a new key without a mutation here fails `test_every_key_has_a_mutation`.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from imagegen import ci, compat, matrix
from imagegen.errors import UserInputError
from imagegen.pipeline import lock_request
from imagegen.render import render_cell

DIGEST = "sha256:" + "ab" * 32
CORP = {
    "source": "registry", "libc": "glibc", "glibc": "2.36", "python": "3.11",
    "mirror": "http://deb.debian.org/debian",
    "roles": {role: {"ref": f"registry.corp/debian:bookworm-slim@{DIGEST}", "packages": ["python3.11-minimal"]}
              for role in ("runtime", "builder", "dev")},
}
MINE = {  # a bootstrapped base defined by the matrix
    "source": "bootstrap", "libc": "glibc", "glibc": "2.36", "python": "3.11", "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "roles": {"runtime": {"variant": "extract", "packages": ["libc6", "python3.11-minimal"]},
              "builder": {"variant": "minbase", "packages": ["python3.11", "python3.11-venv", "binutils"]},
              "dev": {"variant": "minbase", "packages": ["python3.11", "python3.11-venv", "python3.11-dev"]}},
}
BASE_DOC = {
    "registry": "ghcr.io",
    "namespace": "imagegen",
    "default": "paddle:3.3.1",
    "defaults": {"base": "bookworm", "python": ["3.11"], "devices": ["cpu"], "flavors": ["slim", "full"],
                 "slimming": {}},
    "bases": {"corp": CORP, "mine": MINE},
    "frameworks": {
        "paddle": {"2.6.2": {"devices": ["cpu", "gpu"], "cuda": ["11.8"], "flavors": ["slim"]}, "3.3.1": {}},
        "onnxruntime": {"1.23.2": {"flavors": ["slim"], "base": "corp"}},
        "torch": {"2.13.0": {"flavors": ["slim"], "base": "mine"}},
    },
    "include": [{"framework": "paddle", "version": "3.3.1", "device": "gpu", "cuda": "11.8", "flavor": "slim"}],
    "exclude": [{"match": "*-full", "reason": "no dev images"}],
    "overrides": [{"match": "*-slim", "extra_requirements": ["six==1.16.0"]}],
    "budgets": [{"match": "*", "size": "5GB"}],
    "indexes": {},
}


def fingerprint(path: Path, m: matrix.Matrix | None = None) -> dict:
    """Everything a matrix decides: cells, build files, lock requests, selector resolution.
    Only `matrix.load` (what `imagegen validate` runs) may refuse the matrix: an error from
    rendering or locking a matrix that validated is a failure of this test."""
    m = m or matrix.load(path)
    out = {"cells": [c.as_dict() for c in m.cells],
           "render": {c.id: render_cell(m, c).files for c in m.active},
           "locks": {c.id: dataclasses.asdict(lock_request(c)) for c in m.active},
           "ci": ci.matrix(m, m.active)}
    for sel in ("cpu-slim", "gpu-cuda11.8-slim"):
        try:
            out[sel] = [c.ref for c in m.select([sel])]
        except UserInputError as exc:
            out[sel] = str(exc)
    return out


def _set(path: str, value):
    """A mutation setting a /-separated path (list indexes as numbers) to value."""
    keys = [int(k) if k.isdigit() else k for k in path.split("/")]

    def mutate(doc):
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return mutate


def _many(*fns):
    def mutate(doc):
        for f in fns:
            f(doc)
    return mutate


# "Model.field" -> mutation. Selector axes are tried on each kind of rule.
MUTATIONS = {
    "MatrixFile.registry": _set("registry", "registry.example.com"),
    "MatrixFile.namespace": _set("namespace", "other"),
    "MatrixFile.default": _set("default", "paddle:2.6.2"),
    "MatrixFile.defaults": _set("defaults", {}),
    "MatrixFile.bases": _set("bases", {"corp": CORP}),  # `mine` removed: torch's base is unknown -> error
    "MatrixFile.frameworks": _set("frameworks/paddle", {"3.3.1": {}}),
    "MatrixFile.include": _set("include", []),
    "MatrixFile.exclude": _set("exclude", []),
    "MatrixFile.overrides": _set("overrides", []),
    "MatrixFile.budgets": _set("budgets", []),
    "MatrixFile.indexes": _set("indexes", {"pytorch-cpu": {"url": "https://mirror.example/torch/cpu"}}),
    "CudaEntry.tensorrt": _many(_set("frameworks/onnxruntime/1.23.2/devices", ["cpu", "gpu"]),
                                _set("frameworks/onnxruntime/1.23.2/cuda", [{"version": "12.8", "tensorrt": "10"}])),
    "IncludeRule.tensorrt": _many(_set("include", [{"framework": "onnxruntime", "version": "1.23.2", "device": "gpu",
                                                    "cuda": "12.8", "flavor": "full", "python": "3.11",
                                                    "tensorrt": "10"}])),
    "MatrixFile.aliases": _set("aliases", {"minor": False, "latest": "none"}),
    "MatrixFile.ci": _set("ci", {"cpu_runs_on": ["self-hosted", "cpu"]}),
    "Defaults.base": _set("defaults/base", "corp"),
    "Defaults.python": _set("defaults/python", ["3.12"]),
    "Defaults.devices": _set("defaults/devices", ["cpu", "gpu"]),
    "Defaults.flavors": _set("defaults/flavors", ["slim"]),
    "Defaults.slimming": _set("defaults/slimming", {"strip": False}),
    "VersionEntry.devices": _set("frameworks/paddle/2.6.2/devices", ["gpu"]),
    "VersionEntry.cuda": _set("frameworks/paddle/2.6.2/cuda", ["11.7"]),
    "VersionEntry.python": _set("frameworks/paddle/3.3.1/python", ["3.12"]),
    "VersionEntry.flavors": _set("frameworks/paddle/3.3.1/flavors", ["slim"]),
    "VersionEntry.base": _set("frameworks/paddle/3.3.1/base", "corp"),
    "VersionEntry.extra_requirements": _set("frameworks/paddle/3.3.1/extra_requirements", ["rich==13.7.1"]),
    "CudaEntry.version": _set("frameworks/paddle/2.6.2/cuda", [{"version": "11.7"}]),
    "CudaEntry.cudnn": _set("frameworks/paddle/2.6.2/cuda", [{"version": "11.8", "cudnn": "8.9"}]),
    "IncludeRule.framework": _set("include/0/framework", "torch"),
    "IncludeRule.version": _set("include/0/version", "2.6.2"),
    "IncludeRule.device": _set("include/0/device", "cpu"),
    "IncludeRule.cuda": _set("include/0/cuda", "12.6"),
    "IncludeRule.cudnn": _set("include/0/cudnn", "9.1"),
    "IncludeRule.python": _set("include/0/python", "3.12"),
    "IncludeRule.flavor": _set("include/0/flavor", "full"),
    "IncludeRule.base": _set("include/0/base", "corp"),
    "ExcludeRule.reason": _set("exclude/0/reason", "another reason"),
    "ExcludeRule.match": _set("exclude/0/match", "paddle:*-full"),
    "OverrideRule.match": _set("overrides/0/match", "paddle:*-slim"),
    "OverrideRule.slimming": _set("overrides/0/slimming", {"headers": False}),
    "OverrideRule.extra_requirements": _set("overrides/0/extra_requirements", ["six==1.17.0"]),
    "OverrideRule.budget": _set("overrides/0/budget", {"size": "1GB"}),
    "OverrideRule.base": _set("overrides/0/base", "corp"),  # the bug: base was read as a selector
    "BudgetRule.match": _set("budgets/0/match", "paddle:*"),
    "BudgetRule.size": _set("budgets/0/size", "6GB"),
    "BudgetRule.compressed": _set("budgets/0/compressed", "2GB"),
    "Budget.size": _set("overrides/0/budget", {"size": "700MB"}),
    "Budget.compressed": _set("overrides/0/budget", {"compressed": "300MB"}),
    "IndexDef.url": _set("indexes", {"pytorch-cpu": {"url": "https://mirror.example/torch/cpu"}}),
    "IndexDef.kind": _set("indexes", {"pytorch-cpu": {"kind": "find-links", "url": "https://download.pytorch.org/whl/cpu"}}),
    "VersionEntry.gpu_archs": _set("frameworks/paddle/2.6.2/gpu_archs", ["sm_75"]),
    "IncludeRule.gpu_archs": _set("include/0/gpu_archs", ["sm_75"]),
    "OverrideRule.gpu_archs": _set("overrides/0/gpu_archs", ["sm_75"]),
    "OverrideRule.needs_kernels": _set("overrides/0/needs_kernels", ["paddle/libs/libflashattn.so"]),
    "OverrideRule.accept_unreadable": _set("overrides/0/accept_unreadable", ["paddle/libs/libodd.so"]),
    "BaseSpec.source": _set("bases/mine/source", "registry"),
    "BaseSpec.libc": _set("bases/corp/libc", "musl"),
    "BaseSpec.glibc": _set("bases/corp/glibc", "2.28"),
    "BaseSpec.python": _set("bases/corp/python", "3.12"),
    "BaseSpec.suite": _set("bases/mine/suite", "trixie"),
    "BaseSpec.mirror": _set("bases/mine/mirror", "http://mirror.example/debian"),
    "BaseSpec.snapshot": _set("bases/mine/snapshot", "20261101T000000Z"),
    "BaseSpec.roles": _set("bases/corp/roles", {"runtime": CORP["roles"]["runtime"]}),
    "BaseRole.variant": _set("bases/mine/roles/runtime/variant", "minbase"),
    "BaseRole.packages": _set("bases/mine/roles/runtime/packages", ["libc6", "python3.11-minimal", "tzdata"]),
    "BaseRole.ref": _set("bases/corp/roles/runtime/ref", f"registry.corp/debian:bookworm@sha256:{'cd' * 32}"),
}
for _axis, _value in (("framework", "paddle"), ("version", "2.6.2"), ("device", "gpu"), ("cuda", "11.8"),
                      ("python", "3.12"), ("flavor", "full")):
    MUTATIONS[f"Selector.{_axis}"] = _set(f"overrides/0/{_axis}", _value)
    MUTATIONS[f"ExcludeRule.{_axis}"] = _set(f"exclude/0/{_axis}", _value)
    MUTATIONS[f"BudgetRule.{_axis}"] = _set(f"budgets/0/{_axis}", _value)
MUTATIONS["Rule.base"] = MUTATIONS["BudgetRule.base"] = _set("budgets/0/base", "corp")
MUTATIONS["Selector.match"] = _set("overrides/0/match", "paddle:*")
MUTATIONS["ExcludeRule.base"] = _many(_set("exclude/0/base", "corp"), _set("exclude/0/match", "*"))

# Keys that are documentation by design: they must never change an image.
EXEMPT = {
    "MatrixFile.schema_": "the yaml-language-server hint for editors",
    "BaseSpec.description": "a human-readable note shown by `imagegen base list`",
}


def _fields() -> set[str]:
    models = [matrix.MatrixFile, matrix.Defaults, matrix.Slimming, matrix.VersionEntry, matrix.CudaEntry,
              matrix.IncludeRule, matrix.ExcludeRule, matrix.OverrideRule, matrix.BudgetRule, matrix.Budget,
              matrix.IndexDef, compat.BaseSpec, compat.BaseRole]
    out = set()
    for model in models:
        own = set(model.model_fields)
        for parent in model.__mro__[1:]:
            if isinstance(parent, type) and issubclass(parent, BaseModel) and parent.__name__ in ("Selector", "Rule"):
                pass
        for name in own:
            owner = next(c for c in reversed(model.__mro__) if isinstance(c, type) and issubclass(c, BaseModel)
                         and name in getattr(c, "model_fields", {}) and c is not BaseModel)
            out.add(f"{owner.__name__}.{name}")
            out.add(f"{model.__name__}.{name}")
    return out


SLIM_KEYS = sorted(matrix.Slimming.model_fields)


def _covered(name: str) -> bool:
    model, _, field = name.partition(".")
    if model == "Slimming":
        return True  # each slimming key is mutated on its own below
    return name in MUTATIONS or name in EXEMPT or f"Selector.{field}" in MUTATIONS and model in (
        "ExcludeRule", "BudgetRule", "OverrideRule", "Rule")


def test_every_key_has_a_mutation():
    missing = sorted(n for n in _fields() if not _covered(n))
    assert not missing, f"keys with no takes-effect check here: {missing}"


def _write(tmp_path: Path, doc: dict, name: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return fingerprint(_write(tmp_path_factory.mktemp("keys"), BASE_DOC, "baseline"))


def _outcome(tmp_path, name, mutate, baseline):
    doc = copy.deepcopy(BASE_DOC)
    mutate(doc)
    path = _write(tmp_path, doc, name.replace(".", "-"))
    try:
        m = matrix.load(path)
    except UserInputError as exc:
        assert "\n" not in str(exc)
        return "error", str(exc)
    fp = fingerprint(path, m)
    return ("changed" if fp != baseline else "ignored"), fp


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_key_takes_effect_or_is_an_error(tmp_path, baseline, name):
    outcome, detail = _outcome(tmp_path, name, MUTATIONS[name], baseline)
    assert outcome != "ignored", f"{name}: accepted and ignored"


@pytest.mark.parametrize("key", SLIM_KEYS)
def test_every_slimming_key_takes_effect(tmp_path, baseline, key):
    default = matrix._slim_rules(matrix.load(_write(tmp_path, BASE_DOC, "b")), None, "slim").as_dict()[key]
    flipped = ("keep" if default == "drop" else "drop") if isinstance(default, str) else not default
    outcome, _ = _outcome(tmp_path, key, _set("overrides/0/slimming", {key: flipped}), baseline)
    assert outcome == "changed", f"slimming.{key}: {outcome}"
    # and it must reach the build: the rendered prune configuration differs
    doc = copy.deepcopy(BASE_DOC)
    _set("overrides/0/slimming", {key: flipped})(doc)
    fp = fingerprint(_write(tmp_path, doc, key))
    assert fp["render"] != baseline["render"], f"slimming.{key} does not reach the rendered build files"


def test_override_base_moves_the_cells(tmp_path):
    """The reported fault: `overrides: [{match: ..., base: X}]` did nothing (base was read as a selector)."""
    doc = copy.deepcopy(BASE_DOC)
    doc["overrides"].append({"match": "paddle:3.3.1-cpu-slim", "base": "corp"})
    m = matrix.load(_write(tmp_path, doc, "ovr"))
    cell = next(c for c in m.cells if c.ref == "paddle:3.3.1-cpu-slim")
    assert cell.base == "corp" and cell.base_spec.source == "registry"
    assert f"registry.corp/debian:bookworm-slim@{DIGEST}" in render_cell(m, cell).files["Dockerfile"]
    other = next(c for c in m.cells if c.ref == "paddle:2.6.2-cpu-slim")
    assert other.base == "bookworm"


def test_override_base_with_another_python_is_an_error(tmp_path):
    doc = copy.deepcopy(BASE_DOC)
    doc["bases"]["py312"] = {**copy.deepcopy(CORP), "python": "3.12"}
    doc["overrides"].append({"match": "paddle:3.3.1-cpu-slim", "base": "py312"})
    with pytest.raises(UserInputError, match="provides Python 3.12"):
        matrix.load(_write(tmp_path, doc, "py"))


@pytest.mark.parametrize("section,rule", [
    ("overrides", {"match": "nosuch:*", "slimming": {"strip": False}}),
    ("budgets", {"match": "nosuch:*", "size": "1GB"}),
    ("exclude", {"match": "nosuch:*", "reason": "x"}),
])
def test_rule_matching_no_cell_is_an_error(tmp_path, section, rule):
    doc = copy.deepcopy(BASE_DOC)
    doc[section].append(rule)
    with pytest.raises(UserInputError, match=f"this {section} rule matches no cell"):
        matrix.load(_write(tmp_path, doc, section))


def test_unused_index_is_an_error(tmp_path):
    doc = copy.deepcopy(BASE_DOC)
    doc["indexes"] = {"paddle-cu999": {"url": "https://mirror.example/x/"}}
    with pytest.raises(UserInputError, match="index 'paddle-cu999' is used by no cell"):
        matrix.load(_write(tmp_path, doc, "idx"))


def test_local_prefix_moves_only_engine_refs(tmp_path, monkeypatch):
    """IMAGEGEN_LOCAL_PREFIX (issue 9 item 3): tests build under their own prefix; the cell's name,
    selectors, labels and remote ref stay the same."""
    path = _write(tmp_path, BASE_DOC, "prefix")
    monkeypatch.setenv("IMAGEGEN_LOCAL_PREFIX", "imagegen-test/")
    m = matrix.load(path)
    cell = m.select(["paddle:3.3.1-cpu-slim"])[0]
    assert cell.ref == "paddle:3.3.1-cpu-slim" and cell.local_ref == "imagegen-test/paddle:3.3.1-cpu-slim"
    assert cell.remote_ref == "ghcr.io/imagegen/paddle:3.3.1-cpu-slim"
    assert "LABEL" in render_cell(m, cell).files["Dockerfile"]
    for bad in ("Imagegen-Test/", "imagegen-test", "a b/", "x;rm/"):
        monkeypatch.setenv("IMAGEGEN_LOCAL_PREFIX", bad)
        with pytest.raises(UserInputError, match="IMAGEGEN_LOCAL_PREFIX"):
            _ = cell.local_ref
    monkeypatch.delenv("IMAGEGEN_LOCAL_PREFIX")
    assert cell.local_ref == cell.ref
