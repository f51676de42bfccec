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


# (preset, class, seed) → (support_id, class_id) with the preset's defaults. Deliberate changes since:
# PROTO_VERSION 2 (issue 12: the authors' support-mask rule) → every class id; the procedural world's
# attribution version 2 (in its generator identity) → its support ids.
GOLDEN = {
    ("tiny", "cat", 0): ("e79951666df513d51ce08907", "08ab7e1ab6b80494db4f18c3"),
    ("tiny", "sky", 1): ("872e76bf9225fd8f6ea1ff85", "085d5d50eea3779c11ddb377"),
    ("tiny", "chocolate glazed donut", 0): ("2d74426784b3d1557b6b6ff7", "d52e5f1ecffc1fd022b6b351"),
    ("procedural", "cat", 0): ("120322af2af91c03a5553265", "ae08e59c113a2f6592306926"),
    ("procedural", "sky", 1): ("2bee6905fbb770ca8e8b5798", "2729f3676d241936405c7771"),
    ("procedural", "chocolate glazed donut", 0): ("da6f3e3fc4c1478938f92789", "641ad3e225f8687461fef1aa"),
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
    assert class_id("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == "1ef65deac1e5bf6b67d96a83"
    assert class_id("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="dino+clip")) == "32f286b93131af259cfa544a"
    assert class_id("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg) == "80706cd3a82e90229bdb7158"
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    assert class_id("cat", 0, sam, sample_cfg, dataclasses.replace(proto_cfg, mask_proposer="sam")) == "c01231e930bacedc4891581c"
    # the real-weight presets, by spec alone (no weights here)
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "43aa56850d2d7add1e7d8ecd"
    for preset, plain, local in (("sd15", "8e8d0a4b2cbe6bf677a47d80", "7f806b03b9575c50435bc814"),
                                 ("sd15-random", "5248cbbdfffcc2f63c88bdec", "4bbd5dd77f945ff4602bd459")):  # fmt: skip
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
    assert class_id("cat", 0, ModelSpecs.of("tiny"), s, spelled) == "32f286b93131af259cfa544a"
