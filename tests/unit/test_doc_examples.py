"""The examples in README.md and docs/ are run (issue 9 item 7: examples that were never run).

- Every ```yaml block is validated: a block with `frameworks:` is a whole matrix; any other block is
  a fragment, merged over the repo's matrix.yaml (its top-level keys replace the matrix's).
- Every `imagegen ...` command in a ```console / ```bash block is run, by this rule:
  * cheap commands run for real, in a scratch copy of the repo's matrix, templates, dockerfiles and
    locks, and must exit 0: `validate`, `list`, `render`, `schema`, `pick` (with its host as flags), any `--help`,
    and `--dry-run` forms that need no built image (`cache prune --dry-run`). When a ```console
    block shows the command's output, each shown line must appear in the real output.
  * heavy commands (build, test, lock/fetch that download, audit, scan, publish, base build, doctor)
    need an engine, built images, the network or every lock committed (`lock --check`); they run with `--help` appended,
    which proves that the subcommand and every flag of the example exist (the CPU cells are built by
    tests/integration, which runs these commands for real).
- The quick start's script commands run as root without `sudo` (a fresh machine may have none):
  they are not prefixed with sudo, pass `bash -n`, and re-run themselves through sudo when not root.
"""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imagegen import cli, console, matrix
from imagegen.errors import UserInputError

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHEAP = {"validate", "list", "render", "schema", "pick"}


def _blocks():
    """(file, line, language, text) of every fenced block."""
    for doc in DOCS:
        text = doc.read_text()
        for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
            body = "\n".join(line[len(m.group(1)):] for line in m.group(3).splitlines())
            yield doc, text[:m.start()].count("\n") + 1, m.group(2), body


def _yaml_blocks():
    return [pytest.param(d, ln, body, id=f"{d.name}:{ln}") for d, ln, lang, body in _blocks() if lang == "yaml"]


def _commands():
    """(file, line, argv after `imagegen`, shown output lines)."""
    found = []
    for doc, ln, lang, body in _blocks():
        if lang not in ("console", "bash", "sh", ""):
            continue
        lines = body.splitlines()
        for i, line in enumerate(lines):
            cmd = line[2:] if lang == "console" and line.startswith("$ ") else line
            if lang == "console" and not line.startswith("$ "):
                continue
            if not cmd.startswith("imagegen "):
                continue
            argv = shlex.split(cmd, comments=True)[1:]
            if "|" in argv:  # `imagegen ... | jq ...`: the example's imagegen part
                argv = argv[:argv.index("|")]
            argv = [a for a in argv if not (a.startswith("[") or a.endswith("]") or a == "|")]  # synopsis forms
            shown = []
            if lang == "console":
                for nxt in lines[i + 1:]:
                    if nxt.startswith("$ "):
                        break
                    shown.append(nxt)
            found.append((doc, ln + i + 1, argv, shown))
    return found


def _is_cheap(argv: list[str]) -> bool:
    if "--help" in argv or "-h" in argv:
        return True
    if argv[0] in CHEAP:
        return True
    return argv[:2] == ["cache", "prune"] and "--dry-run" in argv


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("doc-examples")
    for name in ("matrix.yaml", "matrix.schema.json"):
        shutil.copy(ROOT / name, d / name)
    for name in ("templates", "dockerfiles", "locks"):
        shutil.copytree(ROOT / name, d / name)
    (d / "reports").mkdir()
    return d


def run_main(monkeypatch, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(console.out, "file", out)
    monkeypatch.setattr(console.err, "file", err)
    monkeypatch.setattr(sys, "argv", ["imagegen", *argv])
    monkeypatch.setattr(sys, "stdout", out)  # typer's --help and raw writes
    monkeypatch.delenv("IMAGEGEN_MATRIX", raising=False)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # what main() sets for its children, undone after the test
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, out.getvalue(), err.getvalue()


def test_examples_were_found():
    assert len(_yaml_blocks()) >= 2
    cmds = _commands()
    assert len(cmds) >= 20 and sum(_is_cheap(a) for _, _, a, _ in cmds) >= 5


@pytest.mark.parametrize("doc,line,body", _yaml_blocks())
def test_yaml_example_validates(tmp_path, doc, line, body):
    data = yaml.safe_load(body)
    if "frameworks" not in data:
        merged = yaml.safe_load((ROOT / "matrix.yaml").read_text())
        merged.update(data)
        data = merged
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    try:
        m = matrix.load(path)
    except UserInputError as exc:
        pytest.fail(f"{doc.name}:{line}: the example does not validate: {exc}")
    assert m.active


@pytest.mark.parametrize("doc,line,argv,shown",
                         [pytest.param(*c, id=f"{c[0].name}:{c[1]}") for c in _commands()])
def test_command_example(monkeypatch, scratch, doc, line, argv, shown):
    monkeypatch.chdir(scratch)
    cheap = _is_cheap(argv)
    if not cheap:  # --help before any `--` (after it, words belong to the traced command)
        cut = argv.index("--") if "--" in argv else len(argv)
        argv = [*argv[:cut], "--help", *argv[cut:]]
    code, out, err = run_main(monkeypatch, argv)
    assert code == 0, f"{doc.name}:{line}: imagegen {' '.join(argv)} exited {code}: {err.strip()}"
    if cheap and shown and not any(s.startswith("error:") for s in shown):
        for s in shown:
            assert s.strip() in out + err, f"{doc.name}:{line}: expected {s!r} in the output of {argv}"


def test_quick_start_runs_as_root_without_sudo():
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("## Typical use")]
    lines = [ln for ln in re.search(r"```bash\n(.*?)```", quick, re.S).group(1).splitlines() if ln.strip()]
    assert len(lines) == 2
    for ln in lines:
        argv = shlex.split(ln, comments=True)
        assert argv[0] == "bash", ln  # no `sudo`: root on a fresh machine may not have it
        script = ROOT / argv[1]
        assert script.is_file(), ln
        subprocess.run(["bash", "-n", str(script)], check=True)
        body = script.read_text()
        assert 'if [[ "$(id -u)" -ne 0 ]]' in body and 'exec sudo' in body, f"{script}: no sudo re-run for non-root"
    assert not re.search(r"^\s*sudo ", text, re.M), "a README command still starts with sudo"


def test_scripts_rerun_through_sudo_only_when_not_root(tmp_path):
    """As a non-root user the script execs sudo (here a stub that records its arguments); root never
    calls sudo. Checked by running the script's own preamble."""
    script = (ROOT / "scripts" / "test.sh").read_text()
    preamble = script[:script.index('cd "$(dirname "$0")/.."')] + "echo ran-as-$(id -u)\n"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sudo").write_text("#!/bin/sh\necho sudo-called \"$@\"\n")
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")  # pretend not root
    for f in fake.iterdir():
        f.chmod(0o755)
    (tmp_path / "pre.sh").write_text(preamble)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "IMAGEGEN_CACHE": "/c", "IMAGEGEN_TEST_MEMORY": "4g", "PIP_CERT": "/ca"}
    res = subprocess.run(["bash", str(tmp_path / "pre.sh"), "-k", "x"], capture_output=True, text=True, env=env)
    assert res.stdout.startswith("sudo-called --preserve-env=") and res.stdout.rstrip().endswith("-k x"), res
    kept = set(res.stdout.split()[1].split("=", 1)[1].split(","))
    assert kept == {"IMAGEGEN_CACHE", "IMAGEGEN_TEST_MEMORY", "PIP_CERT"}, res  # every setting goes through sudo
    (fake / "id").write_text("#!/bin/sh\necho 0\n")
    (fake / "sudo").unlink()  # root with no sudo installed
    res = subprocess.run(["bash", str(tmp_path / "pre.sh")], capture_output=True, text=True, env=env)
    assert res.stdout.strip() == "ran-as-0" and res.returncode == 0, res
