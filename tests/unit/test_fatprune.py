"""The fat-binary rewriter (imagegen/scripts/fatprune.py) on real shared objects written here.

Fixtures are built with binutils (tests/support/fatprune_fixtures.py) the way nvcc lays libraries
out; the checks read the result with pyelftools, readelf and the dynamic loader
(tests/support/fatprune_checks.py), not with the rewriter's own ELF code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen.scripts import fatbin, fatprune

ROOT = Path(__file__).resolve().parents[2]


import fatbin_fixtures as fx  # noqa: E402  (tests/support, on sys.path by conftest)
import fatprune_checks as chk  # noqa: E402  (tests/support, on sys.path by conftest)
import fatprune_fixtures as lib  # noqa: E402  (tests/support, on sys.path by conftest)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def containers():
    e = fx.entry
    return [
        fx.container(e("sass", 52, 3000), e("sass", 75, 700)),                       # 0: orphan, kept whole
        fx.container(e("sass", 61, 5000), e("sass", 70, 5000), e("sass", 75, 5000), e("sass", 80, 5000)),
        fx.container(e("sass", 80, 6000), e("sass", 86, 6000)),                       # 2: nothing for 7.x
        fx.container(e("sass", 52, 4000), e("ptx", 70, 3000)),                        # 3: PTX serves 7.5
        fx.container(e("sass", 70, 2500, compression="zstd"), e("sass", 86, 4000)),   # 4: compressed kept
        fx.container(e("sass", 75, 900, variant="a"), e("sass", 75, 900), e("ptx", 86, 2000)),
    ]


@pytest.fixture
def fatlib(tmp_path):
    rel = fx.container(fx.entry("sass", 75, 200))
    (tmp_path / "lib").mkdir()
    path = lib.fat_library(tmp_path / "lib" / "libfat.so", containers(), [1, 2, 3, 4, 5], relfatbin=rel)
    orig = tmp_path / "orig" / "libfat.so"
    orig.parent.mkdir()
    shutil.copy2(path, orig)
    return path, orig


def test_rewrite_keeps_what_the_rule_picks_and_shrinks_the_file(fatlib):
    path, orig = fatlib
    rec = fatprune.prune_file(path, ["sm_75"], keep_ptx=False)
    assert rec["status"] == "pruned", rec
    assert rec["dlopen"] == "ok"
    assert rec["bytes_after"] == path.stat().st_size < orig.stat().st_size
    assert rec["bytes_before"] - rec["bytes_after"] >= 2 * fatprune.PAGE
    counts = chk.check_containers(orig, path, ["sm_75"])
    # kept per container: sm_75 | nothing | compute_70 | sm_70 (zstd) | sm_75a and sm_75 (both serve 7.5)
    assert counts == {"wrappers": 5, "kept": 5, "dropped": 8}
    layout = chk.check_layout(orig, path)
    assert layout["shrunk"] == rec["bytes_before"] - rec["bytes_after"]
    chk.dlopen_check(path)
    # relocatable device code and its wrapper are untouched
    assert chk.wrapper_targets(path)[-1] == chk.wrapper_targets(orig)[-1]
    so, sn = chk.readelf_sections(orig), chk.readelf_sections(path)
    assert so["__nv_relfatbin"]["addr"] == sn["__nv_relfatbin"]["addr"]
    rel_o = orig.read_bytes()[so["__nv_relfatbin"]["off"]:][:so["__nv_relfatbin"]["size"]]
    rel_n = path.read_bytes()[sn["__nv_relfatbin"]["off"]:][:sn["__nv_relfatbin"]["size"]]
    assert rel_o == rel_n
    # a program header more (the split), and the table moved out of the way of the first section
    assert len(chk.readelf_loads(path)) == len(chk.readelf_loads(orig)) + 1


def test_ltoir_entries_survive_a_prune(tmp_path):
    """LTO-IR serves no GPU, but a prune must never drop it silently (the library's own code may
    link it with nvJitLink): it is kept byte for byte whatever the targets."""
    e = fx.entry
    lto = e("ltoir", 80, 3000, header_size=128, compression="lz4")
    cs = [fx.container(e("sass", 61, 5000), e("sass", 75, 5000), e("sass", 86, 5000)),
          fx.container(e("sass", 80, 6000), lto, e("sass", 86, 6000))]
    path = lib.fat_library(tmp_path / "libfat.so", cs, [0, 1])
    orig = tmp_path / "orig.so"
    shutil.copy2(path, orig)
    rec = fatprune.prune_file(path, ["sm_75"], keep_ptx=False)
    assert rec["status"] == "pruned", rec
    assert chk.check_containers(orig, path, ["sm_75"]) == {"wrappers": 2, "kept": 2, "dropped": 4}
    (_, old), (_, new) = chk.fatbin_section(orig), chk.fatbin_section(path)
    kept = [(c, x) for c in fatbin.parse_fatbin(new) for x in c.entries]
    assert [x.name for _, x in kept] == ["sm_75", "lto_80"]
    c, x = kept[1]
    assert new[c.offset + x.offset:c.offset + x.offset + x.size] == lto
    assert lto in old


def test_sm_75a_target_and_ptx_keep(fatlib):
    path, orig = fatlib
    rec = fatprune.prune_file(path, ["sm_75", "sm_80"], keep_ptx=True)
    assert rec["status"] == "pruned"
    counts = chk.check_containers(orig, path, ["sm_75", "sm_80"], keep_ptx=True)
    assert counts["wrappers"] == 5
    chk.check_layout(orig, path)


def test_rewrite_is_deterministic(fatlib, tmp_path):
    path, orig = fatlib
    other = tmp_path / "again" / "libfat.so"
    other.parent.mkdir()
    shutil.copy2(orig, other)
    fatprune.prune_file(path, ["sm_75"], keep_ptx=False)
    fatprune.prune_file(other, ["sm_75"], keep_ptx=False)
    assert sha(path) == sha(other) != sha(orig)
    # rewriting again for the same target changes nothing: every entry is what the rule keeps
    again = fatprune.prune_file(other, ["sm_75"], keep_ptx=False)
    assert again["status"] == "unchanged" and sha(other) == sha(path)


def _patch_relative_addend(path: Path, old: int, new: int) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<QQ", 8, old))  # r_info = R_X86_64_RELATIVE, then the addend
    assert at > 0
    struct.pack_into("<Q", data, at + 8, new)
    path.write_bytes(bytes(data))


def test_library_it_does_not_understand_is_left_untouched(fatlib):
    path, _orig = fatlib
    addr = chk.readelf_sections(path)[".nv_fatbin"]["addr"]
    first_wrapped = addr + ((len(containers()[0]) + 7) & ~7)
    _patch_relative_addend(path, first_wrapped, first_wrapped + 16)   # now points inside a container
    before = sha(path)
    rec = fatprune.prune_file(path, ["sm_75"], keep_ptx=False)
    assert rec["status"] == "refused"
    assert "not at a container" in rec["reason"]
    assert sha(path) == before
    assert [p.name for p in path.parent.iterdir() if "fatprune" in p.name] == []


def test_library_without_fatbin_is_untouched(tmp_path):
    so = fx.elf_with_sections(tmp_path / "libplain.so", {".rodata.x": b"x" * 64})
    before = sha(so)
    assert fatprune.prune_file(so, ["sm_75"], keep_ptx=False)["status"] == "no-fatbin"
    assert sha(so) == before


def test_a_bad_rewrite_fails_verification_and_keeps_the_original(fatlib, monkeypatch, tmp_path, capsys):
    path, orig = fatlib
    real = fatprune.write_plan

    def corrupting(plan, buf, src_fd, dst_fd):
        real(plan, buf, src_fd, dst_fd)
        eh = chk.readelf_sections(orig)[".eh_frame"]["off"]
        import os
        os.pwrite(dst_fd, b"\xff", plan.new_offset(eh + 3))

    monkeypatch.setattr(fatprune, "write_plan", corrupting)
    with pytest.raises(fatprune.VerifyFailed, match="eh_frame"):
        fatprune.prune_file(path, ["sm_75"], keep_ptx=False)
    assert sha(path) == sha(orig)
    # the build step: exit 1 with the reason, nothing replaced
    assert fatprune.main(["--root", str(path.parent), "--targets", "sm_75", "--no-dlopen"]) == 1
    assert "verification failed" in capsys.readouterr().err
    assert sha(path) == sha(orig)


def test_verify_catches_a_wrong_wrapper_pointer(fatlib):
    path, orig = fatlib
    import mmap

    with open(orig, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        plan = fatprune.make_plan(orig, buf, ["sm_75"], False)
        fatprune.prune_file(path, ["sm_75"], keep_ptx=False)
        new = bytearray(path.read_bytes())
        slot = min(plan.patches)  # a RELATIVE addend in .rela.dyn, which precedes everything else patched
        at = plan.new_offset(slot)
        struct.pack_into("<Q", new, at, struct.unpack_from("<Q", new, at)[0] + 8)
        problems = fatprune.verify(buf, new, ["sm_75"], False, plan)
        assert problems and any("not a container header" in p for p in problems), problems
        # a symbol value in .symtab (the fixture's local fatbinN labels) that points between containers
        sym = max(plan.patches)
        new2 = bytearray(path.read_bytes())
        struct.pack_into("<Q", new2, plan.new_offset(sym), struct.unpack_from("<Q", new2, plan.new_offset(sym))[0] + 8)
        assert any("symbol" in p for p in fatprune.verify(buf, new2, ["sm_75"], False, plan))


def test_script_runs_standalone_and_merges_its_report(fatlib, tmp_path):
    """As in the builder: fatbin.py and fatprune.py side by side, stdlib only, a prune report to extend."""
    path, orig = fatlib
    build = tmp_path / "build"
    build.mkdir()
    for name in ("contract.py", "elfmini.py", "fatbin.py", "fatprune.py"):  # as render.builder_files copies them
        shutil.copy(ROOT / "imagegen/scripts" / name, build / name)
    stage = tmp_path / "stage"
    report = stage / "etc/imagegen/prune-report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"rules": {"docs": {"bytes": 1}}, "venv_bytes_after": 10 ** 9}))
    cfg = tmp_path / "prune.json"
    cfg.write_text(json.dumps({"site_packages": str(path.parent), "cuda_archs": {"targets": ["sm_75"],
                                                                               "ptx": "drop"}}))
    r = subprocess.run([sys.executable, "-I", str(build / "fatprune.py"), "--config", str(cfg), "--stage",
                        str(stage)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("IMAGEGEN-FATPRUNE-REPORT "))
    rep = json.loads(line.split(" ", 1)[1])
    saved = orig.stat().st_size - path.stat().st_size
    assert rep["bytes"] == saved > 0 and rep["paths"] == 1 and rep["targets"] == ["sm_75"]
    assert rep["libraries"]["libfat.so"]["status"] == "pruned"
    full = json.loads(report.read_text())
    assert full["rules"]["cuda_archs"]["bytes"] == saved and full["rules"]["docs"] == {"bytes": 1}
    assert full["venv_bytes_after"] == 10 ** 9 - saved
    assert "libfat.so:" in r.stderr and "sm_75" in r.stderr


def test_stdlib_only():
    import ast

    tree = ast.parse((ROOT / "imagegen/scripts/fatprune.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= set(sys.stdlib_module_names) | {"contract", "elfmini", "fatbin", "__future__"}  # and its siblings


def test_device_check_script_prunes_and_verifies_without_a_gpu(fatlib, tmp_path):
    """bench/fatprune_on_device.py's GPU-free stage (the lead runs the whole script on a lent GPU)."""
    path, orig = fatlib
    r = subprocess.run([sys.executable, str(ROOT / "bench/fatprune_on_device.py"), "--prune-only", "--cc", "75",
                        "--libs", str(path.parent)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["libfat.so"]["status"] == "pruned" and rep["libfat.so"]["dlopen"] == "ok"
    assert sha(path) == sha(orig)  # it works on a linked copy, never on the originals


def test_build_reads_the_kernel_prune_into_its_prune_report(tmp_path):
    from imagegen import build

    log = tmp_path / "cell.log"
    log.write_text("step 6/21 RUN ...\n"
                   'IMAGEGEN-PRUNE-REPORT {"rules": {"docs": {"bytes": 5}}, "venv_bytes_after": 1000}\n'
                   'fatprune: libphi.so: 1,960 -> 545 bytes (sm_75)\n'
                   'IMAGEGEN-FATPRUNE-REPORT {"bytes": 400, "paths": 1, "targets": ["sm_75"], "libraries": {}}\n')
    rep = build.prune_report_from_log(log)
    assert rep["rules"]["cuda_archs"]["bytes"] == 400 and rep["rules"]["docs"] == {"bytes": 5}
    assert rep["venv_bytes_after"] == 600
