"""The recipe room (imagegen.recipe): one owner for what goes into a cell's image."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from imagegen import matrix, recipe, render

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "imagegen"


@pytest.fixture(scope="module")
def m():
    return matrix.load(ROOT / "matrix.yaml")


def test_the_rendered_prune_json_is_the_recipe(m):
    """prune.json in every committed build folder is exactly the recipe's (render adds nothing)."""
    for cell in m.active:
        committed = json.loads((ROOT / "dockerfiles" / cell.id / "imagegen" / "prune.json").read_text())
        assert committed == recipe.of(cell).prune_json(), cell.ref
        assert json.loads(render.render_cell(m, cell).files["imagegen/prune.json"]) == committed


def test_policy_narrowed_by_slimming_and_relaxed_for_a_shell(m):
    """Paddle's import runs /bin/sh (runtime_packages: dash in its data): its slim images may keep a
    shell, and say why; ONNX Runtime's may not. The full flavor enforces none of the contents rules."""
    paddle = next(c for c in m.active if c.framework == "paddle" and c.flavor == "slim")
    ort = next(c for c in m.active if c.framework == "onnxruntime" and c.flavor == "slim")
    full = next(c for c in m.active if c.flavor == "full")
    rp, ro, rf = recipe.of(paddle), recipe.of(ort), recipe.of(full)
    assert rp.policy["no_shell"] is False and "needs dash" in rp.policy_notes["no_shell"]
    assert ro.policy["no_shell"] is True and "no_shell" not in ro.policy_notes
    assert not rf.policy["no_pip"] and not rf.policy["no_docs"]
    assert recipe.of(paddle) is rp  # computed once per cell
    with pytest.raises(TypeError):
        rp.policy["no_shell"] = True  # read-only: no caller can change what the others read


def test_removed_globs_are_the_enabled_path_rules(m):
    (flagship,) = m.select(["gpu-cuda11.8-slim"])
    r = recipe.of(flagship)
    assert r.removed_globs and not any(g.startswith("venv:") for g in r.removed_globs)
    for g in r.removed_globs:  # each from a rule the cell enables
        assert any(r.rules.get(n) is True and g in gl for n, gl in r.globs.items()), g
    enabled = [n for n, on in r.rules.items() if on is True and r.globs.get(n)]
    assert enabled and all(set(g for g in r.globs[n] if not g.startswith("venv:")) <= set(r.removed_globs)
                           for n in enabled)


def test_only_the_recipe_works_out_a_cells_image():
    """The facts the recipe owns are not computed again elsewhere: the prune rules are read, the contents
    policy is narrowed and the smoke script's host half is looked for only in recipe.py (and where each
    is defined)."""
    owners = {"prune_rules": {"recipe", "compat"}, "policy_for": {"recipe", "imagetest.target", "imagetest.__init__"},
              "host_prepare": {"recipe", "imagetest.checks.conftest"}}
    found: dict[str, set[str]] = {k: set() for k in owners}
    for path in PKG.rglob("*.py"):
        if "data" in path.relative_to(PKG).parts:
            continue
        mod = path.relative_to(PKG).with_suffix("").as_posix().replace("/", ".")
        for n in ast.walk(ast.parse(path.read_text())):
            name = (n.attr if isinstance(n, ast.Attribute) else n.id if isinstance(n, ast.Name)
                    else n.name if isinstance(n, ast.FunctionDef) else None)
            text = n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else ""
            for key in owners:
                if name == key or f"def {key}" in text:
                    found[key].add(mod)
    for key, mods in found.items():
        assert mods <= owners[key], f"{key} is worked out in {sorted(mods - owners[key])}: read imagegen.recipe"
