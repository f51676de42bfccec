"""Every numeric CLI option at its boundaries: generated from the commands' own declarations.

The test walks the Typer app, finds every option declared `int` or `float` (and the comma lists of
numbers, --windows and --seeds), and for each tries the values just outside its stated range
(`limits.RANGES`), a huge one, NaN/±inf and a wrong type. Each must stop before any work: exit 2,
one line naming the option, no traceback, nothing created. A numeric option added without a stated
range fails `test_every_numeric_option_has_a_stated_range`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from test_evaluate import fake_voc
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.cli.options import flag
from ovdiff_cli.limits import RANGES

NUMBER_LISTS = {"--windows": int, "--seeds": int}  # str options that hold comma-separated numbers


def stated_range(opt: str) -> tuple[float, float] | None:
    """The range `limits.RANGES` states for the setting behind option `opt` (None when it states none)."""
    ranges = {RANGES[s] for s in RANGES if flag(s) == opt}
    assert len(ranges) <= 1, (opt, ranges)  # settings that share an option share its range
    return ranges.pop() if ranges else None


DECLARED: dict[tuple[str, ...], set[str]] = {}  # every option each command declares


def numeric_options() -> list[tuple[tuple[str, ...], str, type]]:
    """(command path, option, int or float) for every numeric option of every command."""
    found = []

    def walk(command, path: tuple[str, ...]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
            return
        DECLARED[path] = {o for param in command.params for o in getattr(param, "opts", [])}
        for param in command.params:
            if param.param_type_name != "option" or param.is_flag:
                continue
            annotation = param.type_descriptor.annotation
            opt = next(o for o in param.opts if o.startswith("--"))
            if annotation in (int, float):
                found.append((path, opt, annotation))
            elif opt in NUMBER_LISTS:
                found.append((path, opt, NUMBER_LISTS[opt]))

    walk(typer.main.get_command(app), ())
    return found


OPTIONS = numeric_options()


def bad_values(opt: str, kind: type) -> list[str]:
    lo, hi = stated_range(opt)
    values = [
        repr(lo - 1) if kind is float else str(lo - 1),
        repr(hi + 1) if kind is float else str(hi + 1),
        "1e30" if kind is float else str(10**30),
        "abc",
    ]
    if kind is float:
        values += ["nan", "inf", "-inf"]
    else:
        values += ["1.5"]
    if opt in NUMBER_LISTS:
        values += [f"{lo},abc"]
    return values


CASES = [(path, opt, value) for path, opt, kind in OPTIONS if stated_range(opt) for value in bad_values(opt, kind)]


def test_every_numeric_option_has_a_stated_range():
    assert len(OPTIONS) > 30  # the walk found the commands' options
    missing = sorted({opt for _, opt, _ in OPTIONS if stated_range(opt) is None})
    assert not missing, f"numeric options without a stated range in limits.RANGES: {missing}"
    assert all(lo < hi and not (isinstance(lo, float) and math.isnan(lo)) for lo, hi in RANGES.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image, a VOC tree with perfect masks beside it, and paths that must stay absent."""
    base = tmp_path_factory.mktemp("world")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(base / "image.png")
    root, labels = fake_voc(base, n_images=1)
    (base / "pred").mkdir()
    for i, lab in labels.items():
        Image.fromarray(lab).save(base / "pred" / f"{i}.png")
    return base, root


def base_args(path: tuple[str, ...], opt: str, base: Path, root: Path, fresh: Path) -> list[str]:
    """The least each command needs besides the option under test (its required arguments); outputs
    and the cache go under `fresh`, which must stay empty."""
    out = str(fresh / "absent-out")
    required = {
        ("sample",): ["kite"],
        ("eval",): [
            "voc",
            "--root",
            str(root),
            *(["--pred", str(base / "pred")] if opt in ("--offset", "--limit") else []),
        ],
        ("segment",): [str(base / "image.png"), "--classes", "kite", "--out", out],
        ("demo",): ["--out", out],
        ("bench",): ["--out", str(fresh / "absent-out" / "r.json"), "--quick"],
        ("protos", "add"): ["kite"],
        ("protos", "rm"): ["kite"],
        ("protos", "show"): ["kite", "--out", str(fresh / "absent-out" / "s.png")],
        ("protos", "export"): [str(fresh / "absent-out" / "v.safetensors")],
        ("protos", "import"): [str(fresh / "absent-out" / "v.safetensors")],
    }
    extra = [
        *(["--preset", "procedural"] if "--preset" in DECLARED[path] and path != ("demo",) else []),
        *(["--device", "cpu"] if "--device" in DECLARED[path] else []),
    ]
    return [*path, *required.get(path, []), "--cache", str(fresh / "absent-cache"), *extra]


@pytest.mark.parametrize(("path", "opt", "value"), CASES, ids=[f"{' '.join(p)} {o} {v}" for p, o, v in CASES])
def test_an_option_outside_its_range_is_one_line_before_any_work(path, opt, value, world, tmp_path):
    base, root = world
    res = CliRunner().invoke(app, [*base_args(path, opt, base, root, tmp_path), f"{opt}={value}"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and opt in lines[0], res.output
    assert "Traceback" not in res.output
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # no cache, no output folder
