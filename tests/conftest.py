"""Shared fixtures. Tests never reach a network: the Hugging Face hub is forced offline before anything imports it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("OVDIFF_CACHE", None)
os.environ.pop("OVDIFF_PRESET", None)

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import ovdiff

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC_SAMPLE = SHARED_DATA / "voc-sample" / "VOC2012"
# The CLI options of the offline procedural world on the CPU, as most CLI tests run it.
PROC = ["--preset", "procedural", "--device", "cpu", "--dtype", "fp32"]


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str):
    """A tmpfs mounted at `where` (root only; CI runs as root), or the test skipped with the reason."""
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}; needs root): {r.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_stages():
    """The tiny preset's stages for the whole session, built as every command builds them (models once, in seconds)."""
    from ovdiff_cli.compose import Stages

    return Stages.for_run("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def sd15_random_stages():
    """Full-size SD1.5 / CLIP ViT-B/16 / DINO ViT-B/8 with seeded random weights (several GB of RAM:
    one set per session, fed only tiny images)."""
    from ovdiff_cli.compose import Stages

    return Stages.for_run("sd15-random", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def procedural_stages():
    from ovdiff_cli.compose import Stages

    return Stages.for_run("procedural", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory) -> Path:
    """A SAM with tiny random weights saved as a local model folder (what `--sam-model DIR` loads)."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    root = tmp_path_factory.mktemp("tiny-sam")
    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            output_channels=32,
            image_size=256,
            mlp_dim=64,
            global_attn_indexes=[0],
            window_size=4,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=256, mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
        ),
    )
    SamModel(cfg).save_pretrained(root)
    proc = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    SamProcessor(image_processor=proc).save_pretrained(root)
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` need real weights (and ideally a GPU): they run only with OVDIFF_SLOW=1."""
    if os.environ.get("OVDIFF_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="needs real weights: set OVDIFF_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sam2_dir(tmp_path_factory):
    """A SAM 2 with tiny random weights saved as a local model folder (what `--sam2-model DIR` loads)."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor
    from transformers.models.sam2.configuration_sam2 import (
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    size = 128
    root = tmp_path_factory.mktemp("tiny-sam2")
    torch.manual_seed(0)
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        num_attention_heads=1,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        fpn_hidden_size=32,
        backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
    )
    cfg = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=size, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    Sam2Model(cfg).save_pretrained(root)
    Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size})).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def api_world(tmp_path_factory):
    """Per test module: a procedural pipeline with a built vocabulary, its cache, and a folder of four scenes."""
    root = tmp_path_factory.mktemp("rel3")
    pipe = ovdiff.Pipeline(preset="procedural", cache=root / "cache", device="cpu", dtype="fp32")
    vocab = pipe.vocabulary(["kite", "sky", "grass"])
    images = root / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(ovdiff.procedural_scene(seed=20 + i)).save(images / f"im_{i:02d}.png")
    return root, pipe, vocab, images


def copy_of_api_cache(api_world, tmp_path: Path) -> Path:
    """A copy of `api_world`'s cache in `tmp_path` (the world's own stays untouched)."""
    root, _, _, _ = api_world
    from ovdiff_cli.store.cache import close_cache

    close_cache(root / "cache")
    dst = tmp_path / "cache"
    shutil.copytree(root / "cache", dst)
    return dst
