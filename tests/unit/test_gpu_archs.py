"""gpu_archs: the matrix key, validate/list from the committed kernel facts, the audit's CUDA-kernel
view, and the GPU smoke test's compute-capability check (no engine, no network)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagegen import gpu_archs as ga
from imagegen import matrix
from imagegen.audit.core import audit
from imagegen.audit.synth import write_save_tar
from imagegen.errors import UserInputError
from imagegen.imagetest import gpuhost
from imagegen.units import format_size as human

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = "paddle-2.6.2-gpu-cuda11.8-cudnn8.6-slim"
import fatbin_fixtures as fx  # noqa: E402  (tests/support, on sys.path by conftest)

GPU_MATRIX = """
frameworks:
  paddle:
    "2.6.2":
      devices: [cpu, gpu]
      cuda: ["11.8"]
      flavors: [slim]
      gpu_archs: {archs}
overrides:
  - match: "paddle:*-gpu-*-slim"
    slimming: {{cudnn_train: true, flashattn: true, warpctc: true, cuda_unused: true, cuda_extras: true}}
"""


def _matrix(tmp_path: Path, archs: str, with_facts: bool = True) -> Path:
    (tmp_path / "locks").mkdir(exist_ok=True)
    for suffix in (".txt", ".cuda.json") if with_facts else (".txt",):
        shutil.copy(ROOT / "locks" / f"{FLAGSHIP}{suffix}", tmp_path / "locks" / f"{FLAGSHIP}{suffix}")
    p = tmp_path / "matrix.yaml"
    p.write_text(GPU_MATRIX.format(archs=archs))
    return p


def _imagegen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_matrix_key_per_version_and_override(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(GPU_MATRIX.format(archs='[sm_86, "7.5", sm_75]') + """  - match: "paddle:2.6.2-gpu-*"
    gpu_archs: [compute_61]
""")
    cells = {c.ref: c for c in matrix.load(p).active}
    assert cells["paddle:2.6.2-cpu-slim"].gpu_archs == ()
    assert cells["paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"].gpu_archs == ("sm_61",)   # later rule wins
    p.write_text(GPU_MATRIX.format(archs='[sm_86, "7.5", sm_75]'))
    cell = next(c for c in matrix.load(p).active if c.device == "gpu")
    assert cell.gpu_archs == ("sm_75", "sm_86") and cell.as_dict()["gpu_archs"] == ["sm_75", "sm_86"]


@pytest.mark.parametrize("archs, msg", [("[gtx1650]", "not a GPU architecture: 'gtx1650'"),
                                        ("[]", "at least one architecture")])
def test_matrix_key_rejects_nonsense(tmp_path, archs, msg):
    p = tmp_path / "m.yaml"
    p.write_text(GPU_MATRIX.format(archs=archs))
    with pytest.raises(UserInputError, match=msg):
        matrix.load(p)


def test_schema_has_gpu_archs(repo_root):
    schema = json.loads((repo_root / "matrix.schema.json").read_text())
    assert schema == json.loads(json.dumps(matrix.json_schema()))
    text = json.dumps(schema)
    assert text.count('"gpu_archs"') >= 3      # version entry, include, override


def test_validate_rejects_a_target_the_framework_cannot_serve(tmp_path):
    r = _imagegen("validate", "-m", str(_matrix(tmp_path, "[sm_90]")), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'matrix.yaml'}:6: paddle 2.6.2 ships no kernels for sm_90 "
        "(SASS for sm_61, sm_70, sm_75, sm_80, sm_86; no PTX)"]
    assert r.stdout == ""
    ok = _imagegen("validate", "-m", str(_matrix(tmp_path, "[sm_75, sm_86]")), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_validate_without_facts_notes_it(tmp_path):
    r = _imagegen("validate", "-m", str(_matrix(tmp_path, "[sm_90]", with_facts=False)), cwd=tmp_path)
    assert r.returncode == 0 and "no CUDA kernel facts next to its lock" in r.stderr


def test_list_json_shows_targets_and_what_the_image_runs_on(tmp_path):
    r = _imagegen("list", "--json", "-m", str(_matrix(tmp_path, "[sm_75]")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    gpu = next(c for c in json.loads(r.stdout) if c["device"] == "gpu")
    assert gpu["gpu_archs"] == ["sm_75"]
    k = gpu["cuda_kernels"]
    assert k["label"] == "sm_75"                         # a targeted cell is labelled with its targets
    assert k["archs"] == ["sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_89"]   # what the unpruned kernels serve
    assert set(k["narrowing"]) == {"paddle/libs/libphi.so", "paddle/base/libpaddle.so"}
    assert "paddle/libs/libflashattn.so" not in json.dumps(k)      # pruned by the slim cell's flashattn rule


def test_committed_facts_are_derived_not_written_by_hand():
    """The committed file is what gpu_archs produces from its own per-library facts: sizes add up."""
    facts = json.loads((ROOT / "locks" / f"{FLAGSHIP}.cuda.json").read_text())
    assert facts["format"] == ga.FORMAT and facts["generated_by"].startswith("imagegen lock")
    lock_text = (ROOT / "locks" / f"{FLAGSHIP}.txt").read_text()
    for pin, wheel in facts["wheels"].items():
        assert wheel["sha256"] in lock_text, pin
        for lib in wheel["libraries"]:
            assert sum(lib["bytes"].values()) <= lib["fatbin_bytes"]
            assert all(0 <= v <= lib["fatbin_bytes"] for v in lib["kept_bytes"].values())
    phi = next(l for l in facts["wheels"]["paddlepaddle-gpu==2.6.2"]["libraries"] if l["path"].endswith("libphi.so"))
    assert ga.shipped(phi) == ["sm_61", "sm_70", "sm_75", "sm_80", "sm_86"] and not ga.serves(phi, 90)


def test_audit_reports_kernels_per_arch_per_library(tmp_path):
    sec = fx.section(fx.container(fx.entry("sass", 70, 1000), fx.entry("sass", 75, 2000)),
                     fx.container(fx.entry("sass", 80, 500), fx.entry("ptx", 70, 300)))
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": sec}).read_bytes()
    odd = fx.elf_with_sections(tmp_path / "libodd.so", {".nv_fatbin": b"\1" * 64}).read_bytes()
    site = "/opt/venv/lib/python3.11/site-packages"
    tar = tmp_path / "img.tar"
    with open(tar, "wb") as f:
        write_save_tar(f, [[("file", f"{site}/pkg/libk.so", so), ("file", f"{site}/pkg/libodd.so", odd)]])
    rep = audit(tarball=str(tar)).report
    k = rep["cuda_kernels"]
    assert k["total"] == len(sec) + 64
    lib = next(x for x in k["libraries"] if x["path"].endswith("libk.so"))
    assert lib["bytes"] == {"sm_70": 1064, "sm_75": 2064, "sm_80": 568, "compute_70": 368}
    assert lib["ships"] == ["sm_70", "sm_75", "sm_80", "compute_70"]
    assert k["label"] == "sm_70,sm_75,sm_80,sm_86,sm_89,sm_90,sm_100,sm_103,sm_120,sm_121"
    assert list(k["runs_on"]["unreadable"]) == [f"{site}/pkg/libodd.so"]
    t75 = next(t for t in k["narrower_targets"] if t["target"] == "sm_75")
    assert t75 == {"target": "sm_75", "kept": 16 + 2064 + 16 + 368, "saves": len(sec) - (16 + 2064 + 16 + 368)}
    from rich.console import Console

    from imagegen.audit.text import print_report
    con = Console(record=True, width=200)
    print_report(rep, con)
    text = con.export_text()
    assert "CUDA kernels by GPU architecture" in text and "unreadable" in text and "sm_75" in text
    from imagegen.audit.html import _tables
    assert "CUDA kernels by GPU architecture" in _tables(rep, 20)
    from pydantic import TypeAdapter

    from imagegen.audit.schema import AuditReport
    TypeAdapter(AuditReport).validate_python(rep, strict=True)  # unreadable libraries and narrower targets too


def test_audit_shows_kernels_embedded_in_data_sections(tmp_path):
    """cuFFT's layout (a tiny .nv_fatbin, the real kernels as data): the audit reports both."""
    emb = fx.section(fx.container(fx.entry("ptx", 50, 700)), fx.container(fx.entry("sass", 80, 900)))
    so = fx.elf_with_sections(tmp_path / "libcufft.so.11", {".nv_fatbin": fx.section(fx.container(
        fx.entry("sass", 52, 32))), ".ldata": emb}, flags={".ldata": "aw"}).read_bytes()
    site = "/opt/venv/lib/python3.11/site-packages"
    tar = tmp_path / "img.tar"
    with open(tar, "wb") as f:
        write_save_tar(f, [[("file", f"{site}/nvidia/cufft/lib/libcufft.so.11", so)]])
    rep = audit(tarball=str(tar)).report
    k = rep["cuda_kernels"]
    assert (k["total"], k["embedded_total"]) == (16 + 64 + 32, len(emb))
    [lib] = k["libraries"]
    assert lib["embedded_bytes"] == len(emb) and lib["ships"] == ["sm_52", "sm_80", "compute_50"]
    assert k["runs_on"]["archs"] == [ga.sm(cc) for cc in ga.known_ccs() if cc >= 50]
    from rich.console import Console

    from imagegen.audit.text import print_report
    con = Console(record=True, width=200)
    print_report(rep, con)
    assert f"{human(len(emb))} embedded in data sections" in con.export_text()
    from imagegen.audit.html import _tables
    assert "embedded in data sections" in _tables(rep, 20)
    from pydantic import TypeAdapter

    from imagegen.audit.schema import AuditReport
    TypeAdapter(AuditReport).validate_python(rep, strict=True)  # the CUDA kernels section is in the schema


def test_onnxruntime_gpu_cell_counts_cufft_embedded_kernels():
    """Issue 13: cuFFT 11.3's libcufft.so.11 has one sm_52 container in .nv_fatbin and its real
    kernels embedded in .ldata; read as sm_52 only, it left the ONNX Runtime GPU cell's
    io.imagegen.cuda.archs label empty. From the committed facts (measured on nvidia-cufft-cu12
    11.3.3.83): the label lists every GPU from 6.0 (the CUDA provider ships sm_60 SASS and up)."""
    m = matrix.load(ROOT / "matrix.yaml")
    cell = next(c for c in m.active if c.ref == "onnxruntime:1.23.2-gpu-cuda12.8-cudnn9.10-slim")
    facts = ga.committed_facts(m, cell)
    cufft = next(lib for lib in ga.cell_libraries(cell, facts) if lib["path"].endswith("libcufft.so.11"))
    assert (cufft["containers"], cufft["embedded_containers"], cufft["embedded_bytes"]) == (1, 23531, 259_320_600)
    assert "compute_50" in ga.shipped(cufft)
    s = ga.cell_summary(m, cell)
    assert s["label"] == ",".join(ga.sm(cc) for cc in ga.known_ccs() if cc >= 60)
    assert s["narrowing"] == {"onnxruntime/capi/libonnxruntime_providers_cuda.so": ["sm_50", "sm_52"]}


def test_host_compute_capability_from_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 7.5\necho 9.0\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert gpuhost.compute_capabilities() == [75, 90]
    label = "sm_61,sm_70,sm_75,sm_80,sm_86,sm_89"
    assert gpuhost.kernel_path(label, 75) and gpuhost.kernel_path(label, 87)   # 8.7 runs sm_80/86 SASS
    assert not gpuhost.kernel_path(label, 90) and not gpuhost.kernel_path(label, 52)


def test_device_script_reads_gpu_data_without_yaml():
    spec = importlib.util.spec_from_file_location("on_device", ROOT / "bench/gpu_archs_on_device.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    plain = mod._gpu_data_without_yaml()
    real = yaml.safe_load((ROOT / "imagegen/data/gpus.yaml").read_text())
    assert list(plain["compute_capabilities"]) == list(real["compute_capabilities"])
    assert plain["min_container_share"] == real["min_container_share"]
    assert list(plain["feature_libraries"]) == list(real["feature_libraries"])


def test_every_locked_gpu_cell_has_current_kernel_facts():
    """A fresh clone answers validate/list: each GPU cell's lock has its facts committed next to it."""
    m = matrix.load(ROOT / "matrix.yaml")
    locked = [c for c in m.active if c.device == "gpu" and (ROOT / "locks" / f"{c.id}.txt").exists()]
    assert locked, "the default matrix has a locked GPU cell"
    missing = [c.ref for c in locked if ga.committed_facts(m, c) is None]
    assert not missing, f"run `imagegen lock` and commit locks/*.cuda.json for {missing}"


def test_a_new_twin_without_a_lock_is_judged_by_its_wheels(tmp_path):
    """issue 21 point 3: an sm_90 twin added with `include:` has no lock of its own yet; the facts of the
    flagship, whose lock is resolved from the same inputs (the same wheels), refuse it at validate. A
    twin the wheels can serve is accepted without a note."""
    import shutil
    import subprocess
    import sys

    for name in ("templates", "locks"):
        shutil.copytree(ROOT / name, tmp_path / name)
    base = (ROOT / "matrix.yaml").read_text()
    twin = '  - {framework: paddle, version: 2.6.2, device: gpu, cuda: "11.8", flavor: slim, gpu_archs: [%s]}\n'
    assert "\ninclude:\n" in base

    def validate(arch: str):
        (tmp_path / "matrix.yaml").write_text(base.replace("\ninclude:\n", "\ninclude:\n" + twin % arch, 1))
        return subprocess.run([sys.executable, "-m", "imagegen", "validate", "-m", str(tmp_path / "matrix.yaml")],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    r = validate("sm_90")
    assert r.returncode == 2 and "paddle 2.6.2 ships no kernels for sm_90" in r.stderr, r.stderr
    r = validate("sm_86")
    assert r.returncode == 0 and "no CUDA kernel facts" not in r.stderr, r.stderr


def test_a_cell_that_needs_a_feature_library_is_judged_with_it(tmp_path):
    """issue 21 point 2: flash-attention (libflashattn: SASS for sm_80/sm_86 only) is a feature library:
    not counted unless a cell needs it. The Paddle 2.6.2 full image declaring it runs only where it has
    kernels; a twin cut to sm_75 that needs it is refused; a glob naming no library is refused."""
    import shutil
    import subprocess
    import sys

    from imagegen import matrix as matrix_mod

    for name in ("templates", "locks"):
        shutil.copytree(ROOT / name, tmp_path / name)
    base = (ROOT / "matrix.yaml").read_text()
    assert "\noverrides:\n" in base

    def with_rule(rule: str) -> Path:
        p = tmp_path / "matrix.yaml"
        p.write_text(base.replace("\noverrides:\n", "\noverrides:\n" + rule, 1))
        return p

    p = with_rule('  - {match: "paddle:2.6.2-gpu-*-full", needs_kernels: [paddle/libs/libflashattn.so]}\n')
    m = matrix_mod.load(p)
    (full,) = m.select(["paddle:2.6.2-gpu-cuda11.8-cudnn8.6-full"])
    assert full.needs_kernels == ("paddle/libs/libflashattn.so",)
    summary = ga.cell_summary(m, full)
    assert summary["label"] == "sm_80,sm_86,sm_89"  # 8.9 runs sm_86 SASS (same major, not newer)
    assert not any("libflashattn" in g for gaps in summary["feature_gaps"].values() for g in gaps)

    def validate(rule: str):
        return subprocess.run([sys.executable, "-m", "imagegen", "validate", "-m", str(with_rule(rule))],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    r = validate('  - {match: "paddle:*-sm75-slim", needs_kernels: [paddle/libs/libflashattn.so]}\n')
    assert r.returncode == 2 and "its slimming rules remove it" in r.stderr, r.stderr  # slim drops flashattn
    base = base.replace("\ninclude:\n", "\ninclude:\n  - {framework: paddle, version: 2.6.2, device: gpu, cuda: "
                        '"11.8", flavor: full, gpu_archs: [sm_75]}\n', 1)  # a full twin for a T4
    r = validate('  - {match: "paddle:*-sm75-full", needs_kernels: [paddle/libs/libflashattn.so]}\n')
    assert r.returncode == 2 and "ships no kernels for sm_75 in libflashattn.so" in r.stderr, r.stderr
    r = validate('  - {match: "paddle:2.6.2-gpu-*-full", needs_kernels: [paddle/libs/libnothing.so]}\n')
    assert r.returncode == 2 and "needs_kernels 'paddle/libs/libnothing.so' names no CUDA library" in r.stderr, r.stderr


def test_an_unreadable_library_is_never_dropped_silently():
    """issue 21 point 4: a library whose fat binary cannot be read fails the verdict, named, unless the
    matrix accepts leaving it out (accept_unreadable)."""
    import dataclasses

    from imagegen import matrix as matrix_mod

    m = matrix_mod.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["gpu-cuda11.8-slim"])
    good = {"path": "paddle/libs/libgood.so", "wheel": "paddlepaddle-gpu==2.6.2", "warning": None,
            "kernel_containers": 1, "embedded_kernel_containers": 0, "containers_by_arch": {"sm_75": 1},
            "embedded_containers_by_arch": {}, "bytes": {"sm_75": 10}, "fatbin_bytes": 10, "embedded_bytes": 0}
    odd = {**good, "path": "paddle/libs/libodd.so", "warning": "junk at 0x40 between two containers",
           "bytes": {}, "containers_by_arch": {}}
    facts = {"wheels": {"paddlepaddle-gpu==2.6.2": {"sha256": "0" * 64, "libraries": [good, odd]}}}
    why = ga.check_readable(cell, facts)
    assert why.startswith("paddle/libs/libodd.so: its CUDA kernels could not be read (junk at 0x40")
    assert "accept_unreadable: [paddle/libs/libodd.so]" in why
    accepting = dataclasses.replace(cell, accept_unreadable=("paddle/libs/libodd*",))
    assert ga.check_readable(accepting, facts) is None
    assert ga.check_readable(cell, {"wheels": {"p==1": {"sha256": "0" * 64, "libraries": [good]}}}) is None
