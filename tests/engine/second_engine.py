"""A second, private Docker engine for fault tests: its own dockerd, socket, exec root and data
root (optionally on a small tmpfs, to fill the disk). The user's engine is never stopped or touched.

Needs root (dockerd) — the test suite's setup runs as root — and Debian's docker.io.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker


class SecondEngine:
    """One throw-away dockerd. `host` is the DOCKER_HOST value for it.

    data_size_mb: put the data root on a tmpfs of that size (decimal MB) so a build can fill it.
    """

    def __init__(self, data_size_mb: int | None = None) -> None:
        # short paths: containerd's socket under the exec root must fit a unix socket path
        self.root = Path(tempfile.mkdtemp(prefix="ig-eng-", dir="/tmp"))
        self.data = self.root / "data"
        self.data.mkdir()
        self.data_size_mb = data_size_mb
        self.sock = self.root / "d.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "dockerd.log"
        self._mounted = False
        self._starts = 0

    def start(self, timeout: float = 60) -> "SecondEngine":
        if self.data_size_mb and not self._mounted:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.data_size_mb}m", "tmpfs", str(self.data)],
                           check=True, capture_output=True)
            self._mounted = True
        argv = [shutil.which("dockerd") or "dockerd", "--data-root", str(self.data),
                "--exec-root", str(self.root / f"x{self._starts}"), "--pidfile", str(self.root / "pid"), "-H", self.host,
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
                "--storage-driver=overlay2"]
        self._starts += 1  # a fresh exec root per start: a killed containerd leaves its socket behind
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"second dockerd exited {self.proc.returncode}: {self.log.read_text()[-800:]}")
            try:
                self.client().ping()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError(f"second dockerd did not answer within {timeout}s: {self.log.read_text()[-800:]}")

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=120)

    def kill(self) -> None:
        """Stop the engine the hard way (its containerd too), as a crash or an OOM kill would."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self.proc = None
        # the shims of running containers outlive dockerd: end them too
        subprocess.run(["pkill", "-KILL", "-f", str(self.root)], capture_output=True)
        time.sleep(0.5)

    def load_from(self, main: docker.DockerClient, refs: list[str]) -> None:
        """Copy images from the user's engine (read-only there: `docker save`) into this one."""
        for ref in refs:
            data = main.images.get(ref).save(named=True)
            self.client().images.load(b"".join(data))

    def close(self) -> None:
        self.kill()
        for _ in range(3):
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(self.root))]
            for mp in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mp], capture_output=True)
            if not mounts:
                break
        shutil.rmtree(self.root, ignore_errors=True)
