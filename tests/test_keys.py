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
# and kmeans_max_points 16384 → 8192 (issue 16: streamed builds, a bottom-k K-means sample) → class ids.
GOLDEN = {
    ("tiny", "cat", 0): ("e79951666df513d51ce08907", "fd5394574226957263b9d8c7",
                         {"sd": "137959b359c4094aa322395b", "dino": "4f0062b164986a9ff8209e8b", "clip": "a5a9e540b561b61693e9b64b"}),
    ("tiny", "sky", 1): ("872e76bf9225fd8f6ea1ff85", "b043136b65efa62b1ce3e6ff",
                         {"sd": "15b82a77d05bd2091b153499", "dino": "10ed09dc862af12ab806513e", "clip": "4165cc3c393401696c4e1c8c"}),
    ("tiny", "chocolate glazed donut", 0): ("2d74426784b3d1557b6b6ff7", "04a623f0c08226081f79f1b1",
                         {"sd": "52fab6d9a2d06201e6420dfd", "dino": "80b86d81b2cf42d989b82fb1", "clip": "d35156eedaee65df20c931ff"}),
    ("procedural", "cat", 0): ("120322af2af91c03a5553265", "6ab6c2136dd260662a1904b6", {"procedural": "f8b93943dceec8aa876f16f8"}),
    ("procedural", "sky", 1): ("2bee6905fbb770ca8e8b5798", "b38d6d82f60e1eb9b9e1db5f", {"procedural": "ca43d3fdffaedcb7cab0e184"}),
    ("procedural", "chocolate glazed donut", 0): ("da6f3e3fc4c1478938f92789", "546d4b72dcc8e562e089cc8a",
                                                  {"procedural": "af3b92e7ac46bd82a11e6c50"}),
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
    assert class_ids("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == {"sd": "137959b359c4094aa322395b"}
    assert class_ids("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg)["dino"] == "ee4efb8795e05725ed24c1ec"
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    sam_cfg = dataclasses.replace(proto_cfg, mask_proposer="sam")
    assert mask_id("cat", 0, sam, sample_cfg, sam_cfg) == "d0efe3be4f06fb6d0ecb1b6a"
    assert class_ids("cat", 0, sam, sample_cfg, sam_cfg)["dino"] == "2d7d8d3c079a88520222c001"
    # the real-weight presets, by spec alone (no weights here)
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "43aa56850d2d7add1e7d8ecd"
    for preset, plain, local in (("sd15", "80fbf24b6337955ab94b425b", "28af0597936a91d856f067d9"),
                                 ("sd15-random", "44dbbfdc1f34cc457cc5e8a1", "8fd1a25c405d9c2eef9a14a9")):  # fmt: skip
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
    assert class_ids("cat", 0, ModelSpecs.of("tiny"), s, spelled) == {"dino": "4f0062b164986a9ff8209e8b", "clip": "a5a9e540b561b61693e9b64b"}
