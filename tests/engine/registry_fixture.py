"""A throwaway local registry (Debian's `docker-registry`, distribution 2.x) for engine tests.

Runs as a plain process on 127.0.0.1:<free port> with its own config and storage in a temp dir:
no systemd, nothing left behind. dockerd treats 127.0.0.0/8 registries as insecure-allowed, so
push and pull over plain HTTP work without daemon configuration.

- `LocalRegistry(htpasswd=(user, password))`: htpasswd basic auth (bcrypt entry written with the
  PyPI package `bcrypt`, which the registry requires).
- `kill()` stops the process but keeps its storage (a registry gone in mid-push); `start()` again
  serves the same storage.
- The fault-injecting proxy that goes in front of it: `fault_proxy.FaultProxy`.
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

AUTH = """auth:
  htpasswd:
    realm: imagegen-test
    path: {path}
"""


def upload_blob(host: str, repo: str, data: bytes) -> dict:
    """Upload ``data`` as a blob of ``repo`` through the registry's HTTP API (monolithic POST + PUT);
    returns its descriptor fields {"digest", "size"}."""
    import hashlib

    import requests

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=10)
    assert r.status_code == 202, r.text
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{host}{loc}"
    r = requests.put(loc, params={"digest": digest}, data=data, timeout=10,
                     headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return {"digest": digest, "size": len(data)}


def push_image(host: str, repo: str, tag: str) -> tuple[bytes, str]:
    """A one-layer OCI image (config labelled `m=<tag>`, layer bytes `<tag>`) pushed as `repo:tag` through
    the HTTP API; returns (the manifest's bytes, its digest)."""
    import hashlib
    import json

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"m": tag}},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    oci = "application/vnd.oci.image.manifest.v1+json"
    doc = {"schemaVersion": 2, "mediaType": oci,
           "config": dict(upload_blob(host, repo, config), mediaType="application/vnd.oci.image.config.v1+json"),
           "layers": [dict(upload_blob(host, repo, tag.encode()), mediaType="application/vnd.oci.image.layer.v1.tar")]}
    raw = json.dumps(doc).encode()
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", data=raw, method="PUT",
                                 headers={"Content-Type": oci})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201, resp.status
    return raw, "sha256:" + hashlib.sha256(raw).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    def __init__(self, binary: str = "docker-registry", htpasswd: tuple[str, str] | None = None):
        self.binary = shutil.which(binary) or binary
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="imagegen-registry-"))
        self.proc: subprocess.Popen | None = None
        self.htpasswd = htpasswd

    def start(self, timeout: float = 30) -> "LocalRegistry":
        (self.dir / "storage").mkdir(exist_ok=True)
        cfg = self.dir / "config.yml"
        text = CONFIG.format(root=self.dir / "storage", port=self.port)
        if self.htpasswd:
            import bcrypt

            user, password = self.htpasswd
            entry = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            (self.dir / "htpasswd").write_text(f"{user}:{entry}\n")
            text += AUTH.format(path=self.dir / "htpasswd")
        cfg.write_text(text)
        self.log = open(self.dir / "registry.log", "ab")
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
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and self.htpasswd:
                    return self
                time.sleep(0.2)
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.host} within {timeout}s")

    def kill(self) -> None:
        """Stop serving (SIGKILL, as a crash would), keep the storage."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

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
