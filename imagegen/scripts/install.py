#!/usr/bin/env python3
"""Install the locked wheels into a virtual environment inside the builder stage. Stdlib only.

uv (a locked builder tool, its wheel verified against tools.lock's sha256 before use) installs
with --offline --no-index --require-hashes; without it, the venv's pip does the same job.
No network, no index, no CA: the wheels were downloaded and verified on the host.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path


def tool_wheel(wheels: Path, name: str) -> Path | None:
    lock = wheels / "tools.lock"
    if not lock.exists():
        return None
    text = lock.read_text()
    m = re.search(rf"^{re.escape(name)}==(\S+)[\s\\]+--hash=sha256:([0-9a-f]{{64}})", text, re.M)
    if not m:
        return None
    version, digest = m.groups()
    for cand in sorted(wheels.glob(f"{name}-{version}-*.whl")):
        if hashlib.sha256(cand.read_bytes()).hexdigest() == digest:
            return cand
        raise SystemExit(f"install: {cand.name} does not match its hash in tools.lock")
    return None


def extract_uv(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.data/scripts/uv", n))
        dest.write_bytes(z.read(member))
    dest.chmod(dest.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", required=True, type=Path)
    ap.add_argument("--wheels", required=True, type=Path)
    ap.add_argument("--compile", action="store_true", help="write bytecode (full images)")
    args = ap.parse_args()
    req = args.wheels / "requirements.lock"
    python = args.venv / "bin" / "python"
    common = ["--no-index", "--no-deps", "--require-hashes", "--find-links", str(args.wheels), "-r", str(req)]
    uv_wheel = tool_wheel(args.wheels, "uv")
    if uv_wheel:
        uv = extract_uv(uv_wheel, Path("/tmp/imagegen-uv"))
        cmd = [str(uv), "pip", "install", "--offline", "--no-cache", "--link-mode", "copy", "--python", str(python),
               *common]
        if args.compile:
            cmd.append("--compile-bytecode")
        env = dict(os.environ, UV_NO_PROGRESS="1")
    else:
        if subprocess.call([str(python), "-c", "import pip"], stderr=subprocess.DEVNULL) != 0:
            subprocess.check_call([str(python), "-m", "ensurepip", "--default-pip"])  # slim venvs start without
        cmd = [str(python), "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check", *common]
        if not args.compile:
            cmd.append("--no-compile")
        env = dict(os.environ)
    print("install: " + " ".join(cmd[:3]) + " ...", flush=True)
    proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    sys.stderr.write(proc.stderr)
    if uv_wheel:
        Path("/tmp/imagegen-uv").unlink(missing_ok=True)
    if proc.returncode != 0:
        print("install: error: " + failure_reason(proc.stderr, proc.returncode), file=sys.stderr, flush=True)
        return proc.returncode
    dropped = drop_installer_state(args.venv)
    if dropped:
        print(f"install: removed {dropped} installer cache file(s) (uv_cache.json: the install's clock)", flush=True)
    return 0


#: files an installer leaves in a distribution's .dist-info that record the install, not the
#: distribution: uv's uv_cache.json holds the install time (uv 0.13: {"timestamp": {"secs_since_epoch":
#: ...}}), so two installs of one wheel differ in it, and in the RECORD line that hashes it
INSTALLER_STATE = ("uv_cache.json",)


def drop_installer_state(venv: Path) -> int:
    """Remove INSTALLER_STATE files from every .dist-info under `venv`, and their RECORD lines.
    Returns how many files were removed."""
    removed = 0
    for record in venv.glob("lib/python*/site-packages/*.dist-info/RECORD"):
        info = record.parent
        names = [n for n in INSTALLER_STATE if (info / n).exists()]
        if not names:
            continue
        for n in names:
            (info / n).unlink()
            removed += 1
        drop = {f"{info.name}/{n}" for n in names}
        lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
        record.write_text("".join(ln for ln in lines if ln.split(",", 1)[0] not in drop), encoding="utf-8")
    return removed


def failure_reason(stderr: str, rc: int) -> str:
    """One line naming why uv/pip failed: a hash mismatch names its wheel (the build then checks
    the host's wheel cache), else the installer's last error line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "hash" in ln.lower() and ("mismatch" in ln.lower() or "do not match" in ln.lower()):
            names = [w for rest in lines[i:i + 6] for w in re.findall(r"[\w.+-]+\.whl|`[^`]+`", rest)]
            return "hash mismatch" + (f" for {names[0].strip('`')}" if names else "") + \
                " (the wheel staged from the host's cache is not the locked file)"
    for i, ln in enumerate(lines):
        if ln.lower().startswith(("error:", "×")):  # uv: "error: X" then "cause: ..." lines
            head = re.sub(r"^(error:|×)\s*", "", ln, flags=re.I)
            causes = [c.split(":", 1)[1].strip() for c in lines[i + 1:i + 6] if c.lower().startswith("cause:")]
            return (head + (f" ({causes[-1]})" if causes else ""))[:300]
    errors = [ln for ln in lines if ln.upper().startswith("ERROR")]  # pip: "ERROR: ..."
    return re.sub(r"^ERROR:\s*", "", errors[-1] if errors else (lines[-1] if lines else f"exit code {rc}"))[:300]


if __name__ == "__main__":
    sys.exit(main())
