"""No command writes inside the cache it reads, and no output is written over an input (procedural preset)."""

from __future__ import annotations

import json

from conftest import PROC, copy_of_api_cache
from PIL import Image
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app
from ovdiff_cli.store.cache import ENV_DIRNAME, close_cache

runner = CliRunner()


def test_no_command_writes_inside_the_cache_it_reads(api_world, tmp_path):
    cache = copy_of_api_cache(api_world, tmp_path)
    _, _, _, images = api_world
    data = cache / ENV_DIRNAME / "data.mdb"
    before = data.read_bytes()
    common = ["--cache", str(cache)]
    for args in (
        ["protos", "export", str(data), "kite"],
        ["protos", "export", str(cache / "v.safetensors")],
        ["protos", "show", "kite", "--out", str(data)],
        ["segment", str(images), "--classes", "kite", "--out", str(cache / ENV_DIRNAME), "--no-build", *PROC],
    ):
        res = runner.invoke(app, [*args, *common])
        assert res.exit_code == 2 and "inside the cache" in res.output, (args, res.output)
    close_cache(cache)
    assert data.read_bytes() == before
    res = runner.invoke(app, ["protos", "list", *common, "--json"])
    assert res.exit_code == 0 and {c["class"] for c in json.loads(res.stdout)} == {"kite", "sky", "grass"}


def test_segment_never_writes_an_overlay_over_an_input(api_world, tmp_path):
    out = tmp_path / "m"
    (out / "overlays").mkdir(parents=True)
    shot = out / "overlays" / "im_00.jpg"
    Image.fromarray(ovdiff.procedural_scene(seed=3)).save(shot)
    before = shot.read_bytes()
    res = runner.invoke(
        app,
        [
            "segment",
            str(out / "overlays"),
            "--classes",
            "kite",
            "--out",
            str(out),
            "--overlay",
            "--cache",
            str(api_world[0] / "cache"),
            *PROC,
        ],
    )
    assert res.exit_code == 2 and "would overwrite the input" in res.output, res.output
    assert shot.read_bytes() == before
