"""The host's pip: how imagegen runs it (``$IMAGEGEN_PIP`` or this interpreter's pip), with the host's
pip configuration untouched (index-url, extra-index-url, find-links, cert, client-cert, proxy,
trusted-host, netrc/keyring), and what that configuration says. Every pip this process starts is
tracked so a failed sibling job or Ctrl-C can stop it (``terminate_children``).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterable

from packaging.version import Version

from . import settings
from .errors import ImagegenError
from .redact import redact_text, redact_url

# pip >= 25.3 resolves from metadata only (PEP 658 files, or HTTP range requests with fast-deps) under
# --dry-run; older pips download every wheel to read its metadata (pypa/pip#12603, fixed by #13482).
PIP_METADATA_ONLY = Version("25.3")
PIP_MIN = Version("22.2")  # --dry-run --report

_active: set[subprocess.Popen] = set()
_active_lock = threading.Lock()


def pip_command() -> list[str]:
    """How to run pip: ``$IMAGEGEN_PIP`` (a command, e.g. "/opt/tools/bin/python -m pip") or this
    interpreter's pip. Either way it reads the host's pip configuration."""
    custom = settings.PIP.value()
    return shlex.split(custom) if custom else [sys.executable, "-m", "pip"]


@functools.lru_cache(maxsize=8)
def _pip_version(cmd: tuple[str, ...]) -> Version:
    try:
        proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60,
                              env=_base_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImagegenError(f"cannot run pip ({shlex.join(cmd)}): {exc}") from None
    m = re.match(r"pip (\S+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise ImagegenError(f"cannot run pip ({shlex.join(cmd)}): {last_line(proc.stderr or proc.stdout)}",
                            hint="install pip in imagegen's environment or set IMAGEGEN_PIP")
    version = Version(m.group(1))
    if version < PIP_MIN:
        raise ImagegenError(f"pip {version} is too old to resolve for a target (needs >= {PIP_MIN})",
                            hint="pip install -U pip in imagegen's environment, or set IMAGEGEN_PIP")
    return version


def pip_version() -> Version:
    return _pip_version(tuple(pip_command()))


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PIP_NO_INPUT"] = "1"  # never wait for a password prompt
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_PROGRESS_BAR"] = "off"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def pip_env(tmpdir: Path | None = None) -> dict[str, str]:
    """The host environment for pip, with only what would break a target resolution neutralised.

    Where pip looks and how it connects (index, extra index, find-links, cert, client cert, proxy,
    trusted hosts, timeouts, retries, keyring) is left exactly as the host configures it. What pip
    resolves or where it would install is ours: user/prefix/root/target installs, --no-deps, hashes,
    a host-only require-virtualenv. TMPDIR points into the cache so big downloads stay on its disk."""
    env = _base_env()
    for key in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_PLATFORM", "PIP_PYTHON_VERSION", "PIP_ABI",
                "PIP_IMPLEMENTATION", "PIP_ONLY_BINARY", "PIP_NO_BINARY", "PIP_REQUIREMENT", "PIP_EDITABLE",
                "PIP_UPGRADE", "PIP_DRY_RUN", "PIP_REPORT"):
        env.pop(key, None)
    env.update({"PIP_USER": "0", "PIP_NO_DEPS": "0", "PIP_REQUIRE_HASHES": "0", "PIP_REQUIRE_VIRTUALENV": "0",
                "PIP_IGNORE_INSTALLED": "1"})
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def run_pip(args: list[str], *, env: dict[str, str], timeout: float | None = None,
            group: set[subprocess.Popen] | None = None) -> subprocess.CompletedProcess:
    """Run pip, capturing its output. terminate_children(group) (or Ctrl-C) stops it."""
    cmd = pip_command() + args
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=env, text=True, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ImagegenError(f"cannot run pip ({shlex.join(cmd[:3])}): {exc}") from None
    with _active_lock:
        _active.add(proc)
        if group is not None:
            group.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\nERROR: pip did not finish within {timeout:.0f}s"
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        with _active_lock:
            _active.discard(proc)
            if group is not None:
                group.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def running() -> int:
    """How many pips this process has running now."""
    with _active_lock:
        return len(_active)


def terminate_children(group: set[subprocess.Popen] | None = None) -> None:
    """Stop the pips of ``group`` (a failed sibling job), or every pip this process started (Ctrl-C)."""
    with _active_lock:
        procs = list(_active if group is None else group)
    for p in procs:
        try:
            p.terminate()
        except OSError:
            pass


@functools.lru_cache(maxsize=4)
def _pip_config_items(cmd: tuple[str, ...], pip_vars: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`pip config list` (pip's merged view of its files and PIP_* variables); cached per PIP_* set."""
    try:
        proc = subprocess.run([*cmd, "config", "list"], capture_output=True, text=True, timeout=60,
                              env=_base_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    items: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            items[key.strip()] = str(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            items[key.strip()] = value.strip().strip("'\"")
    return items


def pip_setting(key: str, command: str = "download") -> str | None:
    """The effective value of a pip option as pip itself would see it: environment, then the command's
    section, then [global] (pip's own precedence)."""
    pip_vars = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("PIP_", "XDG_CONFIG")) or k == "HOME"))
    items = _pip_config_items(tuple(pip_command()), pip_vars)
    for section in (":env:", command, "global"):
        if f"{section}.{key}" in items:
            return items[f"{section}.{key}"]
    return None


def host_sources() -> str:
    """The host pip configuration's package sources, redacted, for messages."""
    if (pip_setting("no-index", "install") or "").lower() in ("1", "true", "yes", "on"):
        parts = ["no index"]
    else:
        parts = [redact_url(pip_setting("index-url", "install") or "https://pypi.org/simple")]
        parts += [redact_url(u) for u in (pip_setting("extra-index-url", "install") or "").split()]
    parts += [f"find-links {redact_url(u)}" for u in (pip_setting("find-links", "install") or "").split()]
    return ", ".join(parts)


def target_args(python_version: str, abi: str, platforms: Iterable[str]) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for p in platforms:
        args += ["--platform", p]
    return args


def last_line(text: str) -> str:
    """The line of pip's output that says what went wrong (its last ERROR:, else its last line), redacted."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    line = (errors or lines or ["(no output)"])[-1]
    return redact_text(line.removeprefix("ERROR: "))
