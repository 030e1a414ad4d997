"""imagediff: two `docker save` tarballs (written by audit/synth) compared config, layer and file."""

from __future__ import annotations

import pytest

from imagegen import imagediff
from imagegen.audit import synth

pytestmark = pytest.mark.unit

BASE = [("dir", "usr"), ("file", "usr/a", b"a" * 10)]


def _tar(tmp_path, name, layers, **kw):
    path = tmp_path / f"{name}.tar"
    with open(path, "wb") as f:
        synth.write_save_tar(f, layers, **kw)
    return imagediff.read(str(path))


def test_identical_images_are_the_same(tmp_path):
    layers = [BASE, [("file", "opt/venv/x.py", b"print(1)\n")]]
    d = imagediff.compare(_tar(tmp_path, "a", layers), _tar(tmp_path, "b", layers))
    assert d.same and d.first is None and d.config == []


def test_the_first_differing_file_is_named_with_its_layer(tmp_path):
    a = _tar(tmp_path, "a", [BASE, [("file", "opt/venv/x.py", b"print(1)\n"), ("file", "opt/venv/y.py", b"y")]])
    b = _tar(tmp_path, "b", [BASE, [("file", "opt/venv/x.py", b"print(2)\n"), ("file", "opt/venv/z.py", b"z")]])
    d = imagediff.compare(a, b)
    assert not d.same and [i for i, _, _ in d.layers] == [1]
    assert d.config == ["rootfs.diff_ids[1]"]
    assert (d.first.layer, d.first.path, d.first.what) == (1, "/opt/venv/x.py", "content")
    assert [(f.path, f.what) for f in d.files] == [("/opt/venv/x.py", "content"), ("/opt/venv/y.py", "missing"),
                                                   ("/opt/venv/z.py", "missing")]
    assert d.first.line().startswith("layer 1: /opt/venv/x.py: content sha256:")


def test_a_label_alone_differs_in_the_config_only(tmp_path):
    layers = [BASE]
    d = imagediff.compare(_tar(tmp_path, "a", layers, labels={"x": "1"}), _tar(tmp_path, "b", layers, labels={"x": "2"}))
    assert d.config == ["config.Labels.x"] and d.layers == [] and not d.same


def test_mode_and_whiteouts(tmp_path):
    a = _tar(tmp_path, "a", [BASE, [("file", "usr/b", b"b", None, 0o644), ("whiteout", "usr/a")]])
    b = _tar(tmp_path, "b", [BASE, [("file", "usr/b", b"b", None, 0o755)]])
    whats = [(f.path, f.what, f.a, f.b) for f in imagediff.compare(a, b).files]
    assert whats == [("/usr/b", "mode", "0o644", "0o755"), ("/usr/a", "whiteout", "yes", "no")]


def test_a_changed_file_is_named_before_metadata_differences(tmp_path):
    """Within a layer, a file whose bytes changed is named first, then changed permissions; a tar header
    that lost its file-type bits (mode 0o644 against 0o100644: the same permissions on disk, as a re-packed
    layer has) ranks last, as `tar mode`."""
    a = _tar(tmp_path, "a", [BASE, [("file", "opt/a.py", b"a", None, 0o644), ("file", "opt/b.py", b"b")]])
    b = _tar(tmp_path, "b", [BASE, [("file", "opt/a.py", b"a", None, 0o755), ("file", "opt/b.py", b"X")]])
    d = imagediff.compare(a, b)
    assert [(f.path, f.what) for f in d.files] == [("/opt/b.py", "content"), ("/opt/a.py", "mode")]
    from imagegen.savestream.layers import Rec

    x, y = Rec("/opt/c.py", "f", mode=0o100644), Rec("/opt/c.py", "f", mode=0o644)
    assert imagediff._rec_diff(x, y) == "tar mode"
    assert imagediff._rec_diff(x, Rec("/opt/c.py", "f", mode=0o100755)) == "mode"
    assert imagediff._RANK["content"] < imagediff._RANK["mode"] < imagediff._RANK["tar mode"]
