"""Feature extractors on the tiny preset: shapes, raw features per part, and keys equal to the models' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovdiff_cli.config import PART_INPUTS, InputSize, parse_spec, spec_parts
from ovdiff_cli.errors import OvdiffError
from ovdiff_cli.method.stage2_prototypes.features import (
    POS_CACHE,
    ClipKeysPart,
    SDPart,
    TimmKeysPart,
    iter_features,
    sd_feature_layers,
)


def test_spec_errors_name_the_choices():
    assert parse_spec("SD+dino") == ["sd", "dino"]
    with pytest.raises(OvdiffError, match="unknown extractor part 'vgg'.*sd, clip, dino, mae"):
        parse_spec("sd+vgg")
    with pytest.raises(OvdiffError, match="twice"):
        parse_spec("clip+clip")


@pytest.mark.parametrize(("name", "stride"), [("sd", 8), ("clip", 16), ("dino", 8), ("mae", 16)])
def test_shapes_and_raw_features_per_part(tiny_stages, name, stride):
    """A part hands on its backbone's features as they are: the authors average and cluster the raw
    features (sdov gen_proto_*.py) and normalise only when comparing (matching)."""
    part = tiny_stages.part(name)
    assert part.name == name and part.stride == stride
    before = tiny_stages.calls.get("extract", 0)
    x = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))  # not CLIP's native 224
    f = part(x)
    assert tiny_stages.calls["extract"] - before == 2
    assert f.dtype == torch.float32 and f.shape[0] == 2 and tuple(f.shape[-2:]) == (96 // stride, 64 // stride)
    torch.testing.assert_close(f, part.backbone(x), rtol=0, atol=0)
    norms = f.norm(dim=1)
    assert (norms - 1).abs().max() > 0.01 and norms.std() > 0  # not unit vectors: the raw keys' own norms


def test_sizes_not_multiple_of_stride_are_refused(tiny_stages):
    with pytest.raises(ValueError, match="multiple of the extractor stride 8"):
        tiny_stages.part("dino")(torch.rand(1, 3, 60, 64))


def test_spec_parts():
    assert spec_parts("sd+dino+clip") == ["sd", "dino", "clip"] and spec_parts("procedural") == ["procedural"]


def test_the_authors_input_sizes_per_part():
    """sdov predict.py: SD sees every crop at 512×512, CLIP (and MAE) at 448×448; DINO sees a crop as
    it is when both sides are at most 448, else its short side at 448 with the long side at most 800."""
    from ovdiff_cli.models.presets import ModelSpecs

    assert PART_INPUTS["sd"] == InputSize(square=512) and PART_INPUTS["clip"] == InputSize(square=448)
    assert PART_INPUTS["mae"] == InputSize(square=448) and PART_INPUTS["dino"] == InputSize(cap=448, long_cap=800)
    assert PART_INPUTS["sd"](336, 336) == (512, 512) and PART_INPUTS["clip"](336, 200) == (448, 448)
    dino = PART_INPUTS["dino"]
    assert dino(336, 336) == (336, 336) and dino(448, 300) == (448, 300)
    assert dino(448, 597) == (448, 597) and dino(448, 1000) == (358, 800) and dino(900, 600) == (672, 448)
    for preset in ("sd15", "sd15-random"):  # the full-size presets use the authors' sizes
        specs = ModelSpecs.of(preset)
        assert all(specs.input_size(p) == PART_INPUTS[p] for p in ("sd", "clip", "dino", "mae"))


def test_tiny_preset_scales_the_sizes_and_parts_see_crops_at_them(tiny_stages):
    """The tiny preset's equivalents (support 64 px, windows 96): SD 64, CLIP 96, DINO as is up to 96."""
    specs = tiny_stages.specs
    assert specs.input_size("sd") == InputSize(square=64) and specs.input_size("clip") == InputSize(square=96)
    assert specs.input_size("dino") == InputSize(cap=96, long_cap=176)
    seen = {}
    crops = torch.rand(2, 3, 64, 40, generator=torch.Generator().manual_seed(4))
    for name in ("sd", "clip", "dino"):
        part = tiny_stages.part(name)
        backbone = part.backbone
        part.backbone = lambda x, b=backbone, n=name: seen.setdefault(n, tuple(x.shape[-2:])) and b(x)
        try:
            part.window(crops)
        finally:
            part.backbone = backbone
    assert seen == {"sd": (64, 64), "clip": (96, 96), "dino": (64, 40)}


def test_clip_keys_equal_open_clip_at_native_size_and_run_at_96px(tiny_stages):
    part = ClipKeysPart(tiny_stages.store.clip(), tiny_stages.device)
    v = part.visual
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    seen = {}
    blk = v.transformer.resblocks[-2]
    hook = blk.attn.register_forward_pre_hook(lambda _m, args: seen.update(kx=args[1]))
    try:
        with torch.inference_mode():
            v((x - torch.tensor(part.mean).view(1, 3, 1, 1)) / torch.tensor(part.std).view(1, 3, 1, 1))
    finally:
        hook.remove()
    d = blk.attn.in_proj_weight.shape[1]
    want = F.linear(seen["kx"], blk.attn.in_proj_weight[d : 2 * d], blk.attn.in_proj_bias[d : 2 * d])[:, 1:]
    got = part(x)
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), want, rtol=1e-5, atol=1e-5)
    assert part.positional(14, 14) is v.positional_embedding
    assert tuple(part(torch.rand(1, 3, 96, 96)).shape[-2:]) == (6, 6)
    assert part.positional(6, 6).shape == (37, v.positional_embedding.shape[1])
    first = part.positional(6, 6)
    assert part.positional(6, 6) is first  # kept while it is among the last POS_CACHE sizes
    for side in range(1, 2 * POS_CACHE):  # one size per image: the oldest sizes leave
        last = part.positional(side, side + 1)
    assert part.positional(6, 6) is not first and part.positional(2 * POS_CACHE - 1, 2 * POS_CACHE) is last


def test_dino_keys_equal_timm_qkv_at_any_size(tiny_stages):
    part = TimmKeysPart(tiny_stages.store.vit("dino"), "dino", tiny_stages.device)
    m = part.model
    x = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(2))
    seen = {}
    hook = m.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.update(qkv=out))
    try:
        with torch.inference_mode():
            m.forward_features((x - torch.tensor(part.mean).view(1, 3, 1, 1)) / torch.tensor(part.std).view(1, 3, 1, 1))
    finally:
        hook.remove()
    c = seen["qkv"].shape[-1] // 3
    want = seen["qkv"][:, m.num_prefix_tokens :, c : 2 * c]
    got = part(x)
    assert tuple(got.shape) == (1, c, 6, 10)
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), want, rtol=1e-5, atol=1e-5)


def test_sd_layers_by_position_and_features_are_batch_independent(tiny_stages):
    unet = tiny_stages.store.sd().unet
    layers = sd_feature_layers(unet)
    ups = unet.up_blocks
    expected = [
        unet.down_blocks[0].attentions[0],
        *unet.mid_block.attentions,
        *ups[1].attentions,
        *ups[2].attentions,
        ups[3].attentions[-1],
    ]
    assert [id(layer) for layer in layers] == [id(e) for e in expected]
    part = SDPart(tiny_stages.store.sd(), tiny_stages.device)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    one, three = part(x[1:2]), part(x)
    assert one.shape == (1, sum(layer.transformer_blocks[0].attn2.to_q.out_features for layer in layers), 8, 8)
    torch.testing.assert_close(one, three[1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(part(x[1:2]), one)  # fixed noise: the same image gives the same features


def test_iter_features_batches_resizes_and_yields_each_batch_as_it_is_made(tiny_stages):
    ext = tiny_stages.part("dino")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (40, 64, 100)]
    seen = []
    batches = iter_features(ext, images, 64, batch_size=2, on_progress=lambda d, t: seen.append((d, t)))
    first, f = next(batches)
    assert first == 0 and tuple(f.shape) == (2, 64, 8, 8) and seen == [(2, 3)]  # nothing beyond the first batch yet
    last, g = next(batches)
    assert last == 2 and tuple(g.shape) == (1, 64, 8, 8) and seen == [(2, 3), (3, 3)] and next(batches, None) is None
    torch.testing.assert_close(f[1:2], next(iter_features(ext, images[1:2], 64))[1])
    with pytest.raises(OvdiffError, match="multiple of the extractor's stride"):
        next(iter_features(tiny_stages.part("clip"), images, 72))


def test_sd_features_encode_a_seeded_sample_of_the_vae_posterior(tiny_stages, monkeypatch):
    """The authors' `encode` samples the posterior (sdov sd.py); the draw is seeded, so features repeat."""
    import torch

    from ovdiff_cli.method.stage2_prototypes import features as feats

    vae = tiny_stages.store.sd().vae
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    dist = vae.encode(x).latent_dist
    eps = torch.randn(tuple(dist.mean.shape), generator=torch.Generator().manual_seed(feats.LATENT_SEED))
    z = feats.sample_latent(vae, x)
    assert torch.allclose(z, dist.mean + dist.std * eps) and not torch.allclose(z, dist.mean, atol=1e-3)
    assert torch.equal(z, feats.sample_latent(vae, x))
    part = tiny_stages.part("sd")
    images = torch.rand(1, 3, 64, 64)
    sampled = part(images).float()
    monkeypatch.setattr(feats, "sample_latent", lambda v, xi: v.encode(xi).latent_dist.mean)
    assert not torch.allclose(sampled, part(images).float(), atol=1e-4)  # SDPart uses the sample


def test_crops_resize_as_the_authors_tensor_resize_and_dino_takes_whole_patches(tiny_stages):
    """sdov predict.py resizes a crop tensor bilinearly without antialiasing, and DINO's patch embedding
    takes floor(w / 8) columns: a 448×597 crop is seen as its first 448×592 pixels (56×74 patches)."""
    import torch.nn.functional as F

    from ovdiff_cli.method.stage2_prototypes.features import Part

    class Seen:
        stride, name = 8, "dino"

        def __call__(self, x):
            self.x = x
            return torch.zeros(len(x), 1, x.shape[-2] // 8, x.shape[-1] // 8)

    crop = torch.rand(1, 3, 448, 597, generator=torch.Generator().manual_seed(2))
    dino = Part("dino", Seen(), PART_INPUTS["dino"])
    assert dino.window(crop).shape[-2:] == (56, 74)
    assert torch.equal(dino.backbone.x, crop[..., :448, :592])
    big = torch.rand(1, 3, 600, 900, generator=torch.Generator().manual_seed(3))  # → 448×672, no antialiasing
    dino.window(big)
    want = F.interpolate(big, size=(448, 672), mode="bilinear", align_corners=False).clamp(0, 1)
    assert torch.allclose(dino.backbone.x, want)
    clip = Part("clip", Seen(), PART_INPUTS["clip"])
    clip.window(big)
    want = F.interpolate(big, size=(448, 448), mode="bilinear", align_corners=False).clamp(0, 1)
    assert torch.allclose(clip.backbone.x, want)
