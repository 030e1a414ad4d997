"""Smoke inference: a real tiny model, built at test time, run with the framework's inference
API and compared with a reference. Framework specifics live in imagegen/data/smoke/<name>.py."""

import pytest

from imagegen import compat
from imagegen.imagetest import gpuhost
from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, container, fail, parse


def _run_smoke(target, c, smoke, mode):
    script, args = smoke
    try:
        res = parse(c.python(script, mode, *args, timeout=PROBE_TIMEOUT), f"{mode.upper()} smoke inference")
    except ProbeError as exc:
        fail(target, str(exc))
    if not res.get("ok"):
        fail(target, f"{mode.upper()} smoke inference: {res.get('error')}")
    return res


def test_cpu_inference(target, ctr, smoke):
    _run_smoke(target, ctr, smoke, "cpu")


@pytest.mark.gpu
@pytest.mark.device("gpu")
def test_host_driver(target, gpu_host):
    """The host driver is new enough for the cell's CUDA release (data: cuda.yaml driver_min)."""
    if not gpu_host.driver:
        pytest.skip(gpu_host.reason)
    rel = compat.cuda().releases.get(target.cuda or "")
    if rel is None:
        fail(target, f"CUDA {target.cuda} has no driver minimum in imagegen/data/cuda.yaml")
    if not gpuhost.driver_ok(gpu_host.driver, rel.driver_min):
        fail(target, f"host driver {gpu_host.driver} is older than {rel.driver_min}, the minimum for CUDA {target.cuda}")


@pytest.mark.gpu
@pytest.mark.device("gpu")
def test_gpu_inference(target, gpu_host, workdir, smoke, image_attrs):
    if not gpu_host.usable:
        pytest.skip(gpu_host.reason)
    # The image's own kernels decide before the framework does ("no kernel image is available").
    label = ((image_attrs.get("Config") or {}).get("Labels") or {}).get("io.imagegen.cuda.archs")
    if label:
        for cc in gpuhost.compute_capabilities():
            if not gpuhost.kernel_path(label, cc):
                fail(target, f"this host's GPU has compute capability {cc // 10}.{cc % 10} (sm_{cc}); the image's "
                             f"CUDA kernels serve only {label} (label io.imagegen.cuda.archs)")
    c = container(target, workdir, gpu=True).start()
    try:
        _run_smoke(target, c, smoke, "gpu")
    finally:
        c.remove()
