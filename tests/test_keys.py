"""Cache keys are users' data: these golden ids were computed before the architecture refactor (issue 11)
and must never change silently, or every cached support set and class would be rebuilt.

Change a value here only together with a deliberate key change (e.g. a bumped PROTO_VERSION), and say so.
"""

from __future__ import annotations

import dataclasses

import pytest

from ovdiff_cli.compose import Stages
from ovdiff_cli.config import ProtoConfig, SampleConfig
from ovdiff_cli.store.keys import class_ids, generator_identity, mask_id, support_id, text_embedding_id
from ovdiff_cli.models.presets import ModelSpecs, get_preset


def configs(preset: str) -> tuple[SampleConfig, ProtoConfig]:
    p = get_preset(preset)
    return p.sample, p.protos


# (preset, class, seed) → (support_id, mask_id, class_ids) with the preset's defaults. Deliberate changes:
# PROTO_VERSION 2 (issue 12: one prototype set per extractor part, keyed by the class's masks and that
# part alone) and MASK_VERSION 2 (the authors' support-mask rule) → every mask and class id; the
# procedural world's attribution version 2 (in its generator identity) → its support ids; PROTO_VERSION 3
# and kmeans_max_points 16384 → 8192 (issue 16: streamed builds, a bottom-k K-means sample) → class ids;
# PROTO_VERSION 4 (issue 23: the authors' method, e.g. CLIP features of ImageNet-normalised pixels) → class ids.
GOLDEN = {
    ("tiny", "cat", 0): ("e79951666df513d51ce08907", "fd5394574226957263b9d8c7",
                         {"sd": "fb28945e0de6e5e445bd22e2", "dino": "55571ac9878da1ac82b9c9ee", "clip": "7d204d048667b0c05134be3c"}),
    ("tiny", "sky", 1): ("872e76bf9225fd8f6ea1ff85", "b043136b65efa62b1ce3e6ff",
                         {"sd": "0a4615902023e21b2d85e99d", "dino": "9ac308b0c58137f838e3b23b", "clip": "1ec5c528e0dc7acb5921d2eb"}),
    ("tiny", "chocolate glazed donut", 0): ("2d74426784b3d1557b6b6ff7", "04a623f0c08226081f79f1b1",
                         {"sd": "5de28b3f26f44c2575a7ba1a", "dino": "7efa8d3272c9fe7d58a28f6b", "clip": "0236dc2049ff2941067f51f7"}),
    ("procedural", "cat", 0): ("120322af2af91c03a5553265", "6ab6c2136dd260662a1904b6", {"procedural": "2919dcf827cb78a581b2c080"}),
    ("procedural", "sky", 1): ("2bee6905fbb770ca8e8b5798", "b38d6d82f60e1eb9b9e1db5f", {"procedural": "e120ca355735bcaddf311230"}),
    ("procedural", "chocolate glazed donut", 0): ("da6f3e3fc4c1478938f92789", "546d4b72dcc8e562e089cc8a",
                                                  {"procedural": "0e8b8edff2c2d4c30c1d1101"}),
}  # fmt: skip


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_support_mask_and_class_ids_are_pinned(key):
    preset, name, seed = key
    sample_cfg, proto_cfg = configs(preset)
    specs = ModelSpecs.of(preset)
    got = (support_id(name, seed, specs, sample_cfg), mask_id(name, seed, specs, sample_cfg, proto_cfg),
           class_ids(name, seed, specs, sample_cfg, proto_cfg))  # fmt: skip
    assert got == GOLDEN[key]


def test_class_ids_of_other_settings_are_pinned():
    sample_cfg, proto_cfg = configs("tiny")
    tiny = ModelSpecs.of("tiny")
    # a part's id does not depend on the other parts of the spec
    assert class_ids("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == {"sd": "fb28945e0de6e5e445bd22e2"}
    assert class_ids("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg)["dino"] == "c66f5e38b744972e09670a50"
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    sam_cfg = dataclasses.replace(proto_cfg, mask_proposer="sam")
    assert mask_id("cat", 0, sam, sample_cfg, sam_cfg) == "d0efe3be4f06fb6d0ecb1b6a"
    assert class_ids("cat", 0, sam, sample_cfg, sam_cfg)["dino"] == "68f42b0f0ada1ea83715f6c1"
    # the real-weight presets, by spec alone (no weights here)
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "43aa56850d2d7add1e7d8ecd"
    for preset, plain, local in (("sd15", "927f747ea98f478d288ffcba", "bf0dd02ed78ac8bf453a8b7e"),
                                 ("sd15-random", "8721cc7ee32c8e54e58dea69", "6f2655dfd8bcd80fb19a7745")):  # fmt: skip
        s, p = configs(preset)
        assert class_ids("cat", 0, ModelSpecs.of(preset), s, p)["sd"] == plain
        assert class_ids("cat", 0, ModelSpecs.of(preset, {"sd": "/w/sd15", "clip": "/w/clip"}), s, p)["sd"] == local


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
    assert class_ids("cat", 0, ModelSpecs.of("tiny"), s, spelled) == {"dino": "55571ac9878da1ac82b9c9ee", "clip": "7d204d048667b0c05134be3c"}
