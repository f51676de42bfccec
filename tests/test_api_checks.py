"""The Python API keeps the CLI's rules: names, images, overlays, scene sizes, Pipeline's arguments and
vocabulary kinds are refused with typed errors (procedural preset, offline)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.errors import InvalidSetting, OvdiffError
from ovdiff_cli.io.images import MAX_PIXELS, ImageError

runner = CliRunner()


@pytest.mark.parametrize("names", [["kite", None], [123], ["kite", "kite "], "kite", None, 5, []])
def test_vocabulary_names_follow_the_cli_rules(api_world, names):
    _, pipe, _, _ = api_world
    with pytest.raises(OvdiffError) as e:
        pipe.vocabulary(names, build=False)
    assert "\n" not in str(e.value)


def test_segment_refuses_a_missing_vocabulary_empty_and_oversized_images(api_world):
    _, pipe, vocab, _ = api_world
    scene = ovdiff.procedural_scene(seed=1)
    with pytest.raises(OvdiffError, match="Vocabulary"):
        pipe.segment(scene, None)
    with pytest.raises(OvdiffError, match="Vocabulary"):
        pipe.encode(scene).match("kite")
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint8), Image.new("RGB", (0, 0))):
        with pytest.raises(ImageError, match="empty"):
            pipe.segment(empty, vocab)
    side = int(MAX_PIXELS**0.5) + 1  # a view of one row: the check must refuse before any pixel is touched
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (side, side, 3), (0, 0, 1))
    with pytest.raises(ImageError, match="megapixels"):
        pipe.segment(huge, vocab)


def test_overlay_alpha_and_save_to_a_read_only_folder_are_typed_errors(api_world, tmp_path):
    _, pipe, vocab, _ = api_world
    result = pipe.segment(ovdiff.procedural_scene(seed=1), vocab)
    for alpha in (5, -0.1, float("nan"), "half"):
        with pytest.raises(InvalidSetting, match="alpha"):
            result.overlay(alpha=alpha)
    assert result.overlay(alpha=1.0).size[1] >= result.labels.shape[0]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: a path under a file cannot be written by anyone
            target = tmp_path / "a-file" / "mask.png"
            (tmp_path / "a-file").write_text("x")
        else:
            target = locked / "mask.png"
        with pytest.raises(OvdiffError, match="cannot write"):
            result.save(target)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    "kwargs", [{"size": (0, 0)}, {"size": (5, 100000)}, {"size": 7}, {"seed": -5}, {"seed": "a"}, {"size": (64.5, "x")}]
)
def test_procedural_scene_checks_its_arguments(kwargs):
    with pytest.raises(InvalidSetting):
        ovdiff.procedural_scene(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"cache": 123}, {"models": ["sd"]}, {"models": {"sd": 5}}, {"sample": 5}, {"segment": ["eta"]}, {"protos": "sd"}],
)
def test_pipeline_arguments_of_the_wrong_type_are_typed_errors(kwargs, tmp_path):
    with pytest.raises(InvalidSetting):
        ovdiff.Pipeline(**{"preset": "procedural", "cache": tmp_path / "c", **kwargs})


def test_vocabulary_kinds_must_be_a_table(api_world):
    _, pipe, _, _ = api_world
    with pytest.raises(InvalidSetting, match="kinds"):
        pipe.vocabulary(["kite"], kinds=["stuff"])
