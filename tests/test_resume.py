"""Resumed and interrupted segment runs trust only complete outputs of the same legend and format, and a full disk
leaves only whole outputs, counted in the summary (procedural preset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import PROC
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app

runner = CliRunner()


def _segment(api_world, out: Path, *extra: str):
    root, _, _, images = api_world
    return runner.invoke(
        app,
        [
            "segment",
            str(images),
            "--classes",
            "kite,sky,grass",
            "--out",
            str(out),
            "--cache",
            str(root / "cache"),
            *PROC,
            *extra,
        ],
    )


def test_skip_existing_redoes_empty_truncated_and_foreign_masks(api_world, tmp_path):
    out = tmp_path / "m"
    res = _segment(api_world, out, "-q")
    assert res.exit_code == 0, res.output
    good = {p.name: p.read_bytes() for p in out.glob("im_*.png")}
    (out / "im_00.png").write_bytes(b"")  # 0 bytes
    (out / "im_01.png").write_bytes(good["im_01.png"][: len(good["im_01.png"]) // 2])  # truncated
    foreign = Image.fromarray(np.full((8, 8), 9, np.uint8), mode="P")
    foreign.putpalette([v % 256 for v in range(768)])
    foreign.save(out / "im_02.png")  # label 9: not a mask of this 3-class run
    res = _segment(api_world, out, "--skip-existing")
    assert res.exit_code == 0 and "1 of 4 image(s) already done" in res.output, res.output
    assert {p.name: p.read_bytes() for p in out.glob("im_*.png")} == good


def test_resuming_with_another_format_is_refused(api_world, tmp_path):
    out = tmp_path / "m"
    assert _segment(api_world, out, "-q").exit_code == 0
    legend = (out / "classes.json").read_bytes()
    res = _segment(api_world, out, "--skip-existing", "--format", "npz")
    assert res.exit_code == 2 and "--format" in res.output and "png" in res.output, res.output
    assert not list(out.glob("*.npz")) and (out / "classes.json").read_bytes() == legend
    res = _segment(api_world, out, "--format", "npz", "--overwrite", "-q")  # replacing the set is still possible
    assert res.exit_code == 0 and len(list(out.glob("*.npz"))) == 4 and not list(out.glob("im_*.png")), res.output
    assert json.loads((out / "classes.json").read_text())["mask_format"] == "npz"
    res = _segment(api_world, out, "--skip-existing", "--format", "npz")
    assert res.exit_code == 0 and "4 of 4 image(s) already done" in res.output, res.output


def test_a_full_disk_leaves_only_whole_outputs_and_the_summary_counts_them(api_world, tmp_path):
    from conftest import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "small", "size=160k") as small:
        out = small / "m"
        res = _segment(api_world, out, "--overlay", "--explain", "--json")
        doc = json.loads(res.stdout)
        written = sorted(p.stem for p in out.glob("im_*.png"))
        stray = [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
        assert not stray, stray
        assert doc["written"] == len(written) and doc["failed"] == 4 - len(written), (doc, written)
        assert doc["failed"] > 0, "the disk did not fill: make the tmpfs smaller"
        for name in written:  # each written image has every output, whole
            assert (out / "overlays" / f"{name}.jpg").is_file() and (out / "explain" / f"{name}.json").is_file()
            Image.open(out / "overlays" / f"{name}.jpg").load()
        failed = {Path(f["input"]).stem for f in doc["failures"]}
        leftovers = {p.name.split(".")[0] for p in out.rglob("im_*") if p.is_file()}
        assert not (leftovers & failed), leftovers & failed
