"""`ovdiff segment` and `ovdiff demo`: inputs, robust loading, outputs (palette, legend), failures, exit codes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import PROC, VOC_SAMPLE
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.cli.output import ovdiff_command
from ovdiff_cli.io.images import ImageError, discover, load_image
from ovdiff_cli.io.palette import voc_palette
from ovdiff_cli.procedural import LABELLED, render_scene, write_voc

runner = CliRunner()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    """Three held-out scenes in VOC layout and a cache with the world's prototypes."""
    root = tmp_path_factory.mktemp("world")
    write_voc(root / "data", 3, seed=7)
    return root


def segment(args: list[str], cache) -> object:
    return runner.invoke(app, ["segment", *args, "--cache", str(cache), *PROC])


def test_outputs_palette_pngs_of_image_size_and_legend(world_dir, tmp_path):
    images = world_dir / "data/VOC2012/JPEGImages"
    out = tmp_path / "masks"
    res = segment(
        [
            str(images),
            "--classes-file",
            str(world_dir / "data/classes.txt"),
            "--out",
            str(out),
            "--overlay",
            "--explain",
        ],
        world_dir / "cache",
    )
    assert res.exit_code == 0, res.output
    legend = json.loads((out / "classes.json").read_text())
    assert [e["name"] for e in legend["labels"]] == ["background", *LABELLED]
    assert [e["index"] for e in legend["labels"]] == list(range(len(LABELLED) + 1))
    assert all(e["color"] == voc_palette()[e["index"]].tolist() for e in legend["labels"])
    for img in sorted(images.iterdir()):
        with Image.open(out / f"{img.stem}.png") as m, Image.open(img) as im:
            assert m.mode == "P" and m.size == im.size
            assert np.array_equal(np.asarray(m.getpalette()[:768]).reshape(-1, 3), voc_palette())
            values = np.asarray(m)
        assert set(np.unique(values)) <= set(range(len(LABELLED) + 1)) and len(np.unique(values)) > 1
        assert (out / "overlays" / f"{img.stem}.jpg").is_file()
        explained = json.loads((out / "explain" / f"{img.stem}.json").read_text())
        assert sum(p["pixels"] for p in explained["prototypes"]) == values.size
        with Image.open(out / "explain" / f"{img.stem}.winner.png") as w:
            assert w.size == m.size
    # the order of --classes is the mask's index: swapping two classes swaps their values
    swapped = tmp_path / "swapped"
    names = list(LABELLED)
    names[0], names[4] = names[4], names[0]
    res = segment([str(images), "--classes", ",".join(names), "--out", str(swapped), "--no-build"], world_dir / "cache")
    assert res.exit_code == 0, res.output
    with Image.open(out / "world_00000.png") as ma, Image.open(swapped / "world_00000.png") as mb:
        a, b = np.asarray(ma), np.asarray(mb)
    assert np.array_equal(np.where(a == 1, 5, np.where(a == 5, 1, a)), b)


def test_corrupt_file_among_good_ones_is_skipped_with_exit_code_1(world_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(render_scene(rng)[0]).save(src / f"good{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    out = tmp_path / "out"
    res = segment([str(src), "--classes", "kite,sky", "--out", str(out)], world_dir / "cache")
    assert res.exit_code == 1
    assert "broken.jpg" in res.output and "1 of 3 image(s) failed" in res.output
    assert sorted(p.name for p in out.glob("*.png")) == ["good0.png", "good1.png"]


def test_user_errors_exit_2_before_any_work(world_dir, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    img = world_dir / "data/VOC2012/JPEGImages/world_00000.jpg"
    res = segment([str(img), "--classes", "kite", "--out", str(afile)], tmp_path / "cache")
    assert res.exit_code == 2 and "is a file" in res.output
    assert not (tmp_path / "cache").exists()
    res = segment([str(img), "--classes", "pikachu", "--out", str(tmp_path / "o"), "--no-build"], world_dir / "cache")
    assert res.exit_code == 2 and "pikachu" in res.output and "ovdiff protos add" in res.output
    res = segment(
        [str(tmp_path / "missing.jpg"), "--classes", "kite", "--out", str(tmp_path / "o")], world_dir / "cache"
    )
    assert res.exit_code == 2 and "not found" in res.output


def test_segment_help_shows_an_example():
    res = runner.invoke(app, ["segment", "--help"])
    assert res.exit_code == 0 and "Example: ovdiff segment photos/" in res.output


def test_tiny_preset_on_the_real_voc_image_writes_a_mask_of_its_size_and_explains_it_per_part(tmp_path):
    """sd+dino+clip: the winner of a pixel is a prototype of the pixel's own label, in the part
    where that label scored highest; the explanation names the part."""
    img = next((VOC_SAMPLE / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "masks"
    res = runner.invoke(
        app,
        [
            "segment",
            str(img),
            "--classes",
            "cat,sky",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "-q",
            "--explain",
        ],
    )
    assert res.exit_code == 0, res.output
    with Image.open(out / f"{img.stem}.png") as m, Image.open(img) as im:
        assert m.size == im.size and m.mode == "P"
        labels = np.asarray(m)
    explained = json.loads((out / "explain" / f"{img.stem}.json").read_text())
    with Image.open(out / "explain" / f"{img.stem}.winner.png") as w:
        winner = np.asarray(w).astype(np.int64) - 1
    assert {p["part"] for p in explained["prototypes"]} <= {"sd", "dino", "clip"}
    for p in explained["prototypes"]:
        assert (labels[winner == p["index"]] == p["label"]).all()


def test_demo_runs_offline_and_scores(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--images", "4", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output
    assert len(list((tmp_path / "demo/masks").glob("world_*.png"))) == 4
    assert len(list((tmp_path / "demo/masks/overlays").glob("*.jpg"))) == 4
    assert f"next: {ovdiff_command()} segment " in " ".join(res.output.split())  # the command that works here
    # the figure reads alone: titles above the three columns, a colour key of every label below the panels
    figure = np.asarray(Image.open(tmp_path / "demo/figure.png"))
    top, panels = 28, 3 * 128 + 2 * 12  # the titles' strip; three 192x128 scenes, 12-pixel gaps
    head, key = figure[:top], figure[top + panels :]
    assert (head.min(axis=2) < 80).sum() > 100 and (figure[top] < 250).any()  # dark title text, then the panels
    colours = {tuple(c) for c in key.reshape(-1, 3).tolist()}
    assert {tuple(voc_palette()[k].tolist()) for k in (*range(7), 255)} <= colours  # background, 6 classes, ignored


# --------------------------------------------------------------------------- inputs and loading


def _save(im: Image.Image, path, **kw) -> str:
    im.save(path, **kw)
    return str(path)


def test_load_image_modes_exif_animation_and_size_guard(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = (255, 0, 0)
    # EXIF orientation 6 (rotate 90° clockwise to view): the loaded image is 30 high, 20 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = load_image(_save(Image.fromarray(rgb), tmp_path / "exif.jpg", exif=exif, quality=95))
    assert rotated.shape == (30, 20, 3) and rotated[0, -1, 0] > 200 and rotated[-1, 0, 0] < 60
    gray16 = np.full((8, 9), 65535, np.uint16)
    gray16[:, :3] = 0
    a = load_image(_save(Image.fromarray(gray16), tmp_path / "g16.png"))
    assert a.shape == (8, 9, 3) and a.dtype == np.uint8 and a[0, 0, 0] == 0 and a[0, -1, 0] == 255
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent: white
    assert (load_image(_save(Image.fromarray(rgba), tmp_path / "t.png")) == 255).all()
    assert load_image(_save(Image.fromarray(rgb[..., 0]), tmp_path / "l.png")).shape == (20, 30, 3)
    frames = [Image.fromarray(np.full((6, 6, 3), c, np.uint8)) for c in (10, 200)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    assert load_image(gif).mean() < 50  # the first frame
    with pytest.raises(ImageError, match="megapixels"):
        load_image(tmp_path / "l.png", max_pixels=100)
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[:60])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(truncated)


def test_discover_folders_globs_recursion_and_name_clashes(tmp_path):
    (tmp_path / "sub").mkdir()
    for rel in ("a.jpg", "a.png", "b.webp", "notes.txt", "sub/c.png"):
        (tmp_path / rel).write_bytes(b"x")
    names = [i.name for i in discover([str(tmp_path)])]
    assert names == ["a_jpg", "a_png", "b"]
    assert [i.name for i in discover([str(tmp_path)], recursive=True)][-1] == "sub/c"
    assert [i.name for i in discover([str(tmp_path / "*.png"), str(tmp_path / "a.png")])] == ["a"]
    with pytest.raises(Exception, match="no images found"):
        discover([str(tmp_path / "*.gif")])


def test_images_segmented_together_equal_one_by_one_and_share_extractor_batches(procedural_stages, tmp_path):
    """predict_many batches windows of several images through the backbone; results are unchanged."""
    from ovdiff_cli.engines.vocab import ensure_classes
    from ovdiff_cli.procedural import LABELLED, render_scene
    from ovdiff_cli.store.cache import Cache

    p = procedural_stages.specs.preset
    sample_cfg, proto_cfg, seg_cfg = p.sample, p.protos, p.segment
    cache = Cache(tmp_path / "cache")
    classes = ensure_classes(cache, procedural_stages, list(LABELLED), 0, sample_cfg, proto_cfg)
    seg = procedural_stages.segmenter(classes, seg_cfg, proto_cfg.extractor, cache)
    rng = np.random.default_rng(7)
    images = [render_scene(rng)[0] for _ in range(3)]
    calls = []
    (part,) = seg.parts
    inner = part.backbone
    part.backbone = lambda crops: calls.append(crops.shape[0]) or inner(crops)
    one_by_one = [seg.predict(im, explain=True) for im in images]
    alone_calls = len(calls)
    calls.clear()
    together = seg.predict_many(images, explain=True)
    assert len(calls) < alone_calls  # windows of different images went through the backbone together
    for a, b in zip(one_by_one, together):  # noqa: B905
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.winner, b.winner)
        assert a.selected == b.selected
    part.backbone = inner


def test_every_window_and_the_whole_image_reach_each_part_at_its_own_input_size(tiny_stages):
    """sdov predict.py on the tiny preset's scale: SD sees every crop at 64², CLIP at 96², DINO as it is in the
    whole patches that fit (the whole 96×150 image as 96×144, as the authors' DINO takes it); the whole image is one
    more crop."""
    import dataclasses

    from ovdiff_cli.bench.settings import synthetic_bank
    from ovdiff_cli.method.stage4_segment.matching import window_boxes
    from ovdiff_cli.models.presets import get_preset

    cfg = dataclasses.replace(get_preset("tiny").segment, use_filter=False)
    classes = synthetic_bank(["cat", "dog"], {"sd": 160, "dino": 64, "clip": 64}, 3, 0)
    seg = tiny_stages.segmenter(classes, cfg, "sd+dino+clip")
    seen: dict[str, list] = {p.name: [] for p in seg.parts}
    inner = {p.name: p.backbone for p in seg.parts}
    for p in seg.parts:
        p.backbone = lambda x, n=p.name: seen[n].extend([tuple(x.shape[-2:])] * len(x)) or inner[n](x)
    try:
        labels = seg.predict(np.zeros((96, 150, 3), np.uint8)).labels
    finally:
        for p in seg.parts:
            p.backbone = inner[p.name]
    assert labels.shape == (96, 150)
    n_crops = sum(len(window_boxes(96, 150, w, cfg.stride)) for w in cfg.windows) + 1
    assert seen["sd"] == [(64, 64)] * n_crops and seen["clip"] == [(96, 96)] * n_crops
    assert sorted(set(seen["dino"])) == [(64, 64), (96, 96), (96, 144)] and len(seen["dino"]) == n_crops


def test_an_encoded_image_holds_every_parts_features_and_matches_as_predict_does(tiny_stages):
    """Encode once, match many with late fusion: the encoded image keeps each part's features of each
    crop batch, and predict_encoded reproduces predict (labels, winners, scores) with no backbone call."""
    import dataclasses

    from ovdiff_cli.bench.settings import synthetic_bank
    from ovdiff_cli.errors import OvdiffError
    from ovdiff_cli.method.stage4_segment.segmenter import encode_image
    from ovdiff_cli.models.presets import get_preset

    cfg = dataclasses.replace(get_preset("tiny").segment, use_filter=False)
    classes = synthetic_bank(["cat", "dog", "sky"], {"sd": 160, "dino": 64, "clip": 64}, 3, 0)
    seg = tiny_stages.segmenter(classes, cfg, "sd+dino+clip")
    image = np.random.default_rng(0).integers(0, 256, (96, 150, 3), dtype=np.uint8)
    enc = encode_image(seg.parts, None, cfg, image, seg.device)
    assert enc.parts == ("sd", "dino", "clip")
    assert all(len(wb.features) == 3 for wb in enc.windows)
    assert [wb.features[0].shape[1] for wb in enc.windows[:1]] == [160]
    calls = []
    inner = {p.name: p.backbone for p in seg.parts}
    for p in seg.parts:
        p.backbone = lambda x, n=p.name: calls.append(n) or inner[n](x)
    try:
        by_encoding = seg.predict_encoded(enc, explain=True, scores=True)
        assert calls == []
        direct = seg.predict(image, explain=True, scores=True)
    finally:
        for p in seg.parts:
            p.backbone = inner[p.name]
    assert np.array_equal(by_encoding.labels, direct.labels) and np.array_equal(by_encoding.winner, direct.winner)
    assert np.allclose(by_encoding.scores, direct.scores)
    dino_only = tiny_stages.segmenter(classes, cfg, "dino")
    with pytest.raises(OvdiffError, match="encoded with extractor sd\\+dino\\+clip"):
        dino_only.predict_encoded(enc)
