"""Generators beyond SD1.5 (`--generator`: sd-turbo, sdxl, sdxl-turbo, sd3; FLUX.1 in test_flux.py) on tiny configs: attribution mass
on the class tokens' region of a synthetic attention input, a draw per family, Turbo's settings,
cache keys per generator, and `protos add` / `segment` through the CLI."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import VOC_SAMPLE
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import Stages
from ovdiff_cli.errors import InvalidSetting, OvdiffError
from ovdiff_cli.method.beyond.mmdit import JointAttributionProcessor
from ovdiff_cli.method.stage1_support.sampling import AttributionRecorder, capture_processors
from ovdiff_cli.models.generators import GENERATORS, MMDIT_PIPELINES, parse_generator
from ovdiff_cli.models.presets import PRESETS, ModelSpecs
from ovdiff_cli.models.weights import generator_files
from ovdiff_cli.store.keys import generator_identity, support_id

TINY = PRESETS["tiny"].sample
TURBO = dataclasses.replace(TINY, steps=2, guidance_scale=1.0)


def tiny_unet(family: str):
    stages = Stages.for_run("tiny", device="cpu", dtype="fp32", overrides={"generator": family})
    return stages, stages.store.generator_parts().unet


UNET_FAMILIES = [g for g, f in GENERATORS.items() if f.pipeline not in MMDIT_PIPELINES]


@pytest.mark.parametrize("family", UNET_FAMILIES)
def test_attribution_mass_lies_on_the_class_tokens_region(family):
    """Every cross-attention layer of the family's UNet, with identity q/k projections: in every head,
    image queries inside an 8×8 grid's top-left quadrant point at the class tokens' keys, the others
    at the other tokens. The recorded map holds (almost) all its mass there: per pixel, one unit per
    head and layer (the class tokens' summed probability), and nothing from the other tokens."""
    _, unet = tiny_unet(family)
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    recorder = AttributionRecorder([3, 4], cfg=False, size=8)
    (proc,) = {type(p): p for p in capture_processors(unet, recorder).values() if hasattr(p, "recorder")}.values()
    side, region = 8, torch.zeros(64, dtype=torch.bool)
    region.view(8, 8)[:4, :4] = True
    for attn in layers:
        attn = copy.deepcopy(attn)
        d_q, d_kv, inner = attn.to_q.in_features, attn.to_k.in_features, attn.to_q.out_features
        assert inner <= min(d_q, d_kv), (family, inner, d_q, d_kv)
        with torch.no_grad():
            attn.to_q.weight.copy_(torch.eye(inner, d_q))
            attn.to_k.weight.copy_(torch.eye(inner, d_kv))
        heads = torch.arange(attn.heads) * (inner // attn.heads)  # each head's first channel
        text = torch.zeros(1, 77, d_kv)
        text[0, :, heads + 1] = 1.0  # every other token: each head's second channel
        text[0, 3:5] = 0.0
        text[0, 3:5, heads] = 1.0  # the class tokens: each head's first channel
        hidden = torch.zeros(1, side * side, d_q)
        hidden[0, region.nonzero()[:, 0, None], heads] = 40.0
        hidden[0, (~region).nonzero()[:, 0, None], heads + 1] = 40.0
        proc(attn, hidden, encoder_hidden_states=text)
    maps = recorder.maps()[0].flatten().numpy()
    assert maps[region.numpy()].sum() / maps.sum() > 0.99
    assert maps[region.numpy()].mean() == pytest.approx(sum(a.heads for a in layers), rel=0.02)


@pytest.mark.parametrize("family", list(GENERATORS))
def test_each_family_draws_with_maps_and_its_identity_is_its_key(family):
    stages = Stages.for_run("tiny", device="cpu", dtype="fp32", overrides={"generator": family})
    gen = stages.generator()
    samples = gen.generate("cat", [1, 2], TURBO if GENERATORS[family].turbo else TINY)
    assert [s.image.shape for s in samples] == [(64, 64, 3)] * 2
    assert all(
        s.attribution.shape == (16, 16) and (s.attribution >= 0).all() and s.attribution.sum() > 0 for s in samples
    )
    assert gen.identity() == generator_identity(stages.specs) and gen.identity()["family"] == family


def test_sd3_joint_attention_mass_lies_on_the_class_tokens_region():
    """Every joint-attention layer of the tiny SD3 transformer, wrapped by JointAttributionProcessor,
    with identity image-query and text-key projections: image tokens in the top-left quadrant point
    at the class tokens, the others at other tokens; the stock processor still gives the layer's output."""
    stages = Stages.for_run("tiny", device="cpu", dtype="fp32", overrides={"generator": "sd3"})
    model = stages.store.generator_parts().transformer
    layers = [m for name, m in model.named_modules() if name.endswith(".attn")]
    assert layers
    recorder = AttributionRecorder([3, 4], cfg=False, size=8)
    side, region = 8, torch.zeros(64, dtype=torch.bool)
    region.view(8, 8)[:4, :4] = True
    for attn in layers:
        attn = copy.deepcopy(attn)
        d, inner = attn.to_q.in_features, attn.to_q.out_features
        with torch.no_grad():
            attn.to_q.weight.copy_(torch.eye(inner, d))
            attn.to_q.bias.zero_()
            attn.add_k_proj.weight.copy_(torch.eye(inner, attn.add_k_proj.in_features))
            attn.add_k_proj.bias.zero_()
        attn.norm_q = attn.norm_added_k = None
        heads = torch.arange(attn.heads) * (inner // attn.heads)
        text = torch.zeros(1, 77, attn.add_k_proj.in_features)
        text[0, :, heads + 1] = 1.0
        text[0, 3:5] = 0.0
        text[0, 3:5, heads] = 1.0
        hidden = torch.zeros(1, side * side, d)
        hidden[0, region.nonzero()[:, 0, None], heads] = 40.0
        hidden[0, (~region).nonzero()[:, 0, None], heads + 1] = 40.0
        want = attn.processor(attn, hidden, encoder_hidden_states=text)
        got = JointAttributionProcessor(attn.processor, recorder)(attn, hidden, encoder_hidden_states=text)
        torch.testing.assert_close(got, want)
    maps = recorder.maps()[0].flatten().numpy()
    assert maps[region.numpy()].sum() / maps.sum() > 0.99
    assert maps[region.numpy()].mean() == pytest.approx(sum(a.heads for a in layers), rel=0.02)


def test_turbo_refuses_many_steps_and_guidance_naming_the_option():
    stages, _ = tiny_unet("sdxl-turbo")
    for change, setting in (({"steps": 30}, "steps"), ({"guidance_scale": 8.0}, "guidance_scale")):
        with pytest.raises(InvalidSetting) as info:
            stages.generator().generate("cat", [1], dataclasses.replace(TURBO, **change))
        assert info.value.setting == setting


def test_generators_never_share_a_support_set_key():
    ids = {g: support_id("cat", 0, ModelSpecs.of("sd15", {"generator": g}), TURBO) for g in (None, *GENERATORS)}
    ids["local"] = support_id("cat", 0, ModelSpecs.of("sd15", {"generator": "sdxl=/w/my-sdxl"}), TURBO)
    assert len(set(ids.values())) == len(ids)
    assert ids[None] == support_id("cat", 0, ModelSpecs.of("sd15"), TURBO)  # the paper's key is unchanged
    assert parse_generator("SDXL-Turbo", "hub") == (GENERATORS["sdxl-turbo"], "stabilityai/sdxl-turbo")
    with pytest.raises(OvdiffError, match="sd-turbo, sdxl, sdxl-turbo, sd3, flux-schnell, flux-dev, flux"):
        parse_generator("flux2", "hub")
    assert "text_encoder_2/model.safetensors" in generator_files(GENERATORS["sdxl"])


def test_protos_add_and_segment_with_sdxl_turbo_through_the_cli(tmp_path):
    """Turbo's 4 steps and no guidance come with --generator; the support set is keyed by it."""
    runner = CliRunner()
    common = [
        "--cache",
        str(tmp_path / "c"),
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "-q",
        "--generator",
        "sdxl-turbo",
        "--extractor",
        "sd+dinov3",
    ]
    res = runner.invoke(app, ["protos", "add", "cat", "dog", *common])
    assert res.exit_code == 0, res.output
    assert "8 images generated" in res.output
    img = next((VOC_SAMPLE / "JPEGImages").glob("*.jpg"))
    res = runner.invoke(app, ["segment", str(img), "--classes", "cat,dog", "--out", str(tmp_path / "m"), *common])
    assert res.exit_code == 0, res.output
    again = runner.invoke(app, ["protos", "add", "cat", *common])
    assert again.exit_code == 0 and "0 images generated" in again.output, again.output
    bad = runner.invoke(app, ["sample", "cat", *common[:-2], "--steps", "30"])
    assert bad.exit_code != 0 and "--steps" in bad.output and "1 to 4" in bad.output


def test_the_modern_preset_names_its_models_and_says_it_is_unmeasured(tmp_path, monkeypatch):
    import json

    p = PRESETS["modern"]
    assert "NOT been measured" in p.description and p.weights == "hub"
    assert p.sample.steps == 4 and p.sample.guidance_scale == 1.0 and p.protos.extractor == "dinov3+siglip2"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    res = CliRunner().invoke(app, ["doctor", "--json", "--preset", "modern", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    repos = {w["role"]: w["repo"] for w in json.loads(res.stdout)["weights"]}
    assert repos == {
        "generator": "stabilityai/sdxl-turbo",
        "clip": "timm/vit_base_patch16_clip_224.openai",
        "filter": "timm/ViT-B-16-SigLIP2",
        "cutler": "http://dl.fbaipublicfiles.com/cutler/checkpoints/cutler_cascade_final.pth",  # Γ, the paper's
        "dinov3": "timm/vit_base_patch16_dinov3.lvd1689m",
        "siglip2": "timm/vit_base_patch16_siglip_224.v2_webli",
    }


def test_the_suggested_protos_add_command_carries_the_new_model_options():
    from ovdiff_cli.cli.common import add_command

    specs = ModelSpecs.of(
        "tiny", {"generator": "sdxl-turbo", "filter": "siglip2", "dinov2": "vit_small_patch14_dinov2.lvd142m"}
    )
    cmd = add_command(["cat"], 0, specs, TURBO, dataclasses.replace(PRESETS["tiny"].protos, extractor="sd+dinov2"))
    assert "--generator sdxl-turbo" in cmd and "--filter-model siglip2" in cmd
    assert "--part-model dinov2=vit_small_patch14_dinov2.lvd142m" in cmd
    assert "--generator" not in add_command(["cat"], 0, ModelSpecs.of("modern"), TURBO, PRESETS["modern"].protos)
