"""imagegen pick on the repository's matrix and committed kernel facts, for hosts given by flags or by a
fake nvidia-smi (no GPU here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import gpu_archs, matrix, pick
from imagegen.errors import UserInputError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PADDLE = "paddle:*-gpu-*-slim"


def _pick(ccs: list[str], driver: str | None, family: str = PADDLE):
    m = matrix.load(ROOT / "matrix.yaml")
    cells = m.select([family])
    summaries = {c.ref: gpu_archs.cell_summary(m, c) or {} for c in cells}
    sizes = {c.ref: (c.budget_size, "budget") for c in cells}
    return pick.pick(m, cells, pick.host(ccs, driver), {r: s.get("label", "") for r, s in summaries.items()}, sizes,
                     {r: s.get("feature_gaps", {}) for r, s in summaries.items()})


def test_a_turing_host_gets_the_sm75_twin_first():
    choice, judged = _pick(["7.5"], "535.104.05")
    assert choice.ref == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-sm75-slim" and choice.targeted and choice.label == "sm_75"
    flagship = next(c for c in judged if c.ref == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim")
    assert flagship.fits and judged.index(flagship) == 1  # fits too, but the targeted twin comes first


def test_an_ada_host_gets_the_all_architecture_image():
    choice, judged = _pick(["8.9"], "535.104.05")
    assert choice.ref == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"
    twin = next(c for c in judged if c.targeted)
    assert not twin.fits and twin.why == ["no kernels for sm_89 (serves sm_75)"]


def test_every_gpu_of_the_host_must_be_served():
    choice, judged = _pick(["7.5", "8.6"], "535.104.05")  # a T4 and an A10 in one host: the twin is out
    assert choice.ref == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"


def test_hopper_and_an_old_driver_are_refused_with_the_reason():
    choice, judged = _pick(["9.0"], "535.104.05")
    assert choice is None
    assert any("no kernels for sm_90" in w for c in judged for w in c.why)
    choice, judged = _pick(["7.5"], "450.80.02")
    assert choice is None and all("needs driver >= 520.61.05 (CUDA 11.8)" in " ".join(c.why)
                                  for c in judged if c.label)
    choice, _ = _pick(["7.5"], None)  # driver unknown: picked, with a note
    assert choice.fits and choice.why == ["needs driver >= 520.61.05 (CUDA 11.8); the host's driver is unknown"]


def test_cells_without_committed_facts_are_not_judged():
    _, judged = _pick(["8.0"], "560.35")
    unjudged = [c for c in judged if not c.label]
    assert unjudged and all(not c.fits and "not committed" in c.why[0] for c in unjudged)


@pytest.mark.parametrize("bad", ["7", "sm_75", "75", "7.5.1", ""])
def test_bad_capabilities_are_refused(bad):
    with pytest.raises(UserInputError, match="give it as nvidia-smi prints it"):
        pick.host([bad], None)


def _cli(*args, path_prefix: str = ""):
    env = {**os.environ, "DOCKER_HOST": "unix:///tmp/imagegen-no-such-engine.sock",  # sizes from budgets
           "PATH": f"{path_prefix}{os.pathsep}{os.environ['PATH']}" if path_prefix else os.environ["PATH"]}
    return subprocess.run([sys.executable, "-m", "imagegen", "pick", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def test_the_host_is_read_through_nvidia_smi(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$*" in *compute_cap*) echo 7.5;; *driver_version*) echo 535.104.05;; esac\n')
    smi.chmod(0o755)
    r = _cli("--variant", PADDLE, path_prefix=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "paddle:2.6.2-gpu-cuda11.8-cudnn8.6-sm75-slim"
    assert "picked for sm_75, driver 535.104.05 (nvidia-smi)" in r.stderr


def test_cli_refusals_are_one_line():
    r = _cli("--variant", PADDLE, "-c", "9.0", "--driver", "535.104.05")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no selected image runs natively on sm_90" in r.stderr
    for args in (["-c", "7.5"], ["--variant", PADDLE, "-c", "x"], ["--variant", PADDLE, "-c", "7.5", "--driver", "new"],
                 ["--variant", "cpu-slim", "-c", "7.5"]):
        r = _cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (args, r.stderr)


def test_a_feature_library_without_kernels_on_the_host_is_said():
    """issue 21 point 2: the Paddle 2.6.2 full image keeps libflashattn (SASS for sm_80/86 only): on a T4
    it runs, with a note that flash-attention ops will fail; on an A10 (8.6) there is no such note."""
    choice, _ = _pick(["7.5"], "535.104.05", family="paddle:*-gpu-*-full")
    assert choice.fits and any(w.startswith("on sm_75, libflashattn.so has no kernels") for w in choice.why)
    choice, _ = _pick(["8.6"], "535.104.05", family="paddle:*-gpu-*-full")
    assert choice.fits and not any("libflashattn" in w for w in choice.why)
