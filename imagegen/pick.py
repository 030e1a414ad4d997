"""`imagegen pick`: the smallest image of a family that runs natively on this host's GPUs.

Installers script this by hand today (unslothai/unsloth#5876 reads `nvidia-smi --query-gpu=compute_cap`;
Paddle ships separate sm120 images, PaddleOCR#17571). Here the answer comes from the images' own facts:
each GPU cell's `io.imagegen.cuda.archs` label as its committed kernel facts give it (the GPUs on which
every CUDA library of the image has a kernel path), and its CUDA release's minimum driver (data:
cuda.yaml, from NVIDIA's CUDA toolkit release notes, table 3).

A cell fits when every GPU of the host has a kernel path in it (CUDA's SASS rule: same major, not
newer; `gpuhost.kernel_path`) and the host's driver is at least the cell's minimum. Among those that
fit, an arch-targeted twin (`gpu_archs` in the matrix) comes first, then the smallest (the local
image's size when it is built here, else its size budget). Sizes are bytes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from . import compat
from .errors import UserInputError
from .imagetest import gpuhost
from .matrix import Cell, Matrix


@dataclass
class Candidate:
    """One GPU cell judged for this host. `label`: the GPUs its kernels serve ("" when its kernel facts
    are not committed: not judged); `size`: bytes, and where it comes from (`image` or `budget`)."""

    ref: str
    selector: str
    label: str
    targeted: bool
    driver_min: str | None
    size: int | None
    size_from: str
    fits: bool = False
    why: list[str] = field(default_factory=list)  # why it does not fit, or what to know when it does

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Host:
    """The GPUs (compute capabilities, e.g. 75 for 7.5) and driver version a pick is for, and where they
    came from (`flags` or `nvidia-smi`)."""

    capabilities: list[int]
    driver: str | None
    source: str


def parse_capability(text: str) -> int:
    """"7.5" -> 75, "12.0" -> 120. UserInputError for anything else."""
    m = re.fullmatch(r"\s*(\d{1,2})\.(\d)\s*", text)
    if not m:
        raise UserInputError(f"--compute-capability {text!r}: give it as nvidia-smi prints it, e.g. 7.5 or 12.0")
    return int(m.group(1)) * 10 + int(m.group(2))


def host(capabilities: list[str] | None, driver: str | None) -> Host:
    """The host to pick for: the flags when given, else what `nvidia-smi` reports. UserInputError when
    neither gives a GPU, or for a malformed flag."""
    if driver is not None and not re.fullmatch(r"\d+(\.\d+){0,2}", driver.strip()):
        raise UserInputError(f"--driver {driver!r}: give the driver version as nvidia-smi prints it, e.g. 535.104.05")
    if capabilities:
        return Host([parse_capability(c) for c in capabilities], driver or gpuhost.driver_version(), "flags")
    found = gpuhost.compute_capabilities()
    if not found:
        raise UserInputError("no NVIDIA GPU found (nvidia-smi --query-gpu=compute_cap gave none): give "
                             "--compute-capability X.Y (and --driver VERSION) to pick for another host")
    return Host(found, driver or gpuhost.driver_version(), "nvidia-smi")


def _sm(cc: int) -> str:
    return f"sm_{cc}"


def judge(cell: Cell, label: str, host: Host, size: tuple[int | None, str],
          gaps: dict[str, list[str]] | None = None) -> Candidate:
    """One cell against `host` (module docstring). `gaps`: {sm_XX: feature libraries with no kernels
    there} (gpu_archs.Coverage.feature_gaps): a fitting cell gets a note for each on the host's GPUs."""
    driver_min = compat.cuda().releases[cell.cuda].driver_min if cell.cuda else None
    c = Candidate(ref=cell.ref, selector=cell.selector, label=label, targeted=bool(cell.gpu_archs),
                  driver_min=driver_min, size=size[0], size_from=size[1])
    if not label:
        c.why.append("its kernel facts are not committed (imagegen lock --closure): not judged")
        return c
    missing = [cc for cc in host.capabilities if not gpuhost.kernel_path(label, cc)]
    if missing:
        c.why.append(f"no kernels for {', '.join(_sm(cc) for cc in missing)} (serves {label})")
    if driver_min and host.driver and not gpuhost.driver_ok(host.driver, driver_min):
        c.why.append(f"needs driver >= {driver_min} (CUDA {cell.cuda}); this host has {host.driver}")
    c.fits = not c.why
    if c.fits and driver_min and not host.driver:
        c.why.append(f"needs driver >= {driver_min} (CUDA {cell.cuda}); the host's driver is unknown")
    if c.fits:
        for cc in host.capabilities:
            served = gpuhost.serving_arch(label, cc)
            for gap in (gaps or {}).get(_sm(served) if served else "", []):
                c.why.append(f"on {_sm(cc)}, {gap.split(':', 1)[0]} has no kernels: the operations that load it "
                             f"fail ({gap.split(':', 1)[1].strip()})")
    return c


def pick(m: Matrix, cells: list[Cell], host: Host, labels: dict[str, str],
         sizes: dict[str, tuple[int | None, str]], gaps: dict[str, dict[str, list[str]]] | None = None
         ) -> tuple[Candidate | None, list[Candidate]]:
    """(the choice or None, every GPU cell judged, best first). `labels`: {cell ref: its
    io.imagegen.cuda.archs}; `sizes`: {cell ref: (bytes or None, "image" | "budget")}; `gaps`: {cell ref:
    its feature libraries' gaps per architecture}."""
    judged = [judge(c, labels.get(c.ref, ""), host, sizes.get(c.ref, (None, "")), (gaps or {}).get(c.ref))
              for c in cells if c.device == "gpu" and not c.excluded]
    if not judged:
        raise UserInputError("no GPU cell among the selected cells: select a GPU family, e.g. "
                             "--variant 'paddle:*-gpu-*-slim'")
    judged.sort(key=lambda c: (not c.fits, not c.targeted, c.size if c.size is not None else float("inf"), c.ref))
    return (judged[0] if judged[0].fits else None), judged
