"""The one save-stream reader (imagegen.savestream): hard links counted by inode, OCI-layout saves
with tar/gzip/zstd layers, unsupported media types, and audit and image tests agreeing.
Ground truth: synthetic images whose every byte is known (no engine)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from imagegen import elf
from imagegen.audit import audit, check_gates
from imagegen.audit.synth import pattern, write_oci_tar, write_save_tar
from imagegen.errors import UserInputError
from imagegen.imagetest.inventory import scan_save_stream
from imagegen.savestream import apply_layers, read_tarball

pytestmark = pytest.mark.unit

BIG = 10_000_240


def _save(tmp_path, layers, name="img.tar") -> str:
    p = tmp_path / name
    with open(p, "wb") as f:
        write_save_tar(f, layers)
    return str(p)


def _big():
    return ("file", "/data/a", pattern(3, BIG, random=True), BIG)


def test_hard_link_survives_deletion_of_its_data_carrying_name(tmp_path):
    """`a` with hard links `b` and `c`; a later layer deletes `a`: the file is still in the image."""
    path = _save(tmp_path, [
        [_big(), ("hardlink", "/data/b", "/data/a"), ("hardlink", "/data/c", "/data/a")],
        [("whiteout", "/data/a")],
    ])
    r = audit(tarball=path).report
    t = r["totals"]
    assert t["visible"] == BIG and t["hidden"] == 0 and t["deleted"] == 0 and t["wasted"] == 0
    assert check_gates(r, max_wasted=1_000_000) == []
    scan, _, _ = read_tarball(path, compressed=False)
    view = apply_layers(scan)
    assert "/data/a" not in view.index
    b, c = view.index["/data/b"], view.index["/data/c"]
    assert b.kind == "f" and b.size == BIG and c.kind == "h" and c.link == "/data/b"
    with open(path, "rb") as f:
        _, files, _ = scan_save_stream(f)
    assert files["data/b"][0] == "f" and files["data/b"][2] == BIG
    assert files["data/c"][0] == "h" and files["data/c"][5] == "data/b"


def test_hard_link_bytes_hidden_only_when_the_last_name_goes(tmp_path):
    path = _save(tmp_path, [
        [_big(), ("hardlink", "/data/b", "/data/a"), ("hardlink", "/data/c", "/data/a")],
        [("whiteout", "/data/a"), ("file", "/data/b", b"x" * 1000)],   # b overwritten: c still holds it
        [("whiteout", "/data/c")],                                      # the last name goes
    ])
    r = audit(tarball=path).report
    t = r["totals"]
    assert t["visible"] == 1000
    assert t["hidden"] == BIG and t["deleted"] == BIG and t["overwritten"] == 0   # once, not per name
    layers = r["layers"]
    assert layers[0]["hidden_later"] == BIG
    r1 = audit(tarball=_save(tmp_path, [
        [_big(), ("hardlink", "/data/b", "/data/a")],
        [("whiteout", "/data/a"), ("whiteout", "/data/b")],
    ], "both.tar")).report
    assert r1["totals"]["deleted"] == BIG and r1["totals"]["visible"] == 0


def test_hard_link_across_an_opaque_directory(tmp_path):
    """Opaque whiteouts go through the same inode model: the name outside the directory keeps it."""
    path = _save(tmp_path, [
        [("dir", "/d"), ("file", "/d/a", pattern(5, BIG, random=True), BIG), ("hardlink", "/keep/b", "/d/a")],
        [("opaque", "/d"), ("dir", "/d"), ("file", "/d/new", b"n" * 7)],
    ])
    t = audit(tarball=path).report["totals"]
    assert t["visible"] == BIG + 7 and t["hidden"] == 0
    path2 = _save(tmp_path, [
        [("dir", "/d"), ("file", "/d/a", pattern(5, BIG, random=True), BIG), ("hardlink", "/d/b", "/d/a")],
        [("opaque", "/d"), ("dir", "/d")],
    ], "both.tar")
    t2 = audit(tarball=path2).report["totals"]
    assert t2["visible"] == 0 and t2["deleted"] == BIG


LAYERS = [
    [("dir", "/usr"), ("file", "/usr/lib/libx.so", b"L" * 5000), ("file", "/etc/os-release", b"ID=debian\n"),
     ("symlink", "/lib", "usr/lib")],
    [("file", "/opt/app/big.bin", pattern(9, 300_000, random=True), 300_000), ("whiteout", "/etc/os-release")],
    [("file", "/opt/app/notes.txt", b"t" * 20_000), ("hardlink", "/opt/app/notes2.txt", "/opt/app/notes.txt")],
]


@pytest.mark.parametrize("compressions", [["tar", "gzip", "zstd"], ["zstd", "zstd", "zstd"], ["gzip", "tar", "gzip"]])
@pytest.mark.parametrize("nested", [False, True])
def test_oci_layout_matches_docker_archive(tmp_path, compressions, nested):
    ref = audit(tarball=_save(tmp_path, LAYERS), compressed=False).report
    p = tmp_path / "oci.tar"
    with open(p, "wb") as f:
        write_oci_tar(f, LAYERS, compressions=compressions, nested_index=nested)
    scan, _, _ = read_tarball(str(p), compressed=False)
    assert scan.layout == "oci"
    assert [ls.compression for ls in scan.layers] == compressions
    assert [ls.media_type.rsplit(".", 1)[-1] for ls in scan.layers] == \
        [{"tar": "tar", "gzip": "tar+gzip", "zstd": "tar+zstd"}[c] for c in compressions]
    got = audit(tarball=str(p), compressed=False).report
    for k in ("visible", "files", "hidden", "deleted", "duplicates"):
        assert got["totals"][k] == ref["totals"][k], k
    assert got["totals"]["visible"] == 5000 + 300_000 + 20_000
    assert got["image"].startswith("imagegen-test/oci:latest")
    # compressed layers: the registry keeps the blob itself, so its size is the compressed size
    for ls in scan.layers:
        if ls.compression != "tar":
            assert ls.blob_compressed and ls.gzip_size == ls.blob_size < ls.tar_size or ls.tar_size < 2048


def test_docker25_save_with_both_manifest_and_index(tmp_path):
    p = tmp_path / "d25.tar"
    with open(p, "wb") as f:
        write_oci_tar(f, LAYERS, compressions=["tar", "tar", "zstd"], with_manifest_json=True)
    scan, _, _ = read_tarball(str(p), compressed=False)
    assert scan.layout == "docker-archive"
    assert scan.layers[2].media_type.endswith("tar+zstd") and scan.layers[2].compression == "zstd"
    with open(p, "rb") as f:
        layers, files, config = scan_save_stream(f)
    assert "opt/app/notes.txt" in files and "etc/os-release" not in files
    assert config["rootfs"]["diff_ids"]


def test_unsupported_media_type_is_unsupported_not_corrupt(tmp_path):
    p = tmp_path / "bz.tar"
    with open(p, "wb") as f:
        write_oci_tar(f, LAYERS, compressions=["gzip", "bzip2", "gzip"],
                      media_types=[None, "application/vnd.oci.image.layer.v1.tar+bzip2", None])
    with pytest.raises(UserInputError) as ei:
        read_tarball(str(p), compressed=False)
    msg = str(ei.value)
    assert "unsupported" in msg and "corrupt" not in msg
    assert "layer 1 (blobs/sha256/" in msg and "tar+bzip2" in msg and "skopeo copy" in msg
    r = subprocess.run([sys.executable, "-m", "imagegen", "audit", "--from-tar", str(p)],
                       capture_output=True, text=True, timeout=120, env={**os.environ})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unsupported" in r.stderr


def test_damaged_zstd_layer_is_corrupt_and_named(tmp_path):
    import tarfile

    from imagegen.errors import ImagegenError

    p = tmp_path / "z.tar"
    with open(p, "wb") as f:
        write_oci_tar(f, LAYERS, compressions=["zstd"] * 3)
    with tarfile.open(p) as tf:
        big = max(tf.getmembers(), key=lambda m: m.size)
    data = bytearray(p.read_bytes())
    mid = big.offset_data + big.size // 2
    data[mid:mid + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))
    with pytest.raises(ImagegenError) as ei:
        read_tarball(str(p), compressed=False)
    msg = str(ei.value)
    assert "corrupt" in msg and big.name.rsplit("/", 1)[-1][:16] in msg and "unsupported" not in msg


def test_audit_and_image_tests_measure_with_the_same_counter(tmp_path):
    """The budget check (inventory) and `audit --max-size` read the same layers and gzip sizes."""
    path = _save(tmp_path, LAYERS)
    a = audit(tarball=path).report
    with open(path, "rb") as f:
        layers, files, _ = scan_save_stream(f)
    assert [lay.gzip_size for lay in layers] == [la["compressed"] for la in a["layers"]]
    assert sum(lay.gzip_size for lay in layers) == a["totals"]["compressed"]
    assert [lay.size for lay in layers] == [la["tar_size"] for la in a["layers"]]


def test_elf_reader_facts(tmp_path):
    """One ELF reader: SONAME, NEEDED, RUNPATH, sections, stripped, patchelf-touched."""
    import shutil

    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    (tmp_path / "t.c").write_text('#include <stdio.h>\nint f(int x){printf("%d", x); return x+1;}\n')
    so = tmp_path / "libt.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-Wl,-soname,libt.so.1", "-Wl,-rpath,$ORIGIN/../foo.libs",
                    "-Wl,--enable-new-dtags", "-o", str(so), str(tmp_path / "t.c"), "-lm"], check=True)
    facts = elf.read(str(so))
    assert facts.soname == "libt.so.1" and "libc.so.6" in facts.needed
    assert facts.runpath == ("$ORIGIN/../foo.libs",) and facts.rpath == ()
    assert not facts.stripped and ".symtab" in facts.sections and facts.info.debug > 0
    assert facts.patchelf_touched   # RUNPATH into a *.libs directory: auditwheel's mark
    assert elf.read(so.read_bytes()) == facts
    with open(so, "rb") as fh:
        assert elf.read(fh) == facts
    if shutil.which("strip"):
        subprocess.run(["strip", "--strip-unneeded", str(so)], check=True)
        assert elf.read(str(so)).stripped
    assert elf.read(b"#!/bin/sh\n") is None
    probe = elf.ElfProbe(len(so.read_bytes()))
    probe.feed(memoryview(so.read_bytes()))
    assert probe.result().stripped
    assert elf.read(io.BytesIO(b"\x7fELF" + b"\0" * 60)).dynamic is None


def test_elf_probe_keeps_a_window_for_large_files_with_mid_file_section_headers(tmp_path, monkeypatch):
    """Section headers mid-file (patchelf's layout) in a file too large to spool: the probe keeps
    a window before the table instead of writing the file to disk, and reads the same sections."""
    import shutil

    if not shutil.which("gcc"):
        pytest.skip("gcc not installed")
    (tmp_path / "t.c").write_text('#include <stdio.h>\nint f(int x){printf("%d", x); return x+1;}\n')
    so = tmp_path / "libw.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-g", "-o", str(so), str(tmp_path / "t.c")], check=True)
    data = so.read_bytes()
    ref = elf.ElfProbe(len(data))
    ref.feed(memoryview(data))
    want = ref.result()
    monkeypatch.setattr(elf, "HEAD", 64)
    monkeypatch.setattr(elf, "TAIL", 64)
    monkeypatch.setattr(elf, "SPOOL_MAX", 128)
    for step in (7, 500, 4096):
        p = elf.ElfProbe(len(data))
        for i in range(0, len(data), step):
            p.feed(memoryview(data)[i:i + step])
        assert p._spool is None and p._win is not None
        assert p.result() == want and want.debug > 0 and want.symtab


def test_large_file_duplicates_by_fingerprint(tmp_path):
    """Files of 1 MiB and more are matched by size + CRC-32 + Adler-32: copies are duplicates,
    same-size files with other content are not."""
    n = 2 << 20
    path = _save(tmp_path, [[("file", "/a/x.bin", pattern(1, n, random=True), n),
                             ("file", "/b/x.bin", pattern(1, n, random=True), n),
                             ("file", "/c/y.bin", pattern(2, n, random=True), n)]])
    t = audit(tarball=path).report["totals"]
    assert t["duplicates"] == n and t["visible"] == 3 * n


def test_policy_stripped_uses_the_one_strip_predicate():
    """Files in patchelf's layout keep their symbols by design (the prune rule spares them), so
    the policy rule `stripped` does not flag them; plain unstripped files it still does."""
    from imagegen.imagetest import policy
    from imagegen.imagetest.inventory import ELF_PATCHED, ELF_SYMTAB

    files = {"opt/venv/lib/python3.11/site-packages/PIL/_imaging.so": ["f", 0o755, 1, 0, 0, "", ELF_PATCHED],
             "opt/venv/lib/python3.11/site-packages/numpy.libs/libopenblas.so": ["f", 0o755, 1, 0, 0, "", ELF_SYMTAB],
             "opt/venv/lib/python3.11/site-packages/paddle/libs/libphi.so": ["f", 0o755, 1, 0, 0, "", ELF_SYMTAB]}
    assert policy.unstripped(files) == ["opt/venv/lib/python3.11/site-packages/paddle/libs/libphi.so"]
