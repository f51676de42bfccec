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
# PROTO_VERSION 4 with kmeans_iters 300 and kmeans_max_points None (issue 23: raw features, scikit-learn's
# K-means on every cell, masks reduced once, CLIP features of ImageNet-normalised pixels) → class ids; the SD generators' identity gains
# "attribution": 2 (issue 23: bicubic, clamped maps per head and token) → their support and class ids.
GOLDEN = {
    ("tiny", "cat", 0): ("98841afe1ef3b705ee6a0a30", "fd5394574226957263b9d8c7",
                         {"sd": "376968b92ea693807c7a6d27", "dino": "9f095e7af0ef0dfe9c2e622e", "clip": "cfc3a21a474da43bb6c8c825"}),
    ("tiny", "sky", 1): ("7b09c3fef34b21d25b07b38c", "b043136b65efa62b1ce3e6ff",
                         {"sd": "43f1c75933486126f56bb4c6", "dino": "d41f2b9098fcf1d2c7b3f060", "clip": "9a1ce02863fc90aed9225a76"}),
    ("tiny", "chocolate glazed donut", 0): ("3cbd41b5e2cf6a72665a6ccf", "04a623f0c08226081f79f1b1",
                         {"sd": "fdbe58595205397b78a0a98f", "dino": "7f6d75ad9cfa833087aff759", "clip": "265387fcc524aed6a295b648"}),
    ("procedural", "cat", 0): ("120322af2af91c03a5553265", "6ab6c2136dd260662a1904b6", {"procedural": "e0c69d74a24d61e397be17a4"}),
    ("procedural", "sky", 1): ("2bee6905fbb770ca8e8b5798", "b38d6d82f60e1eb9b9e1db5f", {"procedural": "d4cdeb7ba7224222fbc2474b"}),
    ("procedural", "chocolate glazed donut", 0): ("da6f3e3fc4c1478938f92789", "546d4b72dcc8e562e089cc8a",
                                                  {"procedural": "8f11992c69b5e83011054dec"}),
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
    assert class_ids("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == {"sd": "376968b92ea693807c7a6d27"}
    assert class_ids("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg)["dino"] == "f554f6d4a1c6aaed3211aa8b"
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    sam_cfg = dataclasses.replace(proto_cfg, mask_proposer="sam")
    assert mask_id("cat", 0, sam, sample_cfg, sam_cfg) == "d0efe3be4f06fb6d0ecb1b6a"
    assert class_ids("cat", 0, sam, sample_cfg, sam_cfg)["dino"] == "c59e1d47786e352e3bf7717d"
    # the real-weight presets, by spec alone (no weights here)
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "08bcee2cc3843b4a89e91bd6"
    for preset, plain, local in (("sd15", "c2bf6df2f2273c7ed9378e33", "dc5a413d5513ff0257bed48e"),
                                 ("sd15-random", "80b760f8119433b2462d2477", "dcadcdae1da712ff41619164")):  # fmt: skip
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
    assert class_ids("cat", 0, ModelSpecs.of("tiny"), s, spelled) == {"dino": "9f095e7af0ef0dfe9c2e622e", "clip": "cfc3a21a474da43bb6c8c825"}
