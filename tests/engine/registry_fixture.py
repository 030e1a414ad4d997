"""A throwaway local registry (Debian's `docker-registry`, distribution 2.x) for engine tests.

Runs as a plain process on 127.0.0.1:<free port> with its own config and storage in a temp dir:
no systemd, nothing left behind. dockerd treats 127.0.0.0/8 registries as insecure-allowed, so
push and pull over plain HTTP work without daemon configuration.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CONFIG = """version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    def __init__(self, binary: str = "docker-registry"):
        self.binary = shutil.which(binary) or binary
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="imagegen-registry-"))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "LocalRegistry":
        (self.dir / "storage").mkdir()
        cfg = self.dir / "config.yml"
        cfg.write_text(CONFIG.format(root=self.dir / "storage", port=self.port))
        self.log = open(self.dir / "registry.log", "wb")
        self.proc = subprocess.Popen([self.binary, "serve", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.dir / 'registry.log').read_text()[-500:]}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.host} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
