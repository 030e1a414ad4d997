"""The build record (write/read keyed by config digest) and the SLSA v1 statement made from it or from
labels alone."""

from __future__ import annotations

import json

import pytest

from imagegen import provenance

pytestmark = pytest.mark.unit

CONFIG = "sha256:" + "c" * 64
LABELS = {"io.imagegen.cell": "onnxruntime:1.23.2-cpu-slim", "io.imagegen.inputs-digest": "sha256:" + "1" * 64,
          "org.opencontainers.image.revision": "abcdef0123456789abcdef0123456789abcdef01-dirty",
          "org.opencontainers.image.source": "https://github.com/imagegen/imagegen"}


def _record() -> provenance.BuildRecord:
    return provenance.BuildRecord(
        cell="onnxruntime:1.23.2-cpu-slim", image_id=CONFIG, config_digest=CONFIG, inputs_digest="sha256:" + "1" * 64,
        revision="abcdef0123456789abcdef0123456789abcdef01", source="https://github.com/imagegen/imagegen",
        source_date_epoch=1783764997, lock={"path": "locks/x.txt", "sha256": "2" * 64},
        closure={"packages": ["libstdc++6"], "sha256": "3" * 64},
        bases={"runtime": {"ref": "imagegen/base-bookworm-runtime:a588", "id": "sha256:" + "4" * 64},
               "builder": {"ref": "imagegen/base-bookworm-builder:6f28", "id": "sha256:" + "5" * 64}},
        build_path="classic", engine={"version": "20.10.24", "api": "1.41", "image_store": "graphdriver"},
        imagegen="0.1.0", command=["imagegen", "build", "--variant", "cpu-slim"], started="2026-12-07T20:00:00Z",
        finished="2026-12-07T20:01:00Z")


def test_record_round_trip_and_a_record_of_another_image_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    path = provenance.write_record(_record())
    assert path == tmp_path / "builds" / f"{'c' * 64}.json"
    assert provenance.read_record(CONFIG) == _record()
    data = json.loads(path.read_text())
    data["config_digest"] = "sha256:" + "d" * 64
    path.write_text(json.dumps(data))
    assert provenance.read_record(CONFIG) is None
    assert provenance.read_record("sha256:" + "e" * 64) is None


def test_statement_from_a_record_is_slsa_v1():
    st = provenance.statement("127.0.0.1:5000/imagegen/onnxruntime", "sha256:" + "a" * 64, LABELS, _record())
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": "127.0.0.1:5000/imagegen/onnxruntime", "digest": {"sha256": "a" * 64}}]
    bd, rd = st["predicate"]["buildDefinition"], st["predicate"]["runDetails"]
    assert bd["externalParameters"]["cell"] == "onnxruntime:1.23.2-cpu-slim"
    assert bd["internalParameters"] == {"sourceDateEpoch": 1783764997, "buildPath": "classic"}
    deps = {d.get("name") or d["uri"]: d for d in bd["resolvedDependencies"]}
    assert deps["git+https://github.com/imagegen/imagegen@abcdef0123456789abcdef0123456789abcdef01"]["digest"] == \
        {"gitCommit": "abcdef0123456789abcdef0123456789abcdef01"}
    assert deps["lock"]["digest"] == {"sha256": "2" * 64} and deps["base:runtime"]["digest"] == {"sha256": "4" * 64}
    assert rd["builder"]["version"]["docker-engine"] == "20.10.24" and rd["metadata"]["startedOn"]
    json.dumps(st)  # serialisable


def test_statement_from_labels_alone_says_what_they_say():
    st = provenance.statement("r/x", "sha256:" + "a" * 64, LABELS, None)
    (dep,) = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert dep["annotations"] == {"dirty": True} and dep["digest"]["gitCommit"].startswith("abcdef")
    assert st["predicate"]["runDetails"]["builder"]["id"].endswith("/unknown")
    assert st["predicate"]["runDetails"]["metadata"] == {"invocationId": "sha256:" + "1" * 64}
