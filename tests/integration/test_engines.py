"""The commands on the engines users run (issue 18): Debian 13's Docker 26.1.5 with the graph-driver
image store, and the same engine on the containerd image store (Docker 29's default on fresh
installs, where an image ID is the manifest digest). The host's Debian 12 engine (20.10) is the one
every other test uses.

Each engine is private (tests/engine/second_engine.py): its own dockerd from a Debian 13 root
filesystem, data root, socket and bridge; the user's engine and its docker0 are never touched. The
bookworm bases are copied in from the user's engine (`docker save`, read-only there); each cell is
built there with its image suite, audited, scanned (SBOM and secrets, offline) and published to a
loopback registry, whose manifest must be the local image: its config digest is the local image ID
on the graph-driver store, its manifest digest is the local image ID on the containerd store.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
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


def ig(eng: SecondEngine, *args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1", "DOCKER_HOST": eng.host,
                                                "IMAGEGEN_LOCAL_PREFIX": PREFIX})
    if check and proc.returncode != 0:
        pytest.fail(f"imagegen {' '.join(args)} on {eng.host} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def test_engine_is_what_it_claims(newer):
    name, eng = newer
    info = engine.describe(eng.client().info(), eng.client().version())
    assert info.server_version.startswith("26.") and info.api_version == "1.45"
    assert info.image_store == ("containerd" if name.endswith("containerd") else "graphdriver")


@pytest.mark.parametrize("ref", CELLS)
def test_build_test_audit_scan_publish(newer, ref, tmp_path):
    name, eng = newer
    proc = ig(eng, "build", "--variant", ref, "--json", "--junit", str(tmp_path))
    (res,) = json.loads(proc.stdout)
    assert res["status"] == "built", res  # the build ran the image suite and it passed (else exit 1)
    local = PREFIX + ref
    image_id = eng.client().images.get(local).id
    assert image_id.removeprefix("sha256:").startswith(res["image_id"])

    rep = json.loads(ig(eng, "audit", local, "--json", "--no-compressed").stdout)
    visible = rep["totals"]["visible"]
    assert sum(c["bytes"] for c in rep["categories"]) == visible > 0
    assert sum(p["bytes"] for p in rep["packages"]) + rep["unowned"]["bytes"] == visible

    scanned = json.loads(ig(eng, "scan", "--variant", ref, "--no-vuln", "--reports", str(tmp_path / "r"),
                            "--json").stdout)
    assert scanned[0]["problems"] == [] and scanned[0]["os"].startswith("debian")

    with LocalRegistry() as reg:
        report = tmp_path / "publish.json"
        proc = ig(eng, "publish", "--variant", ref, "--registry", reg.host, "--namespace", "ml", "--json",
                  "--report", str(report))
        (pushed,) = json.loads(proc.stdout)
        assert pushed["pushed"] and pushed["digest"].startswith("sha256:")
        resp = requests.get(f"http://{reg.host}/v2/ml/{ref.split(':')[0]}/manifests/{ref.split(':', 1)[1]}",
                            headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
        resp.raise_for_status()
        assert "sha256:" + hashlib.sha256(resp.content).hexdigest() == pushed["digest"]
        config_digest = resp.json()["config"]["digest"]
        assert pushed["config_digest"] == config_digest
        if name.endswith("containerd"):  # the image ID is the manifest digest there
            assert image_id == pushed["digest"] and image_id != config_digest
        else:
            assert image_id == config_digest
        # a second publish finds the same image there and pushes nothing
        (again,) = json.loads(ig(eng, "publish", "--variant", ref, "--registry", reg.host, "--namespace", "ml",
                                 "--json", "--report", str(report)).stdout)
        assert not again["pushed"] and again["digest"] == pushed["digest"]
