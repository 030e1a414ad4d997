"""Parts of the matrix expansion: which base each Python of a cell goes on, each framework version's
Pythons in order (its first, the primary, keeps plain tags; the others get -py3.X), and the NVIDIA
runtime wheels imagegen adds to a GPU cell."""

from __future__ import annotations

from typing import Any

from . import compat
from .errors import UserInputError


def pick_base(setting: "str | dict[str, str]", py: str, *, explicit: bool, all_bases: dict[str, compat.BaseSpec],
               where: str) -> str:
    """The base for Python `py`: `setting` is a name or a Python -> name mapping. An explicit name is
    kept (the Python check follows); a default one gives way to the one base that provides `py`."""
    if isinstance(setting, dict):
        mapping = {str(k): v for k, v in setting.items()}
        if py not in mapping:
            raise UserInputError(f"{where}: base: names no base for Python {py} "
                                 f"(it maps {', '.join(sorted(mapping))})")
        return mapping[py]
    if explicit or setting not in all_bases or all_bases[setting].python == py:
        return setting
    default = all_bases[setting]
    candidates = sorted(n for n, b in all_bases.items() if b.python == py and b.libc == default.libc)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise UserInputError(f"{where}: several bases provide Python {py} ({', '.join(candidates)}); choose one "
                             f"with base: {{\"{py}\": {candidates[0]}}}")
    return setting  # the Python check reports it


def python_lists(mf: Any) -> dict[tuple[str, str], list[str]]:
    """Every Python of each framework version (entry, then includes); the first, its primary, keeps plain tags."""
    out: dict[tuple[str, str], list[str]] = {}
    for fw_name, versions in mf.frameworks.items():
        for ver, entry in versions.items():
            out.setdefault((fw_name, ver), []).extend(
                str(p) for p in (entry.python or mf.defaults.python) if str(p) not in out.get((fw_name, ver), []))
    for inc in mf.include:
        lst = out.setdefault((inc.framework, inc.version), [])
        py = inc.python or (lst[0] if lst else str(mf.defaults.python[0]))
        if py not in lst:
            lst.append(py)
    return out


def runtime_wheels(gpu: compat.GpuSpec, cuda_v: str, cudnn_v: str, where: str) -> list[str]:
    """Pins of the NVIDIA runtime wheels (cuda.yaml) for a framework whose wheel pins none: its
    `components` (default: all but TensorRT). Raises UserInputError naming what the data lacks."""
    cuda_data = compat.cuda()
    rel = cuda_data.releases[cuda_v]
    wanted = gpu.components or [c for c in cuda_data.components if c != "tensorrt"]
    unknown = [c for c in wanted if c not in cuda_data.components]
    if unknown:
        raise UserInputError(f"{where} names CUDA components {', '.join(unknown)}, which imagegen/data/cuda.yaml "
                             "does not define")
    missing = [c for c in wanted if c not in rel.wheels and c != "cudnn"]
    if missing or ("cudnn" in wanted and cudnn_v not in cuda_data.cudnn_wheels):
        raise UserInputError(f"{where.split(': ')[0]}: imagegen has no NVIDIA runtime wheel pins for CUDA {cuda_v} / "
                             f"cuDNN {cudnn_v} (add them to imagegen/data/cuda.yaml)")
    out = []
    for name in wanted:
        pin = cuda_data.cudnn_wheels[cudnn_v] if name == "cudnn" else rel.wheels[name]
        out.append(f"{cuda_data.components[name].package_for(cuda_v)}=={pin}")
    return out
