"""The JSON Schemas of the documents imagegen writes for other programs: the matrix it reads, the audit
report (`audit --json`), and the reports of a release (`reports/publish.json`, `reports/scan-<cell>.json`,
test records and build records under the cache). Generated from the types that write them (pydantic),
committed under `schemas/` (the matrix's as `matrix.schema.json`), kept in step by a unit test, and
printed by `imagegen schema --of NAME`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from pydantic import ConfigDict, TypeAdapter, with_config
from typing_extensions import TypedDict

from .errors import UserInputError
from .provenance import BuildRecord
from .publish import AliasResult
from .sbomfilter import Dropped
from .secretscan import Secret
from .testrecord import TestRecord
from .trivy import Finding
from .vulndb import DbInfo

BASE_ID = "https://github.com/imagegen/imagegen/schemas/"

_closed = with_config(ConfigDict(extra="forbid"))


@_closed
class PublishOptions(TypedDict, total=False):
    skip_test_check: bool
    replace: bool
    allow_alias_downgrade: bool


@_closed
class PublishedImage(TypedDict):
    """One target of `reports/publish.json` (publish.Published, without `dry_run`)."""
    cell: str
    ref: str
    digest: Optional[str]
    aliases: list[AliasResult]
    compressed_size: Optional[int]
    image_id: str
    config_digest: Optional[str]
    local_config_digest: str
    pushed: bool
    tested: bool
    tag: str
    status: str
    verified: bool
    media_type: Optional[str]
    attempts: int
    error: Optional[str]
    previous: Optional[str]
    image_digest: Optional[str]
    attestations: list[dict[str, Any]]
    signature: Optional[str]


@_closed
class PublishReport(TypedDict):
    """`reports/publish.json` (schema imagegen.publish/2; publish.write_report)."""
    schema: str
    time: str
    exit_code: int
    error: Optional[str]
    options: PublishOptions
    images: list[PublishedImage]


@_closed
class SecretAllowEntry(TypedDict):
    file: str
    entry: str
    rule: Optional[str]
    path: Optional[str]
    reason: str
    expires: str


@_closed
class UnusedIgnore(TypedDict):
    id: str
    reason: str
    expires: str
    package: Optional[str]


@_closed
class ScanReport(TypedDict):
    """`reports/scan-<cell>.json` (trivy.CellScan.as_dict); the vulnerability keys are null under --no-vuln."""
    image: str
    target: str
    image_id: Optional[str]
    sbom: Optional[str]
    os: Optional[str]
    packages: dict[str, int]
    dropped: list[Dropped]
    secrets: list[Secret]
    secret_allow_expired: list[SecretAllowEntry]
    secret_allow_unused: list[SecretAllowEntry]
    vulnerabilities: Optional[list[Finding]]
    vulnerabilities_dropped: Optional[list[Finding]]
    unused_ignores: Optional[list[UnusedIgnore]]
    vuln_db: Optional[DbInfo]
    problems: list[str]
    warnings: list[str]


@_closed
class LibraryFacts(TypedDict):
    """The CUDA kernels of one library in a wheel (gpu_archs.library_facts): sizes in bytes, counts of
    fat-binary containers, per entry name (sm_XX, compute_XX, lto_XX); `kept_bytes`: what the `.nv_fatbin`
    keeps when pruned to one GPU; the empty dicts and `warning` for a library that could not be read."""
    path: str
    wheel: str
    size: int
    fatbin_bytes: int
    containers: int
    kernel_containers: int
    embedded_bytes: int
    embedded_containers: int
    embedded_kernel_containers: int
    embedded_bytes_by_arch: dict[str, int]
    embedded_containers_by_arch: dict[str, int]
    compressed_bytes: int
    bytes: dict[str, int]
    containers_by_arch: dict[str, int]
    kept_bytes: dict[str, int]
    warning: Optional[str]


@_closed
class WheelFacts(TypedDict):
    sha256: str
    libraries: list[LibraryFacts]


@_closed
class KernelFacts(TypedDict):
    """locks/<cell>.cuda.json (format 2; gpu_archs.lock_facts): the kernel facts of a lock's wheels, by pin."""
    format: int
    cell: str
    generated_by: str
    scanned: list[str]  # sha256 of every binary wheel scanned, with kernels or not
    wheels: dict[str, WheelFacts]


def _matrix() -> dict:
    from .matrix import json_schema

    return json_schema()


def _audit() -> dict:
    from .audit.schema import AuditReport

    return TypeAdapter(AuditReport).json_schema()


def _of(t: Any) -> Callable[[], dict]:
    return lambda: TypeAdapter(t).json_schema()


#: name -> (file under the repository, title, generator)
DOCUMENTS: dict[str, tuple[str, str, Callable[[], dict]]] = {
    "matrix": ("matrix.schema.json", "", _matrix),
    "audit": ("schemas/audit.schema.json", "imagegen audit --json (imagegen.audit/1)", _audit),
    "publish-report": ("schemas/publish-report.schema.json", "reports/publish.json (imagegen.publish/2)",
                       _of(PublishReport)),
    "scan-report": ("schemas/scan-report.schema.json", "reports/scan-<cell>.json", _of(ScanReport)),
    "kernel-facts": ("schemas/kernel-facts.schema.json", "locks/<cell>.cuda.json (format 2)", _of(KernelFacts)),
    "test-record": ("schemas/test-record.schema.json", "test record (imagegen.test-record/2)",
                    _of(TestRecord)),
    "build-record": ("schemas/build-record.schema.json", "build record (imagegen.build/1)",
                     _of(BuildRecord)),
}


def schema(name: str) -> dict:
    """The JSON Schema of document `name` (a key of DOCUMENTS). UserInputError for another name."""
    if name not in DOCUMENTS:
        raise UserInputError(f"no schema {name!r}; known: {', '.join(DOCUMENTS)}")
    path, title, make = DOCUMENTS[name]
    doc = make()
    if name != "matrix":  # the matrix's keeps the $id and title it has always had
        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": BASE_ID + path.split("/")[-1],
               "title": title, **{k: v for k, v in doc.items() if k != "title"}}
    return doc
