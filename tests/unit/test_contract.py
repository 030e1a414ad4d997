"""The host <-> builder contract (imagegen/scripts/contract.py): one owner for the in-image paths, the
marker lines and prune.json's schema, and one list of the files each build stage copies."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import matrix, recipe, render
from imagegen.scripts import contract

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "imagegen" / "scripts"


def _siblings_imported(name: str) -> set[str]:
    """The sibling scripts `name` imports (`from . import x` or a plain `import x`)."""
    tree = ast.parse((SCRIPTS / name).read_text())
    here = {p.stem for p in SCRIPTS.glob("*.py")}
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name in here}
        elif isinstance(n, ast.ImportFrom) and n.level == 1:
            out |= {a.name for a in n.names if a.name in here}
    return {f"{x}.py" for x in out}


@pytest.mark.parametrize("stage", ["builder", "sysroot"])
def test_each_stage_copies_the_siblings_its_scripts_import(stage):
    """A script that imports a sibling finds it beside itself in the build: the stage's COPY line (from
    render's lists) carries both."""
    copied = set(recipe.BUILDER_SCRIPTS + recipe.FATPRUNE_SCRIPTS if stage == "builder" else recipe.SYSROOT_SCRIPTS)
    for name in copied:
        missing = _siblings_imported(name) - copied
        assert not missing, f"{name} imports {missing}, which the {stage} stage does not copy"
    assert copied <= set(p.name for p in SCRIPTS.glob("*.py"))
    assert {Path(rel).name for rel in recipe.context_files()} >= set(recipe.BUILDER_SCRIPTS)


def test_the_rendered_build_copies_what_render_lists():
    m = matrix.load(ROOT / "matrix.yaml")
    for cell in m.active:
        files = render.render_cell(m, cell).files
        cfg = json.loads(files["imagegen/prune.json"])
        assert cfg["schema"] == contract.PRUNE_CONFIG_SCHEMA
        line = f"COPY {' '.join(render.builder_files(recipe.of(cell)))} {contract.BUILD_DIR}/"
        assert line in files["Dockerfile"].splitlines()
        context = set(recipe.of(cell).context_files) | set(files) | {"imagegen/smoke.py"}
        assert set(render.builder_files(recipe.of(cell))) <= context


def test_a_config_for_another_schema_stops_the_scripts(tmp_path):
    contract.check_config({"schema": contract.PRUNE_CONFIG_SCHEMA}, "prune")
    contract.check_config({}, "prune")  # written by hand (the tests) or by an older imagegen
    with pytest.raises(SystemExit, match=r"^prune: prune.json has schema 99, this script reads 1"):
        contract.check_config({"schema": 99}, "prune")
    cfg = tmp_path / "prune.json"
    cfg.write_text(json.dumps({"schema": 99, "site_packages": str(tmp_path), "cuda_archs": {"targets": ["sm_75"]}}))
    r = subprocess.run([sys.executable, "-I", str(SCRIPTS / "fatprune.py"), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "fatprune: prune.json has schema 99" in r.stderr, r.stderr


def test_the_fatprune_report_joins_the_prune_report_one_way(tmp_path):
    """fatprune.py (into the stage's file) and build (from the log's marker lines) merge alike."""
    from imagegen import build

    prune, fat = {"rules": {"docs": {"bytes": 5}}, "venv_bytes_after": 1000}, {"bytes": 400}
    log = tmp_path / "cell.log"  # BuildKit's plain progress puts "#<step> <seconds> " before a line
    log.write_text(f"#7 1.25 {contract.PRUNE_REPORT_MARK}{json.dumps(prune)}\n"
                   f"#8 2.50 {contract.FATPRUNE_REPORT_MARK}{json.dumps(fat)}\n")
    full = contract.merge_cuda_archs(prune, fat)
    assert full == {"rules": {"docs": {"bytes": 5}, "cuda_archs": {"bytes": 400}}, "venv_bytes_after": 600}
    assert build.prune_report_from_log(log) == full
