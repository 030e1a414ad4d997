"""A fault-injecting HTTP proxy on loopback, in front of a registry (Debian's `docker-registry`, see
`registry_fixture.LocalRegistry`), for the retry tests of imagegen's own registry calls.

`Fault(method, path, nth=N, times=K, status=..., code=..., headers=...)` answers the Nth..(N+K-1)th
requests whose method is `method` and whose path matches the regex `path` (searched) with `status`, a
distribution-spec JSON error body (`{"errors": [{"code": code, "message": ..., "detail": null}]}`, or
`body` verbatim) and `headers` (e.g. `{"Retry-After": "2"}`), after `delay` seconds (a registry that
stalls); `status="drop"` closes the connection without an answer; `status="kill"` calls the proxy's
`on_kill` (e.g. `LocalRegistry.kill`), drops the connection and stops listening, as a registry host
gone down in mid-push. Every other request is forwarded to the registry unchanged (Host header kept, so the
registry's Location URLs point back at the proxy).

`FaultProxy(upstream, referrers=True)` also plays an OCI 1.1 registry's referrers API in front of one
that has none (Debian's distribution 2.8; no registry with the API is installable here): a manifest PUT
whose JSON has a `subject` is answered with the `OCI-Subject` header once the registry stored it, and
`GET /v2/<name>/referrers/<digest>` answers an OCI index of those manifests' descriptors
(distribution-spec 1.1, "Listing Referrers"); any other request is forwarded as usual.

`proxy.log` lists every request as a `Logged(t, method, path, status, injected)`, `t` being
`time.monotonic()` when the request arrived; `proxy.requests(method, path)` filters it.
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the message the registry sends with each code (distribution's registry/api/v2/errors.go, errcode)
MESSAGES = {
    "BLOB_UNKNOWN": "blob unknown to registry",
    "BLOB_UPLOAD_UNKNOWN": "blob upload unknown to registry",
    "MANIFEST_BLOB_UNKNOWN": "blob unknown to registry",
    "MANIFEST_INVALID": "manifest invalid",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "NAME_UNKNOWN": "repository name not known to registry",
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "TOOMANYREQUESTS": "too many requests",
    "UNAVAILABLE": "service unavailable",
    "UNKNOWN": "unknown error",
}


def error_body(code: str, message: str | None = None) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message or MESSAGES.get(code, code.lower()),
                                   "detail": None}]}).encode()


@dataclass
class Fault:
    method: str
    path: str  # regex, searched in the request's path (query included)
    status: int | str = 500  # an HTTP status, "drop" or "kill"
    code: str | None = "UNKNOWN"  # distribution-spec error code of the JSON body; None: empty body
    body: bytes | None = None  # the body verbatim (overrides `code`)
    headers: dict = field(default_factory=dict)
    nth: int = 1  # the first matching request (1-based) to answer with the fault
    times: int = 1  # how many matching requests in a row get it
    delay: float = 0.0  # seconds to wait before answering
    seen: int = 0  # matching requests so far
    fired: int = 0  # faults injected so far

    def __post_init__(self):
        self._rx = re.compile(self.path)

    def take(self, method: str, path: str) -> bool:
        if method != self.method or not self._rx.search(path):
            return False
        self.seen += 1
        if self.nth <= self.seen < self.nth + self.times:
            self.fired += 1
            return True
        return False

    def payload(self) -> bytes:
        if self.body is not None:
            return self.body
        return error_body(self.code) if self.code else b""


@dataclass(frozen=True)
class Logged:
    t: float
    method: str
    path: str
    status: int | str  # what the client got (the registry's status, the injected one, or "drop")
    injected: bool


class FaultProxy:
    def __init__(self, upstream: str, faults: list[Fault] | None = None, on_kill=None, *, referrers: bool = False):
        self.upstream = upstream
        self.on_kill = on_kill
        self.referrers = referrers
        self._referrers: dict[tuple[str, str], list[dict]] = {}  # (repo, subject digest) -> descriptors
        self.faults = list(faults or [])
        self.log: list[Logged] = []
        self._lock = threading.Lock()
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
                t = time.monotonic()
                body = self._body()
                listed = proxy._referrers_answer(self.command, self.path)
                if listed is not None:
                    proxy._record(t, self.command, self.path, 200, True)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/vnd.oci.image.index.v1+json")
                    self.send_header("Content-Length", str(len(listed)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(listed)
                    return
                with proxy._lock:
                    fault = next((f for f in proxy.faults if f.take(self.command, self.path)), None)
                if fault is not None:
                    proxy._record(t, self.command, self.path, fault.status, True)
                    time.sleep(fault.delay)
                    if fault.status == "kill" and proxy.on_kill:
                        proxy.on_kill()
                    if fault.status == "kill":
                        threading.Thread(target=proxy.close, daemon=True).start()  # the host is gone
                    if fault.status in ("drop", "kill"):
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    data = fault.payload()
                    self.send_response(int(fault.status))
                    if data:
                        self.send_header("Content-Type", "application/json")
                    for k, v in fault.headers.items():
                        self.send_header(k, str(v))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
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
                    proxy._record(t, self.command, self.path, 502, False)
                    self.close_connection = True
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy._record(t, self.command, self.path, resp.status, False)
                subject = proxy._subject_of(self.command, self.path, body, resp.status, self.headers)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "keep-alive", "content-length"):
                        self.send_header(k, v)
                if subject:
                    self.send_header("OCI-Subject", subject)
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

    _REFERRERS = re.compile(r"^/v2/(.+)/referrers/(sha256:[0-9a-f]{64})(\?.*)?$")
    _MANIFEST = re.compile(r"^/v2/(.+)/manifests/([^/?]+)$")

    def _referrers_answer(self, method: str, path: str) -> bytes | None:
        m = self._REFERRERS.match(path) if self.referrers and method in ("GET", "HEAD") else None
        if not m:
            return None
        with self._lock:
            manifests = list(self._referrers.get((m.group(1), m.group(2)), []))
        return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": manifests}).encode()

    def _subject_of(self, method: str, path: str, body: bytes, status: int, headers) -> str | None:
        """A manifest PUT the registry stored whose JSON names a subject: remember it, return the subject."""
        m = self._MANIFEST.match(path) if self.referrers and method == "PUT" and status == 201 else None
        if not m:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        subject = (doc.get("subject") or {}).get("digest") if isinstance(doc, dict) else None
        if not subject:
            return None
        import hashlib

        desc = {"mediaType": doc.get("mediaType") or headers.get("Content-Type"),
                "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "size": len(body),
                "artifactType": doc.get("artifactType") or (doc.get("config") or {}).get("mediaType"),
                **({"annotations": doc["annotations"]} if doc.get("annotations") else {})}
        with self._lock:
            listed = self._referrers.setdefault((m.group(1), subject), [])
            if desc["digest"] not in [d["digest"] for d in listed]:
                listed.append(desc)
        return subject

    def _record(self, t, method, path, status, injected) -> None:
        with self._lock:
            self.log.append(Logged(t, method, path, status, injected))

    def requests(self, method: str | None = None, path: str | None = None) -> list[Logged]:
        """The logged requests with this method and a path matching the regex `path`, in order."""
        rx = re.compile(path) if path else None
        with self._lock:
            return [e for e in self.log if (method is None or e.method == method) and (rx is None or rx.search(e.path))]

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

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
