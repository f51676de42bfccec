"""Cache keys are users' data: these golden ids were computed before the architecture refactor
and must never change silently, or every cached support set and class would be rebuilt.

Change a value here only together with a deliberate key change (e.g. a bumped PROTO_VERSION), and say so.
"""

from __future__ import annotations

import dataclasses

import pytest

from ovdiff_cli.compose import Stages
from ovdiff_cli.config import ProtoConfig, SampleConfig
from ovdiff_cli.models.presets import ModelSpecs, get_preset
from ovdiff_cli.store.keys import class_ids, generator_identity, mask_id, support_id


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
# "attribution": 2 (issue 23: bicubic, clamped maps per head and token) → their support and class ids;
# MASK_VERSION 3 (issue 23: ncut is MaskCut as published) → every mask and class id (the SAM and
# procedural ones too: the version is part of every mask id); PROTO_VERSION 5 (issue 35: SD features of a seeded
# VAE posterior sample, no bg from an image without fg on a part's grid) → every class id (mask ids unchanged).
GOLDEN = {
    ("tiny", "cat", 0): (
        "98841afe1ef3b705ee6a0a30",
        "be5c6cf6164f2d5df4572992",
        {"sd": "576efea7147f0ab6f0be02bf", "dino": "815252c26876e2018d064a18", "clip": "af34a06f32bec75c16112b02"},
    ),
    ("tiny", "sky", 1): (
        "7b09c3fef34b21d25b07b38c",
        "5ff24041fdfb77c729dd6866",
        {"sd": "0aff8557558f62400eae3d0e", "dino": "568fa18b7e8e989f8ecf935f", "clip": "4cd78b01c906b5c50dbfc8a4"},
    ),
    ("tiny", "chocolate glazed donut", 0): (
        "3cbd41b5e2cf6a72665a6ccf",
        "119134f6b307485db90c0846",
        {"sd": "a8b1f18078f2dd2598f16c3f", "dino": "9906770868516b70c64baaad", "clip": "cab55c03664b06246f815c25"},
    ),
    ("procedural", "cat", 0): (
        "120322af2af91c03a5553265",
        "013ac19f2a8e5a1ac718c9a9",
        {"procedural": "f29e96139c0f3627e19fd4f0"},
    ),
    ("procedural", "sky", 1): (
        "2bee6905fbb770ca8e8b5798",
        "2769ffe1b64f6f2d4769a368",
        {"procedural": "242cbe11f3ce1c073f10a6bc"},
    ),
    ("procedural", "chocolate glazed donut", 0): (
        "da6f3e3fc4c1478938f92789",
        "d2ad0e01b5cde6977a24b2cd",
        {"procedural": "b0be90886ae89f1a78bf5368"},
    ),
}


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: f"{k[0]}-{k[1]}-{k[2]}")
def test_support_mask_and_class_ids_are_pinned(key):
    preset, name, seed = key
    sample_cfg, proto_cfg = configs(preset)
    specs = ModelSpecs.of(preset)
    got = (
        support_id(name, seed, specs, sample_cfg),
        mask_id(name, seed, specs, sample_cfg, proto_cfg),
        class_ids(name, seed, specs, sample_cfg, proto_cfg),
    )
    assert got == GOLDEN[key]


def test_class_ids_of_other_settings_are_pinned():
    sample_cfg, proto_cfg = configs("tiny")
    tiny = ModelSpecs.of("tiny")
    # a part's id does not depend on the other parts of the spec
    assert class_ids("cat", 0, tiny, sample_cfg, dataclasses.replace(proto_cfg, extractor="sd")) == {
        "sd": "576efea7147f0ab6f0be02bf"
    }
    assert (
        class_ids("cat", 0, tiny, dataclasses.replace(sample_cfg, n_images=8), proto_cfg)["dino"]
        == "02427e16a162e5a93f53daed"
    )
    sam = ModelSpecs.of("tiny", {"sam": "x/sam"})
    sam_cfg = dataclasses.replace(proto_cfg, mask_proposer="sam")
    assert mask_id("cat", 0, sam, sample_cfg, sam_cfg) == "98aa22d98619238297db1dea"
    assert class_ids("cat", 0, sam, sample_cfg, sam_cfg)["dino"] == "1c46ab58ed45217423e39ed3"
    # the CutLER proposer (issue 35): its own mask ids, keyed by the detector's checkpoint
    cutler_cfg = dataclasses.replace(proto_cfg, mask_proposer="cutler")
    assert mask_id("cat", 0, tiny, sample_cfg, cutler_cfg) == "57acb711df34b439c68f146c"
    assert mask_id("cat", 0, ModelSpecs.of("tiny", {"cutler": "/w/cutler.pth"}), sample_cfg, cutler_cfg) == (
        "e81143dbb4312e96162b17f2"
    )
    # the real-weight presets, by spec alone (no weights here). Issue 35: their default proposer is now
    # CutLER (the paper's Γ), so their default class ids moved apart from the ncut ones.
    assert support_id("cat", 0, ModelSpecs.of("sd15"), configs("sd15")[0]) == "08bcee2cc3843b4a89e91bd6"
    for preset, plain, local, ncut in (
        ("sd15", "c5ea79e5473155e498db489e", "a00cc20635d59be767d94c11", "ce1719ff5067e01c97c106f9"),
        ("sd15-random", "cb448492f68019805b61ba97", "9f2de0b2a4745f136bd5f227", "ebf0a5d333a89d792cd6cc91"),
    ):
        s, p = configs(preset)
        assert class_ids("cat", 0, ModelSpecs.of(preset), s, p)["sd"] == plain
        assert class_ids("cat", 0, ModelSpecs.of(preset, {"sd": "/w/sd15", "clip": "/w/clip"}), s, p)["sd"] == local
        assert class_ids("cat", 0, ModelSpecs.of(preset), s, dataclasses.replace(p, mask_proposer="ncut"))["sd"] == ncut


@pytest.mark.parametrize("preset", ["tiny", "procedural"])
def test_keys_from_specs_equal_the_built_stages_own_identities(preset):
    """The keys need no model; the stages, once built, must name themselves the same way."""
    stages = Stages.for_run(preset, "cpu", "fp32")
    assert generator_identity(stages.specs) == stages.generator().identity()


def test_the_extractor_spec_has_one_spelling_from_python_and_from_the_cli():
    assert ProtoConfig(extractor="SD+DINO+CLIP") == ProtoConfig(extractor=" sd + dino+clip") == ProtoConfig()
    s, p = configs("tiny")
    spelled = dataclasses.replace(p, extractor="Dino + CLIP")
    assert class_ids("cat", 0, ModelSpecs.of("tiny"), s, spelled) == {
        "dino": "815252c26876e2018d064a18",
        "clip": "af34a06f32bec75c16112b02",
    }
