"""Support sets on the tiny preset: attribution capture, cache layout, reproducibility, resume, CLI."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.cli.common import phrase
from ovdiff_cli.engines import support
from ovdiff_cli.errors import IncompleteSupportSet, InvalidSetting
from ovdiff_cli.io import sheets
from ovdiff_cli.method.stage1_support import sampling
from ovdiff_cli.models.presets import ModelSpecs, get_preset
from ovdiff_cli.models.tokenizer import offline_clip_tokenizer
from ovdiff_cli.store.audit import verify
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.store.keys import support_id

TINY = dataclasses.replace(get_preset("tiny").sample, batch_size=2)  # 4 images, 64 px, 4 steps


def generated(stages) -> int:
    return stages.calls.get("generate", 0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_stages):
    """'cat' sampled alone into its own cache: the images every other run must reproduce."""
    cache = Cache(tmp_path_factory.mktemp("ref"))
    sid, meta = support.ensure_support_set(cache, tiny_stages, "cat", 0, TINY)
    return cache, sid, meta


# --------------------------------------------------------------------------- pure parts


def test_image_seed_depends_only_on_class_seed_and_index():
    s = sampling.image_seed("cat", 0, 3)
    assert s == sampling.image_seed("cat", 0, 3)
    others = {sampling.image_seed(*k) for k in [("cat", 0, 2), ("cat", 1, 3), ("dog", 0, 3), ("Cat", 0, 3)]}
    assert s not in others and len(others) == 4
    assert all(0 <= x < 2**63 for x in others | {s})


def test_support_id_changes_with_pixels_not_with_count_or_batch():
    specs = ModelSpecs.of("sd15", {"sd": "m"})
    sid = support_id("cat", 0, specs, TINY)
    assert sid == support_id("cat", 0, specs, dataclasses.replace(TINY, n_images=9, batch_size=1))
    assert sid != support_id("cat", 0, specs, dataclasses.replace(TINY, steps=5))
    assert sid != support_id("cat", 0, ModelSpecs.of("sd15", {"sd": "other"}), TINY)
    assert sid != support_id("cat", 1, specs, TINY)
    assert sid == support_id("cat", 0, ModelSpecs.of("sd15", {"sd": "m", "clip": "x", "dino": "y"}), TINY)


@pytest.mark.parametrize(
    "template,name,first",
    [
        ("A good picture of a {}", "cat", 6),
        ("A good picture of a {}", "chocolate glazed donut", 6),
        ("A good picture of a {}", "hot-dog stand", 6),
        ("{} in the wild", "potted plant", 1),
    ],
)
def test_class_token_indices_cover_exactly_the_name(template, name, first):
    tok = offline_clip_tokenizer()
    idx = sampling.class_token_indices(tok, template, name)
    full = tok(template.format(name)).input_ids
    name_ids = tok(name, add_special_tokens=False).input_ids
    assert idx == list(range(first, first + len(name_ids)))
    assert [full[i] for i in idx] == name_ids
    prefix, suffix = template.split("{}")
    assert full[: idx[0]] == [tok.bos_token_id] + tok(prefix, add_special_tokens=False).input_ids
    assert full[idx[-1] + 1 :] == tok(suffix, add_special_tokens=False).input_ids + [tok.eos_token_id]
    if name == "chocolate glazed donut":
        assert len(idx) == 3


def test_class_token_indices_drop_tokens_past_the_context():
    tok = offline_clip_tokenizer()
    idx = sampling.class_token_indices(tok, "A good picture of a {}", " ".join(["cat"] * 100))
    assert idx == list(range(6, 76))  # position 76 is the end-of-text token


def test_a_bad_sampler_setting_is_refused_as_the_config_is_made_naming_it_and_the_cli_its_option():
    for change, setting, option in [
        ({"prompt_template": "a photo"}, "prompt_template", "--prompt-template"),
        ({"size": 60}, "size", "--size"),
        ({"batch_size": 0}, "batch_size", "--batch-size"),
        ({"guidance_scale": 0.0}, "guidance_scale", "--guidance"),
    ]:
        with pytest.raises(InvalidSetting) as info:
            dataclasses.replace(TINY, **change)
        assert (
            info.value.setting == setting and str(info.value).startswith(setting + " ") and "--" not in str(info.value)
        )
        assert phrase(info.value).startswith(option + " ")


def test_capturing_processor_matches_stock_attention_and_records_class_tokens():
    """Output identical to AttnProcessor2_0; recorded map = diffusers' own attention probabilities
    of the chosen tokens, summed over heads, for the conditional (second) half of the batch only
    (a map of the layer's own 3×3 size: bicubic resizing to the same size changes nothing)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    hidden = torch.randn(4, 9, 16)  # [neg, neg, pos, pos], 3x3 positions
    text = torch.randn(4, 7, 12)
    tokens = [2, 3]
    rec = sampling.AttributionRecorder(tokens, cfg=True, size=3)
    with torch.no_grad():
        attn.set_processor(sampling.CapturingCrossAttnProcessor(rec))
        out = attn(hidden, encoder_hidden_states=text)
        attn.set_processor(AttnProcessor2_0())
        ref_out = attn(hidden, encoder_hidden_states=text)
        q = attn.head_to_batch_dim(attn.to_q(hidden[2:]))
        k = attn.head_to_batch_dim(attn.to_k(text[2:]))
        probs = attn.get_attention_scores(q, k).reshape(2, 2, 9, 7)  # (B, heads, n, tokens)
    assert torch.equal(out, ref_out)
    expected = probs[..., tokens].sum(dim=(1, 3))
    assert torch.allclose(rec.maps().flatten(1), expected, atol=1e-6)


def _bicubic(m: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(m[None, None], size=(size, size), mode="bicubic", align_corners=False)[0, 0]


def test_attribution_maps_are_upsampled_bicubic_and_clamped_per_head_and_token():
    """sdov sd.py (its DAAM store): every layer's map of each head and class token is resized to the
    map size bicubically and clamped at 0, then summed over heads, tokens, layers and steps. Sharp
    peaks make bicubic overshoot below 0, so the clamp before the sum shows."""
    probs = torch.full((1, 2, 16, 4), 0.01)  # one image, 2 heads, a 4×4 level, 4 text tokens
    probs[0, 0, 5, 1] = probs[0, 1, 6, 1] = probs[0, 0, 10, 3] = 0.97  # peaks side by side: lobes meet peaks
    coarse = torch.full((1, 1, 4, 4), 0.25)
    coarse[0, 0, 0, 1] = 0.9  # a 2×2 level
    rec = sampling.AttributionRecorder([1, 3], cfg=False, size=8)
    rec.add(probs)
    rec.add(coarse)
    maps = [probs[0, h, :, t].view(4, 4) for h in range(2) for t in (1, 3)] + [
        coarse[0, 0, :, t].view(2, 2) for t in (1, 3)
    ]
    want = sum(_bicubic(m, 8).clamp(min=0) for m in maps)
    torch.testing.assert_close(rec.maps()[0], want)
    summed_first = sum(_bicubic(m, 8) for m in maps).clamp(min=0)  # the clamp after the sum
    bilinear = sum(F.interpolate(m[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0] for m in maps)
    assert (rec.maps()[0] - summed_first).abs().max() > 1e-3 and (rec.maps()[0] - bilinear).abs().max() > 1e-2


def test_self_attention_keeps_the_fast_path_and_processors_are_restored(tiny_stages):
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = tiny_stages.store.sd().unet
    procs = sampling.capture_processors(unet, sampling.AttributionRecorder([6], cfg=True, size=8))
    cross = [k for k in procs if k.endswith("attn2.processor")]
    assert cross and all(isinstance(procs[k], sampling.CapturingCrossAttnProcessor) for k in cross)
    assert all(type(p) is AttnProcessor2_0 for k, p in procs.items() if k not in cross)
    before = unet.attn_processors
    tiny_stages.generator().generate("cat", [1], TINY)
    after = unet.attn_processors
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)


# --------------------------------------------------------------------------- support sets


def test_support_set_is_cached_with_shapes_and_metadata(reference, tiny_stages):
    cache, sid, meta = reference
    assert meta["n_images"] == TINY.n_images
    assert meta["name"] == "cat" and meta["norm"] == "cat" and meta["seed"] == 0
    assert meta["prompt"] == "A good picture of a cat" and meta["negative_prompt"] == TINY.negative_prompt
    assert meta["steps"] == 4 and meta["guidance_scale"] == 8.0 and meta["size"] == 64
    assert meta["scheduler"] == "dpmsolver++" and meta["attribution_size"] == 16
    assert meta["token_indices"] == [6]
    assert meta["generator"] == tiny_stages.generator().identity() and meta["models"]["preset"] == "tiny"
    assert meta["created_at"]
    samples = support.load_samples(cache, sid, TINY.n_images)
    for s in samples:
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.attribution.shape == (16, 16) and s.attribution.dtype == np.float32
        assert np.isfinite(s.attribution).all() and (s.attribution >= 0).all() and s.attribution.sum() > 0
    assert not np.array_equal(samples[0].image, samples[1].image)
    assert verify(cache) == []
    with pytest.raises(IncompleteSupportSet) as info:
        support.load_samples(cache, sid, TINY.n_images + 1)
    assert (info.value.have, info.value.need, info.value.name) == (TINY.n_images, TINY.n_images + 1, "cat")
    assert "complete it with: ovdiff sample cat" in phrase(info.value)


def test_multi_word_class_records_all_its_tokens(tmp_path, tiny_stages):
    cfg = dataclasses.replace(TINY, n_images=1)
    _, meta = support.ensure_support_set(Cache(tmp_path), tiny_stages, " chocolate glazed donut ", 0, cfg)
    assert meta["name"] == " chocolate glazed donut " and meta["norm"] == "chocolate glazed donut"
    assert meta["token_indices"] == [6, 7, 8]


def test_same_class_and_seed_reproduce_whatever_else_is_sampled(reference, tmp_path, tiny_stages):
    ref_cache, ref_sid, _ = reference
    cache = Cache(tmp_path)
    support.ensure_support_set(cache, tiny_stages, "dog", 0, TINY)
    sid, _ = support.ensure_support_set(cache, tiny_stages, "cat", 0, TINY)
    assert sid == ref_sid
    for a, b in zip(support.load_samples(cache, sid, 4), support.load_samples(ref_cache, ref_sid, 4), strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.attribution, b.attribution)
    other_sid, _ = support.ensure_support_set(cache, tiny_stages, "cat", 1, dataclasses.replace(TINY, n_images=1))
    assert other_sid != sid
    assert not np.array_equal(cache.support_image(other_sid, 0), cache.support_image(sid, 0))


def test_killed_run_resumes_and_generates_only_the_rest(reference, tmp_path, tiny_stages):
    ref_cache, ref_sid, _ = reference
    cache = Cache(tmp_path)

    def killed_after_first_batch(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    start = generated(tiny_stages)
    with pytest.raises(KeyboardInterrupt):
        support.ensure_support_set(cache, tiny_stages, "cat", 0, TINY, killed_after_first_batch)
    assert generated(tiny_stages) - start == 2
    sid = support_id("cat", 0, tiny_stages.specs, TINY)
    assert cache.support_meta(sid)["n_images"] == 2

    seen = []
    support.ensure_support_set(cache, tiny_stages, "cat", 0, TINY, lambda d, t: seen.append((d, t)))
    assert generated(tiny_stages) - start == 4
    assert seen == [(2, 4), (4, 4)]
    for a, b in zip(support.load_samples(cache, sid, 4), support.load_samples(ref_cache, ref_sid, 4), strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.attribution, b.attribution)

    support.ensure_support_set(cache, tiny_stages, "cat", 0, TINY)  # complete: nothing to do
    assert generated(tiny_stages) - start == 4


def test_contact_sheet_lays_out_image_and_heat_map_pairs(reference):
    cache, sid, _ = reference
    samples = support.load_samples(cache, sid, 4)
    sheet = sheets.contact_sheet(samples[:3], "cat", thumb=32, columns=2)
    assert sheet.size == (4 + 2 * (2 * 32 + 4 + 4), 24 + 2 * (32 + 4) + 4)
    px = np.asarray(sheet)
    first_overlay = px[24 : 24 + 32, 4 + 32 + 4 : 4 + 64 + 4]
    assert not np.array_equal(first_overlay, np.asarray(samples[0].image)[::2, ::2])  # heat map drawn
    assert (px[24 + 36 :, 4 + 72 :] == 255).all()  # the 4th cell stays empty


# --------------------------------------------------------------------------- CLI


def test_cli_samples_then_shows_a_contact_sheet(tmp_path):
    runner = CliRunner()
    classes = tmp_path / "classes.txt"
    classes.write_text("# vocabulary\nchocolate glazed donut\n", encoding="utf-8")
    common = ["--preset", "tiny", "--cache", str(tmp_path / "c"), "--device", "cpu", "--n-images", "2", "--steps", "2"]
    res = runner.invoke(app, ["sample", "cat", "--classes-file", str(classes), *common])
    assert res.exit_code == 0, res.output
    assert "4 generated, 0 already cached" in res.output

    res = runner.invoke(app, ["sample", "cat", *common, "-q"])  # -q: the result line only
    assert res.exit_code == 0 and len(res.output.splitlines()) == 1 and "0 generated, 2 already cached" in res.output

    res = runner.invoke(app, ["sample", "--show", "chocolate glazed donut", "--out", str(tmp_path / "s.png"), *common])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (4 + 2 * (2 * 160 + 8), 24 + 160 + 8)

    res = runner.invoke(app, ["sample", "--show", "dog", "--out", str(tmp_path / "d.png"), *common])
    assert res.exit_code == 2 and "draw it first with: ovdiff sample dog --seed 0" in res.output
    assert not (tmp_path / "d.png").exists()


def test_cached_support_sets_and_classes_load_no_weights(tmp_path, monkeypatch):
    """Once a class is built, sampling it again, drawing its sheet and adding it again load no model."""
    import ovdiff_cli.models.sd
    import ovdiff_cli.models.vit

    runner = CliRunner()
    common = ["--preset", "tiny", "--cache", str(tmp_path / "c"), "--device", "cpu", "--n-images", "2"]
    assert runner.invoke(app, ["protos", "add", "cat", *common]).exit_code == 0

    def no_weights(*args, **kwargs):
        raise AssertionError("a model was loaded although everything is cached")

    for module, name in (
        (ovdiff_cli.models.sd, "random_sd"),
        (ovdiff_cli.models.vit, "load_clip"),
        (ovdiff_cli.models.vit, "load_timm_vit"),
    ):
        monkeypatch.setattr(module, name, no_weights)
    for args in (
        ["sample", "cat"],
        ["sample", "--show", "cat", "--out", str(tmp_path / "s.png")],
        ["protos", "add", "cat"],
    ):
        res = runner.invoke(app, [*args, *common])
        assert res.exit_code == 0, (args, res.output, res.exception)
    assert (tmp_path / "s.png").is_file()


def test_cli_rejects_missing_names_and_show_without_out(tmp_path):
    runner = CliRunner()
    common = ["--preset", "tiny", "--cache", str(tmp_path)]
    res = runner.invoke(app, ["sample", *common])
    assert res.exit_code == 2 and "no class names" in res.output
    res = runner.invoke(app, ["sample", "--show", "cat", *common])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["sample", "cat", "cat", *common])
    assert res.exit_code == 2 and "twice" in res.output
