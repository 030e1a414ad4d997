"""`imagegen publish` against Debian's real `docker-registry` on loopback: digest check, aliases,
immutable tags, test records, basic auth, and two faults (500s through a proxy; the registry killed
in mid-push). Images are tiny `docker import`s carrying the labels imagegen checks; every image and
registry here is created by the test and removed by it."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import tarfile
import uuid
from pathlib import Path

import docker.errors
import pytest
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from registry_fixture import FaultProxy, LocalRegistry  # noqa: E402

from imagegen import engine, publish, testrecord  # noqa: E402
from imagegen.build import LABEL_DIGEST  # noqa: E402
from imagegen.errors import ImagegenError  # noqa: E402
from imagegen.matrix import load  # noqa: E402
from imagegen.registry import ACCEPT, RetryPolicy  # noqa: E402

ROOT = HERE.parent.parent
FAST = RetryPolicy(attempts=3, backoff=0.05, max_delay=0.2)

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"),
                                reason="docker-registry missing: run scripts/setup.sh (apt-get install docker-registry)")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REGISTRY_USER", raising=False)
    monkeypatch.delenv("REGISTRY_TOKEN", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # no user credentials leak in
    return tmp_path / "cache"


@pytest.fixture
def errlog(monkeypatch):
    """What imagegen writes on stderr (its rich console holds the stream it was imported with)."""
    from imagegen import console

    buf = io.StringIO()
    monkeypatch.setattr(console.err, "file", buf)
    return buf


@pytest.fixture
def images():
    made: list[str] = []

    def make(payload: bytes | None = None) -> tuple[str, str]:
        """A one-layer image with imagegen's labels; returns (ref, image id)."""
        name = f"imagegen-test-pub-{uuid.uuid4().hex[:10]}"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = payload or os.urandom(64 * 1024)
            info = tarfile.TarInfo("payload.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        api = engine.api()
        api.import_image_from_data(buf.getvalue(), repository=name, tag="1.0.0-cpu-slim",
                                   changes=[f"LABEL {LABEL_DIGEST}=sha256:test imagegen.test=1"])
        ref = f"{name}:1.0.0-cpu-slim"
        made.append(api.inspect_image(ref)["Id"])
        return ref, made[-1]

    yield make
    api = engine.api()
    for image_id in made:
        try:
            api.remove_image(image_id, force=True)
        except docker.errors.APIError:
            pass


def _cell(ref: str, registry: str, aliases=("1.0-cpu-slim", "latest-cpu")):
    m = load(ROOT / "matrix.yaml")
    base = m.select(["onnxruntime:cpu-slim"])[0]
    image, tag = ref.split(":")
    return dataclasses.replace(base, image=image, tag=tag, aliases=tuple(aliases), registry=registry,
                               namespace="imagegen-test")


def _remote(registry: str, repo: str, ref: str, auth=None):
    r = requests.get(f"http://{registry}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT}, auth=auth,
                     timeout=10)
    return r


def _record(ref: str, image_id: str) -> None:
    testrecord.write(image_id, ref, "sha256:test", passed=3, skipped=0, seconds=1.0)


def test_publish_verifies_digest_moves_aliases_and_reruns_without_pushing(images, tmp_path):
    ref, image_id = images()
    _record(ref, image_id)
    with LocalRegistry() as reg:
        cell = _cell(ref, reg.host)
        (target,) = publish.plan([cell])
        report = tmp_path / "reports" / "publish.json"
        (done,) = publish.publish([target], retry=FAST, report=report)
        assert done.pushed and done.digest.startswith("sha256:")
        repo = f"imagegen-test/{cell.image}"
        for tag in (cell.tag, *cell.aliases):
            r = _remote(reg.host, repo, tag)
            assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == done.digest
        assert json.loads(_remote(reg.host, repo, cell.tag).content)["config"]["digest"] == image_id
        data = json.loads(report.read_text())
        (entry,) = data["images"]
        assert entry["ref"] == f"{reg.host}/{repo}:{cell.tag}" and entry["digest"] == done.digest
        assert entry["aliases"] == [f"{reg.host}/{repo}:{a}" for a in cell.aliases]
        assert 64 * 1024 < entry["compressed_size"] < 200 * 1024
        # the temporary remote-named tag is gone; the image stays
        with pytest.raises(docker.errors.ImageNotFound):
            engine.api().inspect_image(f"{reg.host}/{repo}:{cell.tag}")
        # rerun through a recording proxy: no push, no PUT of the immutable tag, aliases re-pointed
        with FaultProxy(reg.host) as proxy:
            (t2,) = publish.plan([_cell(ref, proxy.host)])
            (again,) = publish.publish([t2], retry=FAST, report=report)
        assert not again.pushed and again.digest == done.digest
        puts = [(m, p) for m, p, _ in proxy.log if m in ("PUT", "PATCH", "POST")]
        assert all("/manifests/1.0.0-cpu-slim" not in p and "/blobs/" not in p for _, p in puts), puts


def test_untested_image_is_refused_unless_forced(images, tmp_path, errlog):
    ref, image_id = images()
    with LocalRegistry() as reg:
        (target,) = publish.plan([_cell(ref, reg.host)])
        with pytest.raises(ImagegenError, match="no passing test record"):
            publish.publish([target], retry=FAST, report=tmp_path / "p.json")
        assert not (tmp_path / "p.json").exists()
        assert _remote(reg.host, target.repo, target.tag).status_code == 404
        (done,) = publish.publish([target], force=True, retry=FAST, report=tmp_path / "p.json")
        assert "--force: publishing" in errlog.getvalue() and not done.tested
        assert json.loads((tmp_path / "p.json").read_text())["images"][0]["tested"] is False


def test_immutable_tag_holding_another_image_is_refused(images, tmp_path):
    ref_a, id_a = images()
    _ref_b, id_b = images()
    _record(ref_a, id_a)
    _record(_ref_b, id_b)
    with LocalRegistry() as reg:
        a = _cell(ref_a, reg.host)
        (ta,) = publish.plan([a])
        (done,) = publish.publish([ta], retry=FAST, report=None)
        engine.api().tag(id_b, a.image, a.tag, force=True)  # the same cell, rebuilt into another image
        (tb,) = publish.plan([dataclasses.replace(a, aliases=("other",))])
        with pytest.raises(ImagegenError, match="already exists in the registry with another image"):
            publish.publish([tb], retry=FAST, report=None)
        assert _remote(reg.host, ta.repo, a.tag).headers["Docker-Content-Digest"] == done.digest
        assert _remote(reg.host, ta.repo, "other").status_code == 404  # no alias moved
        (forced,) = publish.publish([tb], force=True, retry=FAST, report=None)
        assert forced.digest != done.digest and forced.pushed
        assert _remote(reg.host, ta.repo, "other").headers["Docker-Content-Digest"] == forced.digest


def test_basic_auth_and_the_token_never_written(images, tmp_path, monkeypatch, capfd, cache, errlog):
    ref, image_id = images()
    _record(ref, image_id)
    token = f"tok-{uuid.uuid4().hex}"
    with LocalRegistry(htpasswd=("ci", token)) as reg:
        assert requests.get(f"http://{reg.host}/v2/", timeout=5).status_code == 401
        (target,) = publish.plan([_cell(ref, reg.host)])
        monkeypatch.setenv("REGISTRY_USER", "ci")
        monkeypatch.setenv("REGISTRY_TOKEN", "wrong-" + token)
        with pytest.raises(ImagegenError, match="(?i)unauthorized|authentication"):
            publish.publish([target], retry=FAST, report=tmp_path / "reports" / "publish.json")
        monkeypatch.setenv("REGISTRY_TOKEN", token)
        (done,) = publish.publish([target], retry=FAST, report=tmp_path / "reports" / "publish.json")
        r = _remote(reg.host, target.repo, "latest-cpu", auth=("ci", token))
        assert r.headers["Docker-Content-Digest"] == done.digest
        captured = capfd.readouterr()
    assert token not in captured.out + captured.err + errlog.getvalue()
    assert "pushing" in errlog.getvalue()
    for root in (tmp_path / "reports", cache):
        for f in root.rglob("*"):
            if f.is_file():
                assert token.encode() not in f.read_bytes(), f


def test_500s_through_a_proxy_are_retried_then_succeed(images, tmp_path, errlog):
    ref, image_id = images()
    _record(ref, image_id)
    with LocalRegistry() as reg:
        rules = [
            {"method": "PUT", "path": r"/manifests/1\.0\.0-cpu-slim$", "times": 1, "action": 500},  # engine push
            {"method": "GET", "path": r"/manifests/1\.0\.0-cpu-slim$", "times": 2, "action": 500},  # read-back
            {"method": "PUT", "path": r"/manifests/latest-cpu$", "times": 1, "action": 503},  # alias
        ]
        with FaultProxy(reg.host, rules) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host)])
            (done,) = publish.publish([target], retry=RetryPolicy(attempts=4, backoff=0.05),
                                      report=tmp_path / "publish.json")
        assert all(r["seen"] == r["times"] for r in proxy.rules), proxy.rules
        for tag in ("1.0.0-cpu-slim", "1.0-cpu-slim", "latest-cpu"):
            assert _remote(reg.host, target.repo, tag).headers["Docker-Content-Digest"] == done.digest
        assert "retrying" in errlog.getvalue()


def test_500s_beyond_the_retry_budget_fail_cleanly(images, tmp_path):
    ref, image_id = images()
    _record(ref, image_id)
    with LocalRegistry() as reg:
        rules = [{"method": "PUT", "path": r"/manifests/1\.0\.0-cpu-slim$", "times": 99, "action": 500}]
        with FaultProxy(reg.host, rules) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host)])
            with pytest.raises(ImagegenError, match="failed after 2 tries"):
                publish.publish([target], retry=RetryPolicy(attempts=2, backoff=0.05), report=tmp_path / "p.json")
        assert not (tmp_path / "p.json").exists()
        for tag in ("1.0.0-cpu-slim", "latest-cpu", "1.0-cpu-slim"):
            assert _remote(reg.host, target.repo, tag).status_code == 404


def test_registry_killed_mid_push_fails_cleanly_and_moves_no_alias(images, tmp_path):
    ref, image_id = images()
    _record(ref, image_id)
    reg = LocalRegistry().start()
    try:
        rules = [{"method": "PUT", "path": r"/manifests/1\.0\.0-cpu-slim$", "times": 1, "action": "kill"}]
        with FaultProxy(reg.host, rules, on_kill=reg.kill) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host)])
            with pytest.raises(ImagegenError, match="push of .* failed after 3 tries"):
                publish.publish([target], retry=FAST, report=tmp_path / "p.json")
        assert proxy.rules[0]["seen"] == 1
        assert not (tmp_path / "p.json").exists()
        reg.start()  # same storage: the immutable tag and the aliases are not there
        for tag in ("1.0.0-cpu-slim", "latest-cpu", "1.0-cpu-slim"):
            assert _remote(reg.host, target.repo, tag).status_code == 404
    finally:
        reg.stop()
