"""The commands' help: flags show no `<bool>` type, help text flows to the terminal's width,
`serve --help` names only options serve takes, and `demo --help` gives its real duration."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app

runner = CliRunner()


def commands() -> dict[tuple[str, ...], object]:
    """Every command of the app by its path, e.g. ("protos", "list")."""
    found = {}

    def walk(command, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            found[path] = command

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = commands()


def help_of(path: tuple[str, ...]) -> str:
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_is_listed():
    assert {
        ("segment",),
        ("serve",),
        ("demo",),
        ("protos", "list"),
        ("cache", "verify"),
        ("models", "download"),
    } <= set(COMMANDS)


def test_no_flag_shows_a_bool_type():
    shown = {" ".join(path): help_of(path).count("<bool>") for path in COMMANDS}
    assert shown == dict.fromkeys(shown, 0)
    assert "--recursive" in help_of(("segment",))


def test_help_text_has_no_hard_line_breaks_inside_a_paragraph():
    for path, command in COMMANDS.items():
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph, (path, paragraph)
    text = help_of(("serve",))  # 200 columns: the first paragraph is one line
    assert "see the overlay and legend; click a pixel to see which prototype won it" in text


def test_serve_help_names_only_options_serve_takes():
    taken = {"--help"} | {
        o for p in COMMANDS[("serve",)].params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])
    }
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_of(("serve",))))
    assert mentioned - taken == set()
    assert {"--sd-model", "--sam2-model", "--part-model", "--filter-model", "--generator"} <= taken


def test_demo_help_gives_its_duration_in_minutes():
    text = help_of(("demo",))
    assert "a minute or two on a CPU" in text and "seconds on a CPU" not in text
