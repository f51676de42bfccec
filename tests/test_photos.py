"""`protos add NAME --images DIR` (beyond the paper): support sets from the user's photos."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import PROC
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.engines.catalogue import find_classes
from ovdiff_cli.engines.photos import photo_class, read_photos
from ovdiff_cli.engines.vocab import build_from_photos, ensure_classes
from ovdiff_cli.errors import OvdiffError
from ovdiff_cli.eval.metrics import ConfusionMatrix
from ovdiff_cli.models.presets import ModelSpecs, get_preset
from ovdiff_cli.procedural import LABELLED, render_scene, support_sample
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.store.keys import class_ids, support_key

runner = CliRunner()
P = get_preset("procedural")


def write_photos(folder, name: str, n: int, first_seed: int = 1000, size: int = 176):
    """Procedural 'photos' of `name`: the world's own drawings (seeds apart from the generated set's), saved as JPEG
    with a band of extra context so they are not square."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = support_sample(name, first_seed + i, size, 16)
        wide = np.concatenate([s.image[:, : size // 8], s.image, s.image[:, -size // 8 :]], axis=1)
        Image.fromarray(wide).save(folder / f"photo_{i:02d}.jpg", quality=95)
    return folder


# --------------------------------------------------------------------------- bad input


def test_bad_photo_folders_are_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OvdiffError, match="no image files"):
        read_photos(tmp_path / "empty", 128)
    bad = write_photos(tmp_path / "bad", "kite", 1)
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(OvdiffError, match="broken.png cannot be read"):
        read_photos(bad, 128)
    tiny = write_photos(tmp_path / "tiny", "kite", 1)
    Image.new("RGB", (40, 300)).save(tiny / "small.png")
    with pytest.raises(OvdiffError, match="small.png is 40×300 px"):
        read_photos(tiny, 128)


def test_cli_refuses_bad_photos_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(
        app, ["protos", "add", "my kite", "--images", str(tmp_path / "empty"), "--cache", str(tmp_path / "c"), *PROC]
    )
    assert res.exit_code != 0 and "no image files" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not find_classes(Cache(tmp_path / "c"))


# --------------------------------------------------------------------------- keys


def test_keys_without_photos_are_unchanged_and_photos_change_them():
    specs, ms = P.protos, ModelSpecs.of("procedural")
    base = class_ids("kite", 0, ms, P.sample, specs)
    assert class_ids("kite", 0, ms, P.sample, specs, None) == base
    assert support_key("kite", 0, P.sample, None) == support_key("kite", 0, P.sample)
    a, b = class_ids("kite", 0, ms, P.sample, specs, "aa" * 12), class_ids("kite", 0, ms, P.sample, specs, "bb" * 12)
    assert set(a.values()).isdisjoint(base.values()) and set(a.values()).isdisjoint(b.values())


# --------------------------------------------------------------------------- the procedural world


def miou(stages, classes, scenes) -> float:
    seg = stages.segmenter(classes, P.segment, "procedural")
    cm = ConfusionMatrix(len(LABELLED) + 1)
    for image, label in scenes:
        cm.update(seg.predict(image).labels, label)
    return cm.miou()


def test_a_class_from_photos_segments_as_well_as_its_generated_twin(procedural_stages, tmp_path):
    rng = np.random.default_rng(21)
    scenes = [render_scene(rng) for _ in range(10)]
    generated = ensure_classes(Cache(tmp_path / "gen"), procedural_stages, list(LABELLED), 0, P.sample, P.protos)
    cache = Cache(tmp_path / "photos")
    photos = write_photos(tmp_path / "kites", "kite", P.sample.n_images)
    kite = build_from_photos(cache, procedural_stages, "kite", photos, 0, P.sample, P.protos)
    rec = cache.class_record(kite.pids[0])
    assert rec["n_photos"] == P.sample.n_images and rec["n_images"] == P.sample.n_images and rec["photos"]
    mixed = ensure_classes(cache, procedural_stages, list(LABELLED), 0, P.sample, P.protos)  # the note finds the kite
    assert mixed[0].pids == kite.pids and mixed[1].pids == generated[1].pids
    a, b = miou(procedural_stages, generated, scenes), miou(procedural_stages, mixed, scenes)
    assert a > 0.8 and abs(a - b) <= 0.02, (a, b)


def test_changing_a_photo_rebuilds_the_class_and_mixing_adds_generated_images(procedural_stages, tmp_path):
    cache = Cache(tmp_path / "c")
    photos = write_photos(tmp_path / "p", "ball", 3)
    first = build_from_photos(cache, procedural_stages, "ball", photos, 0, P.sample, P.protos)
    before = procedural_stages.calls.get("extract", 0)
    again = build_from_photos(cache, procedural_stages, "ball", photos, 0, P.sample, P.protos)
    assert again.pids == first.pids and procedural_stages.calls.get("extract", 0) == before  # unchanged: cached
    write_photos(tmp_path / "p", "ball", 1, first_seed=7)  # photo_00 redrawn
    changed = build_from_photos(cache, procedural_stages, "ball", photos, 0, P.sample, P.protos)
    assert set(changed.pids).isdisjoint(first.pids)
    assert (
        photo_class(cache, "ball", 0, procedural_stages.specs)["photos"]
        == cache.class_record(changed.pids[0])["photos"]
    )
    cfg = dataclasses.replace(P.sample, n_images=2)
    mixed = build_from_photos(cache, procedural_stages, "ball", photos, 0, cfg, P.protos, n_generated=2)
    rec = cache.class_record(mixed.pids[0])
    assert rec["n_images"] == 5 and rec["n_photos"] == 3 and set(mixed.pids).isdisjoint(changed.pids)


def test_photos_from_the_cli_serve_segment_by_name_until_removed(tmp_path):
    from ovdiff_cli.procedural import write_voc

    write_voc(tmp_path / "data", 1, seed=2)
    photos = write_photos(tmp_path / "p", "my kite", 4)  # the world draws "my kite" by its own look
    cache = ["--cache", str(tmp_path / "c")]
    res = runner.invoke(app, ["protos", "add", "my kite", "--images", str(photos), "-q", *cache, *PROC])
    assert res.exit_code == 0, res.output
    (rec,) = [r for _, r in find_classes(Cache(tmp_path / "c"), "my kite")]
    assert rec["n_photos"] == 4 and rec["n_images"] == 4
    res = runner.invoke(
        app,
        [
            "segment",
            str(tmp_path / "data/VOC2012/JPEGImages"),
            "--classes",
            "my kite",
            "--no-build",
            "--out",
            str(tmp_path / "o"),
            "--json",
            *cache,
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output  # --no-build: the photo class was found by its name
    assert json.loads(res.stdout)["written"] == 1
    assert runner.invoke(app, ["protos", "rm", "my kite", *cache]).exit_code == 0
    assert photo_class(Cache(tmp_path / "c"), "my kite", 0, ModelSpecs.of("procedural")) is None


def test_photos_from_the_python_api_serve_segment_by_name(tmp_path):
    import ovdiff

    photos = write_photos(tmp_path / "p", "my kite", 4)
    pipe = ovdiff.Pipeline("procedural", cache=tmp_path / "c", device="cpu", dtype="fp32")
    vocab = pipe.photo_class("my kite", photos)
    assert vocab.names == ["my kite"]
    rec = Cache(tmp_path / "c").class_record(vocab.classes[0].pids[0])
    assert rec["n_photos"] == 4 and rec["n_images"] == 4
    again = ovdiff.Pipeline("procedural", cache=tmp_path / "c", device="cpu", dtype="fp32")
    assert (
        again.vocabulary(["my kite"], build=False).classes[0].pids == vocab.classes[0].pids
    )  # the name means the photos
    with pytest.raises(OvdiffError, match="no image files"):
        pipe.photo_class("my cup", tmp_path)


# --------------------------------------------------------------------------- Stable Diffusion (tiny random weights)


def test_sd_attribution_of_photos_is_one_noised_unet_pass(tiny_stages):
    cfg = get_preset("tiny").sample
    gen = tiny_stages.generator()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (cfg.size, cfg.size, 3), dtype=np.uint8) for _ in range(2)]
    maps = gen.attribute("cat", images, cfg, [1, 2])
    assert len(maps) == 2 and all(
        m.shape == (cfg.attribution_size,) * 2 and (m >= 0).all() and m.sum() > 0 for m in maps
    )
    assert np.allclose(gen.attribute("cat", images[:1], cfg, [1])[0], maps[0], atol=1e-5)  # seeded: reproducible
    assert not np.allclose(gen.attribute("dog house", images[:1], cfg, [1])[0], maps[0])  # conditioned on the prompt
