"""Hostile inputs: each is one clear error line and a non-zero exit when the whole job cannot
go on, never a traceback; bad images among good ones are skipped, listed, and the rest written.

Already covered elsewhere, not repeated here: an --out that is a file and a missing input
(test_segment.test_user_errors_exit_2_before_any_work), loading modes / EXIF / GIF frames / the size
guard in-process (test_segment.test_load_image_modes_exif_animation_and_size_guard), a missing split
file with --pred (test_cli_eval), reader-level layout errors (test_datasets), cache-level schema
mismatch (test_foundation).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import PROC, mounted_tmpfs
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.io.images import load_image
from ovdiff_cli.procedural import render_scene, write_voc
from ovdiff_cli.store import cache as cache_mod
from ovdiff_cli.store.cache import SCHEMA_KEY, Cache

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def one_error_line(res, *needles: str) -> str:
    """The run stopped with exit 2 and exactly one line of output, an error naming `needles`."""
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The machines are small and shared: oversubscribed torch threads crawl."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    Image.fromarray(render_scene(np.random.default_rng(0))[0]).save(path)
    return path


# --------------------------------------------------------------------------- class names


LONG = "x" * 10_000
BAD_LISTS = [
    ("", "--classes is empty"),
    ("kite,kite", "given twice"),
    ("kite, Kite ,kite", "classes 'kite' and 'Kite' differ only in case: give one of them"),
    ("kite , kite", "given twice"),
    ("kite, ,sky", "blank"),
    ("kite,\u3000", "blank"),
    (LONG, "10000 characters is too long"),
    ("ki\x1bte", "control characters"),
    ("kite,line\nbreak", "control characters"),
    ("kite\u202esky", "control characters"),  # right-to-left override
    ("[/x],[/x]", "'[/x]' is given twice"),  # rich markup in a name must not break the error printer
]


@pytest.mark.parametrize(("spec", "message"), BAD_LISTS, ids=range(len(BAD_LISTS)))
def test_bad_class_lists_stop_segment_before_any_work(spec, message, image, tmp_path):
    res = runner.invoke(
        app,
        [
            "segment",
            str(image),
            "--classes",
            spec,
            "--out",
            str(tmp_path / "out"),
            "--cache",
            str(tmp_path / "cache"),
            *PROC,
        ],
    )
    line = one_error_line(res, message)
    assert len(line) < 300  # a 10,000-character name is not echoed whole
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([""], "blank"),
        (["  "], "blank"),
        (["kite", "kite"], "given twice"),
        ([LONG], "too long"),
        (["a\tb"], "control characters"),
        (["cat\x00"], "control characters"),
        ([], "no class names given"),
    ],
    ids=["empty", "spaces", "duplicate", "long", "tab", "nul", "none"],
)
def test_bad_class_names_stop_protos_add_and_sample(names, message, tmp_path):
    for cmd in (["protos", "add"], ["sample"]):
        res = runner.invoke(app, [*cmd, *names, "--cache", str(tmp_path / "cache"), *PROC])
        one_error_line(res, message)
    assert not (tmp_path / "cache").exists()


def test_names_that_look_like_markup_are_built_and_listed_verbatim(tmp_path):
    common = ["--cache", str(tmp_path / "cache"), *PROC]
    res = runner.invoke(app, ["protos", "add", "[/x]", "[b]bold", *common])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "[/x]" in res.output and "[b]bold" in res.output
    res = runner.invoke(app, ["protos", "list", "-v", "--cache", str(tmp_path / "cache")], env={"COLUMNS": "250"})
    assert res.exit_code == 0 and "[/x]" in res.output and "[b]bold" in res.output, res.output


# --------------------------------------------------------------------------- options and environment


def test_unknown_preset_or_extractor_is_one_line_naming_the_choices(image, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    out = ["--out", str(tmp_path / "out")]
    for args in (
        ["segment", str(image), "--classes", "kite", *out],
        ["protos", "add", "kite"],
        ["sample", "kite"],
        ["eval", "voc", "--root", str(tmp_path)],
    ):
        one_error_line(runner.invoke(app, [*args, *cache, "--preset", "bogus"]), "unknown preset 'bogus'", "procedural")
    for args in (["segment", str(image), "--classes", "kite", *out], ["protos", "add", "kite"]):
        res = runner.invoke(app, [*args, *cache, "--preset", "tiny", "--extractor", "sd+vgg"])
        one_error_line(res, "unknown extractor part 'vgg'", "sd+dino+clip")
    one_error_line(runner.invoke(app, ["protos", "add", "kite", *cache, *PROC, "--n-images", "0"]), "--n-images")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_cache_of_a_newer_schema_is_refused_and_left_alone(image, tmp_path):
    cache_dir = tmp_path / "cache"
    Cache(cache_dir).write(
        {SCHEMA_KEY: json.dumps({"version": 99, "created_at": "2099-01-01T00:00:00+00:00"}).encode()}
    )
    cache = ["--cache", str(cache_dir)]
    for args in (
        ["protos", "add", "kite", *PROC],
        ["segment", str(image), "--classes", "kite", "--out", str(tmp_path / "o"), *PROC],
        ["protos", "list"],
        ["cache", "verify"],
        ["cache", "info"],
    ):
        one_error_line(runner.invoke(app, [*args, *cache]), "schema version 99", "upgrade ovdiff")
    cache_mod.close_cache(cache_dir)
    env = lmdb.open(str(cache_dir / cache_mod.ENV_DIRNAME), readonly=True, lock=False)  # raw read, no version check
    try:
        with env.begin() as txn:
            assert [bytes(k) for k, _ in txn.cursor()] == [SCHEMA_KEY]
            assert json.loads(txn.get(SCHEMA_KEY))["version"] == 99
    finally:
        env.close()


def test_dataset_root_without_splits_stops_before_building_prototypes(tmp_path):
    root = tmp_path / "data"
    write_voc(root, 2, seed=1)
    shutil.rmtree(root / "VOC2012" / "ImageSets")
    res = runner.invoke(app, ["eval", "voc", "--root", str(root), "--cache", str(tmp_path / "cache"), *PROC])
    one_error_line(res, "ImageSets/Segmentation/val.txt", "not found")
    assert not (tmp_path / "cache").exists()


def test_folder_with_no_images_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    res = runner.invoke(
        app,
        [
            "segment",
            str(tmp_path / "empty"),
            "--classes",
            "kite",
            "--out",
            str(tmp_path / "o"),
            "--cache",
            str(tmp_path / "cache"),
            *PROC,
        ],
    )
    one_error_line(res, "no images found", "--recursive")
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs: root writes anywhere else, so this is how an unwritable folder looks to root."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as mnt:
        yield mnt


def test_unwritable_output_folder_is_one_line_before_any_work(read_only_dir, image, tmp_path):
    for out, message in ((read_only_dir, "is not writable"), (read_only_dir / "masks", "cannot be created")):
        res = runner.invoke(
            app,
            ["segment", str(image), "--classes", "kite", "--out", str(out), "--cache", str(tmp_path / "cache"), *PROC],
        )
        one_error_line(res, message, str(read_only_dir))
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- hostile images


def huge_png(path: Path, width: int = 10_000, height: int = 10_000) -> None:
    """A constant-colour RGB PNG written row by row: 300 MB of pixels in a 0.3 MB file, cheaply."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((30, 120, 200)) * width
    z = zlib.compressobj(6)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def run_measured(args: list[str], cwd: Path) -> tuple[int, str, str, int]:
    """`ovdiff ARGS` in a subprocess → (exit code, stdout, stderr, peak resident memory in bytes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVDIFF_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="250")
    out, err = open(cwd / "stdout.txt", "w+"), open(cwd / "stderr.txt", "w+")  # noqa: SIM115
    with out, err:
        proc = subprocess.Popen([sys.executable, "-m", "ovdiff_cli", *args], stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss * 1024


def test_bad_images_are_skipped_and_listed_the_rest_written(tmp_path):
    import cv2

    src = tmp_path / "in"
    src.mkdir()
    scene = render_scene(np.random.default_rng(0))[0]
    Image.fromarray(scene).save(src / "good.png")
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="JPEG", quality=90)
    (src / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (src / "zero.png").write_bytes(b"")
    (src / "text.png").write_text("this is a text file, not a picture\n")
    Image.fromarray(scene[40:41, 50:51]).save(src / "one.png")
    Image.fromarray(scene).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    assert cv2.imwrite(str(src / "rgb16.png"), (scene.astype(np.uint16) * 257)[..., ::-1])
    Image.fromarray(scene[..., 1].astype(np.uint16) * 257).save(src / "gray16.png")
    frames = [Image.fromarray(scene), Image.fromarray(255 - scene)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    # the loader reads the odd formats as a viewer shows them
    assert np.array_equal(load_image(src / "rgb16.png"), scene)
    assert np.abs(load_image(src / "cmyk.jpg").astype(int) - scene).mean() < 8
    assert load_image(src / "one.png").shape == (1, 1, 3)

    out = tmp_path / "masks"
    rc, stdout, stderr, rss_small = run_measured(
        [
            "segment",
            str(src),
            "--classes",
            "kite,sky,grass",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            *PROC,
        ],
        tmp_path,
    )
    assert rc == 1, stdout + stderr
    assert "Traceback" not in stderr
    written = {"good", "cmyk", "rgb16", "gray16", "anim"}  # a 1×1 picture is too small to segment (issue 37)
    assert {p.stem for p in out.glob("*.png")} == written
    for name in written:
        suffix = {"cmyk": ".jpg", "anim": ".gif"}.get(name, ".png")
        with Image.open(src / f"{name}{suffix}") as im, Image.open(out / f"{name}.png") as m:
            assert m.size == im.size and m.mode == "P", name
    assert np.array_equal(np.asarray(Image.open(out / "rgb16.png")), np.asarray(Image.open(out / "good.png")))
    failed = ["text.png", "truncated.jpg", "zero.png", "one.png"]
    for name in failed:
        assert any(line.startswith("skipped") and name in line for line in stderr.splitlines()), (name, stderr)
    summary = [line for line in stderr.splitlines() if "image(s) failed" in line]
    assert len(summary) == 1 and summary[0].startswith("4 of 9 image(s) failed"), stderr
    assert any("one.png" in line and "1x1 is too small to segment" in line for line in stderr.splitlines()), stderr
    assert all(name in summary[0] for name in failed)

    # 10000×10000 (300 MB of pixels) is refused from its header, as imageio documents, without decoding:
    # the process needs no more memory than the run above over small images.
    huge = tmp_path / "huge"
    huge.mkdir()
    huge_png(huge / "huge.png")
    Image.fromarray(scene).save(huge / "fine.png")
    rc, stdout, stderr, rss_huge = run_measured(
        [
            "segment",
            str(huge),
            "--classes",
            "kite,sky,grass",
            "--out",
            str(tmp_path / "m2"),
            "--cache",
            str(tmp_path / "cache"),
            "--no-build",
            *PROC,
        ],
        tmp_path,
    )
    assert rc == 1 and "Traceback" not in stderr, stdout + stderr
    assert "huge.png: 10000x10000 is 100 megapixels, above the limit" in stderr and "downscale" in stderr
    assert "1 of 2 image(s) failed (" in stderr and (tmp_path / "m2" / "fine.png").is_file()
    assert rss_huge < rss_small + (150 << 20), (rss_small >> 20, rss_huge >> 20)
