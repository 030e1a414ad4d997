"""The committed ELF closure (issue 17): a build of a cell whose inputs did not change reads
locks/<cell>.closure.json and needs no Debian index; a changed lock, base or ignore list makes the
file stale and the closure is resolved again; a base that lost a soname the file counts on, too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagegen import bases, closure, closurefile, matrix, pipeline

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def m():
    return matrix.load(ROOT / "matrix.yaml")


def test_every_locked_cell_of_the_default_matrix_has_a_current_closure(m):
    """A fresh clone builds every cell it can lock without reading Contents (or any Debian index):
    the committed closure matches the cell's lock, base and ignore list, and resolved every soname."""
    rows = pipeline.closure_status(m, m.cells)
    assert len(rows) >= 13, rows  # every cell with a committed lock
    assert [(c, s) for c, _, s in rows if s != "up-to-date"] == []
    for _cell, path, _ in rows:
        data = json.loads(path.read_text())
        assert data["closure"]["unresolved"] == {}, path
        assert data["inputs"]["lock_sha256"] == closurefile.lock_sha256(path.with_name(path.name.replace(".closure.json", ".txt")))


@pytest.fixture
def copied(m, tmp_path):
    """paddle:3.3.1-cpu-slim with its lock and committed closure, in a matrix directory of the test's own."""
    (cell,) = m.select(["paddle:3.3.1-cpu-slim"])
    lpath = pipeline.lock_path(m, cell)
    (tmp_path / "locks").mkdir()
    shutil.copy(lpath, tmp_path / "locks" / lpath.name)
    shutil.copy(closurefile.path_for(lpath), tmp_path / "locks" / closurefile.path_for(lpath).name)
    return cell, tmp_path / "locks" / lpath.name


def _no_resolution(*_a, **_k):
    raise AssertionError("the closure was resolved again (a Debian index would be read)")


def test_current_file_is_used_without_resolving(copied, monkeypatch):
    cell, lpath = copied
    committed = json.loads(closurefile.path_for(lpath).read_text())["closure"]
    base_has = {k for k, v in committed["satisfied"].items() if v == "base"}
    monkeypatch.setattr(closure, "compute_closure", _no_resolution)
    monkeypatch.setattr(bases, "role_sonames", lambda ref: base_has | {"libunrelated.so.1"})
    assert pipeline._closure_packages(cell, lpath, "runtime:ref", []) == committed["packages"]
    assert "libgomp1" in committed["packages"]


class _Resolved:
    packages = ["libnew1"]

    def to_dict(self):
        return {"packages": ["libnew1"], "resolved": {}, "unresolved": {}, "satisfied": {}}


@pytest.mark.parametrize("change", ["lock", "base", "closure file removed"])
def test_changed_inputs_resolve_again_and_rewrite_the_file(copied, monkeypatch, change):
    cell, lpath = copied
    path = closurefile.path_for(lpath)
    if change == "lock":
        lpath.write_bytes(lpath.read_bytes() + b"# edited\n")
        monkeypatch.setattr(bases, "role_sonames", lambda ref: set())
    elif change == "base":  # the base no longer ships a soname the resolution found in it
        monkeypatch.setattr(bases, "role_sonames", lambda ref: set())
    else:
        path.unlink()
        monkeypatch.setattr(bases, "role_sonames", lambda ref: set())
    calls = []
    monkeypatch.setattr(closure, "compute_closure", lambda *a, **k: calls.append(k) or _Resolved())
    assert pipeline._closure_packages(cell, lpath, "runtime:ref", []) == ["libnew1"]
    assert len(calls) == 1 and calls[0]["suite"] == "bookworm"
    assert closurefile.status(path, pipeline.closure_inputs(cell, lpath)) == "up-to-date"
    assert json.loads(path.read_text())["closure"]["packages"] == ["libnew1"]


def test_inputs_key_covers_every_input():
    base = closurefile.ClosureInputs(lock_sha256="a" * 64, runtime_base="imagegen/base-bookworm-runtime:0123",
                                     suite="bookworm", mirror="http://deb.debian.org/debian", arch="amd64",
                                     host_provided=("libcuda.so.1",), ignore=())
    keys = {base.key}
    for field, value in [("lock_sha256", "b" * 64), ("runtime_base", "imagegen/base-bookworm-runtime:4567"),
                         ("suite", "trixie"), ("mirror", "http://mirror.example/debian"), ("arch", "arm64"),
                         ("host_provided", ()), ("ignore", ("libx.so.1",))]:
        keys.add(closurefile.ClosureInputs(**{**base.__dict__, field: value}).key)
    assert len(keys) == 8


def test_unreadable_or_unresolved_file_is_not_current(tmp_path):
    inputs = closurefile.ClosureInputs("a" * 64, "r", "bookworm", "m", "amd64", (), ())
    path = tmp_path / "x.closure.json"
    assert closurefile.status(path, inputs) == "missing"
    path.write_text("{not json")
    assert closurefile.status(path, inputs) == "missing" and closurefile.read_current(path, inputs) is None
    closurefile.write(path, "x", inputs, {"packages": [], "unresolved": {"libq.so.1": ["a.so"]}, "satisfied": {}})
    assert closurefile.status(path, inputs) == "up-to-date"
    assert closurefile.read_current(path, inputs) is None  # an unresolved soname is never a usable closure
    assert closurefile.path_for(Path("locks/a-1-cpu-slim.txt")) == Path("locks/a-1-cpu-slim.closure.json")


def test_lock_check_fails_on_a_stale_closure_and_names_it(copied, monkeypatch):
    """`imagegen lock --check` reports the closures with the locks: one table, one failure line."""
    import io

    from imagegen import console, errors
    from imagegen.cli import lock_cmds

    cell, lpath = copied
    buf = io.StringIO()
    monkeypatch.setattr(console.out, "file", buf)
    inputs = pipeline.closure_inputs(cell, lpath)
    path = closurefile.path_for(lpath)
    lock_cmds.run_lock({}, check=True, closures=[(cell.id, path, closurefile.status(path, inputs))])
    assert f"up-to-date  {path}" in buf.getvalue()
    lpath.write_bytes(lpath.read_bytes() + b"# edited\n")
    with pytest.raises(errors.ImagegenError, match=rf"1 lock file\(s\) missing or stale: {cell.id} \(closure\)"):
        lock_cmds.run_lock({}, check=True, closures=[(cell.id, path, closurefile.status(path, pipeline.closure_inputs(cell, lpath)))])
