"""A throwaway local registry (Debian's `docker-registry`, distribution 2.x) for engine tests.

Runs as a plain process on 127.0.0.1:<free port> with its own config and storage in a temp dir:
no systemd, nothing left behind. dockerd treats 127.0.0.0/8 registries as insecure-allowed, so
push and pull over plain HTTP work without daemon configuration.

- `LocalRegistry(htpasswd=(user, password))`: htpasswd basic auth (bcrypt entry written with the
  PyPI package `bcrypt`, which the registry requires).
- `kill()` stops the process but keeps its storage (a registry gone in mid-push); `start()` again
  serves the same storage.
- `FaultProxy(upstream)`: a loopback HTTP proxy in front of a registry that answers some requests
  with an injected fault (`500`, or `kill`: stop the registry, drop the connection and stop
  listening, as a registry host gone down in mid-push) and forwards
  the rest unchanged (Host header kept, so the registry's Location URLs point at the proxy).
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


class FaultProxy:
    """Loopback HTTP/1.1 proxy in front of `upstream` (host:port) that injects faults.

    `rules`: list of dicts `{method, path (regex), times, action}`; `action` is an HTTP status to
    answer (e.g. 500) or `"kill"` (call `on_kill`, drop the connection, stop listening). Each rule fires for its
    first `times` matching requests. `log` lists `(method, path, status or action)` of every request."""

    def __init__(self, upstream: str, rules: list[dict] | None = None, on_kill=None):
        import http.server
        import re as _re
        import threading

        self.upstream = upstream
        self.rules = [dict(r, seen=0, rx=_re.compile(r["path"])) for r in (rules or [])]
        self.on_kill = on_kill
        self.log: list[tuple[str, str, object]] = []
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                import http.client

                body = self._body()
                for r in proxy.rules:
                    if r["method"] == self.command and r["rx"].search(self.path) and r["seen"] < r["times"]:
                        r["seen"] += 1
                        proxy.log.append((self.command, self.path, r["action"]))
                        if r["action"] == "kill":
                            if proxy.on_kill:
                                proxy.on_kill()
                            import threading as _t

                            _t.Thread(target=proxy.close, daemon=True).start()  # the host is gone
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        msg = b'{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}'
                        self.send_response(int(r["action"]))
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                        return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection", "keep-alive", "content-length")}
                headers["Content-Length"] = str(len(body))
                try:
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    proxy.log.append((self.command, self.path, "upstream down"))
                    self.close_connection = True
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy.log.append((self.command, self.path, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "keep-alive", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_PATCH = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop listening (callable from a request handler): later connections are refused."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self.server.shutdown()
            self.server.server_close()

    def __exit__(self, *exc) -> None:
        self.close()
