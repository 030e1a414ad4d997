"""What the GPU readiness check asks the in-image probe (probes/gpu.py), from data only.

The probe and this module are the one place that decides which CUDA libraries a cell must load:
the names the framework dlopens itself (frameworks/*.yaml gpu.dlopen, minus those an opt-in prune
rule removed), the NEEDED entries of the execution providers the cell carries (gpu.providers; a
provider with `needs: tensorrt` only in cells with a TensorRT part), and, when the framework names no
dlopen targets, every library in the wheels' loader directories (cuda.yaml loader_dirs) by its
DT_SONAME. Libraries the host driver provides (cuda.yaml host_provided) are never probed.
"""

from __future__ import annotations

from .. import compat, settings
from .helpers import fail


def gpu_spec(target) -> compat.GpuSpec:
    v = target.framework.versions.get(target.version)
    if v is None or v.gpu is None:
        fail(target, f"{target.framework.name} {target.version} has no gpu section in imagegen/data/frameworks")
    return v.gpu


def providers(target) -> list[compat.ProviderSpec]:
    """The execution providers this cell carries."""
    parts = {"tensorrt"} if getattr(target, "tensorrt", None) else set()
    return [p for p in gpu_spec(target).providers if p.needs is None or p.needs in parts]


def probe_args(target) -> list[str]:
    """Command-line arguments of probes/gpu.py for this target."""
    spec = gpu_spec(target)
    # target.dlopen: the cell's names (framework + what its cuDNN dlopens, recipe.Recipe.dlopen)
    wanted = target.dlopen if getattr(target, "dlopen", None) is not None else spec.dlopen
    args = [n for n in wanted if n not in target.pruned_libs]
    for p in providers(target):
        args += ["--needed-of", p.library]
    for lib in spec.needed_of:
        args += ["--needed-of", lib]
    cuda = compat.cuda()
    if not wanted:
        args += ["--dirs", ",".join(cuda.loader_dirs)]
    for name in cuda.host_provided:
        # absent on a host without the driver: never probed, and a library's own failed dlopen of
        # it (left pending in dlerror()) is expected there; with the driver it loads
        args += ["--skip", name, "--benign", f"{name}: cannot open shared object file"]
    for text in cuda.dlerror_benign:
        args += ["--benign", text]
    return args + ["--timeout", f"{settings.DLOPEN_TIMEOUT.value():g}"]
