"""Retries under registry faults: the classifier (`registry.classify_*`) on real error texts and bodies,
the retry bound (`RetryPolicy`: attempts, total seconds, Retry-After, the floor after a 429), the engine
push's loop with a fake engine stream, and imagegen's own registry calls (`Registry.get_manifest`,
`put_manifest`, as `publish` uses them) through a fault-injecting proxy (tests/engine/fault_proxy.py) in
front of Debian's `docker-registry` on loopback: no Docker engine."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests

ENGINE_TESTS = Path(__file__).resolve().parent.parent / "engine"
sys.path.insert(0, str(ENGINE_TESTS))
from fault_proxy import Fault, FaultProxy, error_body  # noqa: E402
from registry_fixture import LocalRegistry, upload_blob  # noqa: E402

from imagegen import publish  # noqa: E402
from imagegen.errors import ImagegenError  # noqa: E402
from imagegen.registry import (  # noqa: E402
    Failure,
    Registry,
    RegistryError,
    RetryPolicy,
    classify_engine_error,
    classify_exception,
    classify_response,
    parse_retry_after,
)

# --- the classifier ------------------------------------------------------------------------------

# (text as the engine streams it, transient, throttled); the texts are the engine's and the registry's:
# distribution's errcode rendering ("<code lowercased, _ as space>: <message>"), docker's
# "received unexpected HTTP status", containerd's "unexpected status from ... request", Docker Hub's 429
ENGINE_TEXTS = [
    ("toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating "
     "and upgrading: https://www.docker.com/increase-rate-limit", True, True),
    ("toomanyrequests: too many requests", True, True),
    ("unknown blob", True, False),
    ("blob unknown: blob unknown to registry", True, False),
    ("manifest blob unknown: blob unknown to registry", True, False),
    ("blob upload unknown: blob upload unknown to registry", True, False),
    ("unknown: unknown error", True, False),
    ("received unexpected HTTP status: 500 Internal Server Error", True, False),
    ("received unexpected HTTP status: 502 Bad Gateway", True, False),
    ("error parsing HTTP 503 response body: invalid character '<' looking for beginning of value: \"<html>\"",
     True, False),
    ('failed commit on ref "manifest-sha256:0123": unexpected status from PUT request to '
     "http://127.0.0.1:5000/v2/imagegen/x/manifests/1.0: 429 Too Many Requests", True, True),
    ('Put "http://127.0.0.1:5000/v2/imagegen/x/blobs/uploads/": dial tcp 127.0.0.1:5000: connect: '
     "connection refused", True, False),
    ("read tcp 127.0.0.1:40312->127.0.0.1:5000: read: connection reset by peer", True, False),
    ("EOF", True, False),
    ("toomanyrequests", True, True),  # engine 20.10's whole text for a 429 with a TOOMANYREQUESTS body
    ("unknown blob", True, False),  # the distribution client's ErrBlobUnknown (a commit never stored)
    ("net/http: TLS handshake timeout", True, False),
    ("unauthorized: authentication required", False, False),
    ("denied: requested access to the resource is denied", False, False),
    ("errors:\ndenied: requested access to the resource is denied\nunauthorized: authentication required\n",
     False, False),
    ("name unknown: repository name not known to registry", False, False),
    ("manifest invalid: manifest invalid", False, False),
    ("tag invalid: manifest tag did not match URI", False, False),
    ("no basic auth credentials", False, False),
    ("received unexpected HTTP status: 403 Forbidden", False, False),
    ('Get "https://registry.example/v2/": x509: certificate signed by unknown authority', False, False),
    ('Get "https://127.0.0.1:5000/v2/": http: server gave HTTP response to HTTPS client', False, False),
]


@pytest.mark.parametrize("text, transient, throttled", ENGINE_TEXTS, ids=[t[0][:40] for t in ENGINE_TEXTS])
def test_engine_error_texts_are_classified_by_code_and_status(text, transient, throttled):
    f = classify_engine_error(text)
    assert (f.transient, f.throttled) == (transient, throttled), f
    assert "\n" not in f.reason and f.reason


def test_engine_error_detail_code_and_engine_api_status():
    # errorDetail carries a message (and sometimes a numeric code) next to `error`
    assert classify_engine_error("x", {"message": "toomanyrequests: slow down"}).throttled
    assert classify_engine_error("something", {"message": "something", "code": 503}).transient
    assert not classify_engine_error("something", {"message": "something", "code": 401}).transient
    # the engine's own API refusing the request (no such local image) is ours; its 500 is not
    assert not classify_engine_error("An image does not exist locally with the tag: x", api_status=404).transient
    assert classify_engine_error("write /var/lib/docker/tmp: no space left", api_status=500).transient
    # multi-line: one line in the message, the codes of every line count
    f = classify_engine_error("errors:\nblob unknown: blob unknown to registry\ndenied: no\n")
    assert not f.transient and f.reason == "blob unknown: blob unknown to registry; denied: no"
    # "permission denied" is not the code DENIED
    assert classify_engine_error("open /x: permission denied").transient


def _response(status: int, body: bytes = b"", headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.headers.update(headers or {})
    return r


@pytest.mark.parametrize("status, code, transient", [
    (404, "BLOB_UNKNOWN", True),
    (404, "BLOB_UPLOAD_UNKNOWN", True),
    (400, "MANIFEST_BLOB_UNKNOWN", True),
    (429, "TOOMANYREQUESTS", True),
    (503, "UNAVAILABLE", True),
    (500, "UNKNOWN", True),
    (500, None, True),
    (502, None, True),
    (408, None, True),
    (401, "UNAUTHORIZED", False),
    (403, "DENIED", False),
    (404, "NAME_UNKNOWN", False),
    (404, "MANIFEST_UNKNOWN", False),
    (400, "MANIFEST_INVALID", False),
    (400, "TAG_INVALID", False),
    (500, "DENIED", False),  # the code wins over the status
    (400, None, False),
    (404, None, False),
    (409, "VENDOR_SPECIFIC", False),  # an unlisted code counts as its status
    (503, "VENDOR_SPECIFIC", True),
])
def test_http_failures_are_classified_by_code_then_status(status, code, transient):
    f = classify_response(_response(status, error_body(code) if code else b""))
    assert f.transient is transient, f
    assert f.reason == f"HTTP {status}" + (f" {code}" if code else "")


def test_http_answers_and_retry_after():
    assert classify_response(_response(200)) is None and classify_response(_response(307)) is None
    f = classify_response(_response(429, b"", {"Retry-After": "7"}))
    assert f.transient and f.throttled and f.retry_after == 7
    assert classify_response(_response(503, b"<html>busy</html>", {"Retry-After": "3"})).retry_after == 3


def test_retry_after_seconds_and_http_date():
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True), now) == 42
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0  # in the past: now
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None
    assert parse_retry_after("-3", now) is None


def test_request_exceptions():
    assert classify_exception(requests.ConnectionError("refused")).transient
    assert classify_exception(requests.Timeout()).transient
    assert classify_exception(requests.exceptions.ChunkedEncodingError()).transient
    assert not classify_exception(requests.exceptions.InvalidURL()).transient
    assert not classify_exception(requests.exceptions.SSLError("certificate verify failed")).transient


# --- the bound -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_bound_attempts_total_seconds_retry_after_and_floor():
    clock = FakeClock()
    plain, throttled = Failure(True, "HTTP 503"), Failure(True, "HTTP 429", throttled=True)
    r = RetryPolicy(attempts=4, backoff=1, max_delay=3, max_total=100).start(clock)
    assert [r.next_delay(plain) for _ in range(4)] == [1, 2, 3, None]
    assert r.stop == "attempts" and r.summary() == "after 4 tries"
    # Retry-After is honoured beyond max_delay; a 429 without it waits the floor
    r = RetryPolicy(attempts=5, backoff=1, max_delay=3, max_total=100, throttle_floor=10).start(clock)
    assert r.next_delay(Failure(True, "x", True, retry_after=20)) == 20
    assert r.next_delay(throttled) == 10
    assert r.next_delay(Failure(True, "x", retry_after=0)) == 3  # never shorter than the backoff
    # a wait that would pass max_total is not started
    r = RetryPolicy(attempts=10, backoff=1, max_total=30).start(clock)
    assert r.next_delay(Failure(True, "x", True, retry_after=31)) is None and r.stop == "time"
    assert "30 s retry bound" in r.summary()
    # the clock counts too (time spent in requests)
    r = RetryPolicy(attempts=10, backoff=1, max_total=30).start(clock)
    assert r.next_delay(plain) == 1
    clock.now += 29.5
    assert r.next_delay(plain) is None and r.stop == "time"
    # not transient: no retry, whatever is left
    r = RetryPolicy().start(clock)
    assert r.next_delay(Failure(False, "HTTP 401")) is None and r.stop == ""


# --- the engine push's loop (a fake engine stream) -----------------------------------------------


class FakeEngine:
    def __init__(self, streams):
        self.streams = list(streams)
        self.pushes = 0

    def push(self, repo, tag=None, stream=False, decode=False, auth_config=None):
        self.pushes += 1
        yield from self.streams.pop(0)


def _error(text):
    return [{"status": "Preparing", "id": "abc"}, {"errorDetail": {"message": text}, "error": text}]


OK = [{"status": "Pushed", "id": "abc"}, {"aux": {"Tag": "1", "Digest": "sha256:" + "d" * 64, "Size": 1}}]


@pytest.mark.parametrize("text, floor", [
    ("toomanyrequests: You have reached your pull rate limit.", True),
    ("unknown blob", False),
    ("blob unknown: blob unknown to registry", False),
    ("received unexpected HTTP status: 503 Service Unavailable", False),
])
def test_engine_push_retries_registry_side_errors(monkeypatch, text, floor):
    fake = FakeEngine([_error(text), OK])
    monkeypatch.setattr("imagegen.engine.api", lambda: fake)
    slept = []
    policy = RetryPolicy(attempts=3, backoff=0.5, throttle_floor=10)
    digest = publish.engine_push("127.0.0.1:1/x", "1", auth=None, retry=policy, sleep=slept.append)
    assert digest == "sha256:" + "d" * 64 and fake.pushes == 2
    assert slept == ([10] if floor else [0.5])


@pytest.mark.parametrize("text", ["denied: requested access to the resource is denied",
                                  "unauthorized: authentication required", "no basic auth credentials",
                                  "name unknown: repository name not known to registry"])
def test_engine_push_does_not_retry_the_clients_errors(monkeypatch, text):
    fake = FakeEngine([_error(text), OK])
    monkeypatch.setattr("imagegen.engine.api", lambda: fake)
    slept = []
    with pytest.raises(ImagegenError, match=r"push of 127\.0\.0\.1:1/x:1 failed: ") as e:
        publish.engine_push("127.0.0.1:1/x", "1", auth=None, retry=RetryPolicy(attempts=3), sleep=slept.append)
    assert fake.pushes == 1 and slept == [] and "after" not in str(e.value)


def test_engine_push_gives_up_at_the_bound(monkeypatch):
    fake = FakeEngine([_error("toomanyrequests: slow down")] * 5)
    monkeypatch.setattr("imagegen.engine.api", lambda: fake)
    slept = []
    policy = RetryPolicy(attempts=5, backoff=1, throttle_floor=10, max_total=25)
    with pytest.raises(ImagegenError, match=r"failed after 3 tries \(the next wait would pass the 25 s retry bound\)"
                                            r": toomanyrequests: slow down"):
        publish.engine_push("127.0.0.1:1/x", "1", auth=None, retry=policy, sleep=slept.append)
    assert slept == [10, 10] and fake.pushes == 3


# --- imagegen's registry calls through a fault-injecting proxy -----------------------------------

REPO = "imagegen/faults"
TAG = "1.0.0-cpu-slim"


def _blob(reg: str, data: bytes) -> dict:
    return upload_blob(reg, REPO, data)


@pytest.fixture(scope="module")
def registry():
    """A loopback registry holding REPO:TAG (a one-layer OCI image written through the HTTP API)."""
    with LocalRegistry() as reg:
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers",
                                                                                "diff_ids": []}}).encode()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": dict(_blob(reg.host, config), mediaType="application/vnd.oci.image.config.v1+json"),
                    "layers": [dict(_blob(reg.host, b"layer bytes"),
                                    mediaType="application/vnd.oci.image.layer.v1.tar")]}
        r = requests.put(f"http://{reg.host}/v2/{REPO}/manifests/{TAG}", data=json.dumps(manifest).encode(),
                         headers={"Content-Type": manifest["mediaType"]}, timeout=10)
        assert r.status_code == 201, r.text
        yield reg


def _registry(host: str, policy: RetryPolicy, notes: list | None = None) -> Registry:
    return Registry(host, retry=policy, on_retry=(notes.append if notes is not None else None))


def _tag_status(reg, tag: str) -> int:
    return requests.head(f"http://{reg.host}/v2/{REPO}/manifests/{tag}", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code


def test_429_with_retry_after_is_retried_after_it(registry):
    fault = Fault("GET", rf"/manifests/{TAG}$", status=429, code="TOOMANYREQUESTS", headers={"Retry-After": "2"})
    notes = []
    with FaultProxy(registry.host, [fault]) as proxy:
        m = _registry(proxy.host, RetryPolicy(attempts=3, backoff=0.05), notes).get_manifest(REPO, TAG)
    assert m is not None and m.config_digest
    first, second = proxy.requests("GET", "/manifests/")
    assert (first.status, first.injected, second.status, second.injected) == (429, True, 200, False)
    assert second.t - first.t >= 2.0
    assert notes == [f"GET manifest {proxy.host}/{REPO}:{TAG}: HTTP 429 TOOMANYREQUESTS (Retry-After 2s); "
                     "retrying in 2s"]


def test_429_with_retry_after_past_the_bound_fails_at_once(registry):
    fault = Fault("GET", rf"/manifests/{TAG}$", status=429, code="TOOMANYREQUESTS",
                  headers={"Retry-After": "3600"})
    with FaultProxy(registry.host, [fault]) as proxy:
        with pytest.raises(RegistryError, match=r"failed after 1 try \(the next wait would pass the 5 s retry bound"
                                                r"\): HTTP 429 TOOMANYREQUESTS"):
            _registry(proxy.host, RetryPolicy(attempts=3, backoff=0.05, max_total=5)).get_manifest(REPO, TAG)
    assert len(proxy.requests("GET", "/manifests/")) == 1


def test_401_is_not_retried(registry):
    fault = Fault("PUT", r"/manifests/latest-cpu$", status=401, code="UNAUTHORIZED", times=5)
    with FaultProxy(registry.host, [fault]) as proxy:
        reg = _registry(proxy.host, RetryPolicy(attempts=4, backoff=0.05))
        m = reg.get_manifest(REPO, TAG)
        with pytest.raises(RegistryError, match=r"requires authentication \(401\): UNAUTHORIZED"):
            reg.put_manifest(REPO, "latest-cpu", m)
    assert [(e.method, e.status) for e in proxy.requests(path="/manifests/latest-cpu")] == [("PUT", 401)]
    assert _tag_status(registry, "latest-cpu") == 404


def test_manifest_invalid_and_absent_tag_are_not_retried(registry):
    fault = Fault("PUT", r"/manifests/bad$", status=400, code="MANIFEST_INVALID", times=5)
    with FaultProxy(registry.host, [fault]) as proxy:
        reg = _registry(proxy.host, RetryPolicy(attempts=4, backoff=0.05))
        assert reg.get_manifest(REPO, "no-such-tag") is None  # 404 MANIFEST_UNKNOWN: an answer
        with pytest.raises(RegistryError, match="HTTP 400: MANIFEST_INVALID"):
            reg.put_manifest(REPO, "bad", reg.get_manifest(REPO, TAG))
    assert [e.status for e in proxy.requests("GET", "/manifests/no-such-tag")] == [404]
    assert [e.status for e in proxy.requests("PUT", "/manifests/bad")] == [400]


def test_503_is_retried_up_to_the_bound(registry):
    fault = Fault("GET", rf"/manifests/{TAG}$", status=503, code="UNAVAILABLE", times=99)
    with FaultProxy(registry.host, [fault]) as proxy:
        with pytest.raises(RegistryError, match=rf"GET manifest {proxy.host}/{REPO}:{TAG} failed after 3 tries: "
                                                r"HTTP 503 UNAVAILABLE from"):
            _registry(proxy.host, RetryPolicy(attempts=3, backoff=0.2)).get_manifest(REPO, TAG)
    log = proxy.requests("GET", "/manifests/")
    assert [e.status for e in log] == [503, 503, 503]
    assert log[1].t - log[0].t >= 0.2 and log[2].t - log[1].t >= 0.4


def test_503_stops_at_the_total_seconds_bound(registry):
    fault = Fault("GET", rf"/manifests/{TAG}$", status=503, code=None, times=99)
    with FaultProxy(registry.host, [fault]) as proxy:
        with pytest.raises(RegistryError, match=r"failed after 3 tries \(the next wait would pass the 1 s retry bound"):
            _registry(proxy.host, RetryPolicy(attempts=10, backoff=0.2, max_total=1)).get_manifest(REPO, TAG)
    log = proxy.requests("GET", "/manifests/")
    assert len(log) == 3 and log[-1].t - log[0].t < 1.0  # waits 0.2 + 0.4; the next (0.8) would pass 1 s


@pytest.mark.parametrize("status, code", [(404, "BLOB_UNKNOWN"), (400, "MANIFEST_BLOB_UNKNOWN"),
                                          (404, "BLOB_UPLOAD_UNKNOWN")])
def test_blob_unknown_is_retried(registry, status, code):
    alias = f"alias-{code.lower().replace('_', '-')}"
    fault = Fault("PUT", rf"/manifests/{alias}$", status=status, code=code, times=2)
    with FaultProxy(registry.host, [fault]) as proxy:
        reg = _registry(proxy.host, RetryPolicy(attempts=4, backoff=0.1))
        m = reg.get_manifest(REPO, TAG)
        assert reg.put_manifest(REPO, alias, m) == m.digest
    log = proxy.requests("PUT", rf"/manifests/{alias}$")
    assert [(e.status, e.injected) for e in log] == [(status, True), (status, True), (201, False)]
    assert log[1].t - log[0].t >= 0.1 and log[2].t - log[1].t >= 0.2
    assert _tag_status(registry, alias) == 200


def test_dropped_connection_is_retried(registry):
    fault = Fault("GET", rf"/manifests/{TAG}$", status="drop")
    with FaultProxy(registry.host, [fault]) as proxy:
        assert _registry(proxy.host, RetryPolicy(attempts=2, backoff=0.05)).get_manifest(REPO, TAG) is not None
    assert [e.status for e in proxy.requests("GET", "/manifests/")] == ["drop", 200]
