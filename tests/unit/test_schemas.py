"""The published JSON Schemas (schemas/, matrix.schema.json): in step with the types that write the
documents, and real documents valid against them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from imagegen import publish, schemas, testrecord
from imagegen.provenance import BuildRecord

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(schemas.DOCUMENTS))
def test_committed_schema_is_generated(name):
    path = ROOT / schemas.DOCUMENTS[name][0]
    assert json.loads(path.read_text()) == schemas.schema(name), \
        f"{path} is stale: imagegen schema --of {name} -o {schemas.DOCUMENTS[name][0]}"


def test_a_publish_report_is_valid(tmp_path):
    rec = publish.Published(cell="paddle:3.3.1-cpu-slim", ref="r.example:5000/paddle:3.3.1-cpu-slim",
                            digest="sha256:" + "1" * 64, tag="3.3.1-cpu-slim", status="pushed", verified=True,
                            aliases=[publish.AliasResult(tag="3.3-cpu-slim", ref="r.example:5000/paddle:3.3-cpu-slim",
                                                         action="moved", digest="sha256:" + "1" * 64)],
                            attestations=[{"kind": "sbom", "digest": "sha256:" + "2" * 64, "where": "tag"}])
    path = tmp_path / "publish.json"
    publish.write_report(path, [rec], exit_code=0, options={"replace": False})
    TypeAdapter(schemas.PublishReport).validate_json(path.read_text())
    broken = json.loads(path.read_text())
    broken["images"][0]["surprise"] = 1  # a key the schema does not know: the schema must be updated
    with pytest.raises(ValidationError):
        TypeAdapter(schemas.PublishReport).validate_python(broken)


def test_records_are_valid():
    rec = testrecord.TestRecord(image_id="sha256:" + "a" * 64, cell="paddle:3.3.1-cpu-slim",
                                inputs_digest="sha256:" + "b" * 64, passed=20, skipped=3, seconds=41.5,
                                time="2026-12-07T23:00:00Z", config_digest="sha256:" + "a" * 64)
    TypeAdapter(testrecord.TestRecord).validate_json(json.dumps(asdict(rec)))
    build = BuildRecord(cell="paddle:3.3.1-cpu-slim", image_id="sha256:" + "a" * 64, config_digest="sha256:" + "a" * 64,
                        inputs_digest="sha256:" + "b" * 64, revision="abc", source="https://x", source_date_epoch=1)
    TypeAdapter(BuildRecord).validate_json(json.dumps(asdict(build)))


def test_committed_kernel_facts_are_valid():
    """Every locks/<cell>.cuda.json is a KernelFacts (schemas/kernel-facts.schema.json), strictly."""
    facts = sorted((ROOT / "locks").glob("*.cuda.json"))
    assert facts
    for path in facts:
        TypeAdapter(schemas.KernelFacts).validate_json(path.read_text(), strict=True)
