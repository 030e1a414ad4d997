"""`imagegen publish` against Debian's real `docker-registry` on loopback: digest check, aliases,
immutable tags, test records, basic auth, and registry faults through tests/engine/fault_proxy.py: 500s,
the registry killed in mid-push, a blob commit acknowledged but never stored, a 429, a denied alias PUT,
and SIGTERM/Ctrl-C in mid-push. Images are tiny `docker import`s carrying the labels imagegen checks;
every image and registry here is created by the test and removed by it."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
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
from fault_proxy import Fault, FaultProxy  # noqa: E402
from registry_fixture import LocalRegistry  # noqa: E402

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

    def make(payload: bytes | None = None, *, tag: str = "1.0.0-cpu-slim", labels: dict | None = None,
             name: str | None = None) -> tuple[str, str]:
        """A one-layer image with imagegen's labels (and `labels`); returns (ref, image id)."""
        name = name or f"imagegen-test-pub-{uuid.uuid4().hex[:10]}"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = payload or os.urandom(64 * 1024)
            info = tarfile.TarInfo("payload.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        api = engine.api()
        extra = "".join(f" {k}={v}" for k, v in (labels or {}).items())
        api.import_image_from_data(buf.getvalue(), repository=name, tag=tag,
                                   changes=[f"LABEL {LABEL_DIGEST}=sha256:test imagegen.test=1{extra}"])
        ref = f"{name}:{tag}"
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
        assert [a["ref"] for a in entry["aliases"]] == [f"{reg.host}/{repo}:{a}" for a in cell.aliases]
        assert [(a["action"], a["digest"], a["previous"]) for a in entry["aliases"]] == [("moved", done.digest, None)] * 2
        assert (data["schema"], data["exit_code"], data["error"]) == ("imagegen.publish/2", 0, None)
        assert (entry["status"], entry["verified"], entry["attempts"], entry["tag"]) == ("pushed", True, 1, cell.tag)
        assert entry["config_digest"] == image_id and entry["media_type"].startswith("application/vnd.")
        assert 64 * 1024 < entry["compressed_size"] < 200 * 1024
        # the temporary remote-named tag is gone; the image stays
        with pytest.raises(docker.errors.ImageNotFound):
            engine.api().inspect_image(f"{reg.host}/{repo}:{cell.tag}")
        # rerun through a recording proxy: no push, no PUT of the immutable tag, aliases re-pointed
        with FaultProxy(reg.host) as proxy:
            (t2,) = publish.plan([_cell(ref, proxy.host)])
            # (evidence names the registry: through the proxy's host it would be new; see the evidence tests)
            (again,) = publish.publish([t2], retry=FAST, report=report, evidence=())
        assert not again.pushed and again.digest == done.digest
        puts = [(e.method, e.path) for e in proxy.log if e.method in ("PUT", "PATCH", "POST")]
        assert puts == [], puts  # the immutable tag is there, and so are the aliases: nothing is written
        (entry,) = json.loads(report.read_text())["images"]
        assert entry["status"] == "exists" and entry["attempts"] == 0 and entry["verified"]
        assert [a["action"] for a in entry["aliases"]] == ["unchanged", "unchanged"]
        assert [a["previous"] for a in entry["aliases"]] == [done.digest, done.digest]


def test_untested_image_is_refused_unless_skip_test_check(images, tmp_path, errlog):
    ref, image_id = images()
    with LocalRegistry() as reg:
        (target,) = publish.plan([_cell(ref, reg.host)])
        with pytest.raises(ImagegenError, match="no passing test record"):
            publish.publish([target], retry=FAST, report=tmp_path / "p.json")
        data = json.loads((tmp_path / "p.json").read_text())  # the refusal is recorded
        assert data["exit_code"] == 1 and "no passing test record" in data["error"]
        (entry,) = data["images"]
        assert (entry["status"], entry["image_id"], entry["digest"], entry["attempts"]) == ("refused", image_id, None, 0)
        assert "no passing test record" in entry["error"] and entry["aliases"] == []
        assert _remote(reg.host, target.repo, target.tag).status_code == 404
        (done,) = publish.publish([target], skip_test_check=True, retry=FAST, report=tmp_path / "p.json")
        assert "--skip-test-check: publishing" in errlog.getvalue() and not done.tested
        data = json.loads((tmp_path / "p.json").read_text())
        assert data["images"][0]["tested"] is False and data["images"][0]["status"] == "pushed"
        assert data["options"]["skip_test_check"] is True and data["exit_code"] == 0


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
        report = tmp_path / "p.json"
        # --skip-test-check is no licence to replace a released tag
        for kw in ({}, {"skip_test_check": True}):
            with pytest.raises(ImagegenError, match="already exists in the registry with another image"):
                publish.publish([tb], retry=FAST, report=report, **kw)
            data = json.loads(report.read_text())
            (entry,) = data["images"]
            assert (entry["status"], entry["digest"], entry["previous"]) == ("conflict", done.digest, done.digest)
            assert entry["image_id"] == id_b and data["exit_code"] == 1 and "--replace" in data["error"]
            assert _remote(reg.host, ta.repo, a.tag).headers["Docker-Content-Digest"] == done.digest
            assert _remote(reg.host, ta.repo, "other").status_code == 404  # no alias moved
        (replaced,) = publish.publish([tb], replace=True, retry=FAST, report=report)
        assert replaced.digest != done.digest and replaced.pushed
        assert _remote(reg.host, ta.repo, a.tag).headers["Docker-Content-Digest"] == replaced.digest
        assert _remote(reg.host, ta.repo, "other").headers["Docker-Content-Digest"] == replaced.digest
        (entry,) = json.loads(report.read_text())["images"]
        assert (entry["status"], entry["previous"], entry["digest"]) == ("pushed", done.digest, replaced.digest)


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
        faults = [
            Fault("PUT", r"/manifests/1\.0\.0-cpu-slim$", status=500),  # engine push
            Fault("GET", r"/manifests/1\.0\.0-cpu-slim$", status=500, times=2),  # read-back
            Fault("PUT", r"/manifests/latest-cpu$", status=503, code="UNAVAILABLE"),  # alias
        ]
        with FaultProxy(reg.host, faults) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host)])
            (done,) = publish.publish([target], retry=RetryPolicy(attempts=4, backoff=0.05),
                                      report=tmp_path / "publish.json")
        assert [f.fired for f in faults] == [1, 2, 1], faults
        for tag in ("1.0.0-cpu-slim", "1.0-cpu-slim", "latest-cpu"):
            assert _remote(reg.host, target.repo, tag).headers["Docker-Content-Digest"] == done.digest
        assert "retrying" in errlog.getvalue()


def test_500s_beyond_the_retry_budget_fail_cleanly(images, tmp_path):
    ref, image_id = images()
    _record(ref, image_id)
    with LocalRegistry() as reg:
        faults = [Fault("PUT", r"/manifests/1\.0\.0-cpu-slim$", status=500, times=99)]
        with FaultProxy(reg.host, faults) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host)])
            with pytest.raises(ImagegenError, match="failed after 2 tries"):
                publish.publish([target], retry=RetryPolicy(attempts=2, backoff=0.05), report=tmp_path / "p.json")
        data = json.loads((tmp_path / "p.json").read_text())
        (entry,) = data["images"]
        assert data["exit_code"] == 1 and "failed after 2 tries" in data["error"]
        assert (entry["status"], entry["attempts"], entry["verified"], entry["aliases"]) == ("failed", 2, False, [])
        assert "failed after 2 tries" in entry["error"]
        for tag in ("1.0.0-cpu-slim", "latest-cpu", "1.0-cpu-slim"):
            assert _remote(reg.host, target.repo, tag).status_code == 404


def test_registry_killed_mid_push_fails_cleanly_and_moves_no_alias(images, tmp_path):
    ref, image_id = images()
    _record(ref, image_id)
    reg = LocalRegistry().start()
    try:
        kill = Fault("PUT", r"/manifests/1\.0\.0-cpu-slim$", status="kill")
        with FaultProxy(reg.host, [kill], on_kill=reg.kill) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host)])
            with pytest.raises(ImagegenError, match="push of .* failed after 3 tries"):
                publish.publish([target], retry=FAST, report=tmp_path / "p.json")
        assert kill.fired == 1 and len(proxy.requests("PUT", r"/manifests/1\.0\.0-cpu-slim$")) == 1
        data = json.loads((tmp_path / "p.json").read_text())
        assert data["exit_code"] == 1 and data["images"][0]["status"] == "failed"
        assert data["images"][0]["attempts"] == 3 and data["images"][0]["digest"] is None
        reg.start()  # same storage: the immutable tag and the aliases are not there
        for tag in ("1.0.0-cpu-slim", "latest-cpu", "1.0-cpu-slim"):
            assert _remote(reg.host, target.repo, tag).status_code == 404
    finally:
        reg.stop()


# --- the report of every run, alias versions -------------------------------------------------------


VERSION = "io.imagegen.framework.version"


def _digest(registry: str, repo: str, tag: str) -> str | None:
    r = _remote(registry, repo, tag)
    return r.headers["Docker-Content-Digest"] if r.status_code == 200 else None


def test_alias_never_moves_to_an_older_version_unless_allowed(images, tmp_path, errlog):
    name = f"imagegen-test-pub-{uuid.uuid4().hex[:10]}"
    new_ref, new_id = images(tag="3.3.1-cpu-slim", labels={VERSION: "3.3.1"}, name=name)
    old_ref, old_id = images(tag="2.6.2-cpu-slim", labels={VERSION: "2.6.2"}, name=name)
    _record(new_ref, new_id)
    _record(old_ref, old_id)
    report = tmp_path / "publish.json"
    with LocalRegistry() as reg:
        (t_new,) = publish.plan([_cell(new_ref, reg.host, aliases=("latest-cpu",))])
        (t_old,) = publish.plan([_cell(old_ref, reg.host, aliases=("latest-cpu",))])
        (new,) = publish.publish([t_new], retry=FAST, report=report)
        assert _digest(reg.host, t_new.repo, "latest-cpu") == new.digest
        # the matrix no longer lists 3.3.1: publishing 2.6.2 keeps latest-cpu on 3.3.1, and says why
        with FaultProxy(reg.host) as proxy:
            (t_old_p,) = publish.plan([_cell(old_ref, proxy.host, aliases=("latest-cpu",))])
            (old,) = publish.publish([t_old_p], retry=FAST, report=report)
        assert old.pushed and _digest(reg.host, t_old.repo, "2.6.2-cpu-slim") == old.digest != new.digest
        assert _digest(reg.host, t_old.repo, "latest-cpu") == new.digest
        assert proxy.requests("PUT", r"/manifests/latest-cpu$") == []
        assert len(proxy.requests("GET", r"/manifests/latest-cpu$")) == 1
        assert len(proxy.requests("GET", rf"/blobs/{new_id}$")) == 1  # the current target's config, for its version
        data = json.loads(report.read_text())
        (alias,) = data["images"][0]["aliases"]
        assert (alias["action"], alias["digest"], alias["previous"]) == ("skipped", old.digest, new.digest)
        assert (alias["version"], alias["previous_version"]) == ("2.6.2", "3.3.1")
        assert "newer than 2.6.2" in alias["reason"] and "--allow-alias-downgrade" in alias["reason"]
        assert data["exit_code"] == 0 and data["images"][0]["status"] == "pushed"
        assert "latest-cpu holds 3.3.1" in errlog.getvalue()
        # asked for: it moves back, and the report says from what
        (again,) = publish.publish([t_old], allow_alias_downgrade=True, retry=FAST, report=report)
        assert not again.pushed and _digest(reg.host, t_old.repo, "latest-cpu") == old.digest
        (alias,) = json.loads(report.read_text())["images"][0]["aliases"]
        assert (alias["action"], alias["previous"], alias["previous_version"]) == ("moved", new.digest, "3.3.1")
        # forward is always allowed
        publish.publish([t_new], retry=FAST, report=report)
        assert _digest(reg.host, t_new.repo, "latest-cpu") == new.digest
        (alias,) = json.loads(report.read_text())["images"][0]["aliases"]
        assert (alias["action"], alias["previous"], alias["previous_version"]) == ("moved", old.digest, "2.6.2")


def test_alias_put_refused_is_recorded_with_what_the_registry_holds(images, tmp_path):
    ref, image_id = images()
    _record(ref, image_id)
    report = tmp_path / "publish.json"
    with LocalRegistry() as reg:
        denied = Fault("PUT", r"/manifests/latest-cpu$", status=403, code="DENIED", times=99)
        with FaultProxy(reg.host, [denied]) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host, aliases=("1.0-cpu-slim", "latest-cpu", "stable"))])
            with pytest.raises(ImagegenError, match="latest-cpu.*403"):
                publish.publish([target], retry=FAST, report=report)
        assert len(proxy.requests("PUT", r"/manifests/latest-cpu$")) == 1  # DENIED is not retried
        assert proxy.requests(None, r"/manifests/stable$") == []  # nothing after the failed alias
        digest = _digest(reg.host, target.repo, "1.0.0-cpu-slim")
        assert digest and _digest(reg.host, target.repo, "1.0-cpu-slim") == digest
        assert _digest(reg.host, target.repo, "latest-cpu") is None and _digest(reg.host, target.repo, "stable") is None
        data = json.loads(report.read_text())
        (entry,) = data["images"]
        assert data["exit_code"] == 1 and "403" in data["error"]
        assert (entry["status"], entry["pushed"], entry["verified"], entry["digest"]) == ("failed", True, True, digest)
        assert entry["config_digest"] == image_id and "403" in entry["error"]
        got = [(a["tag"], a["action"], a["previous"]) for a in entry["aliases"]]
        assert got == [("1.0-cpu-slim", "moved", None), ("latest-cpu", "failed", None), ("stable", "skipped", None)]
        assert "403" in entry["aliases"][1]["reason"] and "latest-cpu failed" in entry["aliases"][2]["reason"]


def test_ctrl_c_mid_push_still_writes_the_report(images, tmp_path, monkeypatch):
    ref_a, id_a = images()
    ref_b, id_b = images()
    _record(ref_a, id_a)
    _record(ref_b, id_b)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(publish, "engine_push", interrupted)
    report = tmp_path / "publish.json"
    with LocalRegistry() as reg:
        targets = publish.plan([_cell(ref_a, reg.host), _cell(ref_b, reg.host)])
        with pytest.raises(KeyboardInterrupt):
            publish.publish(targets, retry=FAST, report=report)
        for t in targets:
            assert _remote(reg.host, t.repo, t.tag).status_code == 404
        with pytest.raises(docker.errors.ImageNotFound):  # the temporary remote-named tag is gone
            engine.api().inspect_image(targets[0].ref)
    data = json.loads(report.read_text())
    assert data["exit_code"] == 130 and data["error"] == "interrupted"
    assert [(i["ref"], i["status"]) for i in data["images"]] == [(targets[0].ref, "failed"), (targets[1].ref, "not_run")]
    assert data["images"][0]["image_id"] == id_a and data["images"][1]["image_id"] == ""


def test_cli_exit_code_is_the_reports(images, tmp_path, monkeypatch):
    """Through the command line (in-process, the matrix's cell swapped for the tiny image): a refused run
    exits 1 and its report says 1; --skip-test-check then exits 0 and so does its report."""
    import importlib

    from imagegen import console
    from imagegen.cli import release_cmds

    cli_app = importlib.import_module("imagegen.cli.app")
    stdout = io.StringIO()
    monkeypatch.setattr(console.out, "file", stdout)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # main() sets it when unset

    ref, image_id = images()
    report = tmp_path / "reports" / "publish.json"
    with LocalRegistry() as reg:
        cell = _cell(ref, reg.host)
        monkeypatch.setattr(release_cmds, "select_cells", lambda *a, **k: (None, [cell]))

        def run(*args):
            monkeypatch.setattr(sys, "argv", ["imagegen", "publish", "--variant", "x", "--report", str(report),
                                              "--retries", "0", *args])
            with pytest.raises(SystemExit) as exit_:
                cli_app.main()
            return exit_.value.code or 0

        assert run() == 1
        data = json.loads(report.read_text())
        assert data["exit_code"] == 1 and data["images"][0]["status"] == "refused"
        assert _remote(reg.host, f"imagegen-test/{cell.image}", cell.tag).status_code == 404
        assert stdout.getvalue() == ""
        assert run("--skip-test-check") == 0
        data = json.loads(report.read_text())
        assert data["exit_code"] == 0 and data["images"][0]["status"] == "pushed"
        digest = _remote(reg.host, f"imagegen-test/{cell.image}", cell.tag).headers["Docker-Content-Digest"]
        assert data["images"][0]["digest"] == digest and f"{data['images'][0]['ref']}@{digest}" in stdout.getvalue()


def test_a_tag_holding_an_index_of_this_image_is_this_image(images, tmp_path):
    """The tag holds an OCI index whose linux/amd64 child is the local image, next to an attestation
    entry (platform unknown/unknown) that points at another image: publish finds it there (status
    `exists`, nothing pushed, the aliases point at the index); an index whose child is another image
    is a conflict naming both config digests."""
    ref_a, id_a = images()
    _ref_b, id_b = images()
    _record(ref_a, id_a)
    with LocalRegistry() as reg:
        a = _cell(ref_a, reg.host, aliases=())
        # image B as another tag of the same repository (an index may only name manifests of its own)
        engine.api().tag(id_b, a.image, "2.0.0-cpu-slim")
        b = dataclasses.replace(a, tag="2.0.0-cpu-slim")
        _record(f"{a.image}:2.0.0-cpu-slim", id_b)
        (ta,) = publish.plan([a])
        (tb,) = publish.plan([b])
        (done_a,) = publish.publish([ta], retry=FAST, report=None)
        (done_b,) = publish.publish([tb], retry=FAST, report=None)
        repo = f"imagegen-test/{a.image}"

        def desc(digest: str) -> dict:
            r = _remote(reg.host, repo, digest)
            return {"mediaType": r.headers["Content-Type"].split(";")[0], "digest": digest, "size": len(r.content)}

        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            dict(desc(done_b.digest), platform={"os": "unknown", "architecture": "unknown"},
                 annotations={"vnd.docker.reference.type": "attestation-manifest",
                              "vnd.docker.reference.digest": done_a.digest}),
            dict(desc(done_a.digest), platform={"os": "linux", "architecture": "amd64"})]}
        r = requests.put(f"http://{reg.host}/v2/{repo}/manifests/{a.tag}", data=json.dumps(index).encode(),
                         headers={"Content-Type": index["mediaType"]}, timeout=10)
        r.raise_for_status()
        index_digest = r.headers["Docker-Content-Digest"]

        report = tmp_path / "p.json"
        (again,) = publish.publish([dataclasses.replace(ta, aliases=("latest-cpu",))], retry=FAST, report=report)
        (entry,) = json.loads(report.read_text())["images"]
        assert (entry["status"], entry["pushed"], entry["attempts"]) == ("exists", False, 0)
        assert entry["digest"] == index_digest and entry["image_digest"] == done_a.digest
        assert entry["media_type"] == "application/vnd.oci.image.index.v1+json" and entry["config_digest"] == id_a
        assert _remote(reg.host, repo, a.tag).headers["Docker-Content-Digest"] == index_digest  # not replaced
        assert _remote(reg.host, repo, "latest-cpu").headers["Docker-Content-Digest"] == index_digest
        assert again.digest == index_digest

        # the same index around another image: a conflict, with both configs named, the tag untouched
        engine.api().tag(id_b, a.image, a.tag, force=True)
        _record(ref_a, id_b)
        (tb_as_a,) = publish.plan([a])
        with pytest.raises(ImagegenError, match=rf"another image \(config {id_a}, the local one's {id_b}\)"):
            publish.publish([tb_as_a], retry=FAST, report=report)
        (entry,) = json.loads(report.read_text())["images"]
        assert (entry["status"], entry["digest"], entry["config_digest"]) == ("conflict", index_digest, id_a)
        assert _remote(reg.host, repo, a.tag).headers["Docker-Content-Digest"] == index_digest


# --- the engine's own push through registry faults (what dockerd streams, classified) ----------------

TAG_PUT = r"/manifests/1\.0\.0-cpu-slim$"
# a blob upload's closing PUT (`?digest=` names the blob, its colon URL-encoded by dockerd; distribution
# spec, "Pushing a blob in chunks")
BLOB_COMMIT = r"/blobs/uploads/[^?]+\?(.*&)?digest=sha256(:|%3A)"


def _blobs_stored(registry: str, repo: str, tag: str) -> list[int]:
    """HEAD of the config and every layer of the tag's manifest, straight from the registry."""
    manifest = _remote(registry, repo, tag).json()
    return [requests.head(f"http://{registry}/v2/{repo}/blobs/{d['digest']}", timeout=10).status_code
            for d in [manifest["config"], *manifest["layers"]]]


def test_a_blob_commit_acknowledged_but_never_stored_is_pushed_again(images, tmp_path):
    """The registry answers a blob's closing PUT with 201 and stores nothing (a storage backend that
    lost the write). dockerd's Stat after the commit finds no blob and streams `unknown blob`, which
    it does not retry itself; imagegen classifies it as the registry's fault and pushes again."""
    ref, image_id = images()
    _record(ref, image_id)
    lost = Fault("PUT", BLOB_COMMIT, status=201, code=None)  # acknowledged, not forwarded
    with LocalRegistry() as reg:
        with FaultProxy(reg.host, [lost]) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host, aliases=())])
            (done,) = publish.publish([target], retry=RetryPolicy(attempts=3, backoff=0.1),
                                      report=tmp_path / "publish.json")
        assert lost.fired == 1
        commits = proxy.requests("PUT", BLOB_COMMIT)
        assert [e.injected for e in commits][:1] == [True] and len(commits) >= 2
        # the same blob was committed again, for real, by the second push
        first = re.search(r"digest=sha256(?::|%3A)([0-9a-f]{64})", commits[0].path).group(1)
        again = [e for e in commits[1:] if first in e.path]
        assert again and again[0].status == 201 and not again[0].injected, commits
        assert _digest(reg.host, target.repo, target.tag) == done.digest
        assert _blobs_stored(reg.host, target.repo, target.tag) == [200, 200]
    (entry,) = json.loads((tmp_path / "publish.json").read_text())["images"]
    assert (entry["status"], entry["attempts"], entry["verified"]) == ("pushed", 2, True)
    assert entry["error"] == "unknown blob" and entry["digest"] == done.digest


def test_a_429_from_the_registry_waits_the_floor_then_pushes(images, tmp_path, errlog):
    """The manifest PUT gets 429 TOOMANYREQUESTS with `Retry-After: 1`. dockerd does not retry it and
    does not pass the header on (it streams `toomanyrequests: …`), so imagegen waits its floor, not less."""
    ref, image_id = images()
    _record(ref, image_id)
    throttled = Fault("PUT", TAG_PUT, status=429, code="TOOMANYREQUESTS", headers={"Retry-After": "1"})
    policy = RetryPolicy(attempts=3, backoff=0.1, throttle_floor=3.0)
    with LocalRegistry() as reg:
        with FaultProxy(reg.host, [throttled]) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host, aliases=())])
            (done,) = publish.publish([target], retry=policy, report=tmp_path / "publish.json")
        puts = proxy.requests("PUT", TAG_PUT)
        assert [(e.status, e.injected) for e in puts] == [(429, True), (201, False)]
        assert puts[1].t - puts[0].t >= 3.0, "the retry came before the floor"
        assert _digest(reg.host, target.repo, target.tag) == done.digest
    (entry,) = json.loads((tmp_path / "publish.json").read_text())["images"]
    assert (entry["status"], entry["attempts"], entry["verified"]) == ("pushed", 2, True)
    assert entry["error"] == "toomanyrequests"  # all that engine 20.10 streams for it
    assert "retrying in 3s" in errlog.getvalue()


SIGNAL_DRIVER = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
import test_publish_engine as t
from imagegen.cli import release_cmds
cli_app = importlib.import_module("imagegen.cli.app")
cell = t._cell(sys.argv[2], sys.argv[3], aliases=())
release_cmds.select_cells = lambda *a, **k: (None, [cell])
sys.argv = ["imagegen", "publish", "--variant", "x", "--report", sys.argv[4], "--retries", "0"]
cli_app.main()
"""


@pytest.mark.parametrize("sig, code, line", [("SIGTERM", 143, "error: terminated (SIGTERM)"),
                                             ("SIGINT", 130, "error: interrupted")])
def test_a_signal_mid_push_writes_the_report_and_leaves_no_tag(images, tmp_path, sig, code, line):
    """A CI runner's SIGTERM (or Ctrl-C) while the engine pushes (the registry stalls on the manifest PUT):
    exit 143 (130), one line, the report written with that exit code, nothing in the registry, no
    temporary local tag."""
    import signal
    import subprocess
    import time

    ref, image_id = images()
    _record(ref, image_id)
    report = tmp_path / "publish.json"
    stall = Fault("PUT", TAG_PUT, status=503, code="UNAVAILABLE", delay=60)
    with LocalRegistry() as reg:
        with FaultProxy(reg.host, [stall]) as proxy:
            (target,) = publish.plan([_cell(ref, proxy.host, aliases=())])
            proc = subprocess.Popen([sys.executable, "-c", SIGNAL_DRIVER, str(HERE), ref, proxy.host, str(report)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    env={**os.environ, "NO_COLOR": "1"})
            try:
                deadline = time.monotonic() + 120
                while not proxy.requests("PUT", TAG_PUT) and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.1)
                assert proxy.requests("PUT", TAG_PUT), proc.communicate(timeout=5)
                proc.send_signal(getattr(signal, sig))
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
        assert proc.returncode == code, err
        assert "Traceback" not in err and err.strip().splitlines()[-1] == line
        assert _remote(reg.host, target.repo, target.tag).status_code == 404
    with pytest.raises(docker.errors.ImageNotFound):  # the temporary remote-named tag is gone
        engine.api().inspect_image(target.ref)
    data = json.loads(report.read_text())
    assert data["exit_code"] == code and data["error"] == line.removeprefix("error: ")
    assert (data["images"][0]["status"], data["images"][0]["image_id"]) == ("failed", image_id)


# --- evidence attached to the pushed digest (attest, sbom, provenance) -----------------------------------


def test_publish_attaches_sbom_and_provenance_that_audit_reads_back(images, tmp_path, capfd):
    """Debian's registry has no referrers API: both artifacts go under the fallback tags, about the very
    manifest pushed; `imagegen audit REF --attestations` finds and checks them; a rerun attaches nothing new."""
    from imagegen import attest

    ref, image_id = images(labels={"org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
                                   "org.opencontainers.image.created": "2026-07-11T10:16:37Z"})
    _record(ref, image_id)
    with LocalRegistry() as reg:
        (target,) = publish.plan([_cell(ref, reg.host, aliases=())])
        (done,) = publish.publish([target], retry=FAST, report=tmp_path / "publish.json")
        kinds = {a["kind"]: a for a in done.attestations}
        assert set(kinds) == {"sbom", "provenance"} and {a["where"] for a in done.attestations} == {"tag"}
        hexpart = done.digest.split(":")[1]
        for kind in kinds:
            m = _remote(reg.host, target.repo, f"sha256-{hexpart}.{kind}").json()
            assert m["subject"]["digest"] == done.digest and m["artifactType"] == attest.KINDS[kind][0]
        report = json.loads((tmp_path / "publish.json").read_text())
        assert [a["kind"] for a in report["images"][0]["attestations"]] == ["sbom", "provenance"]

        from imagegen.registry import Registry

        digest, rows = attest.read_evidence(Registry(reg.host), target.repo, target.tag)
        assert digest == done.digest
        by_kind = {r["kind"]: r for r in rows}
        assert by_kind["provenance"]["predicateType"] == "https://slsa.dev/provenance/v1"
        assert by_kind["provenance"]["subject"] == [{"sha256": hexpart}]
        assert by_kind["provenance"]["revision"] == "0123456789abcdef0123456789abcdef01234567"
        assert by_kind["sbom"]["format"].startswith("CycloneDX")

        # the same image again: "exists", the same artifacts (deterministic bytes), no new manifest
        (again,) = publish.publish([target], retry=FAST, report=tmp_path / "again.json")
        assert again.status == "exists"
        assert [a["digest"] for a in again.attestations] == [a["digest"] for a in done.attestations]

        # the command line: one line per artifact, exit 0; an image with nothing attached: exit 1
        import subprocess

        r = subprocess.run([sys.executable, "-m", "imagegen", "audit", f"{reg.host}/{target.repo}:{target.tag}",
                            "--attestations"], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        assert "sbom" in r.stdout and "provenance" in r.stdout and "via index" in r.stdout
        bare_ref, bare_id = images()
        _record(bare_ref, bare_id)
        (bare,) = publish.plan([_cell(bare_ref, reg.host, aliases=())])
        publish.publish([bare], retry=FAST, report=tmp_path / "bare.json", evidence=())
        r = subprocess.run([sys.executable, "-m", "imagegen", "audit", f"{reg.host}/{bare.repo}:{bare.tag}",
                            "--attestations"], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 1 and "no attestations found" in r.stderr


def test_publish_signs_with_the_users_key_and_verify_checks_it(images, tmp_path):
    """--sign-key: the pushed image manifest gets a cosign-format signature that `imagegen verify
    HOST/REPO:TAG --key` accepts with the matching public key; the report names the .sig manifest."""
    import subprocess

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from imagegen import signing

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "sign.key", tmp_path / "sign.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    ref, image_id = images()
    _record(ref, image_id)
    with LocalRegistry() as reg:
        (target,) = publish.plan([_cell(ref, reg.host, aliases=())])
        (done,) = publish.publish([target], retry=FAST, report=tmp_path / "publish.json", evidence=("provenance",),
                                  sign_key=signing.load_private_key(priv))
        sig = _remote(reg.host, target.repo, f"sha256-{done.digest.split(':')[1]}.sig")
        assert sig.status_code == 200 and sig.headers["Docker-Content-Digest"] == done.signature
        assert json.loads((tmp_path / "publish.json").read_text())["images"][0]["signature"] == done.signature
        r = subprocess.run([sys.executable, "-m", "imagegen", "verify", f"{reg.host}/{target.repo}:{target.tag}",
                            "--key", str(pub)], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0 and "1 of 1 signature(s) verify" in r.stdout and "provenance" in r.stdout, r.stderr
        # `audit --attestations` lists the signature too (a cosign .sig manifest has no subject: found by tag)
        r = subprocess.run([sys.executable, "-m", "imagegen", "audit", f"{reg.host}/{target.repo}:{target.tag}",
                            "--attestations", "--json"], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        rows = {a["kind"]: a for a in json.loads(r.stdout)["attestations"]}
        assert set(rows) == {"provenance", "sig"}, rows
        assert rows["sig"]["signatures"] == 1 and rows["sig"]["naming_this_image"] == 1, rows["sig"]
