"""Smoke inference: a real tiny model, built at test time, run with the framework's inference
API and compared with a reference. Framework specifics live in imagegen/data/smoke/<name>.py."""

import json

import pytest

from imagegen import compat
from imagegen.imagetest import gpuhost
from imagegen.imagetest.container import MOUNT
from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, container, fail, parse
from imagegen.labels import CUDA_ARCHS

TIMING = "IMAGEGEN-TIMING "


def _run_smoke(target, c, smoke, mode, request=None):
    """Run the smoke script; with `request`, under probes/timed.py, recording the framework's
    import time and the first inference's time as the check's properties (JUnit XML
    `<property>`s and the summary): figures, not gates."""
    script, args = smoke
    if request is None:
        result = c.python(script, mode, *args, timeout=PROBE_TIMEOUT)
    else:
        result = c.python("probes/timed.py", target.framework.import_name, f"{MOUNT}/{script}", mode, *args,
                          timeout=PROBE_TIMEOUT)
    try:
        res = parse(result, f"{mode.upper()} smoke inference")
    except ProbeError as exc:
        fail(target, str(exc))
    if request is not None:
        timing = timing_of(result.stdout)
        for key in ("import_s", "first_inference_s"):
            if key in timing:
                request.node.user_properties.append((f"{mode}_{key}", timing[key]))
    if not res.get("ok"):
        fail(target, f"{mode.upper()} smoke inference: {res.get('error')}")
    return res


def timing_of(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(TIMING):
            return json.loads(line[len(TIMING):])
    return {}


def test_cpu_inference(target, ctr, smoke, request):
    _run_smoke(target, ctr, smoke, "cpu", request)


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
def test_gpu_inference(target, gpu_host, workdir, smoke, image_attrs, request):
    if not gpu_host.usable:
        pytest.skip(gpu_host.reason)
    # The image's own kernels decide before the framework does ("no kernel image is available").
    label = ((image_attrs.get("Config") or {}).get("Labels") or {}).get(CUDA_ARCHS)
    if label:
        for cc in gpuhost.compute_capabilities():
            if not gpuhost.kernel_path(label, cc):
                fail(target, f"this host's GPU has compute capability {cc // 10}.{cc % 10} (sm_{cc}); the image's "
                             f"CUDA kernels serve only {label} (label {CUDA_ARCHS})")
    c = container(target, workdir, gpu=True).start()
    try:
        _run_smoke(target, c, smoke, "gpu", request)
    finally:
        c.remove()
