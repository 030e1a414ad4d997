"""The fat-binary parser and the CUDA runtime's selection rule, on fat binaries written here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen.scripts import fatbin
from imagegen.scripts.fatbin import FatbinError, find_section, parse_fatbin, runs_on, select

ROOT = Path(__file__).resolve().parents[2]
import fatbin_fixtures as fx  # noqa: E402  (tests/support, on sys.path by conftest)


def names(entries):
    return [e.name for e in entries]


def one(*entries):
    return parse_fatbin(fx.section(fx.container(*entries)))[0].entries


def test_parse_layout_and_sizes():
    c1 = fx.container(fx.entry("sass", 70, 100), fx.entry("sass", 75, 40),
                      fx.entry("ptx", 70, 33, header_size=72, compression="lz4", uncompressed=999))
    c2 = fx.container(fx.entry("sass", 90, 8, variant="a"), fx.entry("ptx", 100, 16, variant="f"))
    sec = fx.section(c1, c2)
    cs = parse_fatbin(sec)
    assert [c.offset for c in cs] == [0, len(c1) + (-len(c1) % 8)]
    assert [c.size for c in cs] == [len(c1), len(c2)]
    assert cs[0].header_size == 16
    e = cs[0].entries
    assert names(e) == ["sm_70", "sm_75", "compute_70"]
    assert [x.offset for x in e] == [16, 16 + 64 + 104, 16 + 64 + 104 + 64 + 40]
    assert [x.size for x in e] == [64 + 104, 64 + 40, 72 + 40]
    assert e[0].payload_size == 104 and e[0].uncompressed_size == 104 and e[0].compression is None
    assert e[2].compression == "lz4" and e[2].uncompressed_size == 999 and e[2].header_size == 72
    assert e[2].flags & fatbin.FLAG_LZ4
    assert names(cs[1].entries) == ["sm_90a", "compute_100f"]
    assert cs[1].entries[0].arch == 90 and cs[1].entries[0].variant == "a"
    # every byte of the section is a container header, an entry or padding
    assert sum(c.size for c in cs) + (-len(c1) % 8) == len(sec)
    # memoryview input (as from an mmap) gives the same result
    assert parse_fatbin(memoryview(sec)) == cs


def test_zstd_and_sm100_flags():
    (e1, e2) = one(fx.entry("sass", 100, 64, compression="zstd", uncompressed=4096),
                   fx.entry("sass", 120, 32, variant="f"))
    assert e1.compression == "zstd" and e1.uncompressed_size == 4096
    assert e1.flags & fatbin.FLAG_SM100 and e1.name == "sm_100"
    assert e2.name == "sm_120f" and e2.major == 12


@pytest.mark.parametrize("data, reason", [
    (fx.container(fx.entry("sass", 75), magic=0xDEADBEEF), "magic 0xdeadbeef"),
    (fx.container(fx.entry("sass", 75))[:40], "runs past the end of the section"),
    (fx.container(fx.entry("sass", 75), body_size=4000), "runs past the end"),
    (fx.container(fx.entry("sass", 75, kind_code=7)), "unknown kind 7"),
    (fx.container((lambda e: e[:4] + (8).to_bytes(4, "little") + e[8:])(fx.entry("sass", 75))), "header size 8"),
    (fx.container(fx.entry("sass", 75, compression="lz4", extra_flags=fx.ZSTD)), "both LZ4 and zstd"),
    (fx.container(fx.entry("sass", 75, compression="zstd", uncompressed=0)), "no uncompressed size"),
    (fx.section(fx.container(fx.entry("sass", 75))) + b"\0" * 8 + b"garbage!", "truncated header"),
    (fx.section(fx.container(fx.entry("sass", 75))) + b"garbage!garbage!", "magic 0x62726167"),
    (fx.section(fx.container(fx.entry("sass", 75))) + b"\0\0\0\0xyz\0", "unexpected bytes"),
    (b"\x50\xed\x55\xba\x01\x00", "truncated header"),
])
def test_corrupt_data_raises_with_reason(data, reason):
    with pytest.raises(FatbinError, match=reason):
        parse_fatbin(data)


def test_entry_running_past_container():
    good = fx.entry("sass", 75, 64)
    body = good[:8] + (10_000).to_bytes(8, "little") + good[16:]
    with pytest.raises(FatbinError, match=r"entry at \+0x10 .* runs past the container end"):
        parse_fatbin(fx.container(body))


def test_zero_padding_is_allowed():
    sec = fx.section(fx.container(fx.entry("sass", 75))) + b"\0" * 24
    assert len(parse_fatbin(sec)) == 1
    assert parse_fatbin(b"") == []


# ---- selection: what the runtime would load ---------------------------------------------------

CUBLAS_LIKE = [fx.entry("sass", a, 8) for a in (50, 60, 61, 70, 75, 80, 86, 90)] + [fx.entry("ptx", 90, 8)]


def test_select_highest_sass_within_major():
    es = one(*CUBLAS_LIKE)
    assert names(select(es, ["sm_75"])) == ["sm_75"]
    assert names(select(es, [86])) == ["sm_86"]
    assert names(select(es, ["sm_89"])) == ["sm_86"]            # 8.9 runs sm_86 code
    assert names(select(es, ["7.2"])) == ["sm_70"]
    assert names(select(es, ["sm_75", "sm_86"])) == ["sm_75", "sm_86"]   # union, container order
    assert names(select(es, ["sm_120"])) == ["compute_90"]       # no SASS for 12.x: JIT the PTX
    assert names(select(es, ["sm_35"])) == []                   # nothing runs on 3.5


def test_select_never_crosses_major_and_falls_back_to_ptx():
    es = one(fx.entry("sass", 61, 8), fx.entry("sass", 70, 8), fx.entry("ptx", 61, 8), fx.entry("ptx", 70, 8))
    assert names(select(es, [80])) == ["compute_70"]             # sm_70 SASS never runs on 8.x
    assert names(select(es, [75])) == ["sm_70"]
    assert names(select(es, [60])) == []
    assert runs_on(es, 80) and runs_on(es, "sm_90") and not runs_on(es, 60)


def test_select_keep_ptx():
    es = one(fx.entry("sass", 75, 8), fx.entry("ptx", 52, 8), fx.entry("ptx", 70, 8),
             fx.entry("ptx", 90, 8), fx.entry("ptx", 75, 8, variant="a"))
    assert names(select(es, [75])) == ["sm_75"]
    assert names(select(es, [75], keep_ptx=True)) == ["sm_75", "compute_52", "compute_70"]


def test_arch_specific_variant():
    es = one(fx.entry("sass", 90, 8), fx.entry("sass", 90, 8, variant="a"), fx.entry("ptx", 90, 8, variant="a"))
    assert names(select(es, [90])) == ["sm_90", "sm_90a"]        # both candidates for 9.0 kept
    only_a = one(fx.entry("sass", 90, 8, variant="a"), fx.entry("ptx", 90, 8, variant="a"))
    assert runs_on(only_a, 90)
    assert not runs_on(only_a, 100) and not runs_on(only_a, 120)
    assert names(select(only_a, [100])) == []
    sm80a = one(fx.entry("sass", 80, 8, variant="a"), fx.entry("sass", 80, 8))
    assert names(select(sm80a, [86])) == ["sm_80"]               # 'a' code runs on exactly 8.0


def test_family_variant():
    es = one(fx.entry("sass", 100, 8, variant="f"), fx.entry("ptx", 100, 8, variant="f"))
    assert runs_on(es, 100) and runs_on(es, 103)
    assert not runs_on(es, 120) and not runs_on(es, 90)
    assert names(select(es, [103])) == ["sm_100f"]
    assert names(select(one(fx.entry("ptx", 100, 8, variant="f")), [121])) == []
    assert names(select(one(fx.entry("ptx", 100, 8)), [121])) == ["compute_100"]


def test_ltoir_entries_are_parsed_serve_no_device_and_are_always_kept():
    """Kind 8 (LTO-IR; header 128 bytes, LZ4, as in cuFFT 11.3's embedded containers)."""
    lto = fx.entry("ltoir", 50, 40, header_size=128, compression="lz4", uncompressed=500)
    es = one(fx.entry("sass", 75, 8), lto, fx.entry("ptx", 70, 8))
    assert names(es) == ["sm_75", "lto_50", "compute_70"]
    e = es[1]
    assert (e.kind, e.arch, e.header_size, e.size, e.compression, e.uncompressed_size) == (
        "ltoir", 50, 128, 128 + 40, "lz4", 500)
    only = one(lto)
    assert not any(runs_on(only, cc) for cc in (50, 75, 90, 120))
    # an arch prune never drops it (the library's own code may hand it to nvJitLink)
    assert names(select(es, [75])) == ["sm_75", "lto_50"]
    assert names(select(es, [90])) == ["lto_50", "compute_70"]
    assert names(select(only, [35])) == ["lto_50"]


def test_entry_names_round_trip_and_sort():
    for n in ("sm_75", "sm_90a", "compute_100f", "lto_50"):
        kind, arch, variant = fatbin.parse_name(n)
        assert fatbin.arch_name(kind, arch, variant) == n
    assert sorted(["lto_50", "compute_70", "sm_90", "sm_75"], key=fatbin.name_key) == [
        "sm_75", "sm_90", "compute_70", "lto_50"]
    with pytest.raises(ValueError):
        fatbin.parse_name("gpu_75")


def test_parse_arch():
    assert [fatbin.parse_arch(x) for x in ("sm_75", "compute_90a", "8.6", "sm86", 120, "sm_100f")] == [
        75, 90, 86, 86, 120, 100]
    for bad in ("sm_7", "gpu", "7.55", 5, True, "sm_2000"):
        with pytest.raises(ValueError):
            fatbin.parse_arch(bad)


# ---- ELF section locator ---------------------------------------------------------------------

def test_find_section_in_real_elf(tmp_path):
    sec = fx.section(fx.container(fx.entry("sass", 75, 100)))
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": sec, ".nvFatBinSegment": b"\0" * 24})
    off, size, addr = find_section(so, ".nv_fatbin")
    data = so.read_bytes()
    assert size == len(sec) and data[off:off + size] == sec and addr > 0
    out = subprocess.run(["readelf", "-SW", str(so)], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if " .nv_fatbin " in ln).split()
    assert int(line[line.index(".nv_fatbin") + 2], 16) == addr
    assert find_section(data, ".nv_fatbin") == (off, size, addr)      # bytes input too
    assert find_section(so, ".nv_fatbin_missing") is None
    assert find_section(so, ".nvFatBinSegment")[1] == 24
    (tmp_path / "text").write_bytes(b"not an elf at all, not at all.......................................")
    assert find_section(tmp_path / "text", ".nv_fatbin") is None
    cut = tmp_path / "cut.so"
    cut.write_bytes(data[: len(data) - 200])              # section headers cut off
    with pytest.raises(FatbinError):
        find_section(cut, ".nv_fatbin")


def test_cli_prints_per_arch_bytes(tmp_path):
    sec = fx.section(fx.container(fx.entry("sass", 75, 100), fx.entry("ptx", 70, 8)))
    so = fx.elf_with_sections(tmp_path / "libk.so", {".nv_fatbin": sec})
    out = subprocess.run([sys.executable, "-I", str(ROOT / "imagegen/scripts/fatbin.py"), str(so)],
                         capture_output=True, text=True, check=True).stdout
    assert "sm_75" in out and "168" in out and "compute_70" in out


def test_stdlib_only_and_importable_as_plain_module():
    src = (ROOT / "imagegen/scripts/fatbin.py").read_text()
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods.add(node.module.split(".")[0])
    assert mods - {"__future__", "elfmini"} <= set(sys.stdlib_module_names), mods  # elfmini: its sibling
    code = "import fatbin; print(fatbin.parse_arch('sm_75'))"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'imagegen/scripts')!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "75"
