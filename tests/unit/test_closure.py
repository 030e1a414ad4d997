"""ELF scanning, Contents indexing, resolution and the sysroot script's pure parts (no engine, no network)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from imagegen import closure, debarchive
from imagegen.closure import (
    Closure,
    ContentsIndex,
    ElfScan,
    _MemberStream,
    compute_closure,
    contents_index,
    needed_from_tree,
    needed_from_wheels,
    parse_contents,
    resolve,
)
from imagegen.errors import ImagegenError, UserInputError

pytestmark = pytest.mark.unit

UNREACHABLE = "http://127.0.0.1:9/debian"  # discard port: any network use fails fast


# --- a minimal, real ELF shared object --------------------------------------------------------


def make_elf(
    soname: str | None = None,
    needed: tuple[str, ...] = (),
    runpath: str | None = None,
    rpath: str | None = None,
    *,
    machine: int = 62,  # EM_X86_64
    etype: int = 3,  # ET_DYN
    pad: int = 0,
) -> bytes:
    """ELF64 little-endian object with one PT_LOAD and a PT_DYNAMIC placed `pad` bytes after its
    string table (so a large pad puts the dynamic section far into the file, like libphi.so)."""
    strs = b"\0"
    offsets = {}
    for s in [*needed, soname, runpath, rpath]:
        if s is not None and s not in offsets:
            offsets[s] = len(strs)
            strs += s.encode() + b"\0"
    phoff, phnum = 64, 2
    strtab = phoff + phnum * 56
    dyn_off = (strtab + len(strs) + pad + 7) // 8 * 8
    tags = [(1, offsets[n]) for n in needed]
    if soname:
        tags.append((14, offsets[soname]))
    if runpath:
        tags.append((29, offsets[runpath]))
    if rpath:
        tags.append((15, offsets[rpath]))
    tags += [(5, strtab), (10, len(strs)), (0, 0)]
    dyn = b"".join(struct.pack("<qQ", t, v) for t, v in tags)
    size = dyn_off + len(dyn)
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", etype, machine, 1, 0, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 4, 0, 0, 0, size, size, 0x1000)
    dynamic = struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dyn), len(dyn), 8)
    body = ehdr + load + dynamic + strs
    return body + bytes(dyn_off - len(body)) + dyn


def make_wheel(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def host_elfs(n: int = 6) -> list[Path]:
    """Some real ELF objects of this machine (the interpreter's extension modules)."""
    dynload = Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
    found = sorted(dynload.glob("*.so"))[:n]
    if not found:
        pytest.skip(f"no extension modules in {dynload}")
    return found


def reference_dynamic(path: Path) -> dict:
    """The same facts read with pyelftools' high-level API (section-based), as an oracle."""
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        out = {"needed": [], "soname": None, "runpath": [], "rpath": []}
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_DYNAMIC":
                continue
            for tag in seg.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    out["needed"].append(tag.needed)
                elif tag.entry.d_tag == "DT_SONAME":
                    out["soname"] = tag.soname
                elif tag.entry.d_tag == "DT_RUNPATH":
                    out["runpath"] += [p for p in tag.runpath.split(":") if p]
                elif tag.entry.d_tag == "DT_RPATH":
                    out["rpath"] += [p for p in tag.rpath.split(":") if p]
        return out


# --- the member stream ------------------------------------------------------------------------


def test_member_stream_random_access_matches_bytes(tmp_path):
    data = bytes((i * 7 + i // 4096) % 251 for i in range(3 * (1 << 20) + 12345))
    whl = make_wheel(tmp_path / "x.whl", {"blob": data})
    with zipfile.ZipFile(whl) as zf:
        s = _MemberStream(zf, zf.getinfo("blob"))
        assert s.seek(0, os.SEEK_END) == len(data)
        for off, n in [(0, 64), (64, 112), (len(data) - 100, 100), (2_500_000, 5000), (10, 20), (len(data) - 5, 50)]:
            s.seek(off)
            assert s.read(n) == data[off : off + n]
            assert s.tell() == min(off + n, len(data))
        # header chunk is kept: re-reading offset 0 after a far read costs no restart
        restarts = s.restarts
        s.seek(0)
        assert s.read(16) == data[:16]
        assert s.restarts == restarts
        s.close()


def test_far_dynamic_section_costs_one_pass_plus_strings(tmp_path):
    pad = 8 << 20
    elf = make_elf("libbig.so", ("libgomp.so.1", "libc.so.6"), runpath="$ORIGIN", pad=pad)
    whl = make_wheel(tmp_path / "big-1.0-py3-none-any.whl", {"big/libbig.so": elf})
    scan = needed_from_wheels([whl])
    (obj,) = scan.objects
    assert obj.needed == ("libgomp.so.1", "libc.so.6")
    assert obj.soname == "libbig.so" and obj.runpath == ("$ORIGIN",)
    # inflated: up to the dynamic section once, then the string table (first chunk, cached)
    assert scan.inflated_bytes <= len(elf) + (1 << 20)


# --- scanning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_scan_wheel_reads_dynamic_facts(tmp_path, compression):
    whl = make_wheel(
        tmp_path / "demo-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        {
            "demo/__init__.py": b"print('hi')\n" * 10,
            "demo/_core.cpython-311-x86_64-linux-gnu.so": make_elf(None, ("libdemo.so.1", "libstdc++.so.6")),
            "demo.libs/libdemo.so.1": make_elf("libdemo.so.1", ("libgomp.so.1", "libm.so.6"), rpath="$ORIGIN:/opt/x"),
            "demo/kernels.cubin": make_elf(None, ("libcuda.so.1",), machine=190),  # EM_CUDA: foreign
            "demo/obj.o": make_elf(None, (), etype=1),  # relocatable: not loadable
            "demo/broken.so": b"\x7fELF" + b"\xff" * 100,
            "demo/tiny": b"\x7fELF",
        },
        compression,
    )
    scan = needed_from_wheels([whl])
    by_path = {o.path: o for o in scan.objects}
    assert set(by_path) == {"demo/_core.cpython-311-x86_64-linux-gnu.so", "demo.libs/libdemo.so.1", "demo/kernels.cubin"}
    lib = by_path["demo.libs/libdemo.so.1"]
    assert lib.soname == "libdemo.so.1" and lib.needed == ("libgomp.so.1", "libm.so.6")
    assert lib.rpath == ("$ORIGIN", "/opt/x") and lib.runpath == ()
    assert lib.origin == whl.name
    assert [o.path for o in scan.native()] == ["demo.libs/libdemo.so.1", "demo/_core.cpython-311-x86_64-linux-gnu.so"]
    reasons = {p: r for _, p, r in scan.skipped}
    assert reasons["demo/obj.o"] == "not loadable (ET_REL)"
    assert reasons["demo/broken.so"].startswith("malformed ELF")
    assert "demo/tiny" not in reasons  # too small to be an ELF object: not even looked at
    assert scan.needed() == {
        "libdemo.so.1": ["demo/_core.cpython-311-x86_64-linux-gnu.so (" + whl.name + ")"],
        "libgomp.so.1": ["demo.libs/libdemo.so.1 (" + whl.name + ")"],
        "libm.so.6": ["demo.libs/libdemo.so.1 (" + whl.name + ")"],
        "libstdc++.so.6": ["demo/_core.cpython-311-x86_64-linux-gnu.so (" + whl.name + ")"],
    }
    assert "libcuda.so.1" not in scan.needed()  # only from the foreign cubin
    assert "libdemo.so.1" in scan.provided()


def test_scan_real_host_elfs_matches_pyelftools_section_api(tmp_path):
    files = host_elfs()
    whl = make_wheel(tmp_path / "host-1.0-py3-none-any.whl", {f"host/{p.name}": p.read_bytes() for p in files})
    from_zip = {o.basename: o for o in needed_from_wheels([whl]).objects}
    tree = tmp_path / "tree"
    (tree / "host").mkdir(parents=True)
    for p in files:
        (tree / "host" / p.name).write_bytes(p.read_bytes())
    from_tree = {o.basename: o for o in needed_from_tree(tree).objects}
    assert set(from_zip) == set(from_tree) == {p.name for p in files}
    for p in files:
        ref = reference_dynamic(p)
        for o in (from_zip[p.name], from_tree[p.name]):
            assert list(o.needed) == ref["needed"]
            assert o.soname == ref["soname"]
            assert list(o.runpath) == ref["runpath"] and list(o.rpath) == ref["rpath"]


def test_scan_tree_symlinks_provide_their_names(tmp_path):
    lib = tmp_path / "venv/lib/python3.11/site-packages/pkg.libs"
    lib.mkdir(parents=True)
    (lib / "libz-abc.so.1.2.13").write_bytes(make_elf("libz-abc.so.1.2.13", ("libc.so.6",)))
    (lib / "libalias.so.1").symlink_to("libz-abc.so.1.2.13")
    (lib / "dangling.so").symlink_to("nowhere.so")
    (tmp_path / "venv/bin").mkdir()
    (tmp_path / "venv/bin/python").symlink_to("/usr/bin/python3")  # outside the tree: ignored
    scan = needed_from_tree(tmp_path / "venv")
    assert [o.path for o in scan.objects] == ["lib/python3.11/site-packages/pkg.libs/libz-abc.so.1.2.13"]
    assert set(scan.aliases) == {"libalias.so.1"}
    assert "libalias.so.1" in scan.provided()


def test_scan_errors_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="wheel not found"):
        needed_from_wheels([tmp_path / "missing.whl"])
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserInputError, match="bad.whl: not a readable wheel"):
        needed_from_wheels([bad])
    with pytest.raises(UserInputError, match="not a directory"):
        needed_from_tree(tmp_path / "nope")


# --- Contents -----------------------------------------------------------------------------------

CONTENTS = """\
lib/x86_64-linux-gnu/libgcc_s.so.1                      libs/libgcc-s1
usr/lib/x86_64-linux-gnu/libgomp.so.1                   libs/libgomp1
usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0               libs/libgomp1
usr/lib/gcc/x86_64-linux-gnu/12/libgomp.so              libdevel/libgcc-12-dev
usr/lib32/libgomp.so.1                                  libs/lib32gomp1
usr/lib/x86_64-linux-gnu/debug/libstdc++.so.6           debug/libstdc++6-12-dbg
usr/lib/x86_64-linux-gnu/libstdc++.so.6                 libs/libstdc++6
usr/lib/x86_64-linux-gnu/libfoo.so.2                    libdevel/libfoo-dev,libs/libfoo2,non-free/libs/libfoo2-extra
usr/lib/libbar.so.1                                     libs/libbar-legacy
usr/lib/x86_64-linux-gnu/libbar.so.1                    libs/libbar1
usr/lib/x86_64-linux-gnu/blas/libblas.so.3              libs/libblas3
usr/lib/x86_64-linux-gnu/with space/libodd.so.1         libs/libodd1
usr/share/doc/libgomp1/libgomp.so.1.txt                 doc/whatever
usr/lib/x86_64-linux-gnu/libgomp.so.1-gdb.py            libs/libgomp1
usr/lib/aarch64-linux-gnu/libgomp.so.1                  libs/libgomp1-cross
bin/bash                                                shells/bash
"""


def test_parse_contents_ranks_providers():
    idx = ContentsIndex(suite="s", arch="amd64", mirror="m", component="main", sha256="x", **parse_contents(CONTENTS.splitlines(True), "amd64"))
    assert idx.lookup("libgomp.so.1") == "libgomp1"  # not lib32gomp1, not the -dev's unversioned link
    assert idx.lookup("libgcc_s.so.1") == "libgcc-s1"  # /lib/<triplet> counts as multiarch
    assert idx.lookup("libstdc++.so.6") == "libstdc++6"  # debug dir ignored
    assert idx.candidates("libfoo.so.2") == ["libfoo2", "libfoo2-extra", "libfoo-dev"]  # runtime pkgs first, by name
    assert idx.lookup("libbar.so.1") == "libbar1"  # multiarch dir beats /usr/lib
    assert idx.lookup("libgomp.so") is None and idx.lookup("libblas.so.3") is None
    assert "libgcc-12-dev" in idx.hint("libgomp.so")
    assert idx.hint("libblas.so.3") == "only found outside the loader's default directories: /usr/lib/x86_64-linux-gnu/blas/libblas.so.3 (libblas3)"
    assert idx.hint("libodd.so.1").startswith("only found outside") and "with space" in idx.hint("libodd.so.1")
    assert "libgomp.so.1-gdb.py" not in idx.libs and "libgomp.so.1.txt" not in idx.libs
    assert idx.sonames_of(["libgomp1", "libgcc-s1:amd64"]) == {"libgomp.so.1", "libgomp.so.1.0.0", "libgcc_s.so.1"}


def test_parse_contents_is_deterministic():
    lines = CONTENTS.splitlines(True)
    assert parse_contents(lines, "amd64") == parse_contents(list(reversed(lines)), "amd64")


def seed_index(cache: Path, mirror: str = UNREACHABLE, suite: str = "bookworm", age: float = 0.0) -> Path:
    idx = ContentsIndex(suite=suite, arch="amd64", mirror=mirror, component="main", sha256="0" * 64, **parse_contents(CONTENTS.splitlines(True), "amd64"))
    path = cache / "debian" / debarchive.mirror_slug(mirror) / suite / "main" / "index-amd64.json.gz"
    path.parent.mkdir(parents=True)
    closure._save_index(path, idx)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return path


def test_contents_index_uses_fresh_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    seed_index(tmp_path)
    t0 = time.monotonic()
    assert closure.soname_to_package(["libgomp.so.1", "libnothing.so.9"], "bookworm", "amd64", UNREACHABLE) == {"libgomp.so.1": "libgomp1"}
    assert time.monotonic() - t0 < 1.0


def test_contents_index_falls_back_to_stale_cache_when_offline(tmp_path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(closure, "warn", warnings.append)  # the console binds stderr at import
    seed_index(tmp_path, age=30 * 86400)
    idx = contents_index("bookworm", "amd64", UNREACHABLE, cache_dir=tmp_path)
    assert idx.lookup("libgomp.so.1") == "libgomp1"
    (err,) = warnings
    assert "using the cached Contents index of bookworm/main (GET http://127.0.0.1:9/debian/dists/bookworm/InRelease: cannot connect" in err


def test_contents_index_offline_without_cache_is_one_line_error(tmp_path):
    with pytest.raises(ImagegenError) as info:
        contents_index("bookworm", "amd64", UNREACHABLE, cache_dir=tmp_path)
    assert "InRelease" in str(info.value) and "\n" not in str(info.value)


def test_corrupt_cached_index_is_ignored(tmp_path):
    path = seed_index(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(ImagegenError):  # falls through to the (unreachable) network
        contents_index("bookworm", "amd64", UNREACHABLE, cache_dir=tmp_path)


def test_release_sha256():
    text = b"Origin: Debian\nMD5Sum:\n d41d 0 main/Contents-amd64.gz\nSHA256:\n abc 10 main/Contents-amd64\n def 11629145 main/Contents-amd64.gz\n"
    assert debarchive.release_sha256(text, "main/Contents-amd64.gz") == ("def", 11629145)
    assert debarchive.release_sha256(text, "main/Contents-arm64.gz") is None


def test_unknown_arch_is_user_error():
    with pytest.raises(UserInputError, match="unsupported Debian architecture 'mips'"):
        closure.deb_arch("mips")


# --- resolution and closure ---------------------------------------------------------------------


@pytest.fixture
def env_wheel(tmp_path):
    return make_wheel(
        tmp_path / "fw-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        {
            "fw/_C.so": make_elf(None, ("libfw.so", "libstdc++.so.6", "libc.so.6", "libcuda.so.1", "libpython3.11.so.1.0")),
            "fw/lib/libfw.so": make_elf("libfw.so", ("libgomp.so.1", "libbar.so.1", "libgcc_s.so.1", "libpthread.so.0")),
            "fw/lib/libplugin.so": make_elf(None, ("libunknown.so.3", "libgomp.so.1")),
        },
    )


def test_resolve_categories(env_wheel):
    scan = needed_from_wheels([env_wheel])
    satisfied, missing = resolve(scan, {"libgcc_s.so.1"}, ["libcuda.so.1"], ignore=["libpython3.11.so.1.0"])
    assert satisfied == {
        "libfw.so": "environment",
        "libc.so.6": "glibc",
        "libpthread.so.0": "glibc",
        "libgcc_s.so.1": "base",
        "libcuda.so.1": "host",
        "libpython3.11.so.1.0": "ignored",
    }
    assert sorted(missing) == ["libbar.so.1", "libgomp.so.1", "libstdc++.so.6", "libunknown.so.3"]
    assert missing["libgomp.so.1"] == [f"fw/lib/libfw.so ({env_wheel.name})", f"fw/lib/libplugin.so ({env_wheel.name})"]


def test_closure_strict_error_names_soname_library_and_wheel(env_wheel, tmp_path):
    seed_index(tmp_path / "cache")
    with pytest.raises(ImagegenError) as info:
        compute_closure([env_wheel], {"libgcc_s.so.1"}, "bookworm", "amd64", UNREACHABLE, ["libcuda.so.1"], cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert msg.startswith("libpython3.11.so.1.0, needed by fw/_C.so (fw-1.0-cp311-cp311-manylinux_2_28_x86_64.whl)")
    assert "libunknown.so.3" in msg and "\n" not in msg


def test_closure_packages_and_json_are_deterministic(env_wheel, tmp_path):
    seed_index(tmp_path / "cache")
    kw = dict(ignore=["libpython3.11.so.1.0"], strict=False, cache_dir=tmp_path / "cache")
    c1 = compute_closure([env_wheel], {"libgcc_s.so.1"}, "bookworm", "amd64", UNREACHABLE, ["libcuda.so.1"], **kw)
    c2 = compute_closure([env_wheel], ["libgcc_s.so.1"], "bookworm", "amd64", UNREACHABLE, ("libcuda.so.1",), **kw)
    assert c1.packages == ["libbar1", "libgomp1", "libstdc++6"]
    assert c1.resolved["libgomp.so.1"][0] == "libgomp1"
    assert c1.unresolved == {"libunknown.so.3": [f"fw/lib/libplugin.so ({env_wheel.name})"]}
    assert c1.to_json() == c2.to_json()
    data = json.loads(c1.to_json())
    assert data["packages"] == c1.packages and data["objects"] == 3
    assert c1.packages_txt() == "libbar1\nlibgomp1\nlibstdc++6\n"


def test_closure_without_missing_sonames_needs_no_index(env_wheel, tmp_path):
    base = {"libgomp.so.1", "libbar.so.1", "libstdc++.so.6", "libgcc_s.so.1", "libunknown.so.3", "libpython3.11.so.1.0"}
    c = compute_closure([env_wheel], base, "bookworm", "amd64", UNREACHABLE, None, cache_dir=tmp_path)  # host list from data
    assert c.packages == [] and c.unresolved == {} and c.satisfied["libcuda.so.1"] == "host"


def test_closure_accepts_installed_trees(tmp_path):
    seed_index(tmp_path / "cache")
    site = tmp_path / "venv/lib/python3.11/site-packages/x"
    site.mkdir(parents=True)
    (site / "_x.so").write_bytes(make_elf(None, ("libgomp.so.1",)))
    c = compute_closure([tmp_path / "venv"], set(), "bookworm", "amd64", UNREACHABLE, [], cache_dir=tmp_path / "cache")
    assert c.packages == ["libgomp1"]
    assert c.resolved["libgomp.so.1"][1] == [f"lib/python3.11/site-packages/x/_x.so ({tmp_path / 'venv'})"]


def test_closure_empty_environment():
    c = Closure(packages=[], resolved={}, unresolved={}, satisfied={}, suite="bookworm", arch="amd64", objects=0)
    assert c.error() is None and c.packages_txt() == ""


# --- the sysroot script's pure parts ----------------------------------------------------------


@pytest.fixture(scope="module")
def sysroot():
    path = Path(closure.__file__).parent / "scripts" / "sysroot.py"
    spec = importlib.util.spec_from_file_location("imagegen_sysroot_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BASE_STATUS = """\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: oldpkg
Status: deinstall ok config-files
Version: 1
"""


def test_sysroot_status_parsing(sysroot):
    assert sysroot.installed(BASE_STATUS) == {"libc6", "libc6:amd64"}
    para = sysroot.status_paragraph("Package: libgomp1\nSource: gcc-12\nVersion: 12.2.0-14\nDescription: x\n more\n")
    assert para.splitlines()[:2] == ["Package: libgomp1", "Status: install ok installed"]
    assert para.endswith(" more")


def test_sysroot_layout_mapping(sysroot):
    assert sysroot.canonical("lib/x86_64-linux-gnu/libcap.so.2", True) == "usr/lib/x86_64-linux-gnu/libcap.so.2"
    assert sysroot.canonical("lib/x86_64-linux-gnu/libcap.so.2", False) == "lib/x86_64-linux-gnu/libcap.so.2"
    assert sysroot.canonical("library/x", True) == "library/x"
    assert sysroot.canonical("usr/lib/x", True) == "usr/lib/x"
    # same-directory links are untouched, cross-tree relative links are re-pointed, absolute ones mapped
    assert sysroot.relink("lib/x86_64-linux-gnu/libcap.so.2", "libcap.so.2.66", True) == "libcap.so.2.66"
    assert sysroot.relink("usr/lib/x86_64-linux-gnu/libz.so", "../../../lib/x86_64-linux-gnu/libz.so.1", True) == "libz.so.1"
    assert sysroot.relink("lib/x86_64-linux-gnu/a.so", "../../usr/lib/x86_64-linux-gnu/b.so", True) == "b.so"
    assert sysroot.relink("usr/bin/x", "/bin/y", True) == "/usr/bin/y"
    assert sysroot.relink("usr/bin/x", "/bin/y", False) == "/bin/y"


def test_sysroot_drops_docs_but_keeps_copyright(sysroot):
    assert sysroot.dropped("usr/share/doc/libgomp1/changelog.Debian.gz", False)
    assert not sysroot.dropped("usr/share/doc/libgomp1/copyright", False)
    assert sysroot.dropped("usr/share/doc/libgomp1/examples/copyright", False)
    assert sysroot.dropped("usr/share/locale/de/LC_MESSAGES/x.mo", False)
    assert sysroot.dropped("usr/share/man/man1/x.1.gz", False)
    assert not sysroot.dropped("usr/share/man/man1/x.1.gz", True)
    assert not sysroot.dropped("usr/lib/x86_64-linux-gnu/libgomp.so.1", False)


def test_sysroot_empty_closure_writes_only_the_status(sysroot, tmp_path, capsys):
    (tmp_path / "status").write_text(BASE_STATUS)
    (tmp_path / "closure.txt").write_text("# nothing needed\n\nlibc6\n")  # already in the base
    out = tmp_path / "sysroot"
    assert sysroot.main(["--packages", str(tmp_path / "closure.txt"), "--base-status", str(tmp_path / "status"), "--out", str(out)]) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    assert files == ["var/lib/dpkg/status"]
    assert (out / "var/lib/dpkg/status").read_text() == BASE_STATUS.rstrip("\n") + "\n"
    assert "added 0 package(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "closure_txt,status,expect",
    [
        ("lib gomp1\n", BASE_STATUS, "not a Debian package name"),
        ("libgomp1\n", "", "lists no installed package"),
    ],
)
def test_sysroot_bad_input_exits_2_with_one_line(sysroot, tmp_path, capsys, closure_txt, status, expect):
    (tmp_path / "status").write_text(status)
    (tmp_path / "closure.txt").write_text(closure_txt)
    rc = sysroot.main(["--packages", str(tmp_path / "closure.txt"), "--base-status", str(tmp_path / "status"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and expect in err and "\n" not in err and err.startswith("sysroot: error:")


def test_sysroot_refuses_a_non_empty_out_dir(sysroot, tmp_path, capsys):
    (tmp_path / "status").write_text(BASE_STATUS)
    (tmp_path / "closure.txt").write_text("")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "file").write_text("x")
    rc = sysroot.main(["--packages", str(tmp_path / "closure.txt"), "--base-status", str(tmp_path / "status"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "is not empty" in capsys.readouterr().err


def test_cached_index_file_is_compact(tmp_path):
    path = seed_index(tmp_path)
    with gzip.open(path, "rt") as fh:
        data = json.load(fh)
    assert data["format"] == closure.INDEX_FORMAT and "libgomp.so.1" in data["libs"]


def test_elf_scan_extend_sums():
    a, b = ElfScan(members=2, inflated_bytes=10, seconds=1.0), ElfScan(members=3, inflated_bytes=5, seconds=0.5)
    a.extend(b)
    assert (a.members, a.inflated_bytes, a.seconds) == (5, 15, 1.5)


# --- a mirror caught between two syncs (measured: trixie, 2026-11-29) ------------------------------

def _serve(root):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _release(suite, codename, sha, size, by_hash=False):
    extra = "Acquire-By-Hash: yes\n" if by_hash else ""
    return (f"Origin: Debian\nSuite: {suite}\nCodename: {codename}\nDate: Sat, 12 Sep 2026 07:55:41 UTC\n{extra}"
            f"SHA256:\n {sha} {size} main/Contents-amd64.gz\n")


def _mirror(tmp_path, alias_lists_served: bool):
    import gzip as _gzip
    import hashlib as _hashlib

    served = _gzip.compress(b"usr/lib/x86_64-linux-gnu/libz.so.1.3.1   libs/zlib1g\n", mtime=0)
    other = _gzip.compress(b"usr/lib/x86_64-linux-gnu/libz.so.1.3.2   libs/zlib1g\n", mtime=0)
    sha = lambda b: _hashlib.sha256(b).hexdigest()  # noqa: E731
    root = tmp_path / "mirror"
    (root / "dists/trixie/main").mkdir(parents=True)
    (root / "dists/stable").mkdir(parents=True)
    (root / "dists/trixie/main/Contents-amd64.gz").write_bytes(served)
    (root / "dists/trixie/InRelease").write_text(_release("stable", "trixie", sha(other), len(other)))
    alias_sha = sha(served) if alias_lists_served else sha(other)
    (root / "dists/stable/InRelease").write_text(_release("stable", "trixie", alias_sha, len(served)))
    return root


def test_contents_of_another_sync_is_accepted_when_the_alias_release_lists_it(tmp_path):
    srv = _serve(_mirror(tmp_path, alias_lists_served=True))
    try:
        idx = contents_index("trixie", "amd64", f"http://127.0.0.1:{srv.server_port}", cache_dir=tmp_path / "c",
                             keyring=str(tmp_path / "no-keyring"))
    finally:
        srv.shutdown()
    assert "libz.so.1.3.1" in idx.libs  # the served file, verified by the alias suite's release
    served = (tmp_path / "mirror/dists/trixie/main/Contents-amd64.gz").read_bytes()
    import hashlib as _hashlib
    assert idx.sha256 == _hashlib.sha256(served).hexdigest()


def test_contents_mismatch_nobody_signs_is_an_error(tmp_path):
    srv = _serve(_mirror(tmp_path, alias_lists_served=False))
    try:
        with pytest.raises(ImagegenError) as exc:
            contents_index("trixie", "amd64", f"http://127.0.0.1:{srv.server_port}", cache_dir=tmp_path / "c",
                           keyring=str(tmp_path / "no-keyring"))
    finally:
        srv.shutdown()
    assert "does not match InRelease" in str(exc.value)
