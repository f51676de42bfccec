"""CLI data safety and honest words: eval --pred reads the masks' legend, segment never
overwrites an input nor mixes two legends, destinations are checked before work, every size and
threshold has a stated range, and the odd inputs (a BOM, a missing local folder, a long name, a
non-UTF-8 file name, Ctrl-C, a pipe) get one clear line."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import PROC, mounted_tmpfs
from PIL import Image
from test_evaluate import fake_voc
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.eval.datasets import class_names
from ovdiff_cli.io.palette import voc_palette
from ovdiff_cli.procedural import render_scene

runner = CliRunner()


def one_error(res, *needles: str) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Procedural prototypes of kite, boat, sky, grass."""
    cache_dir = tmp_path_factory.mktemp("c") / "cache"
    res = runner.invoke(app, ["protos", "add", "kite", "boat", "sky", "grass", "--cache", str(cache_dir), *PROC, "-q"])
    assert res.exit_code == 0, res.output
    return cache_dir


def scenes(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(render_scene(np.random.default_rng(i))[0]).save(folder / f"scene{i}.png")
    return folder


# --------------------------------------------------------------------------- eval --pred and the legend


def _masks(pred: Path, labels: dict[str, np.ndarray], order: list[str], spelled: list[str]) -> None:
    """Masks as `ovdiff segment --classes <order>` writes them for perfect predictions, with its legend."""
    from ovdiff_cli.io.legend import save_legend

    pred.mkdir()
    voc = class_names("voc")
    value = np.full(256, 255, np.uint8)
    value[0] = 0
    for j, name in enumerate(voc[1:], start=1):
        value[j] = order.index(name) + 1
    for i, lab in labels.items():
        im = Image.fromarray(value[lab], mode="P")
        im.putpalette(voc_palette().ravel().tolist())
        im.save(pred / f"{i}.png")
    save_legend(spelled, True, pred)


def test_eval_pred_maps_the_legend_beside_the_masks_onto_the_dataset_classes(tmp_path):
    root, labels = fake_voc(tmp_path, n_images=3)
    order = list(reversed(class_names("voc")[1:]))  # dog is not value 12 here
    spelled = [{"potted plant": "Pottedplant"}.get(n, n) for n in order]  # VOC's raw spelling, any case
    pred = tmp_path / "pred"
    _masks(pred, labels, order, spelled)
    res = runner.invoke(
        app, ["eval", "voc", "--root", str(root), "--pred", str(pred), "--out", str(tmp_path / "r"), "-q"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["miou"] == pytest.approx(1.0)

    one_error(
        runner.invoke(app, ["eval", "voc", "--root", str(root), "--pred", str(pred), "--offset", "1"]),
        "--offset and the legend",
        "leave the offset out",
    )
    legend = json.loads((pred / "classes.json").read_text())
    legend["labels"][3]["name"] = "sky"
    (pred / "classes.json").write_text(json.dumps(legend))
    one_error(
        runner.invoke(app, ["eval", "voc", "--root", str(root), "--pred", str(pred)]),
        "'sky'",
        "not among the 21 classes of voc",
    )


def test_eval_offset_and_label_size_are_checked(tmp_path):
    root, labels = fake_voc(tmp_path, n_images=1)
    pred = tmp_path / "pred"
    pred.mkdir()
    ((i, lab),) = labels.items()
    Image.fromarray(lab).save(pred / f"{i}.png")
    one_error(
        runner.invoke(app, ["eval", "voc", "--root", str(root), "--pred", str(pred), "--offset", "300"]),
        "--offset",
        "0..254",
    )
    Image.fromarray(lab[:-2]).save(root / "SegmentationClass" / f"{i}.png")  # the label is off, not the prediction
    one_error(
        runner.invoke(app, ["eval", "voc", "--root", str(root), "--pred", str(pred)]),
        "ground-truth label",
        "does not fit its image",
    )


def test_eval_out_is_checked_before_work_and_a_failing_final_write_keeps_the_results(tmp_path, monkeypatch):
    root, labels = fake_voc(tmp_path, n_images=2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, lab in labels.items():
        Image.fromarray(lab).save(pred / f"{i}.png")
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        one_error(
            runner.invoke(app, ["eval", "voc", "--root", str(root), "--pred", str(pred), "--out", str(ro / "r")]),
            "--out folder",
            "cannot be created",
        )
    from ovdiff_cli.eval import report

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", full_disk)
    line = one_error(
        runner.invoke(
            app, ["eval", "voc", "--root", str(root), "--pred", str(pred), "--out", str(tmp_path / "r"), "-q"]
        ),
        "No space left on device",
        "the results are kept in",
    )
    kept = Path(line.rsplit("kept in ", 1)[1].strip())
    assert json.loads(kept.read_text())[0]["miou"] == pytest.approx(1.0)
    kept.unlink()


# --------------------------------------------------------------------------- segment's output folder


def test_segment_never_overwrites_an_input_nor_mixes_legends(cache, tmp_path):
    images = scenes(tmp_path / "photos")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    common = ["--cache", str(cache), "--no-build", *PROC]
    one_error(
        runner.invoke(app, ["segment", str(images), "--classes", "kite,sky", "--out", str(images), *common]),
        "would overwrite the input",
    )
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before

    out = tmp_path / "masks"
    assert (
        runner.invoke(
            app, ["segment", str(images), "--classes", "kite,sky", "--out", str(out), "--overlay", *common]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(app, ["segment", str(images), "--classes", "kite,sky", "--out", str(out), *common]).exit_code == 0
    )  # same legend: fine
    (out / "notes.txt").write_text("mine")
    one_error(
        runner.invoke(app, ["segment", str(images), "--classes", "boat,grass", "--out", str(out), *common]),
        "holds masks of other classes (background, kite, sky)",
        "--overwrite",
    )
    res = runner.invoke(
        app,
        ["segment", str(images / "scene0.png"), "--classes", "boat,grass", "--out", str(out), "--overwrite", *common],
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "classes.json",
        "notes.txt",
        "scene0.png",
    ]
    assert [e["name"] for e in json.loads((out / "classes.json").read_text())["labels"]] == [
        "background",
        "boat",
        "grass",
    ]
    mode = (out / "scene0.png").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # the umask, not mkstemp's 0600


def test_segment_recursive_skips_its_own_output_and_out_is_locked(cache, tmp_path):
    from ovdiff_cli.io.outdir import lock

    images = scenes(tmp_path / "photos")
    out = images / "masks"
    common = ["--cache", str(cache), "--no-build", *PROC, "-r"]
    for _ in range(2):
        res = runner.invoke(app, ["segment", str(images), "--classes", "kite,sky", "--out", str(out), *common])
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in out.rglob("*.png")) == ["scene0.png", "scene1.png"]  # not masks/scene0.png again
    release = lock(out)
    try:
        one_error(
            runner.invoke(app, ["segment", str(images), "--classes", "kite,sky", "--out", str(out), *common]),
            "is being written by another 'ovdiff segment'",
        )
    finally:
        release()


def test_the_shards_of_one_job_may_write_one_folder_side_by_side_but_nothing_else_may(tmp_path):
    from ovdiff_cli.errors import OvdiffError
    from ovdiff_cli.io.outdir import lock

    first, second = lock(tmp_path, (0, 2)), lock(tmp_path, (1, 2))  # SLURM-array style: both at once
    try:
        for other in (None, (0, 2)):  # a whole run, or a second copy of a running shard
            with pytest.raises(OvdiffError, match="is being written by another 'ovdiff segment'"):
                lock(tmp_path, other)
    finally:
        first()
        second()
    lock(tmp_path)()  # all released


def test_non_utf8_file_names_are_segmented(cache, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    name = os.fsdecode(b"caf\xe9")
    Image.fromarray(render_scene(np.random.default_rng(5))[0]).save(images / f"{name}.png")
    out = tmp_path / "masks"
    res = runner.invoke(
        app,
        [
            "segment",
            str(images),
            "--classes",
            "kite,sky",
            "--out",
            str(out),
            "--explain",
            "--cache",
            str(cache),
            "--no-build",
            *PROC,
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    assert os.fsencode(out / f"{name}.png") in [os.fsencode(p) for p in out.iterdir()]
    assert "caf\ufffd" in (out / "explain" / f"{name}.json").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- ranges and words


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["protos", "add", "kite", "--n-images", "1000000000000"], ("--n-images", "1..10000")),
        (["sample", "kite", "--n-images", "1000000000000"], ("--n-images", "1..10000")),
        (["protos", "add", "kite", "--seed", str(2**64)], ("--seed", "9223372036854775807")),
        (["segment", "IMG", "--classes", "kite", "--short-side", "20000"], ("--short-side", "8..4096")),
        (["segment", "IMG", "--classes", "kite", "--windows", "100000"], ("--windows", "8..4096")),
        (["segment", "IMG", "--classes", "kite", "--fg-threshold", "nan"], ("--fg-threshold", "finite")),
        (["segment", "IMG", "--classes", "kite", "--stuff-threshold", "5"], ("--stuff-threshold", "-1.0..1.0")),
        (["eval", "voc", "--root", "ROOT", "--seeds", f"0,{2**64}"], ("--seeds", "64-bit")),
        (["protos", "add", "kite", "--sd-model", "/no/such/dir"], ("--sd-model /no/such/dir: no such file or folder",)),
    ],
    ids=["n-images", "sample-n-images", "seed", "short-side", "windows", "nan", "cosine", "seeds", "sd-model"],
)
def test_sizes_and_thresholds_are_refused_up_front_with_the_limit(args, needles, tmp_path):
    image = scenes(tmp_path / "in", 1) / "scene0.png"
    args = [str(image) if a == "IMG" else str(tmp_path) if a == "ROOT" else a for a in args]
    out = ["--out", str(tmp_path / "o")] if args[0] == "segment" else []
    line = one_error(runner.invoke(app, [*args, *out, "--cache", str(tmp_path / "cache"), *PROC]), *needles)
    assert "hf download" not in line
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()


def test_a_classes_file_with_a_byte_order_mark_is_read(tmp_path):
    names = tmp_path / "classes.txt"
    names.write_bytes("kite\nboat\n".encode("utf-8-sig"))
    res = runner.invoke(
        app, ["protos", "add", "--classes-file", str(names), "--cache", str(tmp_path / "c"), *PROC, "-q"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["protos", "list", "-q", "--cache", str(tmp_path / "c")])
    assert sorted(line.split("\t")[1] for line in res.output.splitlines()) == ["boat", "kite"]


def test_a_name_beyond_the_text_encoders_context_is_said_once_in_our_words(tmp_path):
    long = " ".join(["very"] * 90) + " long kite"
    res = runner.invoke(
        app,
        [
            "sample",
            long,
            "kite",
            "--n-images",
            "1",
            "--cache",
            str(tmp_path / "c"),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    notes = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(notes) == 1 and "92 tokens" in notes[0] and "only its first" in notes[0], res.output
    assert "Token indices sequence length" not in res.output and "truncated because CLIP" not in res.output


def test_ctrl_c_says_what_is_kept(tmp_path, monkeypatch):
    from ovdiff_cli.engines import vocab

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vocab, "ensure_classes", interrupted)
    res = runner.invoke(app, ["protos", "add", "kite", "--cache", str(tmp_path / "c"), *PROC])
    assert res.exit_code == 130 and "interrupted: work committed so far is kept" in res.output, res.output


def test_progress_into_a_pipe_is_plain_lines_every_few_seconds_whatever_the_task_length():
    """One heartbeat for the whole progress: a task that never moves, and many tasks each shorter than
    the period, are both reported; nothing more once it stops."""
    import time

    from rich.console import Console

    from ovdiff_cli.cli.output import LogProgress

    buf = io.StringIO()
    with LogProgress(Console(file=buf, width=100_000), every=0.05) as bar:
        stuck = bar.add_task("sample kite", total=8)
        bar.advance(stuck, 3)
        time.sleep(0.4)
        bar.update(stuck, completed=8)
        for i in range(20):  # short tasks, each done well within one period
            bar.update(bar.add_task(f"prototypes c{i}", total=2), completed=2 if i < 19 else 1)
            time.sleep(0.02)
        time.sleep(0.15)
    lines = buf.getvalue().splitlines()
    stuck_lines = [line for line in lines if line.startswith("sample kite")]
    assert len(stuck_lines) >= 3 and all("3/8" in line for line in stuck_lines), lines
    assert any(line.startswith("prototypes c19") and "1/2" in line for line in lines), lines
    assert "\x1b" not in buf.getvalue() and "\r" not in buf.getvalue()  # plain lines, no terminal control
    assert all(line == line.rstrip() for line in lines)  # no padding to the console's width
    ended = len(buf.getvalue())
    time.sleep(0.15)
    assert len(buf.getvalue()) == ended
    idle = io.StringIO()
    with LogProgress(Console(file=idle, width=100_000), every=0.05):
        time.sleep(0.2)  # no task at all (models loading): still a line now and then
    assert idle.getvalue().count("working … ") >= 2
    from ovdiff_cli.cli.common import printer

    assert isinstance(printer().progress(), LogProgress)  # what every command gets off a terminal
    assert not isinstance(printer(quiet=True).progress(), LogProgress)


def test_a_legend_never_turns_no_class_into_class_255_of_a_large_benchmark(tmp_path):
    """In ade847 (and pc459) 255 is a class: masks of a small vocabulary (8-bit, 255 = no class) and a
    'background' prediction must score as no class there, not as class 255."""
    from types import SimpleNamespace

    from ovdiff_cli.classnames import NO_CLASS
    from ovdiff_cli.eval.datasets import class_names
    from ovdiff_cli.eval.legends import UNNAMED, legend_lookup

    names = class_names("ade847")
    ade = SimpleNamespace(name="ade847", classes=names, has_background=False, num_classes=len(names))
    legend = tmp_path / "classes.json"
    entries = [(0, "background"), (1, names[255]), (2, names[0])]
    legend.write_text(json.dumps({"labels": [{"index": i, "name": n} for i, n in entries]}))
    lut = legend_lookup(legend, ade)
    assert lut[255] == lut[0] == NO_CLASS and lut[1] == 255 and lut[2] == 0 and lut[3] == UNNAMED
