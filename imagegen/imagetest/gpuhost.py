"""Is there a GPU this engine can hand to a container? (host side; never guesses "yes")."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GpuHost:
    driver: str | None  # e.g. "535.104.05"
    runtime: bool  # the engine can honour DeviceRequests for NVIDIA GPUs
    reason: str  # why GPU checks are skipped ("" when usable)

    @property
    def usable(self) -> bool:
        return bool(self.driver) and self.runtime


def driver_version() -> str | None:
    p = Path("/proc/driver/nvidia/version")
    if p.exists():
        m = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)", p.read_text())
        if m:
            return m.group(1)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
            return out[0].strip() if out else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


@functools.lru_cache(maxsize=1)
def detect() -> GpuHost:
    from ..engine import client

    drv = driver_version()
    info = client().info()
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    hook = any(shutil.which(x) for x in ("nvidia-container-runtime-hook", "nvidia-container-cli", "nvidia-ctk"))
    runtime = "nvidia" in runtimes or hook
    if not drv:
        return GpuHost(None, runtime, "no NVIDIA GPU/driver on this host (no /proc/driver/nvidia/version, no nvidia-smi)")
    if not runtime:
        return GpuHost(drv, False, f"no NVIDIA container runtime for the engine (runtimes: {', '.join(runtimes)}; "
                                   "install nvidia-container-toolkit)")
    return GpuHost(drv, True, "")


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def driver_ok(driver: str, minimum: str) -> bool:
    return version_tuple(driver) >= version_tuple(minimum)


def compute_capabilities() -> list[int]:
    """Compute capabilities of the host's GPUs, from `nvidia-smi --query-gpu=compute_cap` ("7.5" -> 75);
    [] without nvidia-smi or GPUs."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in res.stdout.splitlines():
        m = re.fullmatch(r"\s*(\d+)\.(\d)\s*", line)
        if m:
            out.append(int(m.group(1)) * 10 + int(m.group(2)))
    return out


def serving_arch(label: str, cc: int) -> int | None:
    """The capability of `label` ("sm_61,sm_70,..." as `io.imagegen.cuda.archs` lists them) whose kernels
    a GPU of capability `cc` runs: `cc` itself, else by CUDA's SASS rule the newest of its major below it
    (a capability not in imagegen's GPU table is judged so); None when there is none."""
    archs = [int(a.strip()[3:].rstrip("af")) for a in label.split(",") if a.strip().startswith("sm_")]
    fits = [a for a in archs if a == cc or (a // 10 == cc // 10 and a <= cc)]
    return max(fits) if fits else None


def kernel_path(label: str, cc: int) -> bool:
    """Does an image whose `io.imagegen.cuda.archs` label is `label` have a kernel path on capability
    `cc`? (:func:`serving_arch`)"""
    return serving_arch(label, cc) is not None
