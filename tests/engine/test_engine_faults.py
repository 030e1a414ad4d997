"""Faults in mid-build (issue 9 item 10), each against a second, private dockerd started by the test
(its own socket and data root; the user's engine is never stopped):

- the engine stopped in mid-build;
- the engine's disk filling up in mid-build (data root on a small tmpfs);
- a corrupted file in the wheel cache (a private cache holding one flipped byte).

Each must end with one `error:` line naming the cause, a non-zero exit, no tag, no container left
and no temporary build context left, on both build paths: the classic builder (DOCKER_BUILDKIT=0) and
BuildKit (the engine's embedded BuildKit through Debian 13's buildx plugin, found via DOCKER_CONFIG).
The cell is the smallest real one (ONNX Runtime CPU slim);
its bases are copied from the user's engine with `docker save` (read-only there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

from imagegen import bases, matrix, wheelhouse
from imagegen import lockfile as lock_mod

sys.path.insert(0, str(Path(__file__).resolve().parent))
from second_engine import SecondEngine, newer_engine_rootfs  # noqa: E402

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
CELL = "onnxruntime:1.23.2-cpu-slim"


@pytest.fixture(scope="module")
def cell():
    m = matrix.load(ROOT / "matrix.yaml")
    return next(c for c in m.cells if c.ref == CELL)


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


@pytest.fixture(autouse=True)
def users_bridges_survive():
    """A second dockerd must never delete the user's engine's bridge (docker0)."""
    before = {name for name in _links() if name.startswith(("docker", "br-"))}
    yield
    gone = before - _links()
    assert not gone, f"the test removed the user's network interfaces: {sorted(gone)}"


@pytest.fixture(scope="module")
def base_refs(cell):
    if os.geteuid() != 0:
        pytest.fail("fault tests start a private dockerd and mount a tmpfs: run them as root (scripts/test.sh does)")
    return [bases.ensure_role(cell.base, role, spec=cell.base_spec) for role in ("builder", cell.runtime_role)]


@pytest.fixture(scope="module")
def buildx_config(tmp_path_factory):
    """A DOCKER_CONFIG whose cli-plugins/ holds Debian 13's docker-buildx (0.13.1)."""
    conf = tmp_path_factory.mktemp("dockercfg")
    (conf / "cli-plugins").mkdir()
    src = newer_engine_rootfs() / "usr" / "libexec" / "docker" / "cli-plugins" / "docker-buildx"
    shutil.copyfile(src, conf / "cli-plugins" / "docker-buildx")
    (conf / "cli-plugins" / "docker-buildx").chmod(0o755)
    return conf


@pytest.fixture(params=["classic", "buildkit"])
def path_env(request, buildx_config) -> dict[str, str]:
    """The environment that selects a build path; the build's stderr says which one it took."""
    if request.param == "classic":
        return {"DOCKER_BUILDKIT": "0"}
    return {"DOCKER_CONFIG": str(buildx_config)}


def _ctx_dirs(cache: Path) -> set[Path]:
    return set(cache.glob("imagegen-ctx-*"))


def _cache_root() -> Path:
    return Path(os.environ.get("IMAGEGEN_CACHE") or Path.home() / ".cache" / "imagegen")


class Build:
    """`imagegen build` in a subprocess, its stderr read line by line as it comes."""

    def __init__(self, engine: SecondEngine, extra_env: dict | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if k not in ("DOCKER_BUILDKIT", "DOCKER_CONFIG")}
        env = {**base, "DOCKER_HOST": engine.host, "NO_COLOR": "1", **(extra_env or {})}
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-m", "imagegen", "build", "--variant", CELL, "--no-test",
                                      "--no-cache"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.events: dict[str, threading.Event] = {}
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def when(self, needle: str) -> threading.Event:
        return self.events.setdefault(needle, threading.Event())

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            for needle, ev in list(self.events.items()):
                if needle in line:
                    ev.set()

    def finish(self, timeout: float = 900) -> tuple[int, str]:
        self.proc.stdout.read()
        rc = self.proc.wait(timeout=timeout)
        self._t.join(timeout=30)
        stderr = "\n".join(self.lines)
        wanted = "building with the classic builder" if self.env.get("DOCKER_BUILDKIT") == "0" else \
            "building with BuildKit"
        assert wanted in stderr, stderr[-2000:]
        return rc, stderr


def _one_error_line(stderr: str) -> str:
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one error line, got {errors!r}\n{stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def _assert_nothing_left(engine: SecondEngine, ctx_before: set[Path], *, dangling: bool = True,
                         root: Path | None = None) -> None:
    """No tag, container or build context left; with `dangling`, no image either but the bases the
    test loaded (a failed build removes the step images it made)."""
    c = engine.client()
    if dangling:
        left = [i.short_id for i in c.images.list(filters={"dangling": True})]
        assert left == [], f"the failed build left dangling images: {left}"
    tagged = [t for i in c.images.list() for t in i.tags if t.startswith(CELL.split(":")[0])]
    assert tagged == [], f"a tag was created or moved: {tagged}"
    assert c.containers.list(all=True) == [], [(x.short_id, x.status) for x in c.containers.list(all=True)]
    assert _ctx_dirs(root or _cache_root()) - ctx_before == set(), "a temporary build context was left"


def test_engine_stopped_mid_build(cell, base_refs, path_env):
    eng = SecondEngine().start()
    try:
        eng.load_from(docker.from_env(), base_refs)
        ctx_before = _ctx_dirs(_cache_root())
        b = Build(eng, path_env)
        # the first RUN step (a live container in the engine) has started
        assert b.when(" RUN ").wait(600), "\n".join(b.lines[-20:])
        time.sleep(4)
        eng.kill()
        rc, stderr = b.finish()
        assert rc != 0
        line = _one_error_line(stderr)
        assert "engine" in line and "stopped answering mid-build" in line and "nothing was tagged" in line, line
        # the engine comes back: the container it was running is removed by the next imagegen that
        # reaches it (recorded in the leftovers journal), and nothing was tagged
        eng.start()
        subprocess.run([sys.executable, "-c", "from imagegen import engine; engine.client()"], cwd=ROOT,
                       env={**os.environ, "DOCKER_HOST": eng.host}, check=True, timeout=120)
        _assert_nothing_left(eng, ctx_before, dangling=False)  # a dead engine removes nothing
    finally:
        eng.close()


def test_disk_full_mid_build(cell, base_refs, path_env):
    # bases take ~195 MB: 330 MB leaves too little for the wheels and the environment
    eng = SecondEngine(data_size_mb=330).start()
    try:
        eng.load_from(docker.from_env(), base_refs)
        ctx_before = _ctx_dirs(_cache_root())
        rc, stderr = Build(eng, path_env).finish()
        assert rc != 0
        line = _one_error_line(stderr)
        assert "disk full" in line, line
        _assert_nothing_left(eng, ctx_before)
    finally:
        eng.close()


def test_corrupt_wheel_in_cache(cell, base_refs, tmp_path, monkeypatch, path_env):
    """Bit rot after verification: the cached wheel keeps its size, mtime and inode, so the cache's
    stamp still vouches for it; the build's hash check catches it, names it, and evicts it."""
    real = _cache_root()
    lk = lock_mod.read_lock(ROOT / "locks" / f"{cell.id}.txt")
    wheelhouse.fetch_many([lk])  # the wheels (builder tools included) are in the user's cache
    private = tmp_path / "cache"
    # a private cache with copies of the user's verified wheels, one of which will rot
    victim = next(w for w in lk.wheels if w.filename.startswith("flatbuffers-"))
    for w in lk.all_wheels():
        src = real / "wheels" / "sha256" / w.sha256[:2] / w.sha256 / w.filename
        dst = private / "wheels" / "sha256" / w.sha256[:2] / w.sha256 / w.filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    for sub in ("sonames", "debian"):
        if (real / sub).exists():
            (private / sub).symlink_to(real / sub)
    vpath = private / "wheels" / "sha256" / victim.sha256[:2] / victim.sha256 / victim.filename
    with monkeypatch.context() as mp:
        mp.setenv("IMAGEGEN_CACHE", str(private))
        assert wheelhouse.cached(victim) == vpath  # verified once, stamp written
    st = vpath.stat()
    with open(vpath, "r+b") as fh:  # flip one byte in the middle, keep size and mtime
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(vpath, ns=(st.st_atime_ns, st.st_mtime_ns))

    eng = SecondEngine().start()
    try:
        eng.load_from(docker.from_env(), base_refs)
        ctx_before = _ctx_dirs(private)
        rc, stderr = Build(eng, {"IMAGEGEN_CACHE": str(private), **path_env}).finish()
        assert rc != 0
        line = _one_error_line(stderr)
        assert victim.filename in line and "corrupt" in line and "run the build again" in line, line
        assert not vpath.exists(), "the corrupt wheel is still in the cache"
        _assert_nothing_left(eng, ctx_before, root=private)
        # the user's own cache copy was never touched
        assert wheelhouse.sha256_file(real / "wheels" / "sha256" / victim.sha256[:2] / victim.sha256
                                      / victim.filename) == victim.sha256
    finally:
        eng.close()
