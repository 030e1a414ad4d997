"""pick: the smallest image of a family that runs natively on this host's GPUs (imagegen.pick)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import err, out
from ..errors import GateFailed, UserInputError
from .app import JsonOpt, MatrixOpt, VariantOpt, app, select_cells


def _sizes(cells) -> dict:
    """{ref: (bytes, "image")} for cells built here, else their size budget; the engine is optional."""
    from .. import engine
    from ..errors import EngineError

    sizes = {c.ref: (c.budget_size, "budget" if c.budget_size else "") for c in cells}
    for c in cells:
        try:
            sizes[c.ref] = (engine.inspect_image(c.local_ref)["Size"], "image")
        except UserInputError:  # not built here: its budget stands
            pass
        except EngineError:  # no engine at hand: budgets only
            break
    return sizes


@app.command("pick")
def pick_command(
    matrix: MatrixOpt = Path("matrix.yaml"),
    variant: VariantOpt = None,
    capability: Annotated[Optional[list[str]], typer.Option("--compute-capability", "-c", metavar="X.Y",
                                                            help="A GPU of the host to pick for, as nvidia-smi "
                                                            "prints it (repeatable; default: this host's, through "
                                                            "nvidia-smi).")] = None,
    driver: Annotated[Optional[str], typer.Option("--driver", metavar="VERSION", help="The host's NVIDIA driver "
                                                  "(default: this host's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The smallest GPU image of the selected cells that runs natively on the host's GPUs (every CUDA
    library with a kernel path, the driver new enough); an arch-targeted twin first. Exit 1 with the
    reason when none fits."""
    from .. import gpu_archs, pick

    if not variant:
        raise UserInputError("name the family to pick from with --variant, e.g. --variant 'paddle:*-gpu-*-slim'")
    h = pick.host(capability, driver)
    m, cells = select_cells(matrix, variant, False)
    summaries = {c.ref: gpu_archs.cell_summary(m, c) or {} for c in cells if c.device == "gpu"}
    choice, judged = pick.pick(m, cells, h, {r: s.get("label", "") for r, s in summaries.items()}, _sizes(cells),
                               {r: s.get("feature_gaps", {}) for r, s in summaries.items()})
    if json_out:
        out.print_json(json.dumps({"host": {"compute_capabilities": [f"{cc // 10}.{cc % 10}" for cc in h.capabilities],
                                            "driver": h.driver, "from": h.source},
                                   "pick": choice.ref if choice else None,
                                   "candidates": [c.as_dict() for c in judged]}))
    elif choice is not None:
        out.print(choice.ref, markup=False)
    where = ", ".join(f"sm_{cc}" for cc in h.capabilities) + (f", driver {h.driver}" if h.driver else "")
    if choice is None:
        reasons = "; ".join(f"{c.ref}: {', '.join(c.why)}" for c in judged[:4])
        raise GateFailed(f"no selected image runs natively on {where}: {reasons}")
    for note in choice.why:
        err.print(f"note: {note}", markup=False, style="yellow")
    err.print(f"picked for {where} ({h.source}): {choice.ref} (serves {choice.label}"
              + (f", {choice.size / 1e6:,.0f} MB ({choice.size_from})" if choice.size else "") + ")", markup=False)
