"""The bytecode rule's trade-off: the bytes `bytecode: drop` saves against the seconds of cold
start it costs on every container start.

Bytes come from the image (its .pyc files) or the build's prune report; seconds come from the last
run of `bench/coldstart.py`, which writes `bench/results-coldstart.json` (committed) and a copy in
`<cache root>/bench/coldstart.json`; the newer one is read. A cell the benchmark has not
measured is reported as "not measured", never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = "imagegen.coldstart/1"
NOT_MEASURED = "not measured"


def repo_path() -> Path:
    return Path(__file__).resolve().parents[1] / "bench" / "results-coldstart.json"


def cache_path() -> Path:
    from . import paths

    return paths.coldstart_cache()


def _read(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == SCHEMA and isinstance(doc.get("cells"), list) else None


def load() -> dict | None:
    """The newest benchmark results (by their newest row), or None."""
    docs = [d for d in (_read(cache_path()), _read(repo_path())) if d]
    return max(docs, key=lambda d: max((r.get("measured_at", "") for r in d["cells"]), default=""), default=None)


def save(rows: list[dict], path: Path) -> dict:
    """Merge rows (one per cell, replacing that cell's older row) into the results at path; write
    it there and to the cache copy. Returns the merged document."""
    old = _read(path) or {"cells": []}
    fresh = {r["cell"] for r in rows}
    cells = [r for r in old["cells"] if r.get("cell") not in fresh] + rows
    doc = {"schema": SCHEMA, "script": "bench/coldstart.py", "cells": sorted(cells, key=lambda r: r["cell"])}
    text = json.dumps(doc, indent=2) + "\n"
    for p in (path, cache_path()):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return doc


def cell_result(cell_ref: str | None, doc: dict | None = None) -> dict | None:
    if not cell_ref:
        return None
    doc = doc if doc is not None else load()
    return next((r for r in (doc or {}).get("cells", []) if r.get("cell") == cell_ref), None)


def bytecode_tradeoff(cell_ref: str | None, nbytes: int, *, shipped: bool = True, doc: dict | None = None) -> dict:
    """{"rule", "bytes", "cold_start_s": {"import", "first_inference"} | None, "measured", "text"}.

    nbytes: the .pyc bytes the image ships (shipped=True: what `bytecode: drop` would save), or
    what the rule saved in an image built with it (shipped=False; 0 = take the benchmark's figure).
    Seconds are the benchmark's medians (drop minus compiled), per container start."""
    row = cell_result(cell_ref, doc)
    rule = (row or {}).get("bytecode_rule")
    cost = {"import": rule["import_s"], "first_inference": rule["first_inference_s"]} if rule else None
    size = nbytes or (0 if shipped else (rule or {}).get("bytes", 0))
    measured = (f"{row['measured_at']} by bench/coldstart.py, median of {row.get('runs', '?')} runs"
                if rule else NOT_MEASURED)
    seconds = (f"costs {cost['import']:+.2f} s to `import` and {cost['first_inference']:+.2f} s to the first "
               f"inference on every container start ({measured})" if cost
               else f"its cold-start cost is {NOT_MEASURED} (run bench/coldstart.py)")
    verb = "would save" if shipped else "saves"
    return {"rule": "bytecode", "bytes": size, "shipped": shipped, "cold_start_s": cost, "measured": measured,
            "text": f"bytecode: drop {verb} {size / 1e6:,.1f} MB of .pyc; {seconds}"}


def annotate_prune_report(cell_ref: str, report: dict | None) -> dict | None:
    """Add the benchmark's cold-start cost to the bytecode entry of a build's prune report (bytes:
    the environment's .pyc plus the runtime standard library's, when the cell ships both)."""
    if not report or "bytecode" not in (report.get("rules") or {}):
        return report
    entry = report["rules"]["bytecode"]
    if entry.get("trace_error"):
        # the builder could not trace the start (compile_bytecode.py): it compiled every source instead
        from .console import warn

        warn(f"{cell_ref}: the build-time bytecode trace failed ({entry['trace_error']}); every source was "
             f"compiled instead of what the start loads (scope {entry.get('scope')!r}, "
             f"{int(entry.get('bytes') or 0) / 1e6:,.1f} MB in the environment)")
    shipped = entry.get("mode") != "drop"
    nbytes = int(entry.get("bytes") or 0) + (int((entry.get("stdlib") or {}).get("bytes") or 0) if shipped else 0)
    t = bytecode_tradeoff(cell_ref, nbytes, shipped=shipped)
    entry["cold_start_s"] = t["cold_start_s"]
    entry["cold_start_measured"] = t["measured"]
    entry["tradeoff"] = t["text"]
    return report
