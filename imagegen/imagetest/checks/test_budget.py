"""Size budgets from the matrix: uncompressed (the engine's size on the graph-driver store; on the
containerd store, whose Size counts compressed blobs, the save stream's uncompressed layer tars) and
compressed (gzip -6 of each layer tar, as a registry stores it)."""

import pytest

from imagegen.imagetest.helpers import fail


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def test_size(target, image_attrs, request):
    if target.budget_bytes is None:
        pytest.skip("no size budget in the matrix")
    from imagegen import engine

    if engine.current().size_is_unpacked:
        size, what = int(image_attrs["Size"]), "image size"
    else:  # the containerd store's Size is of compressed blobs: measure the unpacked layer tars
        size, what = request.getfixturevalue("inv").layers_size, "image size (uncompressed layer tars)"
    if size > target.budget_bytes:
        fail(target, f"{what} {_mb(size)} is over its budget of {_mb(target.budget_bytes)} "
                     f"by {_mb(size - target.budget_bytes)}")


def test_compressed_size(target, inv):
    if target.budget_compressed_bytes is None:
        pytest.skip("no compressed size budget in the matrix")
    size = inv.compressed_size
    if size > target.budget_compressed_bytes:
        fail(target, f"compressed size {_mb(size)} (gzip -6 of {len(inv.layers)} layers) is over its budget of "
                     f"{_mb(target.budget_compressed_bytes)} by {_mb(size - target.budget_compressed_bytes)}")
