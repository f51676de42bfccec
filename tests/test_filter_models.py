"""The category filter's model by spec (`--filter-model`): SigLIP2's sigmoid rule, PE-Core, tiny configs,
cache keys of their text embeddings, and a segment run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VOC_SAMPLE
from PIL import Image
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import Stages
from ovdiff_cli.method.stage3_filter.prefilter import CategoryFilter, select_classes
from ovdiff_cli.models.filtermodels import FILTERS, filter_source
from ovdiff_cli.models.presets import ModelSpecs
from ovdiff_cli.store.keys import clip_text_id

runner = CliRunner()


def embs_with_cosines(cos: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """An image unit vector and class unit vectors whose cosines with it are `cos`."""
    img = torch.tensor([1.0, 0, 0, 0])
    rows = [
        [
            c,
            (1 - c * c) ** 0.5 if i == 0 else 0,
            (1 - c * c) ** 0.5 if i == 1 else 0,
            (1 - c * c) ** 0.5 if i > 1 else 0,
        ]
        for i, c in enumerate(cos)
    ]
    return img, F.normalize(torch.tensor(rows), dim=-1)


def test_sigmoid_scores_keep_the_classes_at_least_as_likely_as_the_average_class():
    """Raw-cosine softmax barely tells 0.30 from 0.25 (both pass 1/|C|); SigLIP's σ(t·cos+b), normalised,
    keeps only the first. With every σ far below 0.5 the mean rule still keeps the first, where a 0.5
    threshold would keep none and fall back to all η."""
    img, classes = embs_with_cosines([0.30, 0.25, 0.10])
    assert select_classes(img, classes, 3) == [0, 1]
    assert select_classes(img, classes, 3, sigmoid=(100.0, -28.0)) == [0]
    assert select_classes(img, classes, 3, sigmoid=(100.0, -35.0)) == [0]
    img, classes = embs_with_cosines([0.20, 0.21, 0.05])
    assert select_classes(img, classes, 3, sigmoid=(100.0, -20.0)) == [0, 1]


@pytest.mark.parametrize(
    ("spec", "trunk", "sigmoid"), [("siglip2", "VisionTransformer", True), ("pecore", "Eva", False)]
)
def test_tiny_filter_models_are_their_familys_classes_and_pick_their_rule(spec, trunk, sigmoid):
    stages = Stages.for_run("tiny", device="cpu", dtype="fp32", overrides={"filter": spec})
    scorer = stages.scorer()
    model = scorer.clip.model
    assert type(model).__name__ == "CustomTextCLIP" and type(model.visual.trunk).__name__ == trunk
    assert (scorer.sigmoid is not None) == sigmoid and "clip" not in stages.store.loaded
    if sigmoid:
        assert scorer.sigmoid[1] == pytest.approx(-10.0)  # SigLIP's initial logit bias
    texts = scorer.encode_texts(["a cat", "a dog and a cat"])
    images = scorer.encode_images(torch.rand(2, 3, 224, 224))
    assert texts.shape == (2, 32) and images.shape == (2, 32)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    f = CategoryFilter(scorer, None, ["cat", "dog", "sky"], eta=2, size=224)
    kept = f.select(np.zeros((40, 60, 3), np.uint8))
    assert 1 <= len(kept) <= 2 and kept == sorted(kept)


def test_each_filter_model_keys_its_own_text_embeddings():
    """The scorer's key is `clip_text_id` of what its spec loads (`filter_source`, else the run's CLIP), as
    `compose.build_scorer` names it."""

    def key(spec: str | None, preset: str, seed: int = 0) -> str:
        specs = ModelSpecs.of(preset, {"filter": spec}, weights_seed=seed)
        return clip_text_id(filter_source(spec, specs.preset.weights) or specs.models["clip"], seed)

    ids = {s: key(s, "sd15") for s in (None, "clip", *FILTERS)}
    assert ids[None] == ids["clip"] == "open_clip-text:ViT-B-16:openai"
    assert (
        ids["siglip2"] == "open_clip-text:ViT-B-16-SigLIP2:webli"
        and ids["pecore"] == "open_clip-text:PE-Core-B-16:meta"
    )
    assert {s: key(s, "tiny", seed=1) for s in FILTERS} == {s: f"open_clip-text:tiny:{s}@seed1" for s in FILTERS}
    assert filter_source("siglip2", "full") == "random:siglip2" and filter_source("siglip2", "procedural") is None


def test_segment_with_a_siglip2_filter_and_its_weights_in_doctor(tmp_path):
    img = next((VOC_SAMPLE / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "masks"
    res = runner.invoke(
        app,
        [
            "segment",
            str(img),
            "--classes",
            "cat,dog,bus",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "c"),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "-q",
            "--filter-model",
            "siglip2",
        ],
    )
    assert res.exit_code == 0, res.output
    with Image.open(out / f"{img.stem}.png") as m, Image.open(img) as im:
        assert m.size == im.size
    facts = json.loads(
        runner.invoke(
            app, ["doctor", "--json", "--preset", "sd15", "--filter-model", "siglip2", "--cache", str(tmp_path / "c")]
        ).stdout
    )
    (w,) = [w for w in facts["weights"] if w["role"] == "filter"]
    assert w["repo"] == "timm/ViT-B-16-SigLIP2" and w["spec"] == "ViT-B-16-SigLIP2:webli"
    bad = runner.invoke(app, ["doctor", "--preset", "sd15", "--filter-model", "siglip", "--cache", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "--filter-model 'siglip'" in bad.output
