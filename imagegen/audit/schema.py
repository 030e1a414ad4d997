"""The shape of the audit report (`imagegen audit --json`, schema `imagegen.audit/1`) as typed
dictionaries: `analyze` returns an :class:`AuditReport`, and the terminal view, the HTML page, the
comparison and the gates read it. Sizes are bytes (int); seconds are float.

The JSON Schema published in `schemas/audit.schema.json` is generated from these types
(`imagegen schema --of audit`, imagegen.schemas), and tests validate real reports against them.
"""

from __future__ import annotations

from typing import Optional

from pydantic import ConfigDict, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic needs typing_extensions' TypedDict on < 3.12

#: every section is closed: a key the report gains must be added here (the schema says additionalProperties false)
_closed = with_config(ConfigDict(extra="forbid"))


@_closed
class Totals(TypedDict):
    engine_size: Optional[int]  # what the engine reports (None for a tarball)
    layers: int  # uncompressed layer content
    visible: int  # files a container sees
    files: int
    hidden: int  # bytes of files later layers delete or overwrite (still shipped)
    deleted: int
    overwritten: int
    duplicates: int  # bytes of identical copies beyond the first
    wasted: int  # hidden + duplicates
    compressed: Optional[int]  # gzip -6 of the layer tars (None when not computed)
    save_stream: Optional[int]


ColdStart = _closed(TypedDict("ColdStart", {"import": float, "first_inference": float}))


@_closed
class BytecodeRule(TypedDict):
    rule: str
    bytes: int
    shipped: bool
    cold_start_s: Optional[ColdStart]  # measured cost of dropping the bytecode, when measured
    measured: str
    text: str


@_closed
class Layer(TypedDict):
    index: int
    created_by: str
    created: str
    size: int
    tar_size: int
    compressed: Optional[int]
    files: int
    visible: int
    visible_files: int
    hidden_later: int
    deletes: int
    overwrites: int
    whiteouts: int
    diff_id: str


@_closed
class Category(TypedDict):
    name: str
    group: str
    bytes: int
    files: int
    rule: Optional[str]  # the slimming rule that removes it, if any
    label: str


@_closed
class Package(TypedDict):
    manager: str  # deb | pip | conda
    name: str
    version: str
    key: str
    bytes: int
    files: int
    location: str
    missing: int  # files the package database lists that are not in the image


@_closed
class PathBytes(TypedDict):
    path: str
    bytes: int


@_closed
class Unowned(TypedDict):
    bytes: int
    files: int
    top_files: list[PathBytes]
    top_dirs: list[PathBytes]


@_closed
class Hidden(TypedDict):
    path: str
    bytes: int
    added_in: int  # layer index
    hidden_by: int  # layer index
    reason: str  # deleted | overwritten


@_closed
class DuplicateGroup(TypedDict):
    bytes_each: int
    copies: int
    wasted: int
    digest: str
    paths: list[str]


@_closed
class Waste(TypedDict):
    hidden: int
    deleted: int
    overwritten: int
    top_hidden: list[Hidden]
    duplicates: int
    duplicate_groups: list[DuplicateGroup]


@_closed
class Elf(TypedDict):
    files: int
    unreadable: int
    debug: int
    cuda_kernels: int
    strippable: int


@_closed
class KernelLibrary(TypedDict):
    path: str
    fatbin_bytes: int
    containers: int
    compressed_bytes: int
    bytes: dict[str, int]  # per entry (sm_XX / compute_XX): its bytes
    embedded_bytes: int
    ships: list[str]  # sm_XX / compute_XX entries
    serves: list[str]  # the GPUs it runs on
    warning: Optional[str]


@_closed
class RunsOn(TypedDict):
    archs: list[str]
    libraries: int
    narrowing: dict[str, list[str]]
    feature_libraries: dict[str, list[str]]
    feature_gaps: dict[str, list[str]]  # sm_XX served -> feature libraries with no kernels there
    unreadable: dict[str, str]


@_closed
class NarrowerTarget(TypedDict):
    target: str
    kept: int
    saves: int


@_closed
class CudaKernels(TypedDict):
    total: int
    embedded_total: int
    label: str
    runs_on: RunsOn
    by_arch: dict[str, int]
    libraries: list[KernelLibrary]
    narrower_targets: list[NarrowerTarget]


@_closed
class TopFile(TypedDict):
    path: str
    bytes: int
    category: str
    package: str


@_closed
class Suggestion(TypedDict):
    rule: Optional[str]
    bytes: int
    text: str


@_closed
class SymlinkLoop(TypedDict):
    path: str
    chain: list[str]


@_closed
class AuditReport(TypedDict):
    schema: str  # "imagegen.audit/1"
    image: str
    id: str
    totals: Totals
    compressed_note: str
    compressed_mode: str
    bytecode_rule: BytecodeRule
    layers: list[Layer]
    categories: list[Category]
    category_groups: dict[str, int]
    hidden_by_category: dict[str, int]
    packages: list[Package]
    managers: dict[str, int]
    unowned: Unowned
    ownership_conflicts: int
    waste: Waste
    elf: Elf
    cuda_kernels: Optional[CudaKernels]
    top_files: list[TopFile]
    top_dirs: list[PathBytes]
    suggestions: list[Suggestion]
    problems: list[str]
    symlink_loops: list[SymlinkLoop]
    seconds: NotRequired[float]  # the audit's wall time (added by imagegen.audit.audit)

