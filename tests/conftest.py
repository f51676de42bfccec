"""Shared fixtures. Tests never reach a network: the Hugging Face hub is forced offline before anything imports it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("OVDIFF_CACHE", None)
os.environ.pop("OVDIFF_PRESET", None)

import contextlib  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC_SAMPLE = SHARED_DATA / "voc-sample" / "VOC2012"


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
        vision_config=SamVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, output_channels=32,
                                      image_size=256, mlp_dim=64, global_attn_indexes=[0], window_size=4, num_pos_feats=16),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=256, mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_dim=64,
                                                 iou_head_hidden_dim=32),
    )  # fmt: skip
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
