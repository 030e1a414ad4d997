"""The README is the way in to the reference in docs/: every relative link in README.md and docs/*.md
resolves (the file exists and, for `#anchor`, a heading of that file has that slug), every command of
`imagegen --help` has a row in the README's command table linking into docs/ (one click from the README
to any command's reference), and every page of docs/ is linked from the README.

Anchors follow GitHub's slug rules: the heading's text (links reduced to their text), lowercased, every
character that is not a letter, digit, space, '-' or '_' dropped, spaces turned into '-'; a repeated
slug gets '-1', '-2', ... Headings and links inside fenced code blocks do not count.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from imagegen import cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^( *)(```|~~~).*?^\1\2[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# [text](target) or [text](target "title"); text may hold one level of brackets
LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks (blank lines in their place, so line numbers hold)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def slug(heading: str) -> str:
    text = re.sub(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for m in HEADING.finditer(_prose(path.read_text())):
        s = slug(m.group(2))
        n = seen.get(s, 0)
        seen[s] = n + 1
        found.add(s if n == 0 else f"{s}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str, str]]:
    """(line, text, target) of every Markdown link outside code; code spans are blanked first, so
    `[--flag](x)` inside backticks is no link, while [`imagegen build`](docs/build.md) is one."""
    prose = CODE_SPAN.sub(lambda m: m.group(1) + "x" * len(m.group(2)) + m.group(1), _prose(path.read_text()))
    return [(prose[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in LINK.finditer(prose)]


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:, ...


def test_slug_follows_github():
    assert slug("CI: `imagegen ci matrix` and the workflow") == "ci-imagegen-ci-matrix-and-the-workflow"
    assert slug("Reproducibility (`python bench/repro_bench.py`)") == "reproducibility-python-benchrepro_benchpy"
    assert slug("Arch-targeted GPU images (experimental)") == "arch-targeted-gpu-images-experimental"
    assert slug("`imagegen verify REF`") == "imagegen-verify-ref"
    assert slug("Measured times (2 cores, no GPU)") == "measured-times-2-cores-no-gpu"


def test_links_are_found():
    readme = links(README)
    assert len(readme) >= 20 and any(target == "docs/build.md" for _, _, target in readme)


def test_links_in_code_are_not_links(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("see `[--flag](nowhere)` and [`a`](b.md#c) but not\n```\n[c](d.md)\n# not a heading\n```\n## Real one\n")
    assert [(line, target) for line, _, target in links(doc)] == [(1, "b.md#c")]
    assert anchors(doc) == {"real-one"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    bad = []
    for line, _text, target in links(doc):
        if not target or not _relative(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        where = f"{doc.relative_to(ROOT)}:{line}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not bad, "broken links:\n" + "\n".join(bad)


def _commands() -> list[str]:
    """Every command of `imagegen --help`, subcommands of groups as `group sub`."""
    found = []

    def walk(group, prefix):
        for name, command in sorted(group.commands.items()):
            if getattr(command, "hidden", False):
                continue
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found.append(f"{prefix}{name}")

    walk(typer.main.get_command(cli.app), "")
    return found


def _command_table() -> str:
    text = README.read_text()
    start = text.index("\n## Commands\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_commands_are_found():
    commands = _commands()
    assert {"validate", "build", "publish", "base build", "cache prune", "ci matrix"} <= set(commands)


@pytest.mark.parametrize("command", _commands())
def test_readme_command_table_links_every_command_into_docs(command):
    rows = [ln for ln in _command_table().splitlines() if ln.startswith("|")]
    targets = [m.group(2) for ln in rows for m in LINK.finditer(ln) if m.group(1) == f"`imagegen {command}`"]
    assert targets, f"README.md's command table has no row linking [`imagegen {command}`](docs/...)"
    for target in targets:
        assert target.startswith("docs/") and (ROOT / target.partition("#")[0]).is_file(), (command, target)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, _, t in links(README) if _relative(t) and t}
    missing = [p.name for p in DOCS[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_command_reference_is_generated_from_the_code():
    """docs/cli.md lists every command, argument and option as the code defines them."""
    from imagegen.cli import reference

    assert (ROOT / "docs" / "cli.md").read_text() == reference.markdown(), \
        "docs/cli.md is stale: python -m imagegen.cli.reference > docs/cli.md"
