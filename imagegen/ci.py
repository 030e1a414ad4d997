"""`imagegen ci matrix`: the GitHub Actions `strategy.matrix` of the selected cells.

Shape (stdout, JSON, one line): `{"include": [entry, ...]}`, one entry per cell:
`cell` (full tag), `id` (file-safe), `device`, `runs-on` (labels from the matrix's `ci:` block: GPU cells
go to self-hosted GPU runners, CPU cells to hosted runners), `wheels-key` and `bases-key`
(`actions/cache` keys: the sha256 of the cell's committed lock file, and of its base images' input-derived
tags), `base-refs` (the base images to save/load, space-separated), `publish` (whether the workflow may
publish it: always true here; the workflow decides by event/branch).

GitHub refuses a matrix of more than 256 jobs (`MAX_ENTRIES`): that is a `UserInputError` telling how
to split. An empty selection is valid (`{"include": []}`); the workflow skips the build job on
`count == 0` with a notice (`github_output` writes `matrix` and `count` to `$GITHUB_OUTPUT`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import UserInputError
from .matrix import Cell, Matrix

MAX_ENTRIES = 256  # GitHub Actions: "a matrix can generate a maximum of 256 jobs per workflow run"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def entry(m: Matrix, cell: Cell) -> dict:
    lock = m.path.resolve().parent / "locks" / f"{cell.id}.txt"
    roles = ["builder", cell.runtime_role]
    refs = [cell.base_spec.role_ref(cell.base, r) for r in roles] if cell.base_spec else []
    ci = m.file.ci
    return {
        "cell": cell.ref,
        "id": cell.id,
        "device": cell.device,
        "runs-on": list(ci.gpu_runs_on if cell.device == "gpu" else ci.cpu_runs_on),
        "wheels-key": f"wheels-{cell.id}-{_sha(lock.read_bytes()) if lock.exists() else 'unlocked'}",
        "bases-key": f"bases-{cell.base}-{_sha(' '.join(refs).encode())}",
        "base-refs": " ".join(refs),
        "aliases": list(cell.aliases),
    }


def unbuildable(m: Matrix, cells: list[Cell]) -> list[Cell]:
    """Cells with no committed lock file: their wheels cannot be resolved from the registries CI
    reaches (Paddle 3.x GPU wheels live only on Paddle's own index; TensorRT's PyPI packages are
    sdists that download from NVIDIA's index). A CI job for them could only fail."""
    return [c for c in cells if not (m.path.resolve().parent / "locks" / f"{c.id}.txt").exists()]


def matrix(m: Matrix, cells: list[Cell], *, device: str | None = None) -> dict:
    """`{"include": [...]}` for `cells` (optionally only one device), leaving out the cells without a
    lock (`unbuildable`). Raises UserInputError above 256."""
    skip = {c.id for c in unbuildable(m, cells)}
    chosen = [c for c in cells if (device is None or c.device == device) and c.id not in skip]
    if len(chosen) > MAX_ENTRIES:
        raise UserInputError(f"{len(chosen)} cells exceed GitHub's limit of {MAX_ENTRIES} jobs per matrix; split the "
                             "workflow into jobs that each select a part, e.g. `imagegen ci matrix --variant "
                             "'paddle:*'` and one per other framework, or `--device cpu` / `--device gpu`")
    return {"include": [entry(m, c) for c in chosen]}


def dumps(data: dict) -> str:
    """The exact text `imagegen ci matrix` prints (and the workflow consumes): compact, one line."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def github_output(path: Path, data: dict) -> None:
    """Append `matrix=<json>` and `count=<n>` to a `$GITHUB_OUTPUT` file."""
    with open(path, "a") as fh:
        fh.write(f"matrix={dumps(data)}\ncount={len(data['include'])}\n")
