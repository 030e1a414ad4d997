"""The commands on the engines users run (issue 18), on both build paths: Debian 13's Docker 26.1.5
with the graph-driver image store, the same engine on the containerd image store (Docker 29's default
on fresh installs, where an image ID is the manifest digest), and the host's Debian 12 engine (20.10,
which every other test uses with the classic builder) through its embedded BuildKit 0.8. Each engine
is driven by the classic builder (DOCKER_BUILDKIT=0) and by BuildKit (`docker buildx`, Debian 13's
plugin from the same root filesystem, found through DOCKER_CONFIG).

Each engine is private (tests/engine/second_engine.py): its own dockerd from a Debian 13 root
filesystem, data root, socket and bridge; the user's engine and its docker0 are never touched. The
bookworm bases are copied in from the user's engine (`docker save`, read-only there); each cell is
built there with its image suite, audited, scanned (SBOM and secrets, offline) and published to a
loopback registry, whose manifest's config digest must be the local image's config digest (the
image ID on the graph-driver store; on the containerd store the ID is the manifest digest).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "engine"))
from registry_fixture import LocalRegistry  # noqa: E402
from second_engine import SecondEngine, newer_engine_rootfs  # noqa: E402

from imagegen import bases, engine, matrix  # noqa: E402

PREFIX = "imagegen-test-engines/"
CELLS = ["onnxruntime:1.23.2-cpu-slim", "paddle:3.3.1-cpu-slim"]
MANIFEST_TYPES = ["application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"]
ENGINES = {"docker26": (False, 81), "docker26-containerd": (True, 82)}  # containerd store?, subnet
PATHS = ["classic", "buildkit"]


@pytest.fixture(scope="module")
def buildx_config(tmp_path_factory):
    """A DOCKER_CONFIG whose cli-plugins/ holds Debian 13's docker-buildx (0.13.1)."""
    conf = tmp_path_factory.mktemp("dockercfg")
    (conf / "cli-plugins").mkdir()
    src = newer_engine_rootfs() / "usr" / "libexec" / "docker" / "cli-plugins" / "docker-buildx"
    (conf / "cli-plugins" / "docker-buildx").write_bytes(src.read_bytes())
    (conf / "cli-plugins" / "docker-buildx").chmod(0o755)
    return conf


def path_env(path: str, buildx_config: Path) -> dict[str, str]:
    """The environment that selects ``path``: BuildKit through the plugin, or the classic builder by the
    docker CLI's own switch (with the plugin still there)."""
    env = {"DOCKER_CONFIG": str(buildx_config)}
    if path == "classic":
        env["DOCKER_BUILDKIT"] = "0"
    return env


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


@pytest.fixture(scope="module")
def base_refs():
    if os.geteuid() != 0:
        pytest.fail("these tests start a private dockerd: run them as root (scripts/test.sh does)")
    m = matrix.load(ROOT / "matrix.yaml")
    refs = set()
    for cell in m.select(CELLS):
        refs |= {bases.ensure_role(cell.base, role, spec=cell.base_spec) for role in ("builder", cell.runtime_role)}
    return sorted(refs)


@pytest.fixture(scope="module", params=list(ENGINES))
def newer(request, base_refs):
    """One private Docker 26 engine per store, with the bases loaded; closed (and its data removed) after."""
    containerd, subnet = ENGINES[request.param]
    links = {n for n in _links() if n.startswith(("docker", "br-"))}
    eng = SecondEngine(rootfs=newer_engine_rootfs(), containerd_store=containerd, subnet=subnet)
    try:
        eng.start(timeout=120)
        eng.load_from(engine.client(), base_refs)
        yield request.param, eng
    finally:
        eng.close()
        assert links <= _links(), "a private engine removed the user's bridge"


def ig(eng: SecondEngine | None, *args: str, check: bool = True, timeout: int = 1800, prefix: str = PREFIX,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """imagegen on ``eng`` (None: the host's engine), its tags under ``prefix``."""
    base = {k: v for k, v in os.environ.items() if k not in ("DOCKER_BUILDKIT", "BUILDX_BUILDER", "DOCKER_CONFIG")}
    if eng is not None:
        base["DOCKER_HOST"] = eng.host
    proc = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**base, "NO_COLOR": "1", "IMAGEGEN_LOCAL_PREFIX": prefix, **(env or {})})
    if check and proc.returncode != 0:
        where = eng.host if eng is not None else "the host engine"
        pytest.fail(f"imagegen {' '.join(args)} on {where} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def test_engine_is_what_it_claims(newer):
    name, eng = newer
    info = engine.describe(eng.client().info(), eng.client().version())
    assert info.server_version.startswith("26.") and info.api_version == "1.45"
    assert info.image_store == ("containerd" if name.endswith("containerd") else "graphdriver")


def build_test_audit_scan_publish(name: str, eng: SecondEngine | None, client, ref: str, path: str,
                                  buildx_config: Path, tmp_path: Path) -> None:
    """build (with its image suite), audit, scan and publish ``ref`` on one engine and build path."""
    prefix = f"{PREFIX}{path}/"
    env = path_env(path, buildx_config)
    proc = ig(eng, "build", "--variant", ref, "--no-cache", "--json", "--junit", str(tmp_path), prefix=prefix, env=env)
    wanted = "building with BuildKit (builder default, driver docker" if path == "buildkit" else \
        "building with the classic builder (DOCKER_BUILDKIT=0)"
    assert wanted in proc.stderr, proc.stderr[-2000:]
    (res,) = json.loads(proc.stdout)
    assert res["status"] == "built", res  # the build ran the image suite and it passed (else exit 1)
    assert res["prune"] and res["prune"]["rules"], "the prune report was not read from the build log"
    local = prefix + ref
    image_id = client.images.get(local).id
    assert image_id == res["image_id"]  # the full ID on both paths
    try:
        rep = json.loads(ig(eng, "audit", local, "--json", "--no-compressed", prefix=prefix, env=env).stdout)
        visible = rep["totals"]["visible"]
        assert sum(c["bytes"] for c in rep["categories"]) == visible > 0
        assert sum(p["bytes"] for p in rep["packages"]) + rep["unowned"]["bytes"] == visible

        scanned = json.loads(ig(eng, "scan", "--variant", ref, "--no-vuln", "--reports", str(tmp_path / "r"),
                                "--json", prefix=prefix, env=env).stdout)
        assert scanned[0]["problems"] == [] and scanned[0]["os"].startswith("debian")

        with LocalRegistry() as reg:
            report = tmp_path / "publish.json"
            args = ("publish", "--variant", ref, "--registry", reg.host, "--namespace", "ml", "--json",
                    "--report", str(report))
            (pushed,) = json.loads(ig(eng, *args, prefix=prefix, env=env).stdout)
            assert pushed["pushed"] and pushed["digest"].startswith("sha256:")
            resp = requests.get(f"http://{reg.host}/v2/ml/{ref.split(':')[0]}/manifests/{ref.split(':', 1)[1]}",
                                headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
            resp.raise_for_status()
            assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == pushed["digest"]
            config_digest = resp.json()["config"]["digest"]
            # verified against the local image's config digest, on every store
            assert pushed["config_digest"] == pushed["local_config_digest"] == config_digest
            if name.endswith("containerd"):  # the image ID is the manifest digest there
                assert image_id == pushed["digest"] and image_id != config_digest
            else:
                assert image_id == config_digest
            # a second publish finds the same image there and pushes nothing
            (again,) = json.loads(ig(eng, *args, prefix=prefix, env=env).stdout)
            assert not again["pushed"] and again["digest"] == pushed["digest"]
    finally:
        if eng is None:  # the host's engine outlives the test: remove what it built
            client.images.remove(local, noprune=False)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("ref", CELLS)
def test_build_test_audit_scan_publish(newer, ref, path, buildx_config, tmp_path):
    name, eng = newer
    build_test_audit_scan_publish(name, eng, eng.client(), ref, path, buildx_config, tmp_path)


@pytest.mark.parametrize("ref", CELLS)
def test_host_engine_through_its_embedded_buildkit(ref, buildx_config, tmp_path):
    """Debian 12's dockerd 20.10 through buildx: its embedded BuildKit 0.8 (the classic path on this engine
    is what the rest of the suite runs)."""
    client = engine.client()
    before = {i.id for i in client.images.list(all=True)}
    build_test_audit_scan_publish("host", None, client, ref, "buildkit", buildx_config, tmp_path)
    assert {i.id for i in client.images.list(all=True)} <= before


@pytest.mark.parametrize("moment", ["RUN --mount=type=bind,source=wheels", "exporting to image"])
def test_interrupted_buildkit_build_leaves_nothing(newer, buildx_config, moment):
    """Ctrl-C on the BuildKit path, during the install step or while the exporter writes the image: exit 130,
    the tag where it was, and some seconds later no new image (`docker images -a`) and no container."""
    name, eng = newer
    client = eng.client()
    ref = "paddle:3.3.1-cpu-slim"
    prefix = f"{PREFIX}buildkit/"
    env = {**path_env("buildkit", buildx_config)}
    ig(eng, "build", "--variant", ref, "--no-test", prefix=prefix, env=env)  # the tag exists (built before)
    old_id = client.images.get(prefix + ref).id
    images_before = {i.id for i in client.images.list(all=True)}
    base = {k: v for k, v in os.environ.items() if k not in ("DOCKER_BUILDKIT", "BUILDX_BUILDER")}
    proc = subprocess.Popen([sys.executable, "-m", "imagegen", "build", "--variant", ref, "--force", "--no-cache",
                             "--no-test"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**base, **env, "NO_COLOR": "1", "DOCKER_HOST": eng.host,
                                 "IMAGEGEN_LOCAL_PREFIX": prefix})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not any(moment in ln for ln in list(lines)):
        time.sleep(0.1)
    assert any(moment in ln for ln in list(lines)), f"{moment} never came: {''.join(lines)[-800:]}"
    time.sleep(1.5 if moment.startswith("RUN") else 0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr[-1000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    time.sleep(6)
    assert not client.containers.list(all=True)
    made = {i.id for i in client.images.list(all=True)} - images_before
    assert not made, f"images left behind: {made}"
    assert client.images.get(prefix + ref).id == old_id, "the tag moved"
    assert subprocess.run(["pgrep", "-f", "buildx build"], capture_output=True).returncode == 1, "buildx still runs"


def test_bad_builder_requests_are_one_line_exit_2(buildx_config, tmp_path):
    """A builder that is not there lists those there are; --builder without the buildx plugin, or against
    DOCKER_BUILDKIT=0, names what is missing. Nothing is built (the host's engine, no tag of ours)."""
    sel = ("build", "--variant", "onnxruntime:1.23.2-cpu-slim", "--no-test")
    cases = [
        (("--builder", "nosuch"), {"DOCKER_CONFIG": str(buildx_config)},
         "no buildx builder named 'nosuch'; builders here: default (docker)"),
        (("--builder", "default"), {"DOCKER_CONFIG": str(tmp_path)},  # no cli-plugins/ there
         "--builder default needs BuildKit through the docker buildx plugin"),
        (("--builder", "default"), {"DOCKER_CONFIG": str(buildx_config), "DOCKER_BUILDKIT": "0"},
         "selects the classic builder: drop one of them"),
    ]
    for extra, env, wanted in cases:
        proc = ig(None, *sel, *extra, check=False, env=env, prefix=f"{PREFIX}bad/")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and wanted in lines[0], (extra, proc.stderr)
