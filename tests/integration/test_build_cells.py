"""End to end on the real engine: build the small CPU cells of the repo's matrix with the CLI,
let the build run the image test suite, check sizes, the no-op skip, Ctrl-C, publish, and clean up.

The tests own their tags: every build runs with IMAGEGEN_LOCAL_PREFIX=imagegen-test/, so a user's
`paddle:3.3.1-cpu-slim` is never rebuilt, retagged or removed, and the clean-up removes only the
tags and image IDs these tests created (never "dangling images": other builds may be in flight).
`preexisting` asserts that every image (with its tags), container, volume, network and running
registry that existed before the module is exactly as it was afterwards.

Each build pulls real wheels into the host wheelhouse and bootstraps the bases when missing.
Every cell of the default matrix that can be built here is built, GPU cells included (marker `gpu_cell`,
several GB each: built last, one at a time, and removed after their own test). Each cell is built once,
when a test first needs it; a cell that fails to build fails only the tests that need it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "engine"))
from engine_cleanup import remove_own  # noqa: E402
from registry_fixture import LocalRegistry  # noqa: E402

from imagegen import matrix  # noqa: E402

CPU_CELLS = ["paddle:3.3.1-cpu-slim", "onnxruntime:1.23.2-cpu-slim", "pytorch:2.13.0-cpu-slim",
             "paddle:3.3.1-cpu-full", "paddle:2.6.2-cpu-slim", "paddle:2.6.2-cpu-full",
             # Debian 13 / Python 3.13 (trixie base)
             "paddle:3.3.1-cpu-py3.13-slim", "onnxruntime:1.23.2-cpu-py3.13-slim"]
GPU_FLAGSHIP = "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"
SM75_TWIN = "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-sm75-slim"
# Multi-GB GPU cells: built one after the other and removed after their own test (the flagship once its
# twin, which shares its builder layers, has built). Without a GPU the build's image suite runs every check
# that needs none: CPU smoke, GPU readiness (each CUDA library loads by SONAME), tag <-> contents, policy,
# bytecode, budgets. The TensorRT cell is not here: PyPI has only sdists of tensorrt-cu12-libs, which
# download NVIDIA's wheel at install time (pypi.nvidia.com); Paddle 3.x GPU wheels are only on Paddle's
# index. Cells without a committed lock are validate-only (docs/development.md, "What `scripts/test.sh` builds").
GPU_CELLS = [GPU_FLAGSHIP, SM75_TWIN, "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-full",
             "onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-slim", "pytorch:2.14.1-gpu-cuda13.0-cudnn9.24-slim"]
PREFIX = "imagegen-test/"  # IMAGEGEN_LOCAL_PREFIX for every imagegen run here


def local(ref: str) -> str:
    return PREFIX + ref


def imagegen(*args: str, check: bool = True, timeout: int = 1800, env: dict | None = None):
    proc = subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "NO_COLOR": "1", "IMAGEGEN_LOCAL_PREFIX": PREFIX,
                                                **(env or {})})
    if check and proc.returncode != 0:
        pytest.fail(f"imagegen {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def client():
    return docker.from_env()


def _engine_state(client) -> tuple[dict, dict]:
    images = {i.id: sorted(i.tags) for i in client.images.list(all=True)}
    containers = {c.id: (c.status, c.image.id if c.image else None) for c in client.containers.list(all=True)}
    return images, containers


def _registries() -> set[int]:
    """Running docker-registry processes (the tests start their own, on their own port and storage)."""
    pids = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "comm").read_text().strip() == "docker-registry":
                pids.add(int(d.name))
        except OSError:
            pass
    return pids


REPRODUCED: set[str] = set()  # untagged pre-existing image IDs the tests' own builds produced again


@pytest.fixture(scope="module", autouse=True)
def preexisting(client):
    """Set up before `built`, so torn down after it: what existed before is left exactly as it was."""
    images, containers = _engine_state(client)
    volumes = {v.name for v in client.volumes.list()}
    networks = {n.id for n in client.networks.list()}
    registries = _registries()
    made = {i: client.api.inspect_image(i) for i, tags in images.items() if not tags}
    yield images
    assert registries <= _registries(), "a registry that was running before the tests is gone"
    assert volumes <= {v.name for v in client.volumes.list()}, "pre-existing volumes removed"
    assert networks <= {n.id for n in client.networks.list()}, "pre-existing networks removed"

    def users(tags):  # tags under the tests' own prefix belong to the tests (e.g. an earlier run's)
        return {t for t in tags if not t.startswith(PREFIX)}

    after_images, after_containers = _engine_state(client)
    changed = {i: (tags, after_images.get(i)) for i, tags in images.items()
               if (users(tags) or not tags) and (i not in after_images or users(after_images[i]) != users(tags))
               and not (i in REPRODUCED and not users(tags))}
    if changed:  # what each one was (its step), to tell whose it was
        def made_by(i):
            return " ".join((made.get(i) or {}).get("ContainerConfig", {}).get("Cmd") or [])[-120:]
        raise AssertionError("pre-existing images changed (id: before, after, step that made it): "
                             + "; ".join(f"{i[:19]}: {b}, {a}, {made_by(i)!r}" for i, (b, a) in changed.items()))
    gone = {c: s for c, s in containers.items() if c not in after_containers}
    assert not gone, f"pre-existing containers removed: {gone}"


class Builds:
    """Each cell built once, when a test first needs it, under the test prefix (with its image tests:
    `imagegen build` runs them before the tag moves). A cell that fails to build fails the tests that
    need it, and only those."""

    def __init__(self, junit: Path, preexisting: dict):
        self.junit, self.preexisting = junit, preexisting
        self.results: dict[str, dict | str] = {}  # ref -> build result, or why it failed
        self.stderr: dict[str, str] = {}
        self.created: set[str] = set()  # image IDs these tests made

    def get(self, ref: str) -> dict:
        if ref not in self.results:
            self.results[ref] = self._build(ref)
        res = self.results[ref]
        if isinstance(res, str):
            pytest.fail(f"{ref} did not build: {res}", pytrace=False)
        return res

    def _build(self, ref: str) -> dict | str:
        proc = imagegen("build", "--variant", ref, "--json", "--junit", str(self.junit), check=False, timeout=3600)
        self.stderr[ref] = proc.stderr
        if proc.returncode != 0:
            return f"imagegen build exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        (res,) = json.loads(proc.stdout)
        image_id = res["image_id"]
        if image_id and image_id not in self.preexisting:
            self.created.add(image_id)
        elif image_id and not any(t for t in self.preexisting[image_id] if not t.startswith(PREFIX)):
            # the build reproduced an untagged image an earlier run left (same layers, same ID): the
            # engine deletes it when the test's tag goes, which no test can prevent
            REPRODUCED.add(image_id)
        return res

    def release(self, client, refs: list[str]) -> None:
        """Remove these cells' images now (GPU cells: several GB each), and only what the tests made."""
        remove_own(client, [local(r) for r in refs], self.created, set(self.preexisting))


@pytest.fixture(scope="module")
def builds(client, tmp_path_factory, preexisting):
    b = Builds(tmp_path_factory.mktemp("junit"), preexisting)
    try:
        yield b
    finally:
        b.release(client, list(b.results))


def test_the_lists_cover_every_cell_that_can_be_built_here():
    """Never drop a cell: every cell of the default matrix with a committed lock is built here."""
    m = matrix.load(ROOT / "matrix.yaml")
    lockable = {c.ref for c in m.cells if (ROOT / "locks" / f"{c.id}.txt").exists()}
    assert set(CPU_CELLS) | set(GPU_CELLS) == lockable


def _check_cell(builds: Builds, client, ref: str) -> dict:
    """What every cell's build must show: the suite ran and passed (the build exits non-zero otherwise),
    the committed closure was used (no Debian index read), labels, budget, the slimming report."""
    res = builds.get(ref)
    assert res["status"] in ("built", "skipped", "tested"), res
    assert "resolving the closure" not in builds.stderr[ref], builds.stderr[ref][-2000:]
    image = client.images.get(local(ref))
    labels = image.labels
    assert labels["io.imagegen.cell"] == ref
    assert labels["io.imagegen.inputs-digest"].startswith("sha256:")
    assert labels["org.opencontainers.image.version"] == ref.split(":", 1)[1]
    (cell,) = matrix.load(ROOT / "matrix.yaml").select([ref])
    if cell.budget_size:
        assert image.attrs["Size"] <= cell.budget_size, f"{ref}: {image.attrs['Size']} > budget"
    if res["status"] == "built":
        # the build ran the suite and wrote its JUnit XML
        assert any(builds.junit.glob(f"junit-{ref.replace(':', '-')}*.xml"))
        prune = res["prune"]["rules"]
        assert prune["pip"]["enabled"] is (ref.endswith("-slim"))
        # the slimming rules shrank the environment; bytecode compiled in the same step (issue 14) adds to it
        bytecode = prune.get("bytecode") or {}
        added = bytecode.get("bytes", 0) if bytecode.get("mode") in ("compile", "all", "keep") else 0
        assert res["prune"]["venv_bytes_after"] - added < res["prune"]["venv_bytes_before"], (bytecode, res["prune"])
    return res


@pytest.mark.parametrize("ref", CPU_CELLS)
def test_cell_builds_passes_tests_and_meets_budget(builds, client, ref):
    _check_cell(builds, client, ref)


def test_slim_is_non_root_and_has_no_pip(builds, client):
    builds.get("paddle:3.3.1-cpu-slim")
    image = client.images.get(local("paddle:3.3.1-cpu-slim"))
    assert image.attrs["Config"]["User"] == "1000:1000"
    out = client.containers.run(local("paddle:3.3.1-cpu-slim"), ["python3.11", "-c",
                                "import importlib.util as u; print(u.find_spec('pip') is None)"],
                                remove=True, user="12345")
    assert out.strip() == b"True"


@pytest.mark.parametrize("ref", CPU_CELLS)
def test_no_credentials_or_ca_in_history(builds, client, ref):
    """The host CA bundle and pip configuration never reach an image or its history."""
    builds.get(ref)
    history = json.dumps(client.images.get(local(ref)).history())
    for needle in ("PIP_CERT", "ca-certificates.crt --", "pip.conf", "REQUESTS_CA_BUNDLE", "/opt/pypi"):
        assert needle not in history, (ref, needle)


def test_noop_rebuild_is_skipped(builds):
    builds.get("onnxruntime:1.23.2-cpu-slim")
    proc = imagegen("build", "--variant", "onnxruntime:1.23.2-cpu-slim", "--json")
    (res,) = json.loads(proc.stdout)
    assert res["status"] == "skipped" and res["message"] == "inputs unchanged"


def test_test_command_on_built_cells(builds, tmp_path):
    builds.get("onnxruntime:1.23.2-cpu-slim")
    builds.get("pytorch:2.13.0-cpu-slim")
    junit = tmp_path / "all.xml"
    proc = imagegen("test", "--variant", "onnxruntime:cpu-slim", "--variant", "torch:cpu-slim",
                    "--junit", str(junit))
    assert junit.exists() and "testsuite" in junit.read_text()
    assert "passed" in proc.stdout


def test_a_tampered_inputs_digest_label_fails_imagegen_test(builds, client):
    """The tag check compares the image's io.imagegen.inputs-digest with the digest of the inputs this
    checkout builds the cell from, never with the label itself (architecture review 3, §3.4)."""
    ref = "onnxruntime:1.23.2-cpu-slim"
    builds.get(ref)
    good = client.images.get(local(ref)).id
    forged = "sha256:" + "0" * 64
    dockerfile = f"FROM {good}\nLABEL io.imagegen.inputs-digest={forged} imagegen.test=1\n".encode()
    tampered, _ = client.images.build(fileobj=io.BytesIO(dockerfile), rm=True, forcerm=True)
    repo, tag = local(ref).rsplit(":", 1)
    try:
        client.api.tag(tampered.id, repo, tag, force=True)
        proc = imagegen("test", "--variant", ref, "--check", "tag", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"io.imagegen.inputs-digest='{forged}'" in proc.stdout + proc.stderr
        client.api.tag(good, repo, tag, force=True)
        proc = imagegen("test", "--variant", ref, "--check", "tag", check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        client.api.tag(good, repo, tag, force=True)
        client.api.remove_image(tampered.id, noprune=False)


@pytest.mark.parametrize("moment", ["a RUN step", "the final COPY --from"])
def test_ctrl_c_mid_build_leaves_no_containers_and_keeps_the_tag(builds, client, moment):
    """Classic builder: Ctrl-C during a RUN step (its container is running) or during the final `COPY --from` (no
    container: the engine finishes the copy after imagegen's client is gone and commits it, seconds
    later): no container, no image (counted with `docker images -a`, some seconds after the command
    returned) and the tag where it was."""
    ref = "onnxruntime:1.23.2-cpu-slim"
    builds.get(ref)
    old_id = client.images.get(local(ref)).id
    containers_before = {c.id for c in client.containers.list(all=True)}
    images_before = {i.id for i in client.images.list(all=True)}
    # the classic builder's own behaviour (step containers, late commits), wherever buildx is installed;
    # BuildKit's interrupts: tests/integration/test_engines.py
    # --no-cache: the build is reproducible, so a cached --force rebuild would run no step at all
    proc = subprocess.Popen([sys.executable, "-m", "imagegen", "build", "--variant", ref, "--force", "--no-cache",
                             "--no-test"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "IMAGEGEN_LOCAL_PREFIX": PREFIX,
                                 "DOCKER_BUILDKIT": "0"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    seen = False
    while time.monotonic() < deadline and proc.poll() is None:
        if moment == "a RUN step":  # a RUN step's container exists (a metadata step's is gone in a moment)
            steps = [ln for ln in list(lines) if ": step " in ln]
            seen = bool(steps) and " RUN " in steps[-1] and \
                bool({c.id for c in client.containers.list(all=True)} - containers_before)
        else:
            seen = any("COPY --from=builder /opt/imagegen-venvroot/" in ln for ln in list(lines))
        if seen:
            break
        time.sleep(0.1)
    assert seen, f"{moment} never came: {proc.poll()} {''.join(lines)[-500:]}"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=180)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr[-1000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    time.sleep(6)  # a step the engine commits late shows up seconds after the command returned
    left = {c.id for c in client.containers.list(all=True)} - containers_before
    assert not left, f"containers left behind: {left}"
    # the step images the interrupted build committed (a running step holds its parent), and the one the
    # engine committed for the step in flight, are gone too
    made = {i.id for i in client.images.list(all=True)} - images_before
    assert not made, f"images left behind: {made}"
    assert client.images.get(local(ref)).id == old_id, "the tag moved"


def test_daemon_down_is_one_line_error():
    proc = imagegen("build", "--variant", "onnxruntime:cpu-slim", check=False,
                    env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 3
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Docker engine not reachable")
    assert "dockerd" in lines[0]


def test_publish_to_local_registry(builds, client, tmp_path):
    builds.get("onnxruntime:1.23.2-cpu-slim")
    with LocalRegistry() as reg:
        proc = imagegen("publish", "--variant", "onnxruntime:cpu-slim", "--registry", reg.host, "--namespace", "ml",
                        "--json", "--report", str(tmp_path / "publish.json"))
        (pushed,) = json.loads(proc.stdout)
        assert pushed["ref"] == f"{reg.host}/ml/onnxruntime:1.23.2-cpu-slim" and pushed["pushed"]
        assert pushed["digest"].startswith("sha256:")
        with pytest.raises(docker.errors.ImageNotFound):  # publish removed its temporary remote-named tag
            client.images.get(pushed["ref"])
        pulled = client.images.pull(f"{reg.host}/ml/onnxruntime@{pushed['digest']}")
        assert pulled.id == client.images.get(local("onnxruntime:1.23.2-cpu-slim")).id
        client.images.remove(f"{reg.host}/ml/onnxruntime@{pushed['digest']}")


def test_audit_of_a_real_cell_adds_up(builds):
    builds.get("paddle:3.3.1-cpu-slim")
    proc = imagegen("audit", local("paddle:3.3.1-cpu-slim"), "--json", "--no-compressed")
    rep = json.loads(proc.stdout)
    visible = rep["totals"]["visible"]
    assert sum(c["bytes"] for c in rep["categories"]) == visible
    assert sum(p["bytes"] for p in rep["packages"]) + rep["unowned"]["bytes"] == visible
    assert rep["totals"]["layers"] == sum(layer["size"] for layer in rep["layers"])
    paddle = next(p for p in rep["packages"] if p["manager"] == "pip" and p["name"] == "paddlepaddle")
    assert paddle["bytes"] > 500_000_000
    assert any(p["manager"] == "deb" and p["name"] == "libgomp1" for p in rep["packages"])  # the ELF closure


def test_audit_gate_breach_exits_1(builds):
    builds.get("onnxruntime:1.23.2-cpu-slim")
    proc = imagegen("audit", local("onnxruntime:1.23.2-cpu-slim"), "--no-compressed", "--max-size", "10MB",
                    check=False)
    assert proc.returncode == 1
    assert "10" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_audit_trace_of_the_smoke_test(builds):
    builds.get("paddle:3.3.1-cpu-slim")
    proc = imagegen("audit", "--trace", "paddle:3.3.1-cpu-slim", "--json", timeout=900)
    rep = json.loads(proc.stdout)
    assert rep["exit_code"] == 0 and not rep["timed_out"], rep["workload_log_tail"]
    totals = rep["totals"]
    assert 0 < totals["touched"] < totals["bytes"] and totals["untouched"] == totals["bytes"] - totals["touched"]
    notes = " ".join(rep["notes"]).lower()
    assert "advice" in notes and "gpu" in notes
    # the workload really ran paddle: its core library was opened
    assert any(p.endswith("libpaddle.so") for p in rep["touched_paths"])


# --- GPU cells (several GB each): last, one at a time, removed after their own test ------------------


@pytest.mark.gpu_cell
def test_gpu_flagship_builds_and_is_gpu_ready(builds, client):
    """The design card's example (`imagegen build --variant gpu-cuda11.8-slim`). Kept until its sm_75 twin
    has built: the twin reuses its builder layers."""
    res = _check_cell(builds, client, GPU_FLAGSHIP)
    if res["status"] == "built":
        rules = res["prune"]["rules"]
        assert rules["cudnn_train"]["enabled"] and rules["cudnn_train"]["bytes"] > 200_000_000
        assert rules["flashattn"]["bytes"] > 200_000_000


@pytest.mark.gpu_cell
def test_sm75_cell_is_cut_to_its_gpus(builds, client):
    """issue 12: the flagship's twin with gpu_archs [sm_75] builds at <= 1.8 GB, passes the same image
    tests (the build runs them before tagging), and says what it runs on."""
    try:
        res = _check_cell(builds, client, SM75_TWIN)
        image = client.images.get(local(SM75_TWIN))
        assert image.attrs["Size"] <= 1_800_000_000
        assert image.labels["io.imagegen.cuda.archs"] == "sm_75"
        if res["status"] == "built":
            rule = res["prune"]["rules"]["cuda_archs"]
            assert rule["targets"] == ["sm_75"] and rule["refused"] == [] and rule["bytes"] > 2_000_000_000
            libs = rule["libraries"]
            phi = next(v for k, v in libs.items() if k.endswith("paddle/libs/libphi.so"))
            assert phi["status"] == "pruned" and phi["bytes_after"] < 600_000_000
            # the builder lacks libgomp (the runtime gets it from the ELF closure): the image tests load it
            assert phi["dlopen"] == "ok" or "libgomp" in phi["dlopen"]
            assert all(v["dlopen"] == "ok" for k, v in libs.items() if k.startswith("nvidia/") and "dlopen" in v)
    finally:
        builds.release(client, [SM75_TWIN, GPU_FLAGSHIP])


@pytest.mark.gpu_cell
@pytest.mark.parametrize("ref", GPU_CELLS[2:])
def test_gpu_cell_builds_and_is_gpu_ready(builds, client, ref):
    """Build + the image suite: CPU smoke, readiness (every CUDA library loads by SONAME, no pending
    dlerror(); providers available; CUDA/cuDNN as tagged), bytecode, budgets; then the cell is removed."""
    try:
        _check_cell(builds, client, ref)
    finally:
        builds.release(client, [ref])
