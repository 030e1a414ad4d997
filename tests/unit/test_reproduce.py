"""Reproducibility pieces that need no engine: scripts/sde.py on a real directory tree (mtimes clamped,
never raised, symlinks themselves, caches removed, a no-op without SOURCE_DATE_EPOCH), the canonical
config, SOURCE_DATE_EPOCH from the environment, and the recipe's use of them in every committed
Dockerfile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import reproduce
from imagegen.errors import UserInputError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SDE = ROOT / "imagegen" / "scripts" / "sde.py"
EPOCH = 1_700_000_000


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "venv"
    (root / "lib" / "pkg").mkdir(parents=True)
    (root / "lib" / "pkg" / "new.py").write_text("x = 1\n")
    old = root / "lib" / "pkg" / "old.py"
    old.write_text("y = 2\n")
    os.utime(old, (1_000_000_000, 1_000_000_000))  # a package's own date, older than the epoch: kept
    (root / "bin").mkdir()
    os.symlink("/usr/bin/python3.11", root / "bin" / "python")  # a target outside the tree: never touched
    (root / "var" / "cache" / "ldconfig").mkdir(parents=True)
    (root / "var" / "cache" / "ldconfig" / "aux-cache").write_bytes(b"inode numbers")
    return root


def _run(root: Path, env_epoch: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    if env_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = env_epoch
    return subprocess.run([sys.executable, str(SDE), str(root)], capture_output=True, text=True, env=env)


def test_sde_clamps_newer_mtimes_keeps_older_and_removes_caches(tmp_path):
    root = _tree(tmp_path)
    r = _run(root, str(EPOCH))
    assert r.returncode == 0, r.stderr
    assert "removed=1" in r.stdout and f"epoch={EPOCH}" in r.stdout
    assert not (root / "var" / "cache" / "ldconfig" / "aux-cache").exists()
    mtimes = {str(p.relative_to(root)): os.lstat(p).st_mtime for p in [root, *root.rglob("*")]}
    assert mtimes.pop("lib/pkg/old.py") == 1_000_000_000
    assert set(mtimes.values()) == {EPOCH}, mtimes  # the symlink itself and every directory too
    assert os.readlink(root / "bin" / "python") == "/usr/bin/python3.11"


def test_sde_without_the_variable_changes_nothing(tmp_path):
    root = _tree(tmp_path)
    before = {p: os.lstat(p).st_mtime for p in root.rglob("*")}
    r = _run(root, None)
    assert r.returncode == 0 and "skipped" in r.stdout
    assert {p: os.lstat(p).st_mtime for p in root.rglob("*")} == before


def test_sde_refuses_a_bad_epoch(tmp_path):
    r = _run(_tree(tmp_path), "yesterday")
    assert r.returncode == 2 and "not an integer" in r.stderr


CLASSIC = {
    "architecture": "amd64", "os": "linux", "created": "2026-12-07T18:29:05.535868732Z",
    "container": "3f1c0a", "docker_version": "20.10.24+dfsg1",
    "container_config": {"Hostname": "3f1c0a", "Cmd": ["/bin/sh", "-c", "#(nop) ", "LABEL a=b"]},
    "config": {"Hostname": "", "User": "1000:1000", "Env": ["PATH=/opt/venv/bin"], "Cmd": ["python3.11"],
               "Image": "sha256:parentstep", "Volumes": None, "WorkingDir": "/home/app", "Entrypoint": None,
               "OnBuild": None, "Labels": {"a": "b"}, "AttachStdout": False},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]},
    "history": [{"created": "2026-07-11T10:16:37Z", "created_by": "imagegen bases"},
                {"created": "2026-12-07T18:29:04Z", "created_by": "/bin/sh -c #(nop) COPY dir:1 in /opt/venv"},
                {"created": "2026-12-07T18:29:05Z", "created_by": "/bin/sh -c #(nop)  LABEL a=b", "empty_layer": True}],
}


def test_canonical_config_drops_the_clock_and_the_build_host():
    c = reproduce.canonical_config(CLASSIC, EPOCH)
    assert c["created"] == "2023-11-14T22:13:20Z" == reproduce.iso(EPOCH)
    assert set(c) == {"architecture", "os", "created", "config", "rootfs", "history"}
    assert c["config"] == {"User": "1000:1000", "Env": ["PATH=/opt/venv/bin"], "Cmd": ["python3.11"],
                           "WorkingDir": "/home/app", "Labels": {"a": "b"}}
    assert [h["created"] for h in c["history"]] == [reproduce.iso(EPOCH)] * 3
    assert [h.get("empty_layer", False) for h in c["history"]] == [False, False, True]
    assert c["rootfs"] == CLASSIC["rootfs"]
    # two builds that differ in the clock and the step container only: one config
    other = {**CLASSIC, "created": "2026-12-08T01:00:00Z", "container": "99aa",
             "config": {**CLASSIC["config"], "Image": "sha256:anotherparent"}}
    assert reproduce.canonical_config(other, EPOCH) == c


def test_source_date_epoch_from_the_environment_and_bad_values():
    assert reproduce.source_date_epoch([], env={"SOURCE_DATE_EPOCH": "1700000000"}) == EPOCH
    with pytest.raises(UserInputError, match="not a number of seconds"):
        reproduce.source_date_epoch([], env={"SOURCE_DATE_EPOCH": "-5"})


def test_every_committed_dockerfile_clamps_what_its_stages_make():
    files = sorted((ROOT / "dockerfiles").glob("*/Dockerfile"))
    assert files
    for f in files:
        text = f.read_text()
        stages = text.count("\nFROM ")
        assert text.count("ARG SOURCE_DATE_EPOCH") >= 2, f  # sysroot and builder (and a GPU runtime)
        assert "/tmp/sde.py /sysroot" in text and "sde.py /opt/imagegen-venvroot /opt/imagegen-stage" in text, f
        assert "/sbin/ldconfig" not in text or "aux-cache" in text, f
        # the environment is copied with its parents (COPY of a directory gives it the clock's mtime)
        assert "COPY --from=builder /opt/imagegen-venvroot/ /" in text.split("# --- runtime")[1], f
        assert stages >= 4, f


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "99999999999999999999", "\u00b2"])
def test_a_bad_source_date_epoch_is_one_line_and_exit_2_before_any_build(value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "imagegen", "build", "--variant", "onnxruntime:1.23.2-cpu-slim"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SOURCE_DATE_EPOCH": value, "IMAGEGEN_CACHE": str(tmp_path), "NO_COLOR": "1"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "SOURCE_DATE_EPOCH=" in r.stderr
    assert "Traceback" not in r.stderr and "preparing" not in r.stderr
