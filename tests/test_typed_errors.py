"""Raw exceptions become one typed error: a binary split file, the API's bad arguments at the call, PAMR on a
read-only picture; the API segments the bytes of an image file."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROC
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app

runner = CliRunner()


def test_eval_of_a_split_file_of_binary_bytes_is_one_line(tmp_path):
    from ovdiff_cli.procedural import write_voc

    write_voc(tmp_path / "data", 1, seed=2)
    (tmp_path / "data/VOC2012/ImageSets/Segmentation/val.txt").write_bytes(bytes(range(256)))
    res = runner.invoke(app, ["eval", "voc", "--root", str(tmp_path / "data"), *PROC])
    assert res.exit_code == 2 and res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.output.startswith("error: voc: split file") and "is not text" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def test_pamr_refinement_of_a_read_only_picture_warns_nothing():
    """PyTorch warns once per process about a read-only array: a fresh interpreter sees the first time."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from ovdiff_cli.method.beyond.refine import image_at, vote_regions\n"
        "a = np.zeros((8, 8, 3), np.uint8); a.setflags(write=False)\n"
        "r = np.ones((8, 8), bool); r.setflags(write=False)\n"
        "vote_regions(torch.rand(2, 8, 8), [r]); image_at(a, (8, 8), torch.device('cpu'))\n"
    )
    res = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr, res.stderr[-800:]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = ovdiff.Pipeline("procedural", cache=tmp_path_factory.mktemp("api") / "c", device="cpu", dtype="fp32")
    p.vocabulary(["kite", "sky"])
    return p


def test_the_api_refuses_bad_arguments_at_the_call_with_one_typed_error(pipe, tmp_path):
    import torch

    from ovdiff_cli.errors import OvdiffError

    scene = ovdiff.procedural_scene(0)
    calls = [
        (lambda: pipe.segment(scene, [["kite"]]), "classes"),
        (lambda: pipe.segment(scene, {"kite": 1}), "order would be arbitrary"),
        (lambda: pipe.segment(scene, {"kite"}), "order would be arbitrary"),
        (lambda: pipe.segment_folder(None, tmp_path / "o", ["kite"]), "inputs"),
        (lambda: pipe.segment_folder(tmp_path, None, ["kite"]), "out takes the folder"),
        (lambda: pipe.evaluate("voc", tmp_path, seeds=5), "seeds takes a list of seeds"),
        (lambda: pipe.evaluate("voc", None), "root takes the dataset's folder"),
        (lambda: pipe.segment(torch.zeros(3, 32, 32), ["kite"]), "torch Tensor"),
        (lambda: pipe.segment(b"not a picture", ["kite"]), "not a picture Pillow can read"),
        (lambda: pipe.segment(np.zeros((1, 1, 3), np.uint8), ["kite"]), "1x1 is too small"),
        (lambda: pipe.segment(scene, ["kite"]).to_coco(image_id="abc"), "image_id takes a whole number"),
    ]
    for call, says in calls:
        with pytest.raises(OvdiffError, match=says):
            call()  # raised at the call: no lazy generator that fails when iterated


def test_the_api_segments_the_bytes_of_an_image_file(pipe):
    import io

    from PIL import Image

    scene = ovdiff.procedural_scene(0)
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="PNG")
    a, b = pipe.segment(buf.getvalue(), ["kite", "sky"]), pipe.segment(scene, ["kite", "sky"])
    assert (a.labels == b.labels).all()
