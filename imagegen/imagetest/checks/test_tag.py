"""Tag <-> contents: the image holds what its tag claims (pytorch#72784 shipped another torch)."""

import pytest
from packaging.version import InvalidVersion, Version

from imagegen.imagetest.helpers import fail, same_version


def _public(v: str) -> str:
    try:
        return Version(v).public
    except InvalidVersion:
        return v


def test_framework_version(target, info):
    found = info.get("framework_version") or "?"
    if _public(found) != _public(target.version):
        fail(target, f"{target.framework.title} in the image is {found}, the tag claims {target.version}")


def test_python_version(target, envinfo):
    found = ".".join(envinfo["python"].split(".")[:2])
    if found != target.python:
        fail(target, f"Python in the image is {envinfo['python']} ({envinfo['executable']}), the tag claims {target.python}")


@pytest.mark.device("gpu")
def test_cuda_version(target, info):
    found = info.get("cuda")
    if not found or not same_version(found, target.cuda or ""):
        fail(target, f"{target.framework.title} was built with CUDA {found}, the tag claims CUDA {target.cuda}")


@pytest.mark.device("gpu")
def test_cudnn_version(target, info):
    found = info.get("cudnn")
    if not found:
        pytest.skip(f"{target.framework.title} does not report the cuDNN it was built with")
    if not same_version(found, target.cudnn or ""):
        fail(target, f"{target.framework.title} was built with cuDNN {found}, the tag claims cuDNN {target.cudnn}")


def test_labels(target, image_attrs):
    if not target.rule("labels"):
        pytest.skip("label policy not enforced for this target")
    labels = (image_attrs.get("Config") or {}).get("Labels") or {}
    missing = [k for k, v in target.expected_labels().items() if not labels.get(k)]
    wrong = [f"{k}={labels.get(k)!r} (expected {v!r})" for k, v in target.expected_labels().items()
             if v and labels.get(k) and labels.get(k) != v]
    if missing or wrong:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"wrong {'; '.join(wrong)}"] if wrong else [])
        fail(target, "labels: " + "; ".join(parts))
