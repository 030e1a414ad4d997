"""GPU readiness without a GPU (runs everywhere), and its mirror for CPU tags: a CPU image
holds no CUDA build (tensorflow#36841 shipped a GPU package under a CPU tag)."""

import re

import pytest

from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, fail, parse, same_version
from imagegen.imagetest.inventory import T


def _gpu_spec(target):
    v = target.framework.versions.get(target.version)
    if v is None or v.gpu is None:
        fail(target, f"{target.framework.name} {target.version} has no gpu section in imagegen/data/frameworks")
    return v.gpu


def _dlopen(target, ctr):
    spec = _gpu_spec(target)
    wanted = target.dlopen if target.dlopen is not None else spec.dlopen
    names = [n for n in wanted if n not in target.pruned_libs] or ["--nvidia-sonames"]
    try:
        res = parse(ctr.python("probes/gpu.py", *names, timeout=PROBE_TIMEOUT), "dlopen probe")
    except ProbeError as exc:
        fail(target, str(exc))
    return res["results"]


@pytest.fixture(scope="session")
def dlopen_results(target, ctr):
    return _dlopen(target, ctr)


@pytest.mark.device("gpu")
def test_cuda_libraries_load(target, dlopen_results):
    """Every CUDA library the framework loads is dlopen-able by the exact name it asks for, with no
    dlopen failure left pending in dlerror() (pytorch#97041). Names: the framework's gpu.dlopen plus
    what its cuDNN loads itself (cuda.yaml cudnn_dlopen); else the DT_SONAMEs of the nvidia wheels'
    libraries."""
    if not dlopen_results:
        fail(target, "no CUDA libraries found to load (no nvidia/*/lib in site-packages and no gpu.dlopen in data)")
    bad = [r for r in dlopen_results if not r.get("ok")]
    if target.pruned_libs:
        # removed on purpose by the cell's opt-in inference pruning: reported, not loaded
        print(f"not probed (removed by opt-in pruning): {', '.join(target.pruned_libs)}")
    if bad:
        detail = "; ".join(f"{r['name']}: {r.get('error')}" for r in bad[:4])
        fail(target, f"{len(bad)} of {len(dlopen_results)} CUDA libraries cannot be loaded by the name "
                     f"{target.framework.title} asks for: {detail}")


@pytest.mark.device("gpu")
def test_cudnn_library_version(target, dlopen_results):
    """The cuDNN library in the image (cudnnGetVersion) is the cuDNN the tag claims."""
    found = [r for r in dlopen_results if r.get("version")]
    if not found:
        pytest.skip("no loadable library reports a version (cudnnGetVersion) by the names probed")
    claimed = target.cudnn or ""
    for r in found:
        if not same_version(r["version"], claimed):
            fail(target, f"cuDNN library {r.get('path') or r['name']} is {r['version']}, the tag claims {claimed}")


@pytest.mark.device("gpu")
def test_compiled_with_cuda(target, info):
    if not info.get("compiled_with_cuda"):
        fail(target, f"{target.framework.title} {info.get('framework_version')} is not compiled with CUDA "
                     "but the tag is a GPU tag")


@pytest.mark.device("cpu")
def test_cpu_tag_has_no_cuda(target, info, inv):
    if info.get("compiled_with_cuda"):
        fail(target, f"CPU tag, but {target.framework.title} reports a CUDA build (CUDA {info.get('cuda')})")
    libs = sorted(p for p, e in inv.files.items() if e[T] in ("f", "h")
                  and re.search(r"(^|/)lib(cudart|cudnn|cublas|nccl)[^/]*\.so", p))
    if libs:
        fail(target, f"CPU tag, but the image holds CUDA libraries: /{libs[0]} (+{len(libs) - 1} more)")

