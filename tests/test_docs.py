"""Every code block of the manual (docs/*.md) and the README, checked as docs/development.md "This manual" says:
Python blocks run (or, marked `<!-- docs-test: no-run -->`, compile), every `ovdiff` command line parses against the
real command line, and shell blocks marked `<!-- docs-test: run -->` run for real, offline; a console block's output
lines must be what its command prints. Pages run in one shared folder, so their procedural classes are built once."""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "console", "text", "json", "yaml", "toml"}
MARK = re.compile(r"<!-- docs-test: ([\w-]+) -->")
FENCE = re.compile(r"^(\s*)```(\S*)")
OPERATORS = {"|", "||", "&", "&&", ";", "(", ")", ">", ">>", "<"}
# typer runs on the click it bundles: its errors, as the app's own group catches them (cli/app.py)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
UsageError = typer.BadParameter.__mro__[1]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mark: str | None  # "run", "no-run" or None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, in order, each with the docs-test mark on the line above its fence (if any)."""
    lines = page.read_text(encoding="utf-8").split("\n")
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].isspace() or not indent else lines[i].lstrip())
            i += 1
        assert i < len(lines), f"{page.name}:{start + 1}: a fence that never closes"
        above = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.fullmatch(above)
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", mark.group(1) if mark else None))
        i += 1
    return out


ALL = [b for p in PAGES for b in blocks(p)]


def commands(block: Block) -> list[tuple[list[str], list[str]]]:
    """Each `ovdiff` command of a shell or console block: its arguments after `ovdiff`, and for a console block the
    output lines shown after it. Continuations are joined, comments dropped, pipes and `&&` cut, `VAR=x` prefixes
    skipped; commands of other programs (hf, ray, pip, jq) are left alone."""
    lines, out = block.code.replace("\\\n", " ").split("\n"), []
    for n, line in enumerate(lines):
        if block.lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words, part = list(lexer), []
        for word in [*words, ";"]:
            if word not in OPERATORS:
                part.append(word)
                continue
            while part and re.fullmatch(r"[A-Z_]+=\S*", part[0]):
                part.pop(0)
            if part and part[0] == "ovdiff":
                shown = []
                if block.lang == "console":
                    shown = [s for s in lines[n + 1 :] if s.strip()]
                    shown = shown[: next((k for k, s in enumerate(shown) if s.startswith("$ ")), len(shown))]
                out.append((part[1:], shown))
            part = []
    return out


@functools.cache
def command_line():
    """The click command typer builds from the app (once: building it reads every command's signature)."""
    return typer.main.get_command(app)


def parse(args: list[str]) -> None:
    """Parse `ovdiff ARGS` as the real command line does (command, options, value types and ranges), running nothing."""
    cmd = command_line()
    path, rest = "ovdiff", list(args)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        path += f" {rest[0]}"
        cmd = cmd.commands[rest.pop(0)]
    if hasattr(cmd, "commands") and not {"--help", "-h", "--version"} & set(rest):
        raise UsageError(f"'{path}' needs one of the commands {', '.join(sorted(cmd.commands))}, got {rest[:1]}")
    with contextlib.suppress(typer.Exit):  # --help, --version
        cmd.make_context(path, rest)


def test_every_fence_names_a_known_language_and_marks_are_known():
    bad = [
        f"{b.where}: fence language {b.lang!r}: name one of {sorted(LANGUAGES)} (docs/development.md)"
        for b in ALL
        if b.lang not in LANGUAGES
    ]
    bad += [
        f"{b.where}: mark {b.mark!r} on a {b.lang} block"
        for b in ALL
        if b.mark and (b.mark, b.lang) not in {("no-run", "python"), ("run", "sh"), ("run", "console")}
    ]
    assert bad == []
    assert any(b.mark == "run" for b in ALL) and any(b.lang == "python" and not b.mark for b in ALL)


def test_every_python_block_is_valid_python():
    for b in ALL:
        if b.lang == "python":
            ast.parse(b.code, filename=b.where)


def test_every_ovdiff_command_of_the_manual_parses_against_the_real_command_line():
    checked, bad = 0, []
    for b in ALL:
        if b.lang not in ("sh", "console"):
            continue
        for args, _ in commands(b):
            checked += 1
            try:
                parse(args)
            except ClickException as e:
                bad.append(f"{b.where}: ovdiff {shlex.join(args)}: {e.format_message()}")
    assert bad == []
    assert checked >= 60  # the manual shows some 70 command lines


def test_the_parser_refuses_what_the_command_line_refuses():
    """The check above can fail: an unknown command, option or value is an error, as it is for a user."""
    parse(["segment", "photos/", "--classes", "cat", "--out", "m", "--refine", "pamr"])
    parse(["protos", "--help"])
    for wrong in (
        ["segmnet", "photos/"],
        ["segment", "photos/", "--classes", "cat", "--no-such-option"],
        ["segment", "photos/", "--classes", "cat", "--batch-size", "many"],
        ["protos"],
    ):
        with pytest.raises(ClickException):
            parse(wrong)


def shown_values(code: str) -> list:
    """The values a Python block says it prints: `print(...)  # VALUE` where VALUE (or what follows its last
    colon) is a Python literal."""
    out = []
    for comment in re.findall(r"^\s*print\(.*\)\s+#\s*(.+)$", code, re.M):
        for text in (comment, comment.rsplit(": ", 1)[-1]):
            with contextlib.suppress(ValueError, SyntaxError):
                out.append(ast.literal_eval(text))
                break
    return out


def test_the_values_a_block_shows_are_read_from_its_comments():
    code = "print(r.present())  # ['car', 'sky']\nprint(x)  # classes with pixels: ['car']\nprint(y)  # a remark"
    assert shown_values(code) == [["car", "sky"], ["car"]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One folder for every page: the examples' caches (ovdiff-cache/, demo/) are reused, not rebuilt."""
    return tmp_path_factory.mktemp("manual")


RUNNABLE = [p for p in PAGES if any((b.lang == "python" and b.mark != "no-run") or b.mark == "run" for b in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_the_runnable_blocks_of_each_page_run_as_written(page, folder, monkeypatch):
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "__docs__"}
    runner = CliRunner()
    for b in blocks(page):
        if b.lang == "python" and b.mark != "no-run":
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                exec(compile(b.code, b.where, "exec"), namespace)
            for value in shown_values(b.code):
                assert repr(value) in printed.getvalue(), f"{b.where}: printed {printed.getvalue()!r}, not {value!r}"
        elif b.mark == "run":
            for args, shown in commands(b):
                r = runner.invoke(app, args)
                refused = bool(shown) and shown[0].startswith("error:")  # a transcript of a refusal: exit code 2
                assert r.exit_code == (2 if refused else 0), f"{b.where}: ovdiff {shlex.join(args)}: {r.output}"
                printed = " ".join(r.output.split())
                for line in shown:
                    assert " ".join(line.split()) in printed, (
                        f"{b.where}: ovdiff {shlex.join(args)} did not print {line!r}"
                    )


def test_the_api_reference_documents_every_public_name():
    """`import ovdiff`'s names each have a `:::` entry in docs/api.md (theirs, or their module's), wherever they move."""
    import ovdiff_cli

    targets = set(re.findall(r"^::: (\S+)", (ROOT / "docs/api.md").read_text(encoding="utf-8"), re.M))
    public = [n for n in ovdiff_cli.__all__ if not n.startswith("__")]
    missing = [
        n
        for n in public
        if {getattr(ovdiff_cli, n).__module__, f"{getattr(ovdiff_cli, n).__module__}.{n}"}.isdisjoint(targets)
    ]
    assert public and missing == []


def test_the_readme_is_a_short_front_page_whose_links_and_make_targets_exist():
    """The README stays a front page (what, the picture, the two commands, install, examples, the manual's map):
    its relative links reach files of the repository and every `make X` it shows is a target of the Makefile."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"\w+:", t)]
    assert "docs/demo.png" in links and [t for t in links if not (ROOT / t).exists()] == []
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    shown = set(re.findall(r"^make ([\w-]+)", text, re.M))
    assert {"demo", "test"} <= shown <= targets
    assert re.search(r"^test: .*\blint\b.*\bdocs\b", (ROOT / "Makefile").read_text(), re.M)  # as the README says


# Files of other projects that the manual cites: the authors' code (karazijal/sdov), CutLER's MaskCut, and the
# dataset preparation scripts of Mask2Former and CAT-Seg.
ELSEWHERE = {
    "maskcut.py",
    "utils/cutler.py",  # the authors' CutLER call
    "gen_vit_features.py",
    "predict.py",
    "datasets/prepare_ade20k_full_sem_seg.py",
    "datasets/prepare_pascal_context_459.py",
}


def test_every_module_the_manual_names_exists():
    """A module moved or renamed leaves no stale path behind: each `x.py` or `a/b/x.py` the manual shows is a file
    of the repository (a bare name anywhere, a path as a path's tail)."""
    files = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    named = {
        (page.name, name)
        for page in PAGES
        for name in re.findall(r"`([\w./]+\.py)\b", page.read_text(encoding="utf-8"))
        if name not in ELSEWHERE
    }
    stale = sorted((page, n) for page, n in named if not any(f == n or f.endswith("/" + n) for f in files))
    assert len(named) > 40 and stale == []


def test_the_site_builds_strictly_and_fetches_nothing():
    """`make docs` / `make test` build with --strict; nothing in the configuration downloads, at build time (Material's
    social cards, privacy plugin) or in the reader's browser (Google Fonts)."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    plugins = {next(iter(p)) if isinstance(p, dict) else p for p in config["plugins"]}
    assert config["strict"] is True and config["theme"]["font"] is False
    assert plugins <= {"search", "mkdocstrings"}
    assert re.search(r"^docs: .*\n\t.*mkdocs build --strict", (ROOT / "Makefile").read_text(), re.M)
