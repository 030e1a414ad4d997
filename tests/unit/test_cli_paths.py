"""Every path a user passes (issue 9 item 11): each option or argument of every command that takes a
path is found by walking the CLI's own parameters, must declare a check from imagegen.userpaths, and
is run here with paths that cannot be used: one `error:` line naming the option, exit 2, nothing on
stdout, and no work started (the engine is pointed at a socket that does not exist, so a command
that started working would exit 3 instead of 2).
"""

from __future__ import annotations

import inspect
import io
import sys
import typing
from pathlib import Path

import pytest
import typer.models

from imagegen import cli, console
from imagegen.cli import userpaths

ROOT = Path(__file__).resolve().parents[2]

# Arguments that make each command otherwise valid, so the path is the only thing wrong.
BASE_ARGS: dict[str, list[str]] = {
    "validate": [], "list": [], "schema": [], "doctor": [],
    "render": ["--variant", "gpu-cuda11.8-slim"],
    "build": ["--variant", "cpu-slim"],
    "test": ["--variant", "cpu-slim"],
    "lock": ["--variant", "cpu-slim", "--check"],
    "publish": ["--variant", "cpu-slim", "--dry-run"],
    "scan": ["--variant", "cpu-slim"],
    "fetch": [], "cache prune": ["--dry-run"],
    "audit": ["some-image:1"], "verify": ["some-image:1"], "pick": ["--variant", "gpu-cuda11.8-slim", "-c", "7.5"],
    "base build": ["bookworm"], "base list": [],
    "ci matrix": [],
}
# Names and metavars that say "this is a path": such a parameter must be typed Path.
PATHLIKE_WORDS = ("file", "dir", "path", "out", "junit", "html", "tar", "lock", "matrix")


def _base_type(annotation):
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        return _base_type(args[0])
    if args and type(None) in args:  # Optional[X]
        return _base_type(next(a for a in args if a is not type(None)))
    if typing.get_origin(annotation) is list:
        return _base_type(args[0])
    return annotation


def _params():
    """(command name, parameter name, base type, typer ParameterInfo) for every CLI parameter."""
    getattr(cli, "_register_optional", lambda: None)()
    found = []

    def walk(app, prefix):
        for ci in app.registered_commands:
            name = " ".join(prefix + [ci.name or ci.callback.__name__.replace("_", "-")])
            hints = typing.get_type_hints(ci.callback, include_extras=True)
            for pname, param in inspect.signature(ci.callback).parameters.items():
                ann = hints.get(pname)
                info = next((m for m in getattr(ann, "__metadata__", ())
                             if isinstance(m, typer.models.ParameterInfo)), None)
                if info is None and isinstance(param.default, typer.models.ParameterInfo):
                    info = param.default
                found.append((name, pname, _base_type(ann), info))
        for gi in app.registered_groups:
            walk(gi.typer_instance, prefix + [gi.name])

    walk(cli.app, [])
    return found


def _path_params():
    return [(c, p, info) for c, p, t, info in _params() if t is Path]


def _flag(pname: str, info) -> str | None:
    """The option's first declaration (`--out`), or None for a positional argument."""
    if isinstance(info, typer.models.ArgumentInfo):
        return None
    # with Annotated, typer keeps the first declaration in `default` and the rest in `param_decls`
    first = (info.default,) if isinstance(info.default, str) else ()
    decls = [d for d in first + tuple(info.param_decls or ()) if d.startswith("--")]
    return decls[0] if decls else "--" + pname.replace("_", "-")


def test_walk_finds_the_known_path_options():
    names = {(c, p) for c, p, _ in _path_params()}
    assert {("render", "out_dir"), ("build", "junit"), ("schema", "out_file"), ("audit", "html"),
            ("audit", "from_tar"), ("fetch", "locks"), ("validate", "matrix"), ("base build", "matrix")} <= names
    assert len(names) >= 18, names


def test_every_path_parameter_is_checked_and_typed():
    missing = [(c, p) for c, p, info in _path_params() if info is None or info.callback not in userpaths.CHECKS]
    assert not missing, f"path options without a userpaths check: {missing}"
    # a path hiding in a str option would escape the walk: names/metavars that say "path" must be Path
    for c, p, t, info in _params():
        if t is bool or t is int or t is float or info is None:
            continue
        words = (p + " " + str(getattr(info, "metavar", "") or "")).lower()
        if t is not Path and any(w in words.split("_") or w in words.split() for w in PATHLIKE_WORDS):
            pytest.fail(f"{c} {p} looks like a path but is typed {t}: type it Path and add a userpaths check")


def run_main(monkeypatch, argv: list[str]) -> tuple[int, str, str]:
    """imagegen's real entry point (cli.main), in this process."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(console.out, "file", out)
    monkeypatch.setattr(console.err, "file", err)
    monkeypatch.setattr(sys, "argv", ["imagegen", *argv])
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/imagegen-test.sock")
    monkeypatch.delenv("IMAGEGEN_MATRIX", raising=False)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # what main() sets for its children, undone after the test
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, out.getvalue(), err.getvalue()


def _bad_values(kind: str, check, tmp_path: Path) -> list[tuple[str, str]]:
    """(value, word the error must contain) for one kind of path check."""
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    if kind == "out":
        bad = [("/proc/imagegen-nope/x", "cannot create"), ("/proc/imagegen-nope", "cannot create"),
               (str(a_file / "sub" / "out.xml"), "is not a directory")]
        if check is userpaths.output_dir:
            bad.append((str(a_file), "not a directory"))
        if check is userpaths.output_file:
            bad.append((str(tmp_path), "is a directory"))
        return bad
    bad = [(str(tmp_path / "missing.yaml"), "no such file")]
    if check is userpaths.input_file:
        bad += [(str(tmp_path), "is a directory"), ("/dev/zero", "not a regular file")]
    return bad


def _cases():
    for c, p, info in _path_params():
        yield pytest.param(c, p, info, id=f"{c}-{p}".replace(" ", "-"))


@pytest.mark.parametrize("command,pname,info", list(_cases()))
def test_unusable_path_is_one_line_and_exit_2(monkeypatch, tmp_path, command, pname, info):
    monkeypatch.chdir(ROOT)
    assert command in BASE_ARGS, f"add otherwise-valid arguments for `imagegen {command}` to BASE_ARGS"
    kind = userpaths.CHECKS[info.callback]
    flag = _flag(pname, info)
    for value, needle in _bad_values(kind, info.callback, tmp_path):
        argv = command.split() + BASE_ARGS[command] + ([flag, value] if flag else [value])
        code, out, err = run_main(monkeypatch, argv)
        lines = err.splitlines()
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert needle in lines[0] and value in lines[0], (argv, lines[0])
        assert (flag or pname.upper()) in lines[0], (argv, lines[0])
        assert out == "", (argv, out)
    assert not list(Path("/proc").glob(".imagegen-probe-*"))


def test_checks_create_nothing_and_accept_good_paths(tmp_path):
    deep = tmp_path / "a" / "b" / "report.xml"
    assert userpaths.check_output_file(deep) == deep and not (tmp_path / "a").exists()
    assert userpaths.check_output_dir(tmp_path / "new") and not (tmp_path / "new").exists()
    existing = tmp_path / "keep.html"
    existing.write_text("old")
    userpaths.check_output_file(existing)
    assert existing.read_text() == "old"  # probing does not truncate
    assert list(tmp_path.iterdir()) == [existing]  # no probe left behind
    assert userpaths.check_output_file_or_dir(tmp_path / "reports") == tmp_path / "reports"
    assert userpaths.check_output_file("/dev/null") == Path("/dev/null")  # a device is a fine sink


def test_outputs_create_missing_parent_directories(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    target = tmp_path / "x" / "y" / "schema.json"
    code, _, err = run_main(monkeypatch, ["schema", "-o", str(target)])
    assert code == 0 and target.read_text().startswith("{"), err
    code, _, err = run_main(monkeypatch, ["render", "--variant", "gpu-cuda11.8-slim", "--out", str(tmp_path / "r" / "s")])
    assert code == 0 and (tmp_path / "r" / "s" / "paddle-2.6.2-gpu-cuda11.8-cudnn8.6-slim" / "Dockerfile").is_file(), err


def test_read_only_existing_output_file(monkeypatch, tmp_path):
    """/proc/version exists and is not writable even by root: caught before work, one line."""
    monkeypatch.chdir(ROOT)
    code, out, err = run_main(monkeypatch, ["schema", "-o", "/proc/version"])
    assert code == 2 and len(err.splitlines()) == 1 and "cannot write" in err, err
