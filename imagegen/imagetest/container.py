"""Test containers: started from the image through the Docker SDK, hardened, time-boxed, removed.

Every container:
  - carries label imagegen.test=1 and is force-removed when its test session ends;
  - runs the image's own Python as PID 1 with a bounded sleep (it ends itself after `lifetime`
    seconds even if the test process is killed; auto_remove cleans it up then);
  - drops all capabilities, sets no-new-privileges, has no network (a smoke test that tries to
    download fails), limits memory and pids;
  - gets a read-only root filesystem with a tmpfs /tmp and HOME=/tmp, unless the test needs the
    image's own filesystem semantics (the arbitrary-UID check);
  - sees a read-only bind mount of the session's work dir at /.imagegen-test (probe scripts, the
    framework's smoke script, host-built models and, for shell-less images, a static busybox).
Every exec has a host-side deadline on top of the in-image timeout (probes/run.py): a probe that
hangs kills its container, which is started again for the next check.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import docker.types
import testinfra.host
from testinfra.backend import base as tbase

from .. import elf, flock, paths, settings
from ..errors import EngineError

MOUNT = "/.imagegen-test"
LABELS = {"imagegen.test": "1"}
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox-static/busybox")


def _client():
    from ..engine import client

    return client()


def static_busybox() -> Path | None:
    """A statically linked busybox on the host (Debian: busybox-static), or None.
    A dynamic one could not run in an image without a matching libc."""
    env = settings.BUSYBOX.value()
    for cand in ([env] if env else []) + list(BUSYBOX_CANDIDATES):
        p = Path(cand)
        if p.is_file() and _is_static_elf(p):
            return p
    return None


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header (:mod:`imagegen.elf`)."""
    return elf.is_static_executable(path)


def make_workdir(root: Path | None = None) -> Path:
    """A host directory readable by any UID, mounted read-only into every test container, in ``root``
    (default: ``paths.tmp_parent()``). Owned by this process until :func:`remove_workdir` (or its
    death: the next call reaps those of processes that are gone, see ``flock.make_owned_dir``)."""
    d = flock.make_owned_dir(root or paths.tmp_parent(), paths.TEST_PREFIX)
    d.chmod(0o755)
    probes = Path(__file__).parent / "probes"
    (d / "probes").mkdir()
    for f in probes.glob("*.py"):
        shutil.copyfile(f, d / "probes" / f.name)
    # the stdlib ELF reader the probes import (the same one the builder's prune step uses)
    shutil.copyfile(Path(__file__).parents[1] / "scripts" / "elfmini.py", d / "probes" / "elfmini.py")
    bb = static_busybox()
    if bb:
        shutil.copyfile(bb, d / "busybox")
        (d / "busybox").chmod(0o755)
    for p in d.rglob("*"):
        p.chmod(0o755 if p.is_dir() or p.name == "busybox" else 0o644)
    return d


def remove_workdir(d: Path) -> None:
    """Remove a directory made by :func:`make_workdir` and release it."""
    flock.remove_owned_dir(d)


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    def tail(self, n: int = 3) -> str:
        lines = [x for x in (self.stderr or self.stdout).strip().splitlines() if x.strip()]
        return " | ".join(lines[-n:])[-600:]


@dataclass
class TestContainer:
    """One container for one image and one way of running it (main, arbitrary UID, GPU)."""

    __test__ = False

    image: str
    python_exe: str
    workdir: Path
    user: str | None = None  # None = the image's own USER
    read_only: bool = True
    gpu: bool = False
    lifetime: int = 1800
    env: dict[str, str] = field(default_factory=dict)
    home: str | None = "/tmp"  # HOME forced on a read-only root; None leaves the image's own value
    mem_limit: str = field(default_factory=settings.TEST_MEMORY.value)
    _ctr: Any = None
    starts: int = 0
    last_error: str | None = None

    @property
    def hardening(self) -> dict[str, Any]:
        """The docker-py run() arguments that harden a test container (documented in testing.md)."""
        kw: dict[str, Any] = dict(
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode="none",
            pids_limit=4096,
            mem_limit=self.mem_limit,
        )
        if self.read_only:
            kw["read_only"] = True
            kw["tmpfs"] = {"/tmp": "rw,nosuid,nodev,size=2g,mode=1777"}
        return kw

    @property
    def restarts(self) -> int:
        """How often the container had to be started again (after a probe hung)."""
        return max(0, self.starts - 1)

    def start(self) -> "TestContainer":
        self.starts += 1
        env = dict(self.env)
        if self.read_only and self.home:
            env.setdefault("HOME", self.home)  # the only writable place
        kw = self.hardening
        if self.gpu:
            kw["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if self.user is not None:
            kw["user"] = self.user
        try:
            self._ctr = _client().containers.run(
                self.image,
                entrypoint=[self.python_exe],
                command=["-c", f"import time; time.sleep({int(self.lifetime)})"],
                detach=True,
                auto_remove=True,
                labels=dict(LABELS),
                name=f"imagegen-test-{uuid.uuid4().hex[:10]}",
                environment=env,
                mounts=[docker.types.Mount(MOUNT, str(self.workdir), type="bind", read_only=True)],
                **kw,
            )
        except docker.errors.ImageNotFound:
            raise EngineError(f"image {self.image} is not in the local engine (build it first)") from None
        except docker.errors.APIError as exc:
            self.last_error = _short(exc)
            raise EngineError(f"cannot start a test container from {self.image}: {self.last_error}") from None
        # a python that cannot start (wrong python_exe) exits at once
        time.sleep(0.2)
        if not self.alive():
            raise EngineError(f"test container from {self.image} exited at start: is `{self.python_exe}` on its PATH?")
        return self

    @property
    def id(self) -> str:
        return self._ctr.id if self._ctr is not None else ""

    def alive(self) -> bool:
        if self._ctr is None:
            return False
        try:
            self._ctr.reload()
            return self._ctr.status in ("running", "created")
        except docker.errors.NotFound:
            return False

    def exec(self, argv: list[str], timeout: float = 300, user: str | None = None,
             env: dict[str, str] | None = None) -> ExecResult:
        """Run argv (exec form, no shell) with a host-side deadline. On timeout the container
        is killed and removed (the hung process cannot be trusted to end) and restarted lazily."""
        if not self.alive():
            self.start()
        api = _client().api
        t0 = time.monotonic()
        ex = api.exec_create(self._ctr.id, argv, stdout=True, stderr=True, user=user or "", environment=env)
        box: dict[str, Any] = {}

        def _run() -> None:
            try:
                box["out"] = api.exec_start(ex["Id"], demux=True)
            except Exception as exc:  # engine hiccup: reported as the exec's error
                box["exc"] = exc

        th = threading.Thread(target=_run, daemon=True)
        th.start()
        th.join(timeout)
        secs = time.monotonic() - t0
        if th.is_alive():
            self.remove()
            return ExecResult(124, "", f"timed out after {timeout:g}s; container killed", secs, True)
        if "exc" in box:
            return ExecResult(125, "", f"exec failed: {_short(box['exc'])}", secs)
        out, err = box.get("out") or (b"", b"")
        rc = api.exec_inspect(ex["Id"]).get("ExitCode")
        return ExecResult(rc if rc is not None else 125, (out or b"").decode(errors="replace"),
                          (err or b"").decode(errors="replace"), secs)

    def python(self, script: str, *args: str, timeout: float = 300, inner_timeout: float | None = None,
               env: dict[str, str] | None = None) -> ExecResult:
        """Run a script from the work dir with the image's Python, under probes/run.py's timeout."""
        inner = inner_timeout or max(timeout - 10, 5)
        argv = [self.python_exe, f"{MOUNT}/probes/run.py", str(inner), self.python_exe, f"{MOUNT}/{script}", *args]
        return self.exec(argv, timeout=timeout, env=env)

    def remove(self) -> None:
        if self._ctr is None:
            return
        try:
            self._ctr.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "in progress" not in str(exc):
                raise
        self._ctr = None

    # --- testinfra ---------------------------------------------------------------------------
    def shell(self, image_has_shell: bool) -> list[str] | None:
        # The test busybox first: an image's own /bin/sh (kept for a framework that shells out)
        # comes without coreutils, and testinfra's modules need id, stat, cat, uname.
        if (self.workdir / "busybox").exists():
            return [f"{MOUNT}/busybox", "sh", "-c"]
        if image_has_shell:
            return ["/bin/sh", "-c"]
        return None

    def testinfra_host(self, shell: list[str]) -> testinfra.host.Host:
        return testinfra.host.Host(SDKBackend(self, shell))


class SDKBackend(tbase.BaseBackend):
    """testinfra backend over docker-py exec (no docker CLI), with a chosen shell: the image's
    /bin/sh, or a static busybox from the test mount for shell-less images. Debian's busybox-static
    runs its applets (id, stat, ls, cat, test) from its shell without links on PATH."""

    NAME = "imagegen-docker"

    def __init__(self, ctr: TestContainer, shell: list[str], timeout: float = 120):
        self.ctr = ctr
        self.shell = shell
        self.timeout = timeout
        super().__init__(ctr.image)

    def get_encoding(self) -> str:
        return "utf-8"

    def run(self, command: str, *args: str, **kwargs: Any) -> tbase.CommandResult:
        cmd = self.get_command(command, *args)
        r = self.ctr.exec([*self.shell, cmd], timeout=self.timeout)
        return self.result(r.rc, self.encode(cmd), r.stdout.encode(), r.stderr.encode())


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
