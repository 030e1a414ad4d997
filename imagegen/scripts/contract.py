"""The contract between the host and the in-build scripts: where things are inside a build and its
image, the marker lines the scripts print for the host to read, and the prune config's and prune
report's shape. Standard library only: copied into every build context beside the scripts that
import it (prune.py, fatprune.py); the host imports it as `imagegen.scripts.contract` (render fills
the templates and prune.json from it, build reads the marker lines).

A change here changes both sides at once; bump PRUNE_CONFIG_SCHEMA when prune.json's keys change
meaning, so that a script never reads a config written for another version of itself.
"""

from __future__ import annotations

# -- paths inside the build and the image ----------------------------------------------------------

VENV = "/opt/venv"                        # the image's virtual environment
BUILD_DIR = "/opt/imagegen-build"         # the builder's scripts and prune.json (the context's imagegen/*)
STAGE_DIR = "/opt/imagegen-stage"         # files the runtime copies onto its root
VENV_ROOT = "/opt/imagegen-venvroot"      # the environment, moved under a root of its own for that copy
SYSROOT_OUT = "/sysroot"                  # the sysroot stage's output
BUILDER_SYSROOT = "/tmp/sysroot"          # ... copied into the builder, for the bytecode trace
WHEELS_DIR = "/tmp/wheels"                # the wheelhouse in the builder (bind-mounted or copied)
STDLIB_COPY = "/tmp/stdlib"               # the runtime's standard library sources, copied into the builder
PRUNE_CONFIG = f"{BUILD_DIR}/prune.json"  # imagegen/prune.json of the context
SMOKE_SCRIPT = f"{BUILD_DIR}/smoke.py"    # imagegen/smoke.py of the context, when the bytecode trace runs it
PRUNE_REPORT = "etc/imagegen/prune-report.json"  # under STAGE_DIR, so under the image's root
CUDA_LDCONF = "/etc/ld.so.conf.d/imagegen-cuda.conf"  # the NVIDIA wheels' library directories (prune.py)

#: the folder of the build context that holds these scripts and prune.json
CONTEXT_DIR = "imagegen"

# -- marker lines: one line of the build log, the marker, then JSON ---------------------------------

PRUNE_REPORT_MARK = "IMAGEGEN-PRUNE-REPORT "        # prune.py: the whole prune report
FATPRUNE_REPORT_MARK = "IMAGEGEN-FATPRUNE-REPORT "  # fatprune.py: its `cuda_archs` rule
RESULT_MARK = "IMAGEGEN-RESULT "                    # a smoke script's result (imagegen/data/smoke/*.py)

# -- prune.json ------------------------------------------------------------------------------------

PRUNE_CONFIG_SCHEMA = 1  # prune.json's "schema"


def check_config(cfg: dict, who: str) -> None:
    """Stop (SystemExit, one line) when `cfg`, a prune.json, says it was written for another schema.
    A config without "schema" (written by hand, or by an older imagegen) is read as it is."""
    schema = cfg.get("schema", PRUNE_CONFIG_SCHEMA)
    if schema != PRUNE_CONFIG_SCHEMA:
        raise SystemExit(f"{who}: prune.json has schema {schema!r}, this script reads {PRUNE_CONFIG_SCHEMA}: "
                         "render the build again with the same imagegen")


def merge_cuda_archs(report: dict, fat: dict) -> dict:
    """The prune report (prune.py's) with fatprune.py's report joined as its `cuda_archs` rule: the
    environment's size after pruning drops by the bytes that rule saved. Changes and returns `report`."""
    report.setdefault("rules", {})["cuda_archs"] = fat
    if "venv_bytes_after" in report:
        report["venv_bytes_after"] -= fat.get("bytes", 0)
    return report
