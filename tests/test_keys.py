"""Cache keys are users' data: these golden ids were computed before the architecture refactor (issue 11)
and must never change silently, or every cached support set and class would be rebuilt.

Change a value here only together with a deliberate key change (e.g. a bumped PROTO_VERSION), and say so.
"""

from __future__ import annotations

import dataclasses

import pytest

from ovdiff_cli.compose import Stages
from ovdiff_cli.config import ProtoConfig, SampleConfig
from ovdiff_cli.keys import class_ids, generator_identity, mask_id, support_id, text_embedding_id
from ovdiff_cli.models.presets import ModelSpecs, get_preset


def configs(preset: str) -> tuple[SampleConfig, ProtoConfig]:
    p = get_preset(preset)
    return p.sample, p.protos


# (preset, class, seed) → (support_id, mask_id, class_ids) with the preset's defaults. The class ids
# changed deliberately with PROTO_VERSION 2 (issue 12: one prototype set per extractor part, keyed by
# the class's masks and that part alone); support ids did not change.
GOLDEN = {
    ("tiny", "cat", 0): ("e79951666df513d51ce08907", "755b318357e4e0d2e7ede8c5",
                         {"sd": "5eb862f5b45dc0f9d8cf136e", "dino": "8fd0aa149bdac512c7fa3f2c", "clip": "41c2505f63424e5612b09969"}),
    ("tiny", "sky", 1): ("872e76bf9225fd8f6ea1ff85", "40a89de3c37e4454d0e0506d",
                         {"sd": "325d9b0ed24aab4f46e3959f", "dino": "713450cbf123f979673949e4", "clip": "5b77f975982007ea54144d5e"}),
    ("tiny", "chocolate glazed donut", 0): ("2d74426784b3d1557b6b6ff7", "38944ca300373cb2e83c1a85",
                         {"sd": "32e2bb792a07c1ff6ee498ba", "dino": "c23eb9634cd7a46ab91db6bd", "clip": "96da8ed531d53f2fb0987bfb"}),
    ("procedural", "cat", 0): ("992c0c1e6f8664d1bb345bc5", "9f1bbcc76ee608984d9eca13", {"procedural": "6d94b5dc873813334ad646c2"}),
    ("procedural", "sky", 1): ("2521dcb2637521ecafb0842a", "76b4faf9fbc0966b85ac156e", {"procedural": "24206e44a32c35b664d611b1"}),
    ("procedural", "chocolate glazed donut", 0): ("20f004f864c3e7c4fb55b777", "d922bedc25547790ea1fe092",
                                                  {"procedural": "baec7a5bbd493ab816b8673e"}),
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
    assert class_ids("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == {"sd": "5eb862f5b45dc0f9d8cf136e"}
    assert class_ids("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg)["dino"] == "fb838b3620ad3416b1c99021"
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    sam_cfg = dataclasses.replace(proto_cfg, mask_proposer="sam")
    assert mask_id("cat", 0, sam, sample_cfg, sam_cfg) == "884181330af19cc231c89acc"
    assert class_ids("cat", 0, sam, sample_cfg, sam_cfg)["dino"] == "695e0b3a2644ffd9466c994f"
    # the real-weight presets, by spec alone (no weights here)
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "43aa56850d2d7add1e7d8ecd"
    for preset, plain, local in (("sd15", "00b688f3df26dc6d185c007c", "239ed7e2eeed746745c59113"),
                                 ("sd15-random", "eced879d2924345108538d6a", "d433f78452ef0e8829d4adcd")):  # fmt: skip
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
    assert class_ids("cat", 0, ModelSpecs.of("tiny"), s, spelled) == {"dino": "8fd0aa149bdac512c7fa3f2c", "clip": "41c2505f63424e5612b09969"}
