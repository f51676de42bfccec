"""Engine-agnostic resumability of `ovdiff segment` (--shard, --skip-existing) and the engine options' errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROC
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.engines.raycluster import check_engine
from ovdiff_cli.engines.resume import parse_shard, pending, shard
from ovdiff_cli.errors import OvdiffError
from ovdiff_cli.io.images import InputImage
from ovdiff_cli.procedural import write_voc

runner = CliRunner()


def test_shard_assigns_the_i_th_sorted_path_to_shard_i_mod_n_and_keeps_input_order():
    items = [InputImage(Path(f"/in/{n}.jpg"), n) for n in "dbeac"]
    assert [i.name for i in shard(items, 0, 2)] == ["e", "a", "c"]  # sorted a c e → ranks 0 2 4
    assert [i.name for i in shard(items, 1, 2)] == ["d", "b"]
    assert [i.name for i in shard(items, 2, 3)] == ["c"]
    assert [i.name for i in shard(items, 0, 1)] == list("dbeac")


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
def test_bad_shard_is_one_clear_error(spec):
    with pytest.raises(OvdiffError, match="shard"):
        parse_shard(spec)


def test_pending_needs_every_output_the_job_would_write(tmp_path):
    item = InputImage(tmp_path / "a.jpg", "sub/a")
    (tmp_path / "out/sub").mkdir(parents=True)
    assert pending([item], tmp_path / "out") == [item]
    (tmp_path / "out/sub/a.png").write_bytes(b"x")  # present but not a mask (issue 24): redone
    assert pending([item], tmp_path / "out") == [item]
    from ovdiff_cli.io.masks import save_png_mask

    save_png_mask(np.zeros((4, 4), np.int32), tmp_path / "out/sub/a.png", 3)
    assert pending([item], tmp_path / "out", num_classes=3) == []
    assert pending([item], tmp_path / "out", overlay=True) == [item]  # no overlays/sub/a.jpg yet


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_voc(root / "data", 4, seed=5)
    return root


def segment(world: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        [
            "segment",
            str(world / "data/VOC2012/JPEGImages"),
            "--classes-file",
            str(world / "data/classes.txt"),
            "--cache",
            str(world / "cache"),
            "--out",
            str(out),
            "-q",
            *PROC,
            *extra,
        ],
    )


def test_two_shards_equal_one_run_and_skip_existing_redoes_nothing(world, tmp_path, monkeypatch):
    assert segment(world, tmp_path / "one").exit_code == 0
    masks = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert len(masks) == 4

    split = tmp_path / "split"
    res = segment(world, split, "--shard", "0/2")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in split.glob("*.png")) == masks[0::2]
    assert segment(world, split, "--shard", "1/2").exit_code == 0

    def outputs(folder: Path) -> list[Path]:  # what a run writes; its lock files are no output
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".ovdiff-segment.lock"))

    assert [p.name for p in outputs(split)] == [p.name for p in outputs(tmp_path / "one")]
    for p in outputs(tmp_path / "one"):
        assert (split / p.name).read_bytes() == p.read_bytes(), p.name

    # resuming: only the missing mask is segmented again
    (split / masks[1]).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in split.glob("*.png")}
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter

    calls, original = [], Segmenter.predict_many

    def counted(self, images, *args):
        calls.append(len(images))
        return original(self, images, *args)

    monkeypatch.setattr(Segmenter, "predict_many", counted)
    res = segment(world, split, "--skip-existing")
    assert res.exit_code == 0, res.output
    assert calls == [1]
    assert {p.name: p.stat().st_mtime_ns for p in split.glob("*.png") if p.name != masks[1]} == before
    assert (split / masks[1]).read_bytes() == (tmp_path / "one" / masks[1]).read_bytes()
    assert segment(world, split, "--skip-existing").exit_code == 0
    assert calls == [1]  # everything done: nothing segmented


def test_skip_existing_json_counts_the_images_it_skipped(world, tmp_path):
    """Issue 37: a resumed run's --json says how many images were already done, not only "images": 0."""
    import json

    assert segment(world, tmp_path / "out").exit_code == 0
    res = segment(world, tmp_path / "out", "--skip-existing", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["images"], doc["skipped"], doc["written"]) == (0, 4, 0)


def test_engine_options_are_checked_before_any_work(monkeypatch, tmp_path):
    with pytest.raises(OvdiffError, match="engine 'spark' is unknown"):
        check_engine("spark")
    with pytest.raises(OvdiffError, match="workers applies to the ray engine only"):
        check_engine("local", workers=2)
    res = runner.invoke(
        app, ["segment", str(tmp_path), "--classes", "cat", "--out", str(tmp_path / "o"), "--shard", "2/2", *PROC]
    )
    assert res.exit_code == 2 and "--shard '2/2'" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    res = runner.invoke(app, ["protos", "add", "cat", "--engine", "ray", "--cache", str(tmp_path), *PROC])
    assert res.exit_code == 2
    assert "pip install 'ovdiff[ray]'" in res.output


def test_an_unreachable_address_is_one_error_at_once():
    import socket

    from ovdiff_cli.engines.raycluster import check_reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(OvdiffError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")  # closed now: refused
