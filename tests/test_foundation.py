"""Cache round trips, hostile class names, schema versions, map growth, presets and the offline tokenizer."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ovdiff_cli.errors import CacheError, OvdiffError
from ovdiff_cli.names import normalise, parse_class_list, validate
from ovdiff_cli.store import cache as cache_mod
from ovdiff_cli.store.audit import verify
from ovdiff_cli.store.cache import Cache, decode_array, encode_array

SID, PID = "5" * 24, "a" * 24  # ids are 24 hex digits (store/schema.py)


def record(name: str, **more) -> dict:
    """The fields every class record has (store/records.py), for classes written here by hand."""
    return {"name": name, "norm": validate(name), "seed": 0, "extractor": "procedural", "kind": "thing", **more}


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, np.uint8, np.bool_, np.int16, np.int32, np.int64]
)
def test_array_blob_round_trip(dtype):
    a = (np.random.default_rng(0).random((3, 5, 7)) * 100).astype(dtype)
    b = decode_array(encode_array(a))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_array_blob_detects_corruption():
    blob = bytearray(encode_array(np.arange(10, dtype=np.float32)))
    blob[-1] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        decode_array(bytes(blob))
    with pytest.raises(ValueError):
        decode_array(bytes(blob[:-3]))


def test_cache_round_trip_every_value_kind(cache_dir):
    c = Cache(cache_dir)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (16, 24, 3), dtype=np.uint8) for _ in range(3)]
    atts = [rng.random((8, 8)).astype(np.float32) for _ in range(3)]
    c.put_support_batch(SID, {"name": "Cat", "norm": "Cat", "seed": 0}, 0, imgs[:2], atts[:2])
    c.put_support_batch(SID, {"name": "Cat", "norm": "Cat", "seed": 0}, 2, imgs[2:], atts[2:])
    assert c.support_meta(SID)["n_images"] == 3
    for i in range(3):
        assert np.array_equal(c.support_image(SID, i), imgs[i])
        assert np.array_equal(c.attribution(SID, i), atts[i])
    arrays = {
        "fg/class": rng.random((1, 32)).astype(np.float16),
        "fg/instance": rng.random((3, 32)).astype(np.float32),
        "masks": rng.integers(0, 3, (3, 8, 8), dtype=np.uint8),
    }
    c.put_class(PID, record("Cat"), arrays)
    got = c.class_arrays(PID)
    assert set(got) == set(arrays)
    for k in arrays:
        assert got[k].dtype == arrays[k].dtype and np.array_equal(got[k], arrays[k])
    rec = c.class_record(PID)
    assert rec["arrays"]["fg/class"] == {"dtype": "<f2", "shape": [1, 32]}
    c.put_text_embeddings("clip-x", {"a cat": np.full(4, 0.5, np.float32)})  # a unit vector, as the encoder's
    assert np.array_equal(c.text_embeddings("clip-x", ["a cat", "a dog"])[0], np.full(4, 0.5, np.float32))
    assert c.text_embeddings("clip-x", ["a dog"]) == [None]
    assert verify(c) == []


HOSTILE = ["a,b", "a/b", 'say "hi"', "it's", "🍩 donut", "x" * 300, "Ünïcödé", "back\\slash", "semi;colon", "a|b"]


def test_hostile_class_names_make_valid_distinct_keys(cache_dir):
    c = Cache(cache_dir)
    pids = set()
    for i, name in enumerate(HOSTILE):
        norm = validate(name)
        pid = cache_mod.short_hash(norm, 0, "sd+dino+clip")
        assert len(pid) == 24
        pids.add(pid)
        c.put_class(pid, record(name), {"fg/class": np.full((1, 4), i, np.float32)})
    assert len(pids) == len(HOSTILE)
    names = {rec["name"] for _, rec in c.classes()}
    assert names == set(HOSTILE)
    assert verify(c) == []


def test_names_normalise_and_reject_bad_input():
    assert normalise("  Cafe\u0301 ") == "Café"
    assert parse_class_list("cat, dog ,Sky") == ["cat", "dog", "Sky"]
    for bad, msg in [("", "empty"), ("cat,,dog", "blank"), ("cat,cat", "twice"), ("ca\x07t", "control")]:
        with pytest.raises(OvdiffError, match=msg):
            parse_class_list(bad)
    with pytest.raises(OvdiffError, match="too long"):
        validate("x" * 10_000)


def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    root = tmp_path / "c"
    c = Cache(root)
    c.write({cache_mod.SCHEMA_KEY: json.dumps({"version": 99}).encode()})
    with pytest.raises(CacheError, match="schema version 99.*upgrade ovdiff"):
        Cache(root)


def test_map_grows_automatically(tmp_path):
    c = Cache(tmp_path / "small", map_size=64 << 10)
    start = c.env.info()["map_size"]
    big = np.random.default_rng(0).random((4, 256, 256)).astype(np.float32)  # 1 MiB per write
    for i in range(6):
        c.put_class(f"{i:024x}", record(f"c{i}"), {"fg/part": big})
    assert c.env.info()["map_size"] > start
    assert len(c.classes()) == 6
    assert np.array_equal(c.class_arrays(f"{5:024x}")["fg/part"], big)


def test_verify_finds_and_repairs_broken_entries(cache_dir):
    c = Cache(cache_dir)
    c.put_class(PID, record("cat"), {"fg/class": np.ones((1, 4), np.float32)})
    meta = {"name": "cat", "norm": "cat", "seed": 0}
    c.put_support_batch(SID, meta, 0, [np.zeros((4, 4, 3), np.uint8)] * 3, [np.ones((2, 2))] * 3)
    c.write({cache_mod.class_array_key(PID, "fg/class"): b"garbage", cache_mod.image_key(SID, 1): b"notpng"})
    problems = verify(c)
    assert {p.key for p in problems} >= {f"p/{PID}/a/fg/class", f"s/{SID}/img/00001"}
    verify(c, repair=True)
    assert verify(c) == []
    assert c.class_record(PID) is None
    assert c.support_meta(SID)["n_images"] == 1


def test_presets_build_offline(tiny_stages):
    import torch

    sd = tiny_stages.store.sd()
    assert type(sd.unet).__name__ == "UNet2DConditionModel"
    assert type(sd.vae).__name__ == "AutoencoderKL"
    assert type(sd.text_encoder).__name__ == "CLIPTextModel"
    clip = tiny_stages.store.clip()
    assert clip.model.encode_image(torch.rand(1, 3, 224, 224)).shape[-1] == 32
    dino = tiny_stages.store.vit("dino")
    assert dino(torch.rand(1, 3, 64, 64)).ndim == 2


def test_real_preset_without_weights_names_the_model_and_the_way_out(monkeypatch, tmp_path):
    from ovdiff_cli.cli.common import phrase
    from ovdiff_cli.errors import ModelLoadError
    from ovdiff_cli.models.presets import ModelSpecs
    from ovdiff_cli.models.store import ModelStore

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    store = ModelStore(ModelSpecs.of("sd15"), device="cpu", dtype="fp32")
    with pytest.raises(ModelLoadError, match="Stable Diffusion weights 'stable-diffusion-v1-5") as info:
        store.sd()
    assert (info.value.role, info.value.spec) == ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert re.search("stable-diffusion-v1-5.*--sd-model DIR.*--preset tiny", phrase(info.value))
    assert store.loaded == []  # a model that failed to load is not kept


def test_unknown_preset_lists_choices():
    from ovdiff_cli.models.presets import get_preset

    with pytest.raises(OvdiffError, match="sd15, tiny, sd15-random, modern, procedural"):
        get_preset("bogus")


def test_tiny_tokenizer_matches_open_clip():
    import open_clip

    from ovdiff_cli.models.tokenizer import offline_clip_tokenizer

    prompt = "a good picture of a chocolate glazed donut"
    ours = offline_clip_tokenizer()(prompt).input_ids
    theirs = open_clip.get_tokenizer("ViT-B-16")([prompt])[0].tolist()
    assert ours == theirs[: len(ours)]
    assert theirs[len(ours)] == 0  # open_clip pads with 0 after the end token
