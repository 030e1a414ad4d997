"""The registry's HTTP API (OCI distribution / Docker Registry v2), through `requests`.

Used by `imagegen publish` to read back the manifest the engine pushed (its digest is the sha256 of
the exact bytes the registry serves) and to PUT those same bytes under each alias, which needs no
layer upload. Docker v2 and OCI manifests and indexes are accepted: every GET sends all four media
types (a narrow Accept makes some registries answer a manifest list with a child manifest; see
shared/FACTS.md).

Authentication: anonymous, HTTP basic, or the bearer-token flow (`WWW-Authenticate: Bearer realm=…`)
with the same credentials. Credentials come from the caller (`publish.credentials`); they are sent
in headers only and never appear in a message, a log line or `repr`.

Retries: connection errors, timeouts, 429 and 5xx are retried with exponential backoff
(`RetryPolicy`); anything else fails at once. Errors raised: `RegistryError` (an ImagegenError,
exit 1), one line, without credentials.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Callable

import requests

from .errors import ImagegenError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX)
ACCEPT = ", ".join(MANIFEST_TYPES)


class RegistryError(ImagegenError):
    """The registry refused a request or could not be reached (after retries)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: `attempts` tries in all, waiting `backoff * 2**i` seconds
    (at most `max_delay`) before try i+2. Applies to the engine push and to every HTTP request."""

    attempts: int = 4
    backoff: float = 1.0
    max_delay: float = 30.0

    def delays(self):
        for i in range(max(self.attempts, 1) - 1):
            yield min(self.backoff * (2 ** i), self.max_delay)


@dataclass(frozen=True)
class Manifest:
    digest: str  # sha256:<hex> of `raw`
    media_type: str
    raw: bytes

    @property
    def json(self) -> dict:
        import json

        return json.loads(self.raw)

    @property
    def config_digest(self) -> str | None:
        """The image config's digest (= the engine's image ID) for a single-image manifest."""
        return (self.json.get("config") or {}).get("digest")

    @property
    def compressed_size(self) -> int | None:
        """Bytes a pull downloads: config + layers as stored (compressed), from the manifest."""
        data = self.json
        if "layers" not in data:
            return None
        return int((data.get("config") or {}).get("size", 0)) + sum(int(x.get("size", 0)) for x in data["layers"])


def _transient(exc: Exception | None, status: int | None) -> bool:
    if exc is not None:
        return isinstance(exc, (requests.ConnectionError, requests.Timeout))
    return status is not None and (status == 429 or status >= 500)


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Registry:
    """One registry host. `auth` is `(username, secret)` or None; never exposed."""

    def __init__(self, host: str, *, auth: tuple[str, str] | None = None, retry: RetryPolicy = RetryPolicy(),
                 timeout: float = 30.0, scheme: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, on_retry: Callable[[str], None] | None = None):
        self.host = host
        self.base = f"{scheme or ('http' if is_loopback(host) else 'https')}://{host}"
        self._auth = auth
        self._token: str | None = None
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep
        self._on_retry = on_retry
        self._session = requests.Session()
        self._session.trust_env = False  # a registry on loopback must not go through an HTTP proxy

    def __repr__(self) -> str:
        return f"Registry({self.host!r}, auth={'yes' if self._auth else 'no'})"

    # --- transport ---------------------------------------------------------------------------

    def _headers(self, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _send(self, method: str, path: str, *, what: str, headers: dict | None = None,
              data: bytes | None = None) -> requests.Response:
        url = self.base + path
        delays = self.retry.delays()
        while True:
            exc: Exception | None = None
            resp = None
            try:
                resp = self._session.request(method, url, headers=self._headers(headers), data=data,
                                             timeout=self.timeout,
                                             auth=self._basic() if not self._token else None)
                if resp.status_code == 401 and self._auth and self._login(resp):
                    resp = self._session.request(method, url, headers=self._headers(headers), data=data,
                                                 timeout=self.timeout, auth=self._basic() if not self._token else None)
            except requests.RequestException as e:
                exc = e
            status = resp.status_code if resp is not None else None
            if not _transient(exc, status):
                if exc is not None:
                    raise RegistryError(f"{what}: {type(exc).__name__}") from None
                return resp
            reason = type(exc).__name__ if exc is not None else f"HTTP {status}"
            delay = next(delays, None)
            if delay is None:
                raise RegistryError(f"{what} failed after {self.retry.attempts} tries: {reason} from {self.host}")
            if self._on_retry:
                self._on_retry(f"{what}: {reason}; retrying in {delay:g}s")
            self._sleep(delay)

    def _basic(self):
        return requests.auth.HTTPBasicAuth(*self._auth) if self._auth else None

    def _login(self, resp: requests.Response) -> bool:
        """Answer a 401: basic auth is already sent; a Bearer challenge gets a token with our credentials."""
        challenge = resp.headers.get("WWW-Authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return False
        try:
            tr = self._session.get(realm, params=params, auth=self._basic(), timeout=self.timeout)
        except requests.RequestException as e:
            raise RegistryError(f"token request to {realm.split('?')[0]}: {type(e).__name__}") from None
        if tr.status_code != 200:
            raise RegistryError(f"{self.host} refused the credentials (token endpoint answered {tr.status_code})")
        body = tr.json()
        self._token = body.get("token") or body.get("access_token")
        return bool(self._token)

    def _fail(self, resp: requests.Response, what: str) -> RegistryError:
        detail = ""
        try:
            errs = resp.json().get("errors") or []
            if errs:
                detail = f": {errs[0].get('code', '')} {errs[0].get('message', '')}".rstrip()
        except ValueError:
            pass
        if resp.status_code == 401:
            return RegistryError(f"{what}: {self.host} requires authentication (401){detail}; set REGISTRY_USER/"
                                 "REGISTRY_TOKEN or `docker login`")
        return RegistryError(f"{what}: HTTP {resp.status_code}{detail}")

    # --- API ---------------------------------------------------------------------------------

    def ping(self) -> None:
        resp = self._send("GET", "/v2/", what=f"GET {self.base}/v2/")
        if resp.status_code != 200:
            raise self._fail(resp, f"{self.host}/v2/")

    def get_manifest(self, repo: str, reference: str) -> Manifest | None:
        """The manifest `repo:reference` (tag or digest) as stored, or None if the registry has none."""
        what = f"GET manifest {self.host}/{repo}:{reference}"
        resp = self._send("GET", f"/v2/{repo}/manifests/{reference}", what=what, headers={"Accept": ACCEPT})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, what)
        raw = resp.content
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        header = resp.headers.get("Docker-Content-Digest")
        if header and header != digest:
            raise RegistryError(f"{what}: the registry says {header} but its bytes hash to {digest}")
        media = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if media not in MANIFEST_TYPES:
            try:
                import json

                media = json.loads(raw).get("mediaType") or media
            except ValueError:
                pass
        if media not in MANIFEST_TYPES:
            raise RegistryError(f"{what}: unsupported manifest media type '{media}'")
        return Manifest(digest, media, raw)

    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> str:
        """PUT the exact manifest bytes under `tag`; returns the digest the registry reports."""
        what = f"PUT manifest {self.host}/{repo}:{tag}"
        resp = self._send("PUT", f"/v2/{repo}/manifests/{tag}", what=what,
                          headers={"Content-Type": manifest.media_type}, data=manifest.raw)
        if resp.status_code not in (200, 201):
            raise self._fail(resp, what)
        got = resp.headers.get("Docker-Content-Digest") or manifest.digest
        if got != manifest.digest:
            raise RegistryError(f"{what}: the registry stored {got}, not {manifest.digest}")
        return got
