"""Kubernetes' hardened default, run for every framework (issue: Paddle#46310).

A pod with `readOnlyRootFilesystem: true`, an `emptyDir` at /tmp, `runAsNonRoot` with an arbitrary
UID and GID 0 (what OpenShift's restricted SCC assigns) and no HOME in its spec: HOME stays the
image's own value. The hardened `ctr` above forces HOME=/tmp and `uid_ctr` has a writable root,
so neither proves this configuration. The CPU smoke inference runs here as a whole (for Paddle it
includes `paddle.jit.save`, which writes `~/.cache/paddle/to_static_tmp` with no fallback).
"""

import pytest

from imagegen.imagetest.helpers import PROBE_TIMEOUT, ProbeError, container, fail, parse

K8S_UID = "1000680000:0"  # an arbitrary UID with no passwd entry, GID 0


@pytest.fixture(scope="session")
def k8s_ctr(target, workdir):
    c = container(target, workdir, user=K8S_UID, read_only=True, home=None).start()
    yield c
    c.remove()


def test_kubernetes_default_home_is_writable(target, k8s_ctr):
    """HOME, as the image sets it, is writable by an arbitrary UID on a read-only root."""
    try:
        env = parse(k8s_ctr.python("probes/envinfo.py", timeout=PROBE_TIMEOUT), "environment probe")
    except ProbeError as exc:
        fail(target, str(exc))
    if env.get("home_writable") is False:
        fail(target, f"under Kubernetes' default (read-only root, emptyDir /tmp, uid {K8S_UID}) the image's "
                     f"HOME {env.get('home')} is not writable; set HOME (or the framework's cache "
                     "variables) to a path under /tmp in the image, or mount an emptyDir there")


def test_kubernetes_default_smoke_inference(target, k8s_ctr, smoke):
    script, args = smoke
    try:
        res = parse(k8s_ctr.python(script, "cpu", *args, timeout=PROBE_TIMEOUT),
                    "CPU smoke inference under Kubernetes' default")
    except ProbeError as exc:
        fail(target, f"{exc} (read-only root, emptyDir /tmp, uid {K8S_UID}, the image's own HOME)")
    if not res.get("ok"):
        fail(target, f"CPU smoke inference under Kubernetes' default (read-only root, emptyDir /tmp, uid "
                     f"{K8S_UID}, the image's own HOME) failed: {res.get('error')}")
