"""FLUX.1 as a generator (`--generator flux-schnell` / `flux` / `flux-dev`) on its tiny config: attribution
from both kinds of joint-attention block (mass on the class tokens' region of a synthetic input, the
model's own rotated q/k, the layer's output unchanged), T5 class tokens, embedded guidance, the CLI,
and `models download` / `doctor` with a stand-in hub."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import VOC_SAMPLE
from test_weights import fake_hub  # noqa: F401  (a fixture)
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import Stages
from ovdiff_cli.errors import InvalidSetting
from ovdiff_cli.method.beyond.flux import FluxAttributionProcessor
from ovdiff_cli.method.stage1_support.sampling import AttributionRecorder
from ovdiff_cli.models.overrides import generator_defaults
from ovdiff_cli.models.presets import PRESETS, ModelSpecs
from ovdiff_cli.store.keys import support_id

TINY = PRESETS["tiny"].sample
SCHNELL = dataclasses.replace(TINY, steps=2, guidance_scale=1.0)


@pytest.fixture(scope="module")
def schnell():
    stages = Stages.for_run("tiny", device="cpu", dtype="fp32", overrides={"generator": "flux-schnell"})
    return stages, stages.store.generator_parts()


def _blocks(transformer):
    """(attention module, double-stream?) of every block, double-stream first."""
    return [(b.attn, True) for b in transformer.transformer_blocks] + [
        (b.attn, False) for b in transformer.single_transformer_blocks
    ]


def test_attribution_mass_lies_on_the_class_tokens_region_in_both_kinds_of_block(schnell):
    """Every block of the tiny FLUX transformer, wrapped by FluxAttributionProcessor, with identity
    image-query and text-key projections and no q/k norms: image tokens in the top-left quadrant of an
    8×8 grid point at the class tokens (text positions 3, 4), the others at the other text tokens.
    The map holds (almost) all its mass there, one unit per head and block per pixel; the stock
    processor still gives the layer's output."""
    _, parts = schnell
    blocks = _blocks(parts.transformer)
    assert [double for _, double in blocks] == [True, False]
    recorder = AttributionRecorder([3, 4], cfg=False, size=8)
    n_text, side, region = 32, 8, torch.zeros(64, dtype=torch.bool)
    region.view(8, 8)[:4, :4] = True
    for attn, double in blocks:
        attn = copy.deepcopy(attn)
        d, inner = attn.to_q.in_features, attn.to_q.out_features
        to_k = attn.add_k_proj if double else attn.to_k
        with torch.no_grad():
            for proj in (attn.to_q, to_k):
                proj.weight.copy_(torch.eye(inner, d))
                proj.bias.zero_()
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            if hasattr(attn, norm):
                setattr(attn, norm, torch.nn.Identity())
        heads = torch.arange(attn.heads) * (inner // attn.heads)
        text = torch.zeros(1, n_text, d)
        text[0, :, heads + 1] = 1.0
        text[0, 3:5] = 0.0
        text[0, 3:5, heads] = 1.0
        image = torch.zeros(1, side * side, d)
        image[0, region.nonzero()[:, 0, None], heads] = 40.0
        image[0, (~region).nonzero()[:, 0, None], heads + 1] = 40.0
        args = (image, text) if double else (torch.cat([text, image], dim=1), None)
        want = attn.processor(attn, *args, None, None)
        got = FluxAttributionProcessor(attn.processor, recorder, n_text)(attn, *args, None, None)
        torch.testing.assert_close(got, want)
    maps = recorder.maps()[0].flatten().numpy()
    assert maps[region.numpy()].sum() / maps.sum() > 0.99
    assert maps[region.numpy()].mean() == pytest.approx(sum(a.heads for a, _ in blocks), rel=0.02)


def test_the_attribution_uses_the_models_own_normed_and_rotated_queries_and_keys(schnell, monkeypatch):
    """A forward pass of the tiny transformer with random weights and real RoPE positions: in every
    block, the recorded probabilities are the image-query × text-key block of softmax(QKᵀ/√d) formed
    from the very q and k the stock processor hands to fused attention, renormalised over the text."""
    import diffusers.models.transformers.transformer_flux as tf

    _, parts = schnell
    model = parts.transformer
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    fused = tf.dispatch_attention_fn
    monkeypatch.setattr(tf, "dispatch_attention_fn", lambda q, k, v, **kw: seen.append((q, k)) or fused(q, k, v, **kw))

    class Probs:
        def __init__(self):
            self.got: list[torch.Tensor] = []

        def add(self, probs):
            self.got.append(probs)

    probs, n_text, side = Probs(), 12, 6
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros(side * side), rows.flatten().float(), cols.flatten().float()], dim=-1)
    original = model.attn_processors
    model.set_attn_processor({n: FluxAttributionProcessor(p, probs, n_text) for n, p in original.items()})
    try:
        with torch.no_grad():
            model(
                hidden_states=torch.randn(2, side * side, 16, generator=g),
                encoder_hidden_states=torch.randn(2, n_text, 32, generator=g),
                pooled_projections=torch.randn(2, 32, generator=g),
                timestep=torch.tensor([0.7, 0.3]),
                img_ids=img_ids,
                txt_ids=torch.zeros(n_text, 3),
            )
    finally:
        model.set_attn_processor(original)
    assert len(seen) == len(probs.got) == 2
    for (q, k), got in zip(seen, probs.got, strict=True):  # q, k: (B, text + image, heads, d)
        q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()
        want = (q[:, :, n_text:] @ k[:, :, :n_text].transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        assert got.shape == (2, 2, side * side, n_text)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_class_tokens_are_found_in_t5s_tokenisation(schnell):
    stages, parts = schnell
    gen = stages.generator()
    tok = parts.tokenizer_2
    for template, name in (("A good picture of a {}", "cat"), ("a {} in the wild", "traffic light")):
        config = dataclasses.replace(TINY, prompt_template=template)
        ids = tok(template.format(name)).input_ids
        found = gen.token_indices(name, config)
        assert [ids[i] for i in found] == tok(name, add_special_tokens=False).input_ids
        assert tok.convert_ids_to_tokens(ids[found[0]]).startswith("▁")  # the name's first token, T5 has no start token
    assert gen.token_indices("cat", TINY) == [15, 16, 17]  # "▁A ▁g o o d ▁p i c t u r e ▁o f ▁a" precede it


def test_schnell_takes_no_guidance_and_dev_embeds_it(schnell):
    stages, _ = schnell
    with pytest.raises(InvalidSetting) as info:
        stages.generator().generate("cat", [1], dataclasses.replace(SCHNELL, guidance_scale=3.5))
    assert info.value.setting == "guidance_scale"
    with pytest.raises(InvalidSetting) as info:
        stages.generator().generate("cat", [1], dataclasses.replace(SCHNELL, size=66))
    assert info.value.setting == "size"
    dev = Stages.for_run("tiny", device="cpu", dtype="fp32", overrides={"generator": "flux-dev"}).generator()
    assert (
        dev.parts.transformer.config.guidance_embeds and not stages.generator().parts.transformer.config.guidance_embeds
    )
    low, high = (dev.generate("cat", [1], dataclasses.replace(SCHNELL, guidance_scale=s))[0] for s in (1.0, 3.5))
    assert (low.image != high.image).any() and (low.attribution != high.attribution).any()


def test_flux_is_schnell_and_the_families_never_share_a_support_set_key():
    key = {
        g: support_id("cat", 0, ModelSpecs.of("sd15", {"generator": g}), SCHNELL)
        for g in ("flux", "flux-schnell", "flux-dev", "sd3", "flux-dev=/w/my-flux")
    }
    assert key["flux"] == key["flux-schnell"]
    assert len({key[g] for g in ("flux-schnell", "flux-dev", "sd3", "flux-dev=/w/my-flux")}) == 4
    assert generator_defaults("flux", "hub") == {"steps": 4, "guidance_scale": 1.0}
    assert generator_defaults("flux-dev", "tiny") == {"guidance_scale": 3.5}  # FLUX's embedded guidance, not 8.0


def test_protos_add_and_segment_with_flux_through_the_cli(tmp_path):
    """`--generator flux` brings schnell's 4 steps and no guidance; `flux-schnell` finds its support sets."""
    runner = CliRunner()
    common = ["--cache", str(tmp_path / "c"), "--preset", "tiny", "--device", "cpu", "-q"]
    res = runner.invoke(app, ["protos", "add", "cat", "--generator", "flux", *common])
    assert res.exit_code == 0, res.output
    assert "4 images generated" in res.output
    img = next((VOC_SAMPLE / "JPEGImages").glob("*.jpg"))
    res = runner.invoke(
        app,
        ["segment", str(img), "--classes", "cat", "--out", str(tmp_path / "m"), "--generator", "flux-schnell", *common],
    )
    assert res.exit_code == 0, res.output
    again = runner.invoke(app, ["protos", "add", "cat", "--generator", "flux-schnell", *common])
    assert again.exit_code == 0 and "0 images generated" in again.output, again.output
    bad = runner.invoke(app, ["sample", "cat", "--generator", "flux", *common, "--guidance", "3.5"])
    assert bad.exit_code != 0 and "--guidance" in bad.output, bad.output


def test_download_and_doctor_know_flux_and_say_it_is_gated(fake_hub, tmp_path):  # noqa: F811
    _, calls = fake_hub
    args = ["--preset", "sd15", "--generator", "flux-dev", "--extractor", "dino+clip", "--cache", str(tmp_path / "c")]
    before = runner_json(["doctor", "--json", *args])
    gen = next(w for w in before["weights"] if w["role"] == "generator")
    assert (gen["repo"], gen["present"], gen["gated"]) == ("black-forest-labs/FLUX.1-dev", False, True)
    assert "Non-Commercial" in gen["licence"]
    text = CliRunner().invoke(app, ["doctor", *args])
    assert (
        "--generator flux-dev" in text.output and "https://huggingface.co/black-forest-labs/FLUX.1-dev" in text.output
    )
    res = CliRunner().invoke(app, ["models", "download", *args])
    assert res.exit_code == 0, res.output
    (flux,) = [c for c in calls if c["repo"] == "black-forest-labs/FLUX.1-dev"]
    assert {
        "transformer/diffusion_pytorch_model-*.safetensors",
        "text_encoder_2/model-*.safetensors",
        "tokenizer_2/*",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    } <= set(flux["files"])
    assert "unet/config.json" not in flux["files"] and "is gated" in res.output
    gen = next(w for w in runner_json(["doctor", "--json", *args])["weights"] if w["role"] == "generator")
    assert gen["present"] is True
    schnell = next(
        w
        for w in runner_json(["doctor", "--json", *args[:2], "--generator", "flux", *args[4:]])["weights"]
        if w["role"] == "generator"
    )
    assert schnell["repo"] == "black-forest-labs/FLUX.1-schnell" and schnell["licence"].startswith("Apache-2.0")


def runner_json(argv: list[str]) -> dict:
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)
