"""Cold-start figures: the timed smoke probe, the test summary's timing lines, the benchmark's
results file (merge per cell) and the bytecode rule's trade-off text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagegen import coldstart
from imagegen.imagetest.runner import CheckResult, Summary, timing_lines

pytestmark = pytest.mark.unit

PROBE = Path(__file__).resolve().parents[2] / "imagegen" / "imagetest" / "probes" / "timed.py"


def test_timed_probe_times_import_then_runs_the_script_as_main(tmp_path):
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(0.3)\n")
    script = tmp_path / "smoke.py"
    script.write_text("import sys, time, slowmod\ntime.sleep(0.2)\nif __name__ == '__main__':\n"
                      "    print('IMAGEGEN-RESULT ' + '{\"ok\": true, \"argv\": \"%s\"}' % ' '.join(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, str(PROBE), "slowmod", str(script), "cpu", "x"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(tmp_path)}, check=True)
    lines = r.stdout.splitlines()
    assert json.loads(lines[0].split(" ", 1)[1]) == {"ok": True, "argv": "cpu x"}
    timing = json.loads(lines[-1].removeprefix("IMAGEGEN-TIMING "))
    assert 0.3 <= timing["import_s"] < 2 and 0.2 <= timing["first_inference_s"] < 2


def test_timed_probe_keeps_the_scripts_exit_code(tmp_path):
    script = tmp_path / "smoke.py"
    script.write_text("import sys\nsys.exit(3)\n")
    r = subprocess.run([sys.executable, str(PROBE), "json", str(script)], capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout.startswith("IMAGEGEN-TIMING ")


def test_summary_timing_lines():
    s = Summary([CheckResult("paddle:3.3.1-cpu-slim", "smoke.cpu_inference", "passed", 9.0,
                             properties={"cpu_import_s": 1.234, "cpu_first_inference_s": 2.5}),
                 CheckResult("paddle:3.3.1-cpu-slim", "tag.labels", "passed", 1.0)])
    assert timing_lines(s) == ["timing paddle:3.3.1-cpu-slim: CPU smoke: import 1.23 s, first inference 2.50 s"]


def test_results_merge_per_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "results.json"
    coldstart.save([{"cell": "a:1-cpu-slim", "measured_at": "2026-11-29T01:00:00Z"},
                    {"cell": "b:1-cpu-slim", "measured_at": "2026-11-29T01:00:00Z"}], path)
    doc = coldstart.save([{"cell": "b:1-cpu-slim", "measured_at": "2026-11-29T02:00:00Z"}], path)
    assert [(r["cell"], r["measured_at"][11:13]) for r in doc["cells"]] == [("a:1-cpu-slim", "01"), ("b:1-cpu-slim", "02")]
    assert json.loads((tmp_path / "cache" / "bench" / "coldstart.json").read_text()) == doc
    monkeypatch.setattr(coldstart, "repo_path", lambda: path)
    assert coldstart.cell_result("b:1-cpu-slim")["measured_at"].endswith("02:00:00Z")
    assert coldstart.cell_result("c:1-cpu-slim") is None


def test_prune_report_gets_the_tradeoff(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(coldstart, "repo_path", lambda: tmp_path / "none.json")
    rep = {"rules": {"bytecode": {"enabled": True, "mode": "drop", "bytes": 30_000_000}}}
    out = coldstart.annotate_prune_report("p:1-cpu-slim", rep)["rules"]["bytecode"]
    assert out["cold_start_measured"] == "not measured"
    assert out["tradeoff"].startswith("bytecode: drop saves 30.0 MB of .pyc; its cold-start cost is not measured")
    assert coldstart.annotate_prune_report("p", None) is None


def test_prune_report_counts_the_stdlib_bytecode(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(coldstart, "repo_path", lambda: tmp_path / "none.json")
    from imagegen.build import prune_report_from_log

    log = tmp_path / "build.log"
    log.write_text('Step 9/20 : RUN ...\nIMAGEGEN-PRUNE-REPORT {"rules": {"bytecode": {"enabled": false, '
                   '"mode": "compile", "bytes": 30000000, "stdlib": {"bytes": 12000000, "files": 600}}}}\n')
    rep = coldstart.annotate_prune_report("p:1-cpu-slim", prune_report_from_log(log))
    assert rep["rules"]["bytecode"]["tradeoff"].startswith("bytecode: drop would save 42.0 MB of .pyc")


def test_a_failed_bytecode_trace_is_a_warning_of_the_build(tmp_path, monkeypatch):
    """The builder fell back to compiling every source (compile_bytecode.py): the build says so."""
    import io

    from rich.console import Console

    from imagegen import console

    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(coldstart, "repo_path", lambda: tmp_path / "none.json")
    buf = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=buf, no_color=True, width=400))
    ok = {"rules": {"bytecode": {"mode": "compile", "scope": "import", "bytes": 1, "trace_error": ""}}}
    coldstart.annotate_prune_report("p:1-gpu-slim", ok)
    assert buf.getvalue() == ""
    bad = {"rules": {"bytecode": {"mode": "compile", "scope": "all", "bytes": 41_000_000,
                                  "trace_error": "smoke inference (cpu) after `import p`: timed out after 600 s"}}}
    coldstart.annotate_prune_report("p:1-gpu-slim", bad)
    text = buf.getvalue()
    assert text.startswith("warning: p:1-gpu-slim: the build-time bytecode trace failed")
    assert "timed out after 600 s" in text and "'all'" in text and "41.0 MB" in text
