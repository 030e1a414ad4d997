"""The test stage: turn matrix cells into image-test targets and run the suite on them."""

from __future__ import annotations

from pathlib import Path

import docker.errors

from . import engine, paths, recipe
from . import labels as labels_mod
from .errors import UserInputError
from .imagetest import TestTarget, run_targets
from .imagetest.runner import Summary
from .labels import CUDA_ARCHS, LABEL_DIGEST, SOURCE_URL
from .matrix import Cell


def target_for(cell: Cell, image: str | None = None, *, inputs_digest: str) -> TestTarget:
    """The image suite's target for `cell`'s image (`image`, else its local tag). `inputs_digest`: the
    digest of the inputs this checkout builds the cell from (the pipeline's `prepare`, or the stamp of the
    build that made the image): the image's io.imagegen.inputs-digest label must equal it. UserInputError
    when the image is not here."""
    ref = image or cell.local_ref
    try:
        engine.api().inspect_image(ref)  # it is here; the expected values never come from it
    except docker.errors.ImageNotFound:
        raise UserInputError(f"{cell.ref} is not built here; run `imagegen build --variant {cell.ref}`") from None
    expected = {labels_mod.OCI_SOURCE: SOURCE_URL, LABEL_DIGEST: inputs_digest}
    if cell.device == "gpu" and cell.gpu_archs:  # kernels pruned to the targets: labelled with exactly them
        expected[CUDA_ARCHS] = ",".join(cell.gpu_archs)
    rec = recipe.of(cell)
    return TestTarget.from_cell(cell, image=ref, labels=expected, pruned_libs=list(rec.pruned_dlopen),
                                dlopen=list(rec.dlopen) if cell.device == "gpu" else None, policy=dict(rec.policy),
                                policy_notes=dict(rec.policy_notes))


def split_built(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    api = engine.api()
    built, missing = [], []
    for c in cells:
        try:
            api.inspect_image(c.local_ref)
            built.append(c)
        except docker.errors.ImageNotFound:
            missing.append(c)
    return built, missing


def junit_path(junit_dir: Path | None, name: str) -> Path:
    base = junit_dir or paths.reports_dir()
    return base / f"junit-{name.replace(':', '-').replace('/', '_')}.xml"


def _image_facts(ref: str) -> tuple[str, str | None]:
    info = engine.api().inspect_image(ref)
    return info["Id"], ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_DIGEST)


def test_image(cell: Cell, image: str, *, inputs_digest: str, junit_dir: Path | None = None) -> Summary:
    """Run the whole suite on one image (by ID or tag); a pass writes its test record (testrecord).
    `inputs_digest`: as for :func:`target_for`."""
    from . import testrecord
    from .console import err
    from .imagetest.runner import print_summary_table

    target = target_for(cell, image, inputs_digest=inputs_digest)
    image_id, digest = _image_facts(image)
    summary = run_targets([target], junit_path(junit_dir, cell.id), print_summary=False)
    print_summary_table(summary, console=err)
    if summary.ok:
        testrecord.record_summary(summary, {target.id: (image_id, cell.ref, digest)})
    return summary


def test_cells(cells: list[Cell], digests: dict[str, str], *, junit: Path | None = None,
               checks: list[str] | None = None, keyword: str | None = None, verbose: bool = False) -> Summary:
    """The suite on built cells. `digests`: {cell id: the inputs digest its image must carry} (the
    pipeline's `expected_digest`). Only a full run (no --check / -k) writes test records."""
    from . import testrecord

    targets = [target_for(c, inputs_digest=digests[c.id]) for c in cells]
    facts = {t.id: (*_image_facts(t.image), c.ref) for t, c in zip(targets, cells, strict=True)}
    path = junit if junit and junit.suffix == ".xml" else junit_path(junit, "imagegen")
    summary = run_targets(targets, path, checks=checks, keyword=keyword, verbose=verbose)
    if not checks and not keyword:
        testrecord.record_summary(summary, {k: (iid, ref, dig) for k, (iid, dig, ref) in facts.items()})
    return summary


# Writes the smoke script to a real file first: frameworks read their models' source (Paddle's
# dy2static calls inspect.getsource), so exec() of a string is not enough.
_SMOKE_RUNNER = (
    "import runpy, sys, tempfile; f = tempfile.NamedTemporaryFile('w', suffix='.py', delete=False); "
    "f.write(sys.argv[1]); f.close(); sys.argv = [f.name] + sys.argv[2:]; "
    "runpy.run_path(f.name, run_name='__main__')"
)


def smoke_argv(cell: Cell, *, device: str = "cpu") -> list[str]:
    """The command that runs the cell's smoke inference inside its image with the image's Python
    (e.g. for `imagegen audit --trace`). UserInputError when the smoke test needs a model prepared
    on the host first (it cannot run from the image alone)."""
    from . import compat

    source = compat.smoke_script(cell.fw).read_text()
    if recipe.needs_host_prepare(cell.fw):
        raise UserInputError(f"{cell.framework}'s smoke test needs a model prepared on the host; trace it with "
                             f"--trace-image {cell.ref} -- python3 YOUR_WORKLOAD.py")
    return [f"python{cell.python}", "-c", _SMOKE_RUNNER, source, device]
