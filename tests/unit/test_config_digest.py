"""Image identity by config digest (no engine): the save-stream reader of the containerd store's OCI
layout (`engine.config_digest_from_save`) on synthetic tars built here, the image ID -> config digest
index, `engine.config_digest` over a fake API, test records keyed by config digest (schema /2, /1
still read) and publish's `same_image`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import docker.errors
import pytest

from imagegen import engine, paths, publish, testrecord
from imagegen.audit.synth import write_oci_tar
from imagegen.errors import EngineError
from imagegen.registry import Manifest

pytestmark = pytest.mark.unit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER = 6_000_000  # over CONFIG_BLOB_MAX: never hashed, never kept


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(d: str) -> str:
    return "blobs/sha256/" + d.split(":", 1)[1]


def _config(arch: str = "amd64") -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {"imagegen.test": "1"}},
                       "rootfs": {"type": "layers", "diff_ids": []}}).encode()


def _manifest(config: bytes, layer_digest: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _d(config),
                                  "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                                   "size": LAYER}]}).encode()


def _index(entries: list[dict]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """An OCI-layout tar with exactly these members, in this order (the engine sorts blobs by digest,
    so any order can occur)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("blobs/sha256")
        ti.type = tarfile.DIRTYPE
        tf.addfile(ti)
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Chunks:
    """The save stream in chunks, counting what the reader pulled."""

    def __init__(self, data: bytes, size: int = 1 << 16):
        self.data, self.size, self.pulled = data, size, 0

    def __iter__(self):
        for i in range(0, len(self.data), self.size):
            self.pulled = min(len(self.data), i + self.size)
            yield self.data[i:i + self.size]


def _image(order: str, *, corrupt_config: bool = False):
    """(tar bytes, image ID, config digest) of a one-platform image whose blobs come in `order`:
    a string of c (config), l (layer), m (manifest)."""
    config = _config()
    layer = bytes(LAYER)
    man = _manifest(config, _d(layer))
    stored_config = config.replace(b"amd64", b"arm64") if corrupt_config else config
    blobs = {"c": (_blob(_d(config)), stored_config), "l": (_blob(_d(layer)), layer), "m": (_blob(_d(man)), man)}
    index = _index([{"mediaType": OCI_MANIFEST, "digest": _d(man), "size": len(man)}])
    return _tar([blobs[k] for k in order] + [("index.json", index), ("oci-layout", b"{}")]), _d(man), _d(config)


@pytest.mark.parametrize("order", ["clm", "lcm", "mlc", "cml", "mcl"])
def test_config_digest_from_the_save_stream_in_any_blob_order(order):
    data, image_id, config = _image(order)
    assert engine.config_digest_from_save(Chunks(data), image_id) == config


@pytest.mark.parametrize("order", ["cml", "mcl"])
def test_reading_stops_once_manifest_and_config_passed(order):
    data, image_id, config = _image(order)
    src = Chunks(data)
    assert engine.config_digest_from_save(src, image_id) == config
    assert 0 < src.pulled < len(data) - LAYER // 2  # the layer after both is (nearly all) never pulled
    clm, _, _ = _image("clm")  # the layer before the manifest: read through (unhashed)
    whole = Chunks(clm)
    assert engine.config_digest_from_save(whole, image_id) == config and whole.pulled > len(clm) - LAYER // 2


@pytest.mark.parametrize("order", ["clm", "mlc"])
def test_corrupt_config_blob_is_an_error(order):
    data, image_id, _ = _image(order, corrupt_config=True)
    with pytest.raises(EngineError, match=r"corrupt: its config blob sha256:\w+… does not match its digest") as exc:
        engine.config_digest_from_save(Chunks(data), image_id, what="img:1")
    assert "img:1" in str(exc.value) and "\n" not in str(exc.value)


def test_config_over_the_small_blob_size_is_verified_only_after_its_manifest():
    """A config of 5 MB (a long history) is hashed when the manifest named it first; read before its
    manifest it passed unhashed (it could have been a layer), which is said, not guessed."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "history": [{"comment": "x" * 5_000_000}]}).encode()
    assert len(config) > engine.CONFIG_BLOB_MAX
    man = _manifest(config, _d(b"layer"))
    after = _tar([(_blob(_d(man)), man), (_blob(_d(config)), config)])
    assert engine.config_digest_from_save(Chunks(after), _d(man)) == _d(config)
    corrupt = _tar([(_blob(_d(man)), man), (_blob(_d(config)), config.replace(b"amd64", b"arm64"))])
    with pytest.raises(EngineError, match="does not match its digest"):
        engine.config_digest_from_save(Chunks(corrupt), _d(man))
    before = _tar([(_blob(_d(config)), config), (_blob(_d(man)), man)])
    with pytest.raises(EngineError, match=r"too large to have been checked \(5\d{6} bytes, read before its manifest\)"):
        engine.config_digest_from_save(Chunks(before), _d(man))


def test_missing_manifest_config_or_truncated_stream_is_an_error():
    data, image_id, _ = _image("clm")
    with pytest.raises(EngineError, match=r"no manifest for it: blob sha256:\w+… is missing"):
        engine.config_digest_from_save(Chunks(data), "sha256:" + "e" * 64)
    no_config, image_id2, _ = _image("lm")
    with pytest.raises(EngineError, match=r"its config blob sha256:\w+… is missing"):
        engine.config_digest_from_save(Chunks(no_config), image_id2)
    with pytest.raises(EngineError, match=r"truncated or not a tar archive|is missing"):
        engine.config_digest_from_save(Chunks(data[:LAYER // 2]), image_id)
    with pytest.raises(ValueError):
        engine.config_digest_from_save(Chunks(data), "8e4b11f5")


def test_tampered_manifest_is_not_trusted():
    """The blob named by the image ID must hash to it: a manifest naming another config is refused."""
    _, image_id, _ = _image("clm")
    other = _config("riscv64")
    bad = _manifest(other, "sha256:" + "1" * 64)
    tampered = _tar([(_blob(_d(other)), other), (_blob(image_id), bad)])
    with pytest.raises(EngineError, match="does not match its digest"):
        engine.config_digest_from_save(Chunks(tampered), image_id)


def _multi_platform(children_first: bool):
    """An image ID that is an index (Docker 26+ keeps buildx's), nested once more, with amd64 and
    arm64 manifests and a BuildKit attestation manifest (platform unknown/unknown)."""
    layer = bytes(LAYER)
    cfg = {a: _config(a) for a in ("amd64", "arm64")}
    mans = {a: _manifest(cfg[a], _d(layer)) for a in cfg}
    att_cfg = b'{"architecture":"unknown","os":"unknown"}'
    att = _manifest(att_cfg, _d(layer))
    entries = [{"mediaType": OCI_MANIFEST, "digest": _d(att), "size": len(att),
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                "platform": {"os": "unknown", "architecture": "unknown"}}]
    entries += [{"mediaType": OCI_MANIFEST, "digest": _d(mans[a]), "size": len(mans[a]),
                 "platform": {"os": "linux", "architecture": a}} for a in ("arm64", "amd64")]
    inner = _index(entries)
    outer = _index([{"mediaType": OCI_INDEX, "digest": _d(inner), "size": len(inner)}])
    children = [(_blob(_d(c)), c) for c in (att_cfg, att, *cfg.values(), *mans.values())]
    parents = [(_blob(_d(inner)), inner), (_blob(_d(outer)), outer)]
    blobs = children + parents if children_first else parents[::-1] + children
    members = [(_blob(_d(layer)), layer), *blobs, ("index.json", _index([{"mediaType": OCI_INDEX,
                                                                          "digest": _d(outer)}]))]
    return _tar(members), _d(outer), {a: _d(c) for a, c in cfg.items()}, {a: _d(m) for a, m in mans.items()}


@pytest.mark.parametrize("children_first", [True, False])
def test_nested_index_leads_to_the_platforms_manifest(children_first):
    data, image_id, configs, manifests = _multi_platform(children_first)
    assert engine.config_digest_from_save(Chunks(data), image_id) == configs["amd64"]
    assert engine.config_digest_from_save(Chunks(data), image_id, platform=("linux", "arm64")) == configs["arm64"]
    # no manifest of the platform: the first image manifest the stream holds (index order)
    assert engine.config_digest_from_save(Chunks(data), image_id, platform=("linux", "s390x")) == configs["arm64"]
    # only the attestation left in the stream: never taken for the image
    stripped = _tar([m for m in tarfile_members(data) if m[0] not in {_blob(d) for d in manifests.values()}])
    with pytest.raises(EngineError, match=r"has no linux/amd64 image in index sha256:\w+…"):
        engine.config_digest_from_save(Chunks(stripped), image_id)


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf if m.isreg()]


def test_reads_the_audits_synthetic_oci_layout_too(tmp_path):
    """A PAX-format OCI layout from another writer (imagegen.audit.synth), nested index included."""
    buf = io.BytesIO()
    config = write_oci_tar(buf, [[("file", "/a", b"x" * 100, 100)]], nested_index=True)
    members = dict(tarfile_members(buf.getvalue()))
    image_id = json.loads(members["index.json"])["manifests"][0]["digest"]
    assert engine.config_digest_from_save(Chunks(buf.getvalue()), image_id) == _d(json.dumps(config).encode())


# --- the index and engine.config_digest --------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_index_remembers_evicts_oldest_and_survives_a_bad_file(cache, monkeypatch):
    ids = ["sha256:" + c * 64 for c in "0123"]
    cfg = ["sha256:" + c * 64 for c in "abcd"]
    assert engine.known_config_digest(ids[0]) is None
    engine.remember_config_digest(ids[0], cfg[0])
    assert engine.known_config_digest(ids[0]) == cfg[0]
    assert paths.config_digest_index().parent == cache and paths.config_digest_index().is_file()
    monkeypatch.setattr(engine, "CONFIG_INDEX_MAX", 3)
    for i, c in zip(ids[1:], cfg[1:], strict=True):
        engine.remember_config_digest(i, c)
    assert [engine.known_config_digest(i) for i in ids] == [None, *cfg[1:]]
    with pytest.raises(ValueError):
        engine.remember_config_digest("img:latest", cfg[0])
    with pytest.raises(ValueError):
        engine.remember_config_digest(ids[0], "sha256:abc")
    paths.config_digest_index().write_text("{not json")
    assert engine.known_config_digest(ids[1]) is None
    engine.remember_config_digest(ids[1], cfg[1])
    assert engine.known_config_digest(ids[1]) == cfg[1]


class FakeAPI:
    """inspect_image and get_image of an engine holding one image (saved as `data`)."""

    def __init__(self, image_id: str, data: bytes):
        self.image_id, self.data, self.saves, self.closed = image_id, data, 0, 0

    def inspect_image(self, ref):
        if ref not in ("img:1", self.image_id):
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return {"Id": self.image_id, "Os": "linux", "Architecture": "amd64"}

    def get_image(self, ref, chunk_size=None):
        assert ref == self.image_id
        self.saves += 1
        api = self

        def gen():
            try:
                yield from Chunks(api.data)
            finally:
                api.closed += 1

        return gen()


@pytest.mark.parametrize("store", ["containerd", "graphdriver"])
def test_config_digest_reads_the_save_stream_once_then_the_index(cache, monkeypatch, store):
    data, image_id, config = _image("cml")
    fake = FakeAPI(image_id, data)
    monkeypatch.setattr(engine, "api", lambda: fake)
    monkeypatch.setattr(engine, "current", lambda: engine.EngineInfo("26.1.5", "1.45", "overlayfs", store))
    if store == "graphdriver":  # the image ID is the config digest: no save stream
        assert engine.config_digest("img:1") == image_id and fake.saves == 0
        return
    assert engine.config_digest("img:1") == config and fake.saves == 1 and fake.closed == 1
    assert engine.known_config_digest(image_id) == config
    assert engine.config_digest(image_id) == config and fake.saves == 1  # from the index
    with pytest.raises(EngineError, match=r"^no image other:2 in the engine at \S+$"):
        engine.config_digest("other:2")


def test_current_describes_each_engine_once(monkeypatch):
    calls = []

    class Client:
        def info(self):
            calls.append("info")
            return {"Driver": "overlayfs", "DriverStatus": [["driver-type", engine.CONTAINERD_SNAPSHOTTER]]}

        def version(self):
            return {"Version": "26.1.5", "ApiVersion": "1.45"}

    monkeypatch.setattr(engine, "client", lambda: Client())
    monkeypatch.setattr(engine, "_DESCRIBED", {})
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/nowhere-a.sock")
    assert engine.current().image_store == "containerd" and engine.current().api_version == "1.45"
    assert calls == ["info"]
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/nowhere-b.sock")
    engine.current()
    assert calls == ["info", "info"]


# --- test records by config digest, publish's identity -----------------------------------------------


def test_test_record_follows_the_config_digest_not_the_image_id(cache, monkeypatch):
    """Containerd store: two image IDs (manifest digests) of one config share its record; the record
    keeps the ID it was written for."""
    mid, mid2, cfg = ("sha256:" + c * 64 for c in "12c")
    other = "sha256:" + "f" * 64
    monkeypatch.setattr(engine, "config_digest", {mid: cfg, mid2: cfg, other: other}.__getitem__)
    assert testrecord.find(mid) is None
    rec = testrecord.write(mid, "paddle:3.3.1-cpu-slim", "sha256:in", passed=3, skipped=0, seconds=2.0)
    assert rec.config_digest == cfg and rec.image_id == mid
    assert testrecord.path_for(cfg).is_file() and not testrecord.path_for(mid).exists()
    assert testrecord.find(mid) == rec and testrecord.find(mid2) == rec and testrecord.find_by_config(cfg) == rec
    assert testrecord.find(other) is None
    data = json.loads(testrecord.path_for(cfg).read_text())
    assert data["schema"] == "imagegen.test-record/2" and data["config_digest"] == cfg and data["image_id"] == mid
    testrecord.path_for(other).write_text(json.dumps(data))  # copied under another digest: not trusted
    assert testrecord.find(other) is None


def test_schema_1_record_is_read_by_its_image_id_as_config_digest(cache, monkeypatch):
    iid, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    monkeypatch.setattr(engine, "config_digest", lambda image: image)
    v1 = {"schema": "imagegen.test-record/1", "image_id": iid, "cell": "paddle:3.3.1-cpu-slim",
          "inputs_digest": "sha256:in", "passed": 24, "skipped": 1, "seconds": 31.0, "time": "2025-01-01T00:00:00Z",
          "imagegen": "0.1.0"}
    testrecord.path_for(iid).parent.mkdir(parents=True)
    testrecord.path_for(iid).write_text(json.dumps(v1))
    rec = testrecord.find(iid)
    assert rec is not None and rec.passed == 24 and rec.config_digest == iid and rec.schema == "imagegen.test-record/1"
    testrecord.path_for(other).write_text(json.dumps(v1))  # a /1 record holds only for its own image ID
    assert testrecord.find(other) is None
    testrecord.path_for(iid).write_text(json.dumps({**v1, "schema": "imagegen.test-record/9"}))
    assert testrecord.find(iid) is None


def test_same_image_compares_config_digests_only():
    cfg = "sha256:" + "c" * 64
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
                      "layers": []}).encode()
    m = Manifest(digest=_d(raw), media_type=OCI_MANIFEST, raw=raw)
    assert publish.same_image(m, cfg)
    assert not publish.same_image(m, m.digest)  # the manifest digest (a containerd image ID) is not the config
    assert not publish.same_image(m, "sha256:" + "d" * 64)
    idx = _index([])
    assert not publish.same_image(Manifest(digest=_d(idx), media_type=OCI_INDEX, raw=idx), cfg)
