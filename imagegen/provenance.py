"""How an image was built: the build record imagegen keeps per image, and the SLSA v1 provenance
statement `publish` attaches to the pushed digest.

The **build record** (`BuildRecord`, schema `imagegen.build/1`) is written when a build succeeds, under
the image's config digest (`$IMAGEGEN_CACHE/builds/<hex>.json`, next to the test records): the inputs
(cell, inputs digest, lock and closure files with their sha256, the bases' refs and IDs, the git
revision, SOURCE_DATE_EPOCH) and how the build ran (BuildKit or the classic builder, the buildx builder,
BuildKit's version, the engine's version and image store, imagegen's version, the command, start and
end). An image built elsewhere has none; its provenance then says only what its labels say.

The **statement** is an in-toto Statement v1 (https://in-toto.io/Statement/v1) whose predicate is SLSA
Provenance v1 (https://slsa.dev/spec/v1.0/provenance): `buildDefinition` (buildType, externalParameters:
the cell and its source; internalParameters; resolvedDependencies: the source commit, the lock, the
closure, the bases) and `runDetails` (builder id and versions, start/end, byproducts: the inputs digest).
It is what a build system records, not a signed claim: signing is `signing`'s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import paths

SCHEMA = "imagegen.build/1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: what `buildType` names: imagegen's recipe for one matrix cell (docs/reproducible.md describes it)
BUILD_TYPE = "https://github.com/imagegen/imagegen/blob/main/docs/reproducible.md#build-type-v1"


@dataclass
class BuildRecord:
    """One successful build (see the module docstring). Digests are "sha256:<hex>"; times ISO 8601 UTC."""

    cell: str
    image_id: str
    config_digest: str
    inputs_digest: str
    revision: str
    source: str
    source_date_epoch: int
    lock: dict = field(default_factory=dict)  # {"path": "locks/<cell>.txt", "sha256": "<hex>"}
    closure: dict = field(default_factory=dict)  # {"packages": [...], "sha256": "<hex> of closure.txt"}
    bases: dict = field(default_factory=dict)  # {role: {"ref": ..., "id": "sha256:..."}}
    build_path: str = ""  # "buildkit" | "classic"
    builder: str | None = None
    buildkit_version: str | None = None
    engine: dict = field(default_factory=dict)  # {"version", "api", "image_store"}
    imagegen: str = ""
    command: list[str] = field(default_factory=list)
    started: str = ""
    finished: str = ""
    schema: str = SCHEMA


def builds_dir() -> Path:
    return paths.builds_dir()


def record_path(config_digest: str) -> Path:
    return builds_dir() / f"{config_digest.split(':', 1)[-1]}.json"


def write_record(rec: BuildRecord) -> Path:
    """Store `rec` under its config digest (atomic). Returns the path."""
    path = record_path(rec.config_digest)
    paths.write_json_atomic(path, asdict(rec), indent=1, sort_keys=True)
    return path


def read_record(config_digest: str) -> BuildRecord | None:
    """The build record of the image with this config digest, or None (none, unreadable, another schema)."""
    try:
        data = json.loads(record_path(config_digest).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("config_digest") != config_digest:
        return None
    known = {f for f in BuildRecord.__dataclass_fields__}
    return BuildRecord(**{k: v for k, v in data.items() if k in known})


def _hex(digest: str) -> dict:
    algo, _, value = digest.partition(":")
    return {algo: value} if value else {}


def statement(subject_name: str, subject_digest: str, labels: dict[str, str], record: BuildRecord | None
              ) -> dict:
    """The in-toto Statement (a dict, to be serialised as JSON) for the image `subject_name@subject_digest`
    (the pushed manifest), from its `labels` and, when there is one, its build `record`."""
    from . import labels as L

    source = (record.source if record else None) or labels.get(L.OCI_SOURCE, "")
    revision = (record.revision if record else None) or labels.get(L.OCI_REVISION, "unknown")
    deps: list[dict] = []
    if revision and revision != "unknown":
        commit = revision.removesuffix("-dirty")
        dep = {"uri": f"git+{source}@{commit}", "digest": {"gitCommit": commit}}
        if revision.endswith("-dirty"):
            dep["annotations"] = {"dirty": True}
        deps.append(dep)
    if record:
        if record.lock:
            deps.append({"name": "lock", "uri": record.lock.get("path", ""), "digest": {"sha256": record.lock["sha256"]}})
        if record.closure:
            deps.append({"name": "closure", "digest": {"sha256": record.closure["sha256"]},
                         "annotations": {"packages": record.closure.get("packages", [])}})
        for role, base in sorted(record.bases.items()):
            deps.append({"name": f"base:{role}", "uri": f"docker-image://{base.get('ref', '')}",
                         "digest": _hex(base.get("id", ""))})
    predicate = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "cell": (record.cell if record else None) or labels.get(L.LABEL_CELL, ""),
                "source": {"uri": source, "revision": revision},
            },
            "internalParameters": {
                "sourceDateEpoch": record.source_date_epoch if record else None,
                "buildPath": record.build_path if record else None,
            },
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {
                "id": f"{BUILD_TYPE.split('/blob/')[0]}/{(record.build_path if record else '') or 'unknown'}",
                "version": {k: v for k, v in {
                    "imagegen": record.imagegen if record else None,
                    "docker-engine": (record.engine or {}).get("version") if record else None,
                    "image-store": (record.engine or {}).get("image_store") if record else None,
                    "buildkit": record.buildkit_version if record else None,
                    "buildx-builder": record.builder if record else None,
                }.items() if v},
            },
            "metadata": {k: v for k, v in {
                "invocationId": record.inputs_digest if record else labels.get(L.LABEL_DIGEST),
                "startedOn": record.started if record else None,
                "finishedOn": record.finished if record else None,
            }.items() if v},
            "byproducts": [{"name": "inputs-digest", "digest": _hex(labels.get(L.LABEL_DIGEST, "") or
                                                                   (record.inputs_digest if record else ""))},
                           {"name": "config", "digest": _hex(record.config_digest)}] if record else [
                {"name": "inputs-digest", "digest": _hex(labels.get(L.LABEL_DIGEST, ""))}],
        },
    }
    if record and record.command:
        predicate["buildDefinition"]["externalParameters"]["command"] = record.command
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": _hex(subject_digest)}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
