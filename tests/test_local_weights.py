"""The real loading code, offline: Stable Diffusion from a local diffusers directory (`--sd-model DIR`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.models.presets import ModelSpecs
from ovdiff_cli.models.sd import random_sd
from ovdiff_cli.models.store import ModelStore


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """The tiny SD parts saved in the layout of a hub snapshot (unet/, vae/, text_encoder/, …)."""
    root = tmp_path_factory.mktemp("sd-local")
    parts = random_sd("tiny", 0, torch.device("cpu"), torch.float32)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(parts, name).save_pretrained(root / name)
    return root, parts


def test_sd_loads_from_a_local_directory(sd_dir):
    root, original = sd_dir
    loaded = ModelStore(ModelSpecs.of("sd15", {"sd": str(root)}), device="cpu", dtype="fp32").sd()
    assert loaded.source == str(root)
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert loaded.scheduler.config.algorithm_type == "dpmsolver++"
    for a, b in zip(loaded.unet.parameters(), original.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    ids = loaded.tokenizer("A good picture of a cat").input_ids
    assert ids == original.tokenizer("A good picture of a cat").input_ids


def test_sample_with_sd_model_option(sd_dir, tmp_path):
    root, _ = sd_dir
    res = CliRunner().invoke(
        app,
        [
            "sample",
            "cat",
            "--preset",
            "sd15",
            "--sd-model",
            str(root),
            "--n-images",
            "2",
            "--size",
            "64",
            "--steps",
            "2",
            "--cache",
            str(tmp_path / "c"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    from ovdiff_cli.store.cache import Cache

    ((sid, meta),) = [(k.decode().split("/")[1], v) for k, v in Cache(tmp_path / "c").scan(b"s/") if k.count(b"/") == 1]
    assert b'"n_images": 2' in meta and str(root).encode() in meta
    assert np.isfinite(Cache(tmp_path / "c").attribution(sid, 1)).all()


def test_missing_local_directory_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "sample",
            "cat",
            "--preset",
            "sd15",
            "--sd-model",
            str(tmp_path / "nope"),
            "--cache",
            str(tmp_path / "c"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 2
    assert "Stable Diffusion" in res.output and "--sd-model" in res.output and "Traceback" not in res.output
    assert "no such file or folder" in res.output and "hf download" not in res.output  # a typo, not a download to make


def test_dino_loads_from_a_downloaded_folder(tmp_path):
    """A folder as `hf download timm/vit_base_patch8_224.dino --local-dir DIR` leaves it (full size, random)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    loaded = ModelStore(ModelSpecs.of("sd15", {"dino": str(tmp_path)}), device="cpu", dtype="fp32").vit("dino")
    assert torch.equal(loaded.blocks[-1].attn.qkv.weight, model.blocks[-1].attn.qkv.weight)
    assert loaded(torch.rand(1, 3, 64, 48)).shape == (1, 768)  # any input size
