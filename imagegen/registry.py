"""The registry's HTTP API (OCI distribution / Docker Registry v2), through `requests`.

Used by `imagegen publish` to read back the manifest the engine pushed (its digest is the sha256 of
the exact bytes the registry serves) and to PUT those same bytes under each alias, which needs no
layer upload. Docker v2 and OCI manifests and indexes are accepted: every GET sends all four media
types (a narrow Accept makes some registries answer a manifest list with a child manifest; see
shared/FACTS.md).

Authentication: anonymous, HTTP basic, or the bearer-token flow (`WWW-Authenticate: Bearer realm=…`)
with the same credentials. Credentials come from the caller (`publish.credentials`); they are sent
in headers only and never appear in a message, a log line or `repr`.

Retries (`RetryPolicy`, `Failure`): a failure is classified by its structure (the registry's error
codes, the HTTP status, the exception's type), by free wording only where the engine gives nothing
else (below), and every failure that is not definitely the client's is retried within a bound.

- HTTP answers of the registry: the error codes of the JSON body (`{"errors": [{"code": ...}]}`,
  distribution-spec "Error Codes", https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes,
  and the registry's own extensions in distribution's `registry/api/errcode` and `registry/api/v2/errors.go`),
  then the HTTP status:
  1. a code of `CLIENT_CODES` (UNAUTHORIZED, DENIED, NAME_UNKNOWN, NAME_INVALID, MANIFEST_INVALID,
     MANIFEST_UNVERIFIED, MANIFEST_UNKNOWN, TAG_INVALID, UNSUPPORTED, PAGINATION_NUMBER_INVALID) is the
     client's: no retry (MANIFEST_UNKNOWN and NAME_UNKNOWN on a GET are an answer: "no such tag");
  2. a code of `TRANSIENT_CODES` (BLOB_UNKNOWN: a blob the registry acknowledged but never stored,
     BLOB_UPLOAD_UNKNOWN, BLOB_UPLOAD_INVALID, MANIFEST_BLOB_UNKNOWN, DIGEST_INVALID, SIZE_INVALID,
     RANGE_INVALID, TOOMANYREQUESTS, UNKNOWN, UNAVAILABLE) is retried, whatever the status;
  3. otherwise (no code, or a vendor's code) the status decides: 408, 429 and 5xx are retried; 401, 403
     and every other 4xx are the client's (a 404 is the answer "not there").
- Exceptions of `requests`: a malformed URL or header, too many redirects, and a TLS certificate the
  client does not trust are the client's; every other one (connection refused or reset, timeouts, a
  body cut off) is retried.
- The engine's push stream (`classify_engine_error`, used by `publish.engine_push`): docker-py yields
  `{"error": text, "errorDetail": {"message": text, "code": int?}}`. The engine formats a registry error
  code as the distribution's Go client does (`errcode.ErrorCode.Error()`: the JSON code lowercased,
  `_` as a space, then `: <message>`; several as `errors:\n<one per line>`), so the text is parsed for
  those codes at the start of the text, of a line, or after `: `, followed by `:` or alone on the line
  (`toomanyrequests: ...`, `blob unknown: blob unknown to registry`, `denied: ...`; engine 20.10
  streams a 429 as the bare `toomanyrequests`, measured here), for the distribution client's own
  `unknown blob`, for an HTTP status (`errorDetail.code`, `HTTP 503`, `status: 429`,
  `429 Too Many Requests`), and for a few fixed texts that are the client's: the messages of DENIED
  and UNAUTHORIZED without their code (`requested access to the resource is denied`, `authentication
  required`, `insufficient_scope`) and the engine's own (`no basic auth credentials`, `x509: ...`,
  `server gave HTTP response to HTTPS client`, `does not exist locally`). Same rule as above; text with none of
  these (a dropped connection, EOF, a timeout) is retried; an error of the engine's own API with a 4xx
  status (no such local image) is not.

Bound: `RetryPolicy.attempts` tries in all, and no retry starts more than `max_total` seconds after the
first try began (default 4 tries, 120 s). The wait before try i+2 is `backoff * 2**i` (at most
`max_delay`), or longer: a `Retry-After` header (seconds or an HTTP-date, RFC 9110 10.2.3) is
honoured in full (it may exceed `max_delay`); a wait that would cross `max_total` is not started and
the operation fails at once. A 429/TOOMANYREQUESTS without `Retry-After` (the engine never passes the
header on) waits at least `throttle_floor` seconds (default 10).

Errors raised: `RegistryError` (an ImagegenError, exit 1), one line, without credentials.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
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
    """The retry bound: `attempts` tries in all, none started more than `max_total` seconds after the
    first began; waiting `backoff * 2**i` seconds (at most `max_delay`) before try i+2, or as long as
    the server's `Retry-After` asks, or at least `throttle_floor` after a 429 that names no wait.
    Applies to the engine push and to every HTTP request (see the module docstring)."""

    attempts: int = 4
    backoff: float = 1.0
    max_delay: float = 30.0
    max_total: float = 120.0
    throttle_floor: float = 10.0

    def delays(self):
        """The plain exponential waits (no Retry-After, no throttling)."""
        for i in range(max(self.attempts, 1) - 1):
            yield min(self.backoff * (2 ** i), self.max_delay)

    def start(self, clock: Callable[[], float] = time.monotonic) -> "Retries":
        """The retry state of one operation, from its first try (now)."""
        return Retries(self, clock)


@dataclass(frozen=True)
class Failure:
    """One failed try, classified: `transient` (worth another try), `throttled` (a 429 or
    TOOMANYREQUESTS), `retry_after` (seconds the server asked for, when it said), `reason` (one line,
    no credentials)."""

    transient: bool
    reason: str
    throttled: bool = False
    retry_after: float | None = None


class Retries:
    """Counts the tries of one operation against a `RetryPolicy`."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._start = clock()
        self.tries = 0  # failed tries so far
        self.waited = 0.0
        self.stop = ""  # why the last `next_delay` returned None: "", "attempts" or "time"

    def next_delay(self, failure: Failure) -> float | None:
        """After the failed try `failure`: seconds to wait before the next try, or None when there is none
        (not transient, `attempts` reached, or the wait would end past `max_total`)."""
        p = self.policy
        self.tries += 1
        if not failure.transient:
            self.stop = ""
            return None
        if self.tries >= max(p.attempts, 1):
            self.stop = "attempts"
            return None
        delay = min(p.backoff * (2 ** (self.tries - 1)), p.max_delay)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        elif failure.throttled:
            delay = max(delay, p.throttle_floor)
        elapsed = max(self._clock() - self._start, self.waited)
        if elapsed + delay > p.max_total:
            self.stop = "time"
            return None
        self.waited += delay
        return delay

    def summary(self) -> str:
        """`after N tries` plus, when the time bound stopped the retries, which bound."""
        text = f"after {self.tries} {'try' if self.tries == 1 else 'tries'}"
        if self.stop == "time":
            text += f" (the next wait would pass the {self.policy.max_total:g} s retry bound)"
        return text


# --- classification -----------------------------------------------------------------------------

#: distribution-spec error codes (and the registry's extensions) that are the client's: never retried.
CLIENT_CODES = frozenset({
    "UNAUTHORIZED", "DENIED", "NAME_UNKNOWN", "NAME_INVALID", "MANIFEST_INVALID", "MANIFEST_UNVERIFIED",
    "MANIFEST_UNKNOWN", "TAG_INVALID", "UNSUPPORTED", "PAGINATION_NUMBER_INVALID",
})
#: codes that name a registry-side or passing condition: retried (so is any code not listed anywhere).
TRANSIENT_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID",
    "SIZE_INVALID", "RANGE_INVALID", "TOOMANYREQUESTS", "UNKNOWN", "UNAVAILABLE",
})
_KNOWN_CODES = CLIENT_CODES | TRANSIENT_CODES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None if absent
    or unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def error_codes(body: bytes | str | None) -> list[str]:
    """The `code`s of a distribution-spec error body (`{"errors": [{"code", "message", "detail"}]}`)."""
    if not body:
        return []
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errs = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errs, list):
        return []
    return [str(e["code"]).upper() for e in errs if isinstance(e, dict) and e.get("code")]


def classify_codes_status(codes: list[str], status: int | None) -> tuple[bool, bool]:
    """`(transient, throttled)` for a failure with these registry error codes and HTTP status (None: not
    known). A client code wins, then a transient code; a code listed in neither counts as its status."""
    throttled = status == 429 or "TOOMANYREQUESTS" in codes
    if any(c in CLIENT_CODES for c in codes):
        return False, throttled
    if any(c in TRANSIENT_CODES for c in codes) or status is None:
        return True, throttled
    return (status in (408, 429) or status >= 500), throttled


def classify_response(resp: requests.Response) -> Failure | None:
    """None for an answer (any status below 400), else the failure it is."""
    status = resp.status_code
    if status < 400:
        return None
    try:
        codes = error_codes(resp.content)
    except requests.RequestException:
        codes = []
    transient, throttled = classify_codes_status(codes, status)
    reason = f"HTTP {status}" + (f" {','.join(codes)}" if codes else "")
    return Failure(transient, reason, throttled, parse_retry_after(resp.headers.get("Retry-After")))


_CLIENT_EXCEPTIONS = (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                      requests.exceptions.MissingSchema, requests.exceptions.InvalidHeader,
                      requests.exceptions.URLRequired, requests.exceptions.TooManyRedirects)


def classify_exception(exc: Exception) -> Failure:
    """A `requests` exception (or any other raised while talking to the registry)."""
    reason = type(exc).__name__
    if isinstance(exc, _CLIENT_EXCEPTIONS):
        return Failure(False, reason)
    if isinstance(exc, requests.exceptions.SSLError) and re.search(r"certificate|hostname", str(exc), re.I) \
            and not re.search(r"timed? ?out", str(exc), re.I):
        return Failure(False, reason)
    return Failure(isinstance(exc, (requests.RequestException, OSError)), reason)


def _code_text(code: str) -> str:
    return code.lower().replace("_", " ")


# the engine's rendering of a code ("blob unknown", "toomanyrequests"), longest first so "manifest blob
# unknown" is not read as "blob unknown"; at the start of the text or a line, after "errors:" or ": ",
# followed by ":" or alone on its line (engine 20.10 streams a 429 with a JSON body as bare "toomanyrequests")
_LONGEST_FIRST = sorted(_KNOWN_CODES, key=len, reverse=True)
_ENGINE_CODE = re.compile(
    r"(?:^|\n|errors:\s*|:\s)(" + "|".join(re.escape(_code_text(c)) for c in _LONGEST_FIRST) + r")(?::|[ \t]*(?:\n|$))",
    re.I)
_UPPER_CODE = re.compile(r"\b(" + "|".join(_LONGEST_FIRST) + r")\b")
# "HTTP 503", "status: 429", "status code 401", or Go's resp.Status ("429 Too Many Requests", phrase checked)
_ENGINE_STATUS = re.compile(r"\b(?:HTTP|status(?: code)?)[: ]+([1-5]\d\d)\b|"
                            r"\b([1-5]\d\d) ([A-Z][A-Za-z-]*(?: [A-Z][A-Za-z-]*)*)")
# texts with no code that name a code's condition, or the engine's client-side configuration
_ENGINE_CLIENT = re.compile(r"no basic auth credentials|requested access to the resource is denied|"
                            r"authentication required|insufficient_scope|\bx509: |"
                            r"server gave HTTP response to HTTPS client|does not exist locally", re.I)
_ENGINE_BLOB = re.compile(r"\bunknown blob\b", re.I)  # distribution's ErrBlobUnknown, its client's own text


def _statuses(text: str) -> list[int]:
    found = []
    for m in _ENGINE_STATUS.finditer(text):
        if m.group(1):
            found.append(int(m.group(1)))
            continue
        n = int(m.group(2))
        try:
            if HTTPStatus(n).phrase.lower() == m.group(3).lower():
                found.append(n)
        except ValueError:
            pass
    return found


def classify_engine_error(message: str, detail: dict | None = None, api_status: int | None = None) -> Failure:
    """A failed engine push: the stream's `error` text and `errorDetail`, or an error of the engine's API
    (`api_status`: docker.errors.APIError's HTTP status). The rule is in the module docstring."""
    text = "\n".join(t for t in ((detail or {}).get("message"), message) if t) or ""
    codes = [m.group(1).upper().replace(" ", "_") for m in _ENGINE_CODE.finditer(text)]
    codes += _UPPER_CODE.findall(text)
    if _ENGINE_BLOB.search(text):
        codes.append("BLOB_UNKNOWN")
    codes = list(dict.fromkeys(codes))
    statuses = _statuses(text)
    code_num = (detail or {}).get("code")
    if isinstance(code_num, int) and 400 <= code_num <= 599:
        statuses.insert(0, code_num)
    reason = one_line(message or (detail or {}).get("message") or "")
    throttled = "TOOMANYREQUESTS" in codes or 429 in statuses
    if any(c in CLIENT_CODES for c in codes) or _ENGINE_CLIENT.search(text):
        return Failure(False, reason, throttled)
    if codes:
        transient, throttled = classify_codes_status(codes, statuses[0] if statuses else None)
        return Failure(transient, reason, throttled)
    if statuses:
        transient = all(s in (408, 429) or s >= 500 for s in statuses)
        return Failure(transient, reason, throttled)
    if api_status is not None and 400 <= api_status < 500:
        return Failure(False, reason)
    return Failure(True, reason)


def one_line(text: str, limit: int = 400) -> str:
    """A multi-line engine error as one line (`errors:` header dropped, lines joined with `; `)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].rstrip(":").lower() == "errors":
        lines = lines[1:]
    out = "; ".join(lines)
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass(frozen=True)
class Manifest:
    digest: str  # sha256:<hex> of `raw`
    media_type: str
    raw: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.raw)

    @property
    def config_digest(self) -> str | None:
        """The image config's digest (= the engine's image ID) for a single-image manifest."""
        return (self.json.get("config") or {}).get("digest")

    @property
    def is_index(self) -> bool:
        """An OCI image index or a Docker manifest list (children by platform), not one image."""
        return self.media_type in (OCI_INDEX, DOCKER_LIST)

    def platform_children(self, platform: tuple[str, str, str | None]) -> list[dict]:
        """An index's descriptors for ``platform`` (os, architecture, variant or None: any), image
        manifests only: attestation manifests are skipped (BuildKit's: platform `unknown/unknown` and the
        annotation `vnd.docker.reference.type: attestation-manifest`, moby/buildkit docs/attestations/
        attestation-storage.md). [] for a single-image manifest."""
        if not self.is_index:
            return []
        os_, arch, variant = platform
        out = []
        for desc in self.json.get("manifests") or []:
            plat = desc.get("platform") or {}
            annotations = desc.get("annotations") or {}
            if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
                continue
            if (plat.get("os"), plat.get("architecture")) == ("unknown", "unknown"):
                continue
            if plat.get("os") != os_ or plat.get("architecture") != arch:
                continue
            if variant and plat.get("variant") and plat.get("variant") != variant:
                continue
            out.append(desc)
        return out

    @property
    def compressed_size(self) -> int | None:
        """Bytes a pull downloads: config + layers as stored (compressed), from the manifest."""
        data = self.json
        if "layers" not in data:
            return None
        return int((data.get("config") or {}).get("size", 0)) + sum(int(x.get("size", 0)) for x in data["layers"])


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _TokenFailure(Exception):
    """A transient failure of the bearer-token endpoint, retried like the request that needed it."""

    def __init__(self, failure: Failure):
        super().__init__(failure.reason)
        self.failure = failure


class Registry:
    """One registry host. `auth` is `(username, secret)` or None; never exposed."""

    def __init__(self, host: str, *, auth: tuple[str, str] | None = None, retry: RetryPolicy = RetryPolicy(),
                 timeout: float = 30.0, scheme: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, on_retry: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.base = f"{scheme or ('http' if is_loopback(host) else 'https')}://{host}"
        self._auth = auth
        self._token: str | None = None
        self.retry = retry
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock
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
        """One request, retried per `self.retry` while it fails transiently (module docstring). Returns
        the response (a success, or a failure that is the client's, for the caller to report)."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        retries = self.retry.start(self._clock)
        while True:
            resp = None
            try:
                resp = self._session.request(method, url, headers=self._headers(headers), data=data,
                                             timeout=self.timeout,
                                             auth=self._basic() if not self._token else None)
                if resp.status_code == 401 and self._auth and self._login(resp):
                    resp = self._session.request(method, url, headers=self._headers(headers), data=data,
                                                 timeout=self.timeout, auth=self._basic() if not self._token else None)
                failure = classify_response(resp)
            except _TokenFailure as e:
                failure = e.failure
            except requests.RequestException as e:
                failure = classify_exception(e)
            if failure is None:
                return resp
            delay = retries.next_delay(failure)
            if delay is None:
                if resp is not None and not failure.transient:
                    return resp
                if not failure.transient:
                    raise RegistryError(f"{what}: {failure.reason}")
                raise RegistryError(f"{what} failed {retries.summary()}: {failure.reason} from {self.host}")
            if self._on_retry:
                asked = f" (Retry-After {failure.retry_after:g}s)" if failure.retry_after is not None else ""
                self._on_retry(f"{what}: {failure.reason}{asked}; retrying in {delay:g}s")
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
        where = f"token request to {realm.split('?')[0]}"
        try:
            tr = self._session.get(realm, params=params, auth=self._basic(), timeout=self.timeout)
        except requests.RequestException as e:
            failure = classify_exception(e)
            if failure.transient:
                raise _TokenFailure(Failure(True, f"{where}: {failure.reason}")) from None
            raise RegistryError(f"{where}: {failure.reason}") from None
        failure = classify_response(tr)
        if failure is not None and failure.transient:
            raise _TokenFailure(Failure(True, f"{where}: {failure.reason}", failure.throttled,
                                        failure.retry_after))
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
                media = json.loads(raw).get("mediaType") or media
            except ValueError:
                pass
        if media not in MANIFEST_TYPES:
            raise RegistryError(f"{what}: unsupported manifest media type '{media}'")
        return Manifest(digest, media, raw)

    def image_for(self, repo: str, manifest: Manifest,
                  platform: tuple[str, str, str | None] = ("linux", "amd64", None)) -> Manifest | None:
        """The single-image manifest ``manifest`` stands for on ``platform``: itself, or (for an index or
        a manifest list) its child for that platform, fetched by digest (nested indexes followed, at most
        4 deep); None when the index has no image for the platform. Raises RegistryError when a child's
        bytes do not hash to the digest the index names."""
        seen = 0
        while manifest.is_index:
            seen += 1
            children = manifest.platform_children(platform)
            if not children or seen > 4:
                return None
            digest = children[0]["digest"]
            child = self.get_manifest(repo, digest)
            if child is None:
                return None
            if child.digest != digest:
                raise RegistryError(f"{self.host}/{repo}@{digest}: the registry served bytes hashing to {child.digest}")
            manifest = child
        return manifest

    def put_manifest(self, repo: str, tag: str, manifest: Manifest) -> str:
        """PUT the exact manifest bytes under `tag`; returns the digest the registry reports."""
        self._put_manifest(repo, tag, manifest, f"PUT manifest {self.host}/{repo}:{tag}")
        return manifest.digest

    def _put_manifest(self, repo: str, reference: str, manifest: Manifest, what: str) -> requests.Response:
        """PUT the exact bytes under `reference` (a tag or their digest); raises RegistryError when the
        registry refuses them or says it stored other bytes."""
        resp = self._send("PUT", f"/v2/{repo}/manifests/{reference}", what=what,
                          headers={"Content-Type": manifest.media_type}, data=manifest.raw)
        if resp.status_code not in (200, 201):
            raise self._fail(resp, what)
        got = resp.headers.get("Docker-Content-Digest") or manifest.digest
        if got != manifest.digest:
            raise RegistryError(f"{what}: the registry stored {got}, not {manifest.digest}")
        return resp

    def put_manifest_digest(self, repo: str, manifest: Manifest) -> bool:
        """PUT the exact manifest bytes by their digest (no tag: an artifact that names its image in
        `subject`). Returns whether the registry processed the `subject` field (it answered the
        `OCI-Subject` header, OCI distribution-spec 1.1 "Pushing Manifests with Subject"): when it did not,
        the referrers API cannot list it and the caller tags it instead (the tag schema fallback)."""
        resp = self._put_manifest(repo, manifest.digest, manifest,
                                  f"PUT manifest {self.host}/{repo}@{manifest.digest}")
        return bool(resp.headers.get("OCI-Subject"))

    def has_blob(self, repo: str, digest: str) -> bool:
        """Whether the registry holds the blob `repo@digest` (HEAD)."""
        what = f"HEAD blob {self.host}/{repo}@{digest}"
        resp = self._send("HEAD", f"/v2/{repo}/blobs/{digest}", what=what)
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            raise self._fail(resp, what)
        return True

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` as one blob (POST then a monolithic PUT, distribution-spec "Pushing a blob
        monolithically"), unless the registry already holds it; returns its digest ("sha256:<hex>").
        For small blobs (an SBOM, an attestation, a signature payload): `data` is sent in one request."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has_blob(repo, digest):
            return digest
        what = f"upload blob {self.host}/{repo}@{digest}"
        resp = self._send("POST", f"/v2/{repo}/blobs/uploads/", what=what)
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise self._fail(resp, what)
        location = resp.headers["Location"]  # a path, or an absolute URL (an upload service elsewhere)
        sep = "&" if "?" in location else "?"
        resp = self._send("PUT", f"{location}{sep}digest={digest}", what=what,
                          headers={"Content-Type": "application/octet-stream"}, data=data)
        if resp.status_code not in (201, 204):
            raise self._fail(resp, what)
        return digest

    def referrers(self, repo: str, digest: str) -> list[dict] | None:
        """The descriptors of the manifests whose `subject` is `repo@digest`, from the referrers API
        (OCI distribution-spec 1.1, `GET /v2/<name>/referrers/<digest>`, an image index), or None when
        the registry has no such API (it answers 404 for the endpoint: Docker's distribution 2.x,
        ghcr.io). Each descriptor: `mediaType`, `digest`, `size`, `artifactType`, `annotations`."""
        what = f"GET referrers {self.host}/{repo}@{digest}"
        resp = self._send("GET", f"/v2/{repo}/referrers/{digest}", what=what, headers={"Accept": OCI_INDEX})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, what)
        media = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if media != OCI_INDEX:
            return None  # a registry that routes the path elsewhere (an HTML page, a 200 with no index)
        try:
            return list(json.loads(resp.content).get("manifests") or [])
        except (ValueError, AttributeError):
            raise RegistryError(f"{what}: the answer is not an OCI index") from None

    def get_blob(self, repo: str, digest: str, *, limit: int = 4 * 1024 * 1024) -> bytes:
        """The blob `repo@digest` (e.g. an image config), checked against its digest. Raises RegistryError
        (one line) when the registry has no such blob, refuses, answers more than `limit` bytes, or its
        bytes do not hash to `digest`."""
        what = f"GET blob {self.host}/{repo}@{digest}"
        resp = self._send("GET", f"/v2/{repo}/blobs/{digest}", what=what)
        if resp.status_code != 200:
            raise self._fail(resp, what)
        raw = resp.content
        if len(raw) > limit:
            raise RegistryError(f"{what}: {len(raw)} bytes, more than the {limit} expected")
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if digest.startswith("sha256:") and got != digest:
            raise RegistryError(f"{what}: its bytes hash to {got}")
        return raw
