"""Cache keys are users' data: these golden ids were computed before the architecture refactor (issue 11)
and must never change silently, or every cached support set and class would be rebuilt.

Change a value here only together with a deliberate key change (e.g. a bumped PROTO_VERSION), and say so.
"""

from __future__ import annotations

import dataclasses

import pytest

from ovdiff_cli.compose import Stages
from ovdiff_cli.config import ProtoConfig, SampleConfig
from ovdiff_cli.keys import class_id, generator_identity, support_id, text_embedding_id
from ovdiff_cli.models.presets import ModelSpecs, get_preset


def configs(preset: str) -> tuple[SampleConfig, ProtoConfig]:
    p = get_preset(preset)
    return p.sample, p.protos


# (preset, class, seed) → (support_id, class_id) with the preset's defaults. Class ids changed with
# PROTO_VERSION 2 and kmeans_max_points 8192 (issue 16: streamed builds, bottom-k K-means sample).
GOLDEN = {
    ("tiny", "cat", 0): ("e79951666df513d51ce08907", "fd8f8e14d5e2e18c1190fac6"),
    ("tiny", "sky", 1): ("872e76bf9225fd8f6ea1ff85", "1c5053e8f2feb46f40beee83"),
    ("tiny", "chocolate glazed donut", 0): ("2d74426784b3d1557b6b6ff7", "923ebf77b414d19a0bcb4d70"),
    ("procedural", "cat", 0): ("992c0c1e6f8664d1bb345bc5", "553774b876d451ab1ea0589d"),
    ("procedural", "sky", 1): ("2521dcb2637521ecafb0842a", "ced65d6e16e3f17e9a66b840"),
    ("procedural", "chocolate glazed donut", 0): ("20f004f864c3e7c4fb55b777", "97c14498057b2a72ab0da670"),
}


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_support_and_class_ids_are_pinned(key):
    preset, name, seed = key
    sample_cfg, proto_cfg = configs(preset)
    specs = ModelSpecs.of(preset)
    assert (support_id(name, seed, specs, sample_cfg), class_id(name, seed, specs, sample_cfg, proto_cfg)) == GOLDEN[key]


def test_class_ids_of_other_settings_are_pinned():
    sample_cfg, proto_cfg = configs("tiny")
    tiny = ModelSpecs.of("tiny")
    assert class_id("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == "d3f8757e67deaafadcba51fa"
    assert class_id("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="dino+clip")) == "ab98c18978358511a8b58890"
    assert class_id("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg) == "49f43eba3191ca4bc14d51af"
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    assert class_id("cat", 0, sam, sample_cfg, dataclasses.replace(proto_cfg, mask_proposer="sam")) == "be4703001cca8bb2eb83bd7d"
    # the real-weight presets, by spec alone (no weights here)
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "43aa56850d2d7add1e7d8ecd"
    for preset, plain, local in (("sd15", "234b812f50683b99f9cad42a", "3c9936346119b42854221ce2"),
                                 ("sd15-random", "e406d1aa4d40f9789e263536", "df1c8b860b4e68f2564f49f2")):  # fmt: skip
        s, p = configs(preset)
        assert class_id("cat", 0, ModelSpecs.of(preset), s, p) == plain
        assert class_id("cat", 0, ModelSpecs.of(preset, {"sd": "/w/sd15", "clip": "/w/clip"}), s, p) == local


def test_text_embedding_ids_are_pinned():
    assert text_embedding_id(ModelSpecs.of("tiny")) == "open_clip-text:tiny@seed0"
    assert text_embedding_id(ModelSpecs.of("procedural")) == "procedural-scorer/v1"
    assert text_embedding_id(ModelSpecs.of("sd15")) == "open_clip-text:ViT-B-16:openai"


@pytest.mark.parametrize("preset", ["tiny", "procedural"])
def test_keys_from_specs_equal_the_built_stages_own_identities(preset):
    """The keys need no model; the stages, once built, must name themselves the same way."""
    stages = Stages.for_run(preset, "cpu", "fp32")
    assert generator_identity(stages.specs) == stages.generator().identity()
    assert text_embedding_id(stages.specs) == stages.scorer().identity()


def test_the_extractor_spec_has_one_spelling_from_python_and_from_the_cli():
    assert ProtoConfig(extractor="SD+DINO+CLIP") == ProtoConfig(extractor=" sd + dino+clip") == ProtoConfig()
    s, p = configs("tiny")
    spelled = dataclasses.replace(p, extractor="Dino + CLIP")
    assert class_id("cat", 0, ModelSpecs.of("tiny"), s, spelled) == "ab98c18978358511a8b58890"
