"""Today's extractor families (models/dense.py) on their tiny configs: the table, the tokens each part
reads, a class build and a segment run through the CLI, and cache keys that keep model versions apart."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import VOC_SAMPLE
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import Stages
from ovdiff_cli.config import FAMILY_PARTS, PARTS, parse_spec
from ovdiff_cli.engines.vocab import ensure_classes
from ovdiff_cli.models.dense import FAMILIES, TINY
from ovdiff_cli.models.presets import PRESETS, ModelSpecs
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.store.keys import class_ids

ALL = "+".join(FAMILIES)
TINY_PRESET = PRESETS["tiny"]


def test_the_table_names_real_timm_models_of_the_tiny_configs_classes():
    """Each default spec is a pretrained timm model whose class and patch are the table's and the tiny config's."""
    import timm

    assert (
        tuple(FAMILIES) == FAMILY_PARTS
    )  # config's names of the families (extractor specs, cache keys) are the table's
    for part, fam in FAMILIES.items():
        assert part in PARTS and parse_spec(f"sd+{part}") == ["sd", part]
        assert fam.spec in timm.list_models(pretrained=True), fam.spec
        assert fam.tokens in ("keys", "outputs")
        full = timm.create_model(fam.arch, pretrained=False, num_classes=0, depth=1)  # one block: cheap, same class
        assert int(full.patch_embed.patch_size[0]) == fam.patch, part
        assert full.pretrained_cfg["hf_hub_id"] == f"timm/{fam.spec}", part


@pytest.mark.parametrize("part", list(FAMILIES))
def test_each_part_reads_its_models_own_tokens_at_any_size(tiny_stages, part):
    """Keys: the last block's qkv keys of the patch tokens; outputs: timm's normed patch tokens.
    Either way prefix tokens (class, registers) are dropped and the values are the model's own (raw)."""
    fam = FAMILIES[part]
    ext = tiny_stages.part(part)
    model = ext.backbone.model
    assert ext.stride == fam.patch and model.embed_dim == TINY["embed_dim"]
    h, w = 3 * fam.patch, 5 * fam.patch
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3))
    norm = (x - torch.tensor(ext.backbone.mean).view(1, 3, 1, 1)) / torch.tensor(ext.backbone.std).view(1, 3, 1, 1)
    seen = {}
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.update(qkv=out))
    try:
        with torch.inference_mode():
            tokens = model.forward_features(norm)
    finally:
        hook.remove()
    if fam.tokens == "keys":
        c = seen["qkv"].shape[-1] // 3
        want = seen["qkv"][:, model.num_prefix_tokens :, c : 2 * c]
    else:
        want = tokens[:, model.num_prefix_tokens :]
    got = ext(x)
    assert tuple(got.shape) == (1, TINY["embed_dim"], 3, 5)
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), want, rtol=1e-4, atol=1e-5)


def test_a_patch14_part_builds_prototypes_at_the_feature_size_rounded_to_its_stride(tiny_stages):
    ext = tiny_stages.part("dinov2")
    assert ext.fit(64) == 70 and ext.fit(70) == 70 and tiny_stages.part("dinov3").fit(64) == 64


def test_every_family_builds_a_class_and_segments_through_the_cli(tmp_path):
    """`protos add --extractor <every family>` then `segment`: a mask of the image's size; a second
    add finds every part cached and featurises nothing."""
    runner = CliRunner()
    common = ["--cache", str(tmp_path / "cache"), "--preset", "tiny", "--device", "cpu", "-q", "--extractor", ALL]
    res = runner.invoke(app, ["protos", "add", "cat", *common])
    assert res.exit_code == 0, res.output
    assert f"extractor {ALL}" in res.output and "0 featurised" not in res.output
    again = runner.invoke(app, ["protos", "add", "cat", *common])
    assert again.exit_code == 0 and "0 featurised" in again.output, again.output
    img = next((VOC_SAMPLE / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "masks"
    res = runner.invoke(app, ["segment", str(img), "--classes", "cat,sky", "--out", str(out), *common])
    assert res.exit_code == 0, res.output
    with Image.open(out / f"{img.stem}.png") as m, Image.open(img) as im:
        assert m.size == im.size and set(np.unique(np.asarray(m))) <= {0, 1, 2}


def test_two_versions_of_a_family_never_share_a_cache_entry():
    base = ModelSpecs.of("sd15")
    cfg = dataclasses.replace(TINY_PRESET.protos, extractor="sd+dinov2")
    ids = class_ids("cat", 0, base, TINY_PRESET.sample, cfg)
    small = class_ids(
        "cat", 0, ModelSpecs.of("sd15", {"dinov2": "vit_small_patch14_dinov2.lvd142m"}), TINY_PRESET.sample, cfg
    )
    assert base.spec("dinov2") == FAMILIES["dinov2"].spec
    assert ids["sd"] == small["sd"] and ids["dinov2"] != small["dinov2"]
    reg = class_ids("cat", 0, base, TINY_PRESET.sample, dataclasses.replace(cfg, extractor="sd+dinov2reg"))
    assert reg["dinov2reg"] != ids["dinov2"]
    assert ModelSpecs.of("tiny").spec("dinov3") == "tiny" and ModelSpecs.of("sd15-random").spec("dinov3") == "random"
    assert ModelSpecs.of("procedural").spec("dinov3") is None


def test_a_class_built_once_serves_every_part_it_has(tmp_path):
    """Built with sd+dinov2+siglip2, the class answers dinov2 alone and siglip2+sd without featurising again."""
    stages = Stages.for_run("tiny", device="cpu", dtype="fp32")
    cache = Cache(tmp_path / "cache")
    cfg = dataclasses.replace(TINY_PRESET.protos, extractor="sd+dinov2+siglip2")
    ensure_classes(cache, stages, ["cat"], 0, TINY_PRESET.sample, cfg)
    before = stages.calls["extract"]
    for spec in ("dinov2", "siglip2+sd"):
        (got,) = ensure_classes(cache, stages, ["cat"], 0, TINY_PRESET.sample, dataclasses.replace(cfg, extractor=spec))
        assert sorted(got.parts) == sorted(spec.split("+"))
    assert stages.calls["extract"] == before


def test_the_manual_lists_every_family_with_its_default_spec():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs/models.md").read_text(encoding="utf-8")
    for part, fam in FAMILIES.items():
        assert f"| `{part}` | `{fam.spec}` | {fam.patch} |" in page, part
