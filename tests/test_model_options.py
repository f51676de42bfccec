"""Model options that cannot apply to a run (a part its extractor lacks, a SAM 2 model without `--refine sam2`,
...) and missing local model paths are refused before any work, by the library and the CLI alike."""

from __future__ import annotations

import time

import pytest
from conftest import PROC
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app
from ovdiff_cli.errors import InvalidSetting

runner = CliRunner()


@pytest.mark.parametrize(
    ("kwargs", "setting", "says"),
    [
        (dict(models={"dinov2": "/tmp"}), "part_model", "extractor procedural has no dinov2 part"),
        (dict(models={"sam2": "/tmp"}), "sam2_model", "used only by sam2 refinement"),
        (dict(models={"sam": "/tmp"}), "sam_model", "used only by the sam mask proposer"),
        (
            dict(models={"dinov2": "/nonexistent/dir"}, protos={"extractor": "sd+dinov2"}),
            "part_model",
            "/nonexistent/dir: no such file or folder",
        ),
        (dict(models={"sd": "./no/such/sd"}), "sd_model", "./no/such/sd: no such file or folder"),
        (
            dict(models={"sam2": "/no/such/sam2"}, segment={"refine": "sam2"}),
            "sam2_model",
            "no such file or folder",
        ),
    ],
)
def test_the_library_refuses_a_model_no_stage_uses_or_a_missing_path_at_construction(kwargs, setting, says):
    with pytest.raises(InvalidSetting, match=says) as info:
        ovdiff.Pipeline("procedural" if "extractor" not in kwargs.get("protos", {}) else "tiny", **kwargs)
    assert info.value.setting == setting


def test_the_cli_refuses_them_in_one_line_before_any_work(tmp_path):
    (tmp_path / "imgs").mkdir()
    for args, line in [
        (["--part-model", f"dinov2={tmp_path}"], f"--part-model dinov2={tmp_path}: extractor procedural"),
        (["--sam2-model", str(tmp_path)], f"--sam2-model {tmp_path}: SAM 2 is used only by sam2 refinement"),
    ]:
        t0 = time.perf_counter()
        res = runner.invoke(app, ["segment", str(tmp_path / "imgs"), "--classes", "kite", "--out", "o", *args, *PROC])
        assert res.exit_code == 2 and res.output.startswith(f"error: {line}"), res.output
        assert len(res.output.strip().splitlines()) == 1 and time.perf_counter() - t0 < 5
    res = runner.invoke(
        app,
        ["protos", "add", "kite", "--preset", "tiny", "--extractor", "sd+dinov2+clip"]
        + ["--part-model", "dinov2=/nonexistent/dir", "--cache", str(tmp_path / "c")],
    )
    assert res.exit_code == 2 and "no such file or folder" in res.output and "hf download" not in res.output
    assert not (tmp_path / "c").exists()  # refused before the cache was opened
