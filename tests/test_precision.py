"""The half-precision path, as a --dtype matrix on the tiny preset (fp32 and bf16 on the CPU, fp16 and
bf16 on CUDA when there is one: `make bench-gpu`), and fused SDPA attention in every backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VOC_SAMPLE
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import build_part
from ovdiff_cli.method.precision import mm_f32
from ovdiff_cli.method.stage4_segment.matching import match
from ovdiff_cli.models.presets import ModelSpecs, resolve_dtype
from ovdiff_cli.models.store import ModelStore

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run `make bench-gpu` on one")
MATRIX = [
    ("cpu", "fp32"),
    ("cpu", "bf16"),
    pytest.param("cuda", "fp16", marks=[gpu, pytest.mark.gpu]),
    pytest.param("cuda", "bf16", marks=[gpu, pytest.mark.gpu]),
]
TOL = {"fp32": 1e-5, "bf16": 1e-2, "fp16": 2e-3}  # cosine / norm error of unit vectors in that dtype
_STORES: dict[tuple[str, str], ModelStore] = {}


def store(device: str, dtype: str) -> ModelStore:
    """The tiny preset's models on `device` in `dtype`, built once per pair."""
    if (device, dtype) not in _STORES:
        _STORES[device, dtype] = ModelStore(ModelSpecs.of("tiny"), device, dtype)
    return _STORES[device, dtype]


@pytest.mark.parametrize(("device", "dtype"), MATRIX)
@pytest.mark.parametrize("part", ["sd", "dino", "clip"])
def test_features_stay_in_the_hub_dtype_and_match_fp32(device, dtype, part):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = build_part(part, store("cpu", "fp32"))(x)
    f = build_part(part, store(device, dtype))(x)
    assert f.dtype == resolve_dtype(dtype, f.device) and f.device.type == device
    f = f.float().cpu()
    assert (f.norm(dim=1) / ref.norm(dim=1) - 1).abs().max() < 50 * TOL[dtype]  # the raw features' fp32 norm
    cos = (f * ref).sum(1) / (f.norm(dim=1) * ref.norm(dim=1))
    assert cos.min() > 1 - 50 * TOL[dtype]  # and the fp32 direction


@pytest.mark.parametrize(("device", "dtype"), MATRIX)
def test_half_matching_accumulates_in_fp32(device, dtype):
    from ovdiff_cli.method.stage4_segment.bank import assemble_vocabulary
    from ovdiff_cli.types import ClassPrototypes

    g = torch.Generator().manual_seed(0)
    dim = 256
    protos = [
        ClassPrototypes(
            f"c{i}",
            "thing",
            {"class": torch.randn(3, dim, generator=g).numpy()},
            {"class": torch.randn(2, dim, generator=g).numpy()},
        )
        for i in range(3)
    ]
    vocab = assemble_vocabulary(protos, kinds=("class",))
    feats = torch.randn(2, dim, 6, 7, generator=g)
    ref, ref_best = match(feats, vocab)
    dt = resolve_dtype(dtype, torch.device(device))
    scores, best = match(feats.to(device, dt), vocab.to(device))
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.cpu(), ref, atol=5 * TOL[dtype], rtol=0)
    assert (best.cpu() == ref_best).float().mean() > 0.9
    # the rule itself: a sum of many half products keeps fp32 resolution
    a = torch.full((1, 4096), 0.01).to(device, dt)
    assert mm_f32(a, a.T).dtype == torch.float32
    torch.testing.assert_close(mm_f32(a, a.T).cpu(), (a.float() @ a.float().T).cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize(("device", "dtype"), MATRIX)
def test_build_and_segment_end_to_end_in_each_dtype(device, dtype, tmp_path):
    """Sampling with attribution capture, features, masks, prototypes, filter and matching in `dtype`."""
    src = sorted((VOC_SAMPLE / "JPEGImages").glob("*.jpg"))[0]
    out = tmp_path / "masks"
    res = CliRunner().invoke(
        app,
        [
            "segment",
            str(src),
            "--classes",
            "cat,dog",
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--device",
            device,
            "--dtype",
            dtype,
            "--cache",
            str(tmp_path / "cache"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    with Image.open(src) as im, Image.open(out / f"{src.stem}.png") as mask:
        assert mask.size == im.size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 2}  # background, cat, dog


def test_every_backbone_attention_runs_fused_sdpa(tiny_stages, monkeypatch):
    """SD (text encoder, UNet, VAE) and DINO call F.scaled_dot_product_attention in every attention layer; open_clip's
    nn.MultiheadAttention is called without weights, which torch runs as fused attention."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    models = tiny_stages.store
    sd = models.sd()
    for model in (sd.unet, sd.vae):
        assert all(isinstance(p, AttnProcessor2_0) for p in model.attn_processors.values())
    ext = build_part("sd", models)  # encodes the empty prompt: the text encoder's layers
    assert len(calls) == sd.text_encoder.config.num_hidden_layers
    calls.clear()
    ext(torch.rand(1, 3, 64, 64))
    assert len(calls) == len(sd.unet.attn_processors) + 1  # every UNet layer and the VAE encoder's attention
    calls.clear()
    dino = models.vit("dino")
    build_part("dino", models)(torch.rand(1, 3, 64, 64))
    assert (
        all(blk.attn.fused_attn for blk in dino.blocks) and len(calls) == len(dino.blocks) - 1
    )  # the last block's keys are read before its attention
    seen = []
    visual = models.clip().model.visual
    hooks = [
        b.attn.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw.get("need_weights")), with_kwargs=True)
        for b in visual.transformer.resblocks
    ]
    try:
        build_part("clip", models)(torch.rand(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen)


def test_dtype_auto_on_a_gpu_gives_the_authors_precisions():
    """sdov runs SD in fp16 and CLIP, DINO (and CutLER) in fp32; bf16 everywhere stays an explicit choice."""
    from ovdiff_cli.models.presets import role_dtype

    gpu = torch.device("cuda")
    assert role_dtype("sd", "auto", gpu) == torch.float16
    assert {role_dtype(r, "auto", gpu) for r in ("clip", "dino", "mae", "cutler")} == {torch.float32}
    assert {role_dtype(r, "bf16", gpu) for r in ("sd", "clip", "dino")} == {torch.bfloat16}
    assert role_dtype("sd", "auto", torch.device("cpu")) == torch.float32
    store = ModelStore(ModelSpecs.of("tiny"), device="cpu", dtype="auto")
    store.device = gpu  # what a CUDA run resolves to (no model is built here)
    assert (store.dtype_of("sd"), store.dtype_of("clip"), store.dtype_of("dino")) == (
        torch.float16,
        torch.float32,
        torch.float32,
    )
