"""Locking real cells against the host's real pip configuration (PyPI, mirrors, find-links).

Uses the machine's wheel cache ($IMAGEGEN_CACHE, default ~/.cache/imagegen) on purpose: the wheels are
the ones builds use, and a second run must not download anything. The Paddle GPU cell (2.7 GB) is marked
`gpu_cell`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imagegen import lock as L
from imagegen import wheelhouse as W

NVIDIA_CU118 = [
    "nvidia-cuda-runtime-cu11==11.8.89", "nvidia-cublas-cu11==11.11.3.6", "nvidia-cudnn-cu11==8.6.0.163",
    "nvidia-cufft-cu11==10.9.0.58", "nvidia-curand-cu11==10.3.0.86", "nvidia-cusolver-cu11==11.4.1.48",
    "nvidia-cusparse-cu11==11.7.5.86", "nvidia-nccl-cu11==2.15.5", "nvidia-cuda-nvrtc-cu11==11.8.89",
    "nvidia-cuda-cupti-cu11==11.8.87",
]


@pytest.fixture(scope="module", autouse=True)
def _needs_pypi():
    reason = L.probe("https://pypi.org/simple/")
    if reason:
        pytest.fail(f"PyPI unreachable: {reason}")


def _mtimes(lock: L.Lock) -> dict[str, int]:
    return {w.sha256: W.cas_path(w.sha256, w.filename).stat().st_mtime_ns for w in lock.all_wheels()}


def _lock_twice(cid: str, req: L.LockRequest, tmp_path: Path) -> L.Lock:
    (first,) = L.lock_cells({cid: req}, tmp_path / "locks")
    assert first.status == "locked" and first.lock is not None
    before = _mtimes(first.lock)
    started = time.monotonic()
    (second,) = L.lock_cells({cid: req}, tmp_path / "locks")
    assert second.status == "up-to-date" and time.monotonic() - started < 5
    assert _mtimes(second.lock) == before  # nothing downloaded again
    assert L.read_lock(tmp_path / "locks" / f"{cid}.txt") == first.lock
    return first.lock


def test_onnxruntime_cell(tmp_path):
    lk = _lock_twice("onnxruntime-1.23.2-cpu-py3.11", L.LockRequest(["onnxruntime==1.23.2"]), tmp_path)
    ort = next(w for w in lk.wheels if w.key == "onnxruntime")
    assert ort.version == "1.23.2" and "manylinux_2_2" in ort.filename and "cp311" in ort.filename
    assert {"numpy", "protobuf"} <= {w.key for w in lk.wheels}


def test_paddle_cpu_cell(tmp_path):
    lk = _lock_twice("paddle-3.3.1-cpu-py3.11", L.LockRequest(["paddlepaddle==3.3.1"]), tmp_path)
    assert next(w for w in lk.wheels if w.key == "paddlepaddle").version == "3.3.1"


def test_torch_cell_from_find_links_when_its_index_is_unreachable(tmp_path):
    """With torch 2.13.0+cpu in the host's find-links (/opt/wheels here) the lock comes from there when
    PyTorch's index is unreachable; on a host without it, from PyTorch's index. Either way: locked."""
    req = L.LockRequest(["torch==2.13.0+cpu"], indexes=[("pytorch-cpu", "index", "https://download.pytorch.org/whl/cpu")])
    lk = L.resolve(req, cell_id="pytorch-2.13.0-cpu-py3.11")
    assert next(w for w in lk.wheels if w.key == "torch").version == "2.13.0+cpu"


def test_missing_wheel_for_the_target_python():
    with pytest.raises(L.MissingWheel, match=r"paddlepaddle==2.6.2 for CPython 3.14 on manylinux_2_36_x86_64"):
        L.resolve(L.LockRequest(["paddlepaddle==2.6.2"], python="3.14"), cell_id="paddle-2.6.2-cpu-py3.14")


@pytest.mark.gpu_cell
def test_paddle_262_gpu_cu118_cell(tmp_path):
    req = L.LockRequest(["paddlepaddle-gpu==2.6.2", *NVIDIA_CU118])
    lk = _lock_twice("paddle-2.6.2-gpu-cuda11.8-py3.11", req, tmp_path)
    pins = {w.pin for w in lk.wheels}
    assert {"paddlepaddle-gpu==2.6.2", *NVIDIA_CU118} <= pins
    total = sum(W.cached_size(w) for w in lk.wheels)
    assert 2_500_000_000 < total < 3_000_000_000
