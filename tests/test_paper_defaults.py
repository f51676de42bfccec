"""Every default of the paper (App. C) and of the authors' code (karazijal/sdov), pinned.

One test per default or rule, so the list can be audited against the paper (App. C.5) and the authors' code: a value test where the
default is a config value, a behavioural test where the rule is code. Changing any of them must
fail here. Golden values of attribution maps and backbone features are in test_golden.py.

Covered elsewhere, not repeated: real-weight loading keeps DPM-Solver++ (test_local_weights), the
stuff-filter cut at exactly 0.85 (test_matching), CLIP's truncated text encoding (test_filter).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovdiff_cli.config import NEGATIVE_PROMPT, PROMPT_TEMPLATE, ProtoConfig, SampleConfig, SegmentConfig
from ovdiff_cli.method.stage2_prototypes import masks as M
from ovdiff_cli.method.stage3_filter.prefilter import (
    CategoryFilter,
    class_prompt,
    select_classes,
    subset_prompt,
    subsets,
)
from ovdiff_cli.method.stage4_segment.bank import assemble_vocabulary
from ovdiff_cli.models.presets import PRESETS
from ovdiff_cli.types import ClassParts, ClassPrototypes, Sample

# --------------------------------------------------------------------------- config values (App. C.5)


def test_sampling_defaults():
    s = SampleConfig()
    assert NEGATIVE_PROMPT == "text, low quality, blurry, cartoon, meme, low resolution, bad, poor, faded"
    assert PROMPT_TEMPLATE == "A good picture of a {}"
    assert (s.negative_prompt, s.prompt_template) == (NEGATIVE_PROMPT, PROMPT_TEMPLATE)
    assert s.n_images == 32 and s.guidance_scale == 8.0 and s.steps == 30 and s.size == 512


def test_prototype_defaults():
    p = ProtoConfig()
    assert p.k_parts == 32
    assert p.extractor == "sd+dino+clip"  # Table 2's best
    assert p.mask_proposer == "cutler"  # Γ: CutLER's detector, as the paper (App. C.5) and the authors run it
    assert p.feature_size == 512  # support images are featurised at the size they were sampled at


def test_class_build_bounds():
    """Not the paper's: what bounds a build's memory (docs/performance.md: the 512 px class build).
    K-means is the authors' (sdov gen_proto_*.py: scikit-learn's KMeans, max_iter 300, on every masked
    cell, no sample); memory stays bounded by streaming the cells from a spill file."""
    from ovdiff_cli.method.stage2_prototypes.kmeans import KMEANS_ITERS, KMEANS_TOL

    p = ProtoConfig()
    assert p.batch_size == 1 and p.kmeans_max_points is None
    assert p.kmeans_iters == KMEANS_ITERS == 300 and KMEANS_TOL == 1e-4


def test_inference_defaults():
    s = SegmentConfig()
    assert s.windows == (448, 336) and s.stride == 224 and s.short_side == 448 and s.slide
    assert s.eta == 10 and s.use_filter and s.filter_size == 224  # CLIP ViT-B/16 at 224 px
    assert s.stuff_threshold == 0.85 and s.stuff_filter
    assert s.background and s.bg_prototypes and s.fg_threshold == 0.72  # A.2's threshold without bg prototypes
    assert s.proto_kinds == ("class", "instance", "part")


def test_the_paper_preset_keeps_every_default():
    """The paper's (and where it is silent the authors') literal values, not the dataclasses' defaults: a
    default changed in config.py fails here."""
    p = PRESETS["sd15"]
    s, pr, g = p.sample, p.protos, p.segment
    assert (s.n_images, s.guidance_scale, s.steps, s.size, s.attribution_size) == (32, 8.0, 30, 512, 64)
    assert s.prompt_template == "A good picture of a {}"
    assert s.negative_prompt == "text, low quality, blurry, cartoon, meme, low resolution, bad, poor, faded"
    assert (pr.extractor, pr.mask_proposer, pr.k_parts, pr.feature_size) == ("sd+dino+clip", "cutler", 32, 512)
    assert (pr.kmeans_iters, pr.kmeans_max_points) == (300, None)
    assert (g.windows, g.stride, g.short_side, g.slide) == ((448, 336), 224, 448, True)
    assert (g.use_filter, g.eta, g.filter_size) == (True, 10, 224)
    assert (g.stuff_filter, g.stuff_threshold, g.background, g.bg_prototypes) == (True, 0.85, True, True)
    assert (g.proto_kinds, g.refine) == (("class", "instance", "part"), "none")
    assert p.detector_size == (800, 1333)  # CutLER's INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
    assert p.models["sd"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert p.models["clip"] == "ViT-B-16:openai" and p.models["dino"] == "vit_base_patch8_224.dino"


def test_voc_class_names_with_the_papers_corrections():
    from ovdiff_cli.classnames import class_names

    assert class_names("voc") == [
        "background",
        "airplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "table",
        "dog",
        "horse",
        "motorbike",
        "person",
        "potted plant",
        "sheep",
        "sofa",
        "train",
        "monitor",
    ]  # (the authors' VOC list: "table", not "dining table")
    assert class_names("voc20") == class_names("voc")[1:]
    # tvmonitor is "monitor" in Context too (Table C.9 lists its classes as prompted)
    context = class_names("context")
    assert context[55] == "monitor" and class_names("context", raw=True)[55] == "tvmonitor"


def test_the_authors_prompt_overlay_on_ade():
    from ovdiff_cli.classnames import class_names

    fixed, raw = class_names("ade"), class_names("ade", raw=True)
    changed = {r: f for r, f in zip(raw, fixed, strict=True) if r != f}
    assert changed == {
        "tank": "liquid tank",
        "blind": "window blinds",
        "hood": "cooker hood",
        "ashcan": "wastebin",
        "case": "shop case",
        "apparel": "clothing",
    }
    assert "computer keyboard" in class_names("stuff")  # the overlay applies wherever "keyboard" occurs


def test_benchmark_kinds_are_the_authors_table_c9():
    """VOC, Context, Object and ADE: the authors' thing/stuff answer, errors included; "table" a thing.
    COCO-Stuff and Cityscapes (not in their answer): None, so the stuff table decides."""
    from ovdiff_cli.classnames import class_kinds, class_names, kind_list

    def stuff_of(ds: str) -> list[str]:
        return [n for n, k in zip(class_names(ds), class_kinds(ds), strict=True) if k == "stuff" and n != "background"]

    assert stuff_of("voc") == [] and stuff_of("voc20") == [] and stuff_of("object") == []
    assert (
        stuff_of("context59")
        == stuff_of("context")
        == [
            "bedclothes",
            "ceiling",
            "cloth",
            "curtain",
            "fence",
            "floor",
            "grass",
            "ground",
            "mountain",
            "platform",
            "road",
            "rock",
            "sidewalk",
            "sky",
            "snow",
            "track",
            "wall",
            "water",
            "wood",
        ]
    )
    assert stuff_of("ade") == [
        "wall",
        "sky",
        "floor",
        "ceiling",
        "road",
        "grass",
        "sidewalk",
        "mountain",
        "curtain",
        "water",
        "fence",
        "rock",
        "step",
        "trade name",
        "lake",
        "blanket",
        "tray",
        "glass",
    ]
    assert class_kinds("stuff") is None and class_kinds("cityscapes") is None
    assert kind_list("ade") == "authors" and kind_list("cityscapes") == "table"


# --------------------------------------------------------------------------- sampling (behaviour)


def test_sd_pipeline_is_called_with_the_papers_settings(tiny_stages, monkeypatch):
    """Guidance 8, 30 steps, the negative prompt, the template, DPM-Solver++: what the pipeline receives."""
    from diffusers import DPMSolverMultistepScheduler

    gen = tiny_stages.generator().inner  # the SDGenerator under the stage's call counter
    calls = []
    pipe = gen.pipe

    def recording(**kw):
        calls.append({**kw, "scheduler": pipe.scheduler})
        return pipe(**kw)

    monkeypatch.setattr(gen, "pipe", recording)
    gen.generate("cat", [1], dataclasses.replace(SampleConfig(), size=64, attribution_size=8))
    (kw,) = calls
    assert kw["prompt"] == ["A good picture of a cat"] and kw["negative_prompt"] == [NEGATIVE_PROMPT]
    assert kw["guidance_scale"] == 8.0 and kw["num_inference_steps"] == 30
    assert isinstance(kw["scheduler"], DPMSolverMultistepScheduler)
    assert kw["scheduler"].config.algorithm_type == "dpmsolver++"


# --------------------------------------------------------------------------- features (behaviour, App. C.2)


def test_sd_layers_are_the_papers_nine_cross_attention_layers():
    from diffusers import UNet2DConditionModel

    from ovdiff_cli.method.stage2_prototypes.features import sd_feature_layers

    with torch.device("meta"):  # SD1.5's UNet layout, no memory
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    names = {id(m): n for n, m in unet.named_modules()}
    layers = sd_feature_layers(unet)
    assert [names[id(x)] for x in layers] == [
        "down_blocks.0.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
        "up_blocks.2.attentions.0",
        "up_blocks.2.attentions.1",
        "up_blocks.2.attentions.2",
        "up_blocks.3.attentions.2",
    ]
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}  # forward order: 6 down, 1 mid, 9 up
    every = sorted((n for n, m in unet.named_modules() if n.endswith(".attn2")), key=lambda n: stage[n.split(".")[0]])
    chosen = {f"{names[id(x)]}.transformer_blocks.0.attn2" for x in layers}
    assert [i for i, n in enumerate(every) if n in chosen] == [0, 6, 7, 8, 9, 10, 11, 12, 15]  # the authors' indices
    assert sum(b.attn2.to_q.out_features for x in layers for b in x.transformer_blocks) == 7680


def test_sd_features_are_queries_at_t200_with_the_empty_prompt(tiny_stages):
    from ovdiff_cli.method.stage2_prototypes.features import SD_TIMESTEP

    assert SD_TIMESTEP == 200
    part = tiny_stages.part("sd").backbone
    sd = part.sd
    seen = []
    hook = sd.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[1], kw["encoder_hidden_states"])), with_kwargs=True
    )
    try:
        part(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    finally:
        hook.remove()
    ((t, text),) = seen
    assert t.tolist() == [200, 200]
    ids = sd.tokenizer(
        [""], padding="max_length", max_length=sd.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        empty = sd.text_encoder(ids)[0]
    torch.testing.assert_close(text, empty.expand(2, -1, -1))
    assert part.alpha_bar == pytest.approx(float(sd.scheduler.alphas_cumprod[200]))


def _input_of(block, run):
    """The first positional input a module receives while `run()` executes."""
    got = []
    hook = block.register_forward_pre_hook(lambda m, a: got.append(a[0]))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return got[0]


def test_clip_features_are_keys_of_the_second_to_last_block_of_imagenet_normalised_pixels(tiny_stages):
    """The authors normalise CLIP's pixels with ImageNet's mean/std, not CLIP's own (sdov gen_vit_features.py, predict.py)."""
    part = tiny_stages.part("clip").backbone
    v = part.visual
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet's, as for DINO
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    blk = v.transformer.resblocks[-2]
    tokens = _input_of(blk, lambda: v((x - mean) / std))
    if not v.transformer.batch_first:
        tokens = tokens.transpose(0, 1)
    d = blk.attn.in_proj_weight.shape[1]
    keys = F.linear(blk.ln_1(tokens), blk.attn.in_proj_weight[d : 2 * d], blk.attn.in_proj_bias[d : 2 * d])
    want = keys[:, 1:].transpose(1, 2).reshape(2, d, 14, 14)
    torch.testing.assert_close(part(x), want, rtol=1e-4, atol=1e-5)


def test_the_filters_clip_uses_clips_own_mean_std(tiny_stages):
    scorer = tiny_stages.scorer()
    torch.testing.assert_close(scorer.mean.flatten().cpu(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    torch.testing.assert_close(scorer.std.flatten().cpu(), torch.tensor([0.26862954, 0.26130258, 0.27577711]))


def test_targets_are_resized_with_lanczos_to_short_side_448_as_torchvision_does():
    """sdov EvalDataset: TF.resize(img, 448, LANCZOS) on the PIL image; long side int(448·long/short)."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    from ovdiff_cli.method.stage4_segment.segmenter import to_tensor
    from ovdiff_cli.method.stage4_segment.targets import working_image, working_size

    assert working_size(333, 500, 448) == (448, 672)  # 672.67 truncated, as torchvision (rounding gives 673)
    assert working_size(500, 333, 448) == (672, 448)
    # the benchmarks' shapes: VOC/Context 500×375, COCO 640×427 and 640×480, ADE 512×683, Cityscapes 2048×1024
    sizes = {
        (375, 500): (448, 597),
        (427, 640): (448, 671),
        (480, 640): (448, 597),
        (512, 683): (448, 597),
        (1024, 2048): (448, 896),
        (20, 640): (448, 14336),
    }
    for (h, w), want in sizes.items():
        assert working_size(h, w, 448) == want  # the guard (32:1) leaves them all alone
    h, w = working_size(19, 640, 448)  # past 32:1 the guard caps the long side
    assert w == 448 * 32 and h < 448
    image = np.random.default_rng(0).integers(0, 256, (75, 100, 3), dtype=np.uint8)
    authors = np.array(TF.resize(Image.fromarray(image), 448, interpolation=TF.InterpolationMode.LANCZOS))
    assert working_image(image, 448).shape == authors.shape == (448, 597, 3)
    assert np.array_equal(working_image(image, 448), authors)
    got = to_tensor(working_image(image, 448), torch.device("cpu"))
    assert torch.equal(got, torch.from_numpy(authors).permute(2, 0, 1).float() / 255)
    already = np.zeros((448, 600, 3), np.uint8)
    assert working_image(already, 448) is already  # torchvision returns an image of that size untouched


def test_the_filter_sees_the_working_image_at_512_lanczos_then_224_without_antialiasing(tiny_stages):
    """sdov: the 448 px image → mmdata.prep_sample (512², Lanczos) → clip_class's T.Resize((224, 224)) on
    a tensor (bilinear, no antialiasing in their torchvision) → CLIP's mean/std."""
    from PIL import Image

    from ovdiff_cli.method.stage3_filter.prefilter import filter_input
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter
    from ovdiff_cli.method.stage4_segment.targets import working_image

    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    work = working_image(image, 448)
    square = np.asarray(Image.fromarray(work).resize((512, 512), Image.Resampling.LANCZOS), np.float32) / 255
    want = F.interpolate(
        torch.from_numpy(square).permute(2, 0, 1)[None],
        size=(224, 224),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )
    assert torch.equal(filter_input(work, SegmentConfig().filter_size), want)

    seen = []

    class Recording(NamedScorer):
        def encode_images(self, images):
            seen.append(images.clone())
            return super().encode_images(images)

    e = torch.eye(E)
    scorer = Recording({"cat": e[0], "dog": e[1]}, e[0])
    classes = [
        ClassParts(
            n, "thing", {"procedural": ClassPrototypes(n, "thing", {"class": np.eye(4, dtype=np.float32)[i : i + 1]})}
        )
        for i, n in enumerate(["cat", "dog"])
    ]
    cfg = dataclasses.replace(SegmentConfig(), slide=False)
    part = _constant_part()
    seg = Segmenter([part], classes, cfg, torch.device("cpu"), scorer=scorer)
    assert seg.predict(image).selected == [0]
    (x,) = seen
    torch.testing.assert_close(x, want)  # not the original image squeezed, nor antialiased


class _Constant:
    """A backbone whose every cell is the same (unnormalised) vector: scores are then known cosines."""

    stride = 8

    def __init__(self, vector):
        self.vector = torch.as_tensor(vector, dtype=torch.float32)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.vector.view(1, -1, 1, 1).expand(b, -1, h // 8, w // 8).clone()


def _constant_part(vector=(3.0, 0.0, 0.0, 0.0), name: str = "procedural"):
    from ovdiff_cli.config import InputSize
    from ovdiff_cli.method.stage2_prototypes.features import Part

    return Part(name, _Constant(vector), InputSize())


def _cos_row(c: float) -> np.ndarray:
    """A unit prototype at cosine `c` to the constant part's direction e0."""
    return np.array([[c, (1 - c * c) ** 0.5, 0.0, 0.0]], np.float32)


def test_background_where_no_label_scores_above_zero_and_explain_agrees():
    """sdov predict.py: where(score > 0, score, 0) over every label, then argmax (ties to background,
    label 0): a pixel where every score is ≤ 0 is background, even where the best score is a class's."""
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter

    def segment(protos, **cfg):
        classes = [ClassParts(c.name, c.kind, {"procedural": c}) for c in protos]
        seg = Segmenter(
            [_constant_part()], classes, SegmentConfig(use_filter=False, slide=False, **cfg), torch.device("cpu")
        )
        return seg.predict(np.zeros((32, 48, 3), np.uint8), explain=True, scores=True)

    cat = ClassPrototypes("cat", "thing", {"class": _cos_row(-0.1)}, {"class": _cos_row(-0.5)})
    dog = ClassPrototypes("dog", "thing", {"class": _cos_row(-0.3)}, {"class": _cos_row(-0.6)})
    out = segment([cat, dog])
    np.testing.assert_allclose(out.scores[:, 0, 0], [-0.5, -0.1, -0.3], atol=1e-5)  # cat's is the best score …
    assert (out.labels == 0).all()  # … but nothing scores above 0: background
    assert (out.winner == -1).all()  # no prototype decided it: explain says a threshold did
    assert out.stats[0] == (32 * 48, 0.0)  # its winning score is the floored 0
    assert (segment([cat, dog], background=False).labels == 1).all()  # no background (paper A.3): the best class
    # no bg prototype left at all (cat has none): background still wins where nothing scores above 0
    bare = ClassPrototypes("cat", "thing", {"class": _cos_row(-0.1)}, {})
    assert (segment([bare, dog]).labels == 0).all()
    warm = ClassPrototypes("cat", "thing", {"class": _cos_row(0.05)}, {"class": _cos_row(-0.5)})
    out = segment([warm, dog])
    assert (out.labels == 1).all() and (out.winner >= 0).all()  # above 0, the argmax as before


def test_background_owns_only_the_bg_prototypes_of_the_classes_the_filter_kept():
    """sdov predict.py masks the bg prototypes with the classes kept for the image (class_ids_mask)."""
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter

    e = torch.eye(E)
    scorer = NamedScorer({"cat": e[0], "dog": e[1]}, e[0])  # the filter keeps cat only
    cat = ClassPrototypes("cat", "thing", {"class": _cos_row(0.2)}, {"class": _cos_row(0.3)})
    dog = ClassPrototypes("dog", "thing", {"class": _cos_row(0.1)}, {"class": _cos_row(0.9)})
    classes = [ClassParts(c.name, c.kind, {"procedural": c}) for c in (cat, dog)]
    seg = Segmenter([_constant_part()], classes, SegmentConfig(slide=False), torch.device("cpu"), scorer=scorer)
    out = seg.predict(np.zeros((32, 48, 3), np.uint8), scores=True)
    assert out.selected == [0]
    np.testing.assert_allclose(out.scores[0], 0.3, atol=1e-5)  # cat's bg prototype, not dog's 0.9
    assert (out.labels == 0).all()
    everyone = Segmenter([_constant_part()], classes, SegmentConfig(slide=False, use_filter=False), torch.device("cpu"))
    np.testing.assert_allclose(everyone.predict(np.zeros((32, 48, 3), np.uint8), scores=True).scores[0], 0.9, atol=1e-5)


def test_dino_features_are_keys_of_the_last_block(tiny_stages):
    part = tiny_stages.part("dino").backbone
    m = part.model
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # DINO's ImageNet normalisation
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    blk = m.blocks[-1]
    tokens = _input_of(blk, lambda: m.forward_features((x - mean) / std))
    qkv = blk.attn.qkv(blk.norm1(tokens))
    b, n, _ = qkv.shape
    k = qkv.reshape(b, n, 3, blk.attn.num_heads, -1)[:, :, 1].reshape(b, n, -1)
    want = k[:, m.num_prefix_tokens :].transpose(1, 2).reshape(2, -1, 8, 6)
    torch.testing.assert_close(part(x), want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- category filter


E = 16


def _unit(v) -> torch.Tensor:
    return F.normalize(torch.as_tensor(v, dtype=torch.float32), dim=0)


class OrderSensitiveScorer:
    """A text encoder that, like CLIP's, hears word order: the k-th class named weighs 0.5^k.

    `vectors` gives each class name its direction; images are given directly as embeddings.
    """

    def __init__(self, vectors: dict[str, torch.Tensor], image: torch.Tensor | None = None):
        self.vectors, self.image, self.prompts = vectors, image, []

    def identity(self) -> str:
        return "order-sensitive-stub"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image[None]

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        self.prompts += prompts
        out = []
        for p in prompts:
            parts = [c.removeprefix("a ") for c in p.split(" and ")]
            out.append(_unit(sum(0.5**k * self.vectors[n] for k, n in enumerate(parts))))
        return torch.stack(out)


def test_class_and_subset_prompts():
    assert class_prompt("potted plant") == "a potted plant"
    assert subset_prompt(["cat", "dog", "sky"]) == "a cat and a dog and a sky"


def test_one_over_c_on_the_softmax_of_raw_cosines():
    image = _unit([1.0] + [0.0] * (E - 1))
    cos = torch.tensor([0.30, 0.2755, 0.2745, 0.10])  # softmax .2748 .2681 .2678 .1893 against 1/4 = .25
    classes = torch.stack([_unit([c, (1 - c * c) ** 0.5] + [0.0] * (E - 2)) for c in cos])
    assert select_classes(image, classes, eta=10) == [0, 1, 2]
    assert select_classes(image, classes, eta=2) == [0, 1]


def test_candidates_come_in_the_authors_order():
    image = _unit([1.0] + [0.0] * (E - 1))
    cos = torch.tensor([0.2, 0.5, 0.1, 0.6, 0.4])  # best first: 3, 1, 4, 0, 2
    classes = torch.stack([_unit([c, (1 - c * c) ** 0.5] + [0.0] * (E - 2)) for c in cos])
    probs = (classes @ image).softmax(0)
    passing = [i for i in range(5) if probs[i] >= 1 / 5]
    assert passing == [1, 3, 4]
    assert select_classes(image, classes, eta=3) == [1, 3, 4]  # at most η pass: class-list order
    assert select_classes(image, classes, eta=2) == [3, 1]  # more than η: their top-η, best first
    assert subsets([3, 1]) == [[3], [1], [3, 1]]  # itertools.combinations of that list
    scorer = OrderSensitiveScorer({f"c{i}": classes[i] for i in range(5)}, image)
    f = CategoryFilter(scorer, None, [f"c{i}" for i in range(5)], eta=2)
    asked, embed = [], f.text_embeddings
    f.text_embeddings = lambda prompts: asked.append(prompts) or embed(prompts)
    assert f.select(np.zeros((8, 8, 3), np.uint8)) in ([1], [3], [1, 3])
    assert asked == [["a c3", "a c1", "a c3 and a c1"]]


def _authors_choice(image, class_embs, eta, scorer, names):
    """The authors' CLIPClassifierThresh, restated: where(prob ≥ 1/|C|) in index order, or, with more
    than η, topk of the probabilities; the powerset in that order; argmax of the prompt cosines."""
    probs = (class_embs @ image).softmax(0)
    passed = torch.where(probs >= 1 / len(names))[0].tolist()
    if len(passed) > eta:
        passed = torch.topk(torch.where(probs >= 1 / len(names), probs, 0), eta).indices.tolist()
    combos = [c for r in range(1, len(passed) + 1) for c in itertools.combinations(passed, r)]
    embs = scorer.encode_texts([" and ".join("a " + names[i] for i in c) for c in combos])
    return sorted(combos[int((embs @ image).argmax())])


def test_subset_choice_matches_the_authors_with_an_order_sensitive_text_encoder():
    gen = torch.Generator().manual_seed(0)
    names = [f"class{i}" for i in range(12)]
    differs, branches = 0, set()
    for _ in range(40):
        vectors = {n: _unit(torch.randn(E, generator=gen)) for n in names}
        image = _unit(torch.randn(E, generator=gen) + 2 * sum(vectors[n] for n in names[:4]))
        scorer = OrderSensitiveScorer(vectors, image)
        f = CategoryFilter(scorer, None, names, eta=5)
        got = f.select(np.zeros((8, 8, 3), np.uint8))
        class_embs = torch.stack([vectors[n] for n in names])  # what the stub encodes "a <name>" as
        want = _authors_choice(image, class_embs, 5, scorer, names)
        assert got == want
        probs = (class_embs @ image).softmax(0)
        n_pass = int((probs >= 1 / len(names)).sum())
        branches.add(n_pass > 5)
        ascending = sorted(select_classes(image, class_embs, 5))  # the old order, for contrast
        combos = subsets(ascending)
        embs = scorer.encode_texts([subset_prompt([names[i] for i in c]) for c in combos])
        differs += sorted(combos[int((embs @ image).argmax())]) != want
    assert branches == {False, True}  # both of the authors' branches ran
    assert differs > 0  # the order matters for this encoder: the test can tell the rules apart


class NamedScorer(OrderSensitiveScorer):
    """An order-insensitive stub whose image embedding is fixed; records every prompt."""

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        self.prompts += prompts
        return torch.stack([_unit(sum(self.vectors[c.removeprefix("a ")] for c in p.split(" and "))) for p in prompts])


def test_stuff_bypasses_the_filter_and_one_over_c_counts_things():
    e = torch.eye(E)
    vectors = {
        "cat": e[0],
        "dog": _unit(0.9 * e[0] + 0.19**0.5 * e[1]),
        "car": _unit(0.3 * e[0] + 0.91**0.5 * e[2]),
        "sky": e[0],
        "grass": _unit(e[0] + e[3]),
    }
    # things' softmax: cat .416, dog .377, car .207 — car fails 1/3 (things) but would pass 1/5 (all classes)
    scorer = NamedScorer(vectors, e[0])
    names = ["cat", "sky", "dog", "grass", "car"]
    f = CategoryFilter(scorer, None, names, eta=10, stuff=[False, True, False, True, False])
    assert f.select(np.zeros((8, 8, 3), np.uint8)) == [0, 1, 3]  # cat (the best subset), and every stuff class
    assert not any(s in p for p in scorer.prompts for s in ("sky", "grass"))  # stuff is never scored
    assert set(scorer.prompts) == {"a cat", "a dog", "a car", "a cat and a dog"}  # car is no candidate
    scorer.image = e[5]  # an image showing none of them: stuff is still kept
    assert {1, 3} <= set(f.select(np.zeros((8, 8, 3), np.uint8)))


def test_segmenter_filters_things_only(procedural_stages):
    def proto(i: int) -> dict:
        return {"class": np.eye(4, dtype=np.float32)[i : i + 1]}

    protos = [
        ClassPrototypes("kite", "thing", proto(0), proto(1)),
        ClassPrototypes("sky", "stuff", proto(1)),
        ClassPrototypes("ball", "thing", proto(2), proto(3)),
        ClassPrototypes("grass", "stuff", proto(3)),
    ]
    classes = [ClassParts(c.name, c.kind, {"procedural": c}) for c in protos]
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter

    seg = procedural_stages.segmenter(classes, SegmentConfig(), "procedural")
    assert seg.filter.names == ["kite", "ball"] and seg.filter.stuff == [1, 3]
    one_thing = Segmenter(
        [procedural_stages.part("procedural")],
        classes[:2],
        SegmentConfig(),
        torch.device("cpu"),
        procedural_stages.scorer(),
    )
    assert one_thing.filter is None  # nothing to choose: kite and sky are always kept


def test_stuff_filter_is_computed_once_against_every_stuff_class():
    def unit(*v):
        return (np.asarray(v, np.float32) / np.linalg.norm(v))[None]

    boat = ClassPrototypes(
        "boat", "thing", {"class": unit(1, 0, 0)}, {"class": np.concatenate([unit(0, 1, 0), unit(0, 0, 1)])}
    )
    water = ClassPrototypes("water", "stuff", {"class": unit(0, 1, 0.1)})
    v = assemble_vocabulary([boat, water], ("class",))
    for keep in ([0], [0, 1]):  # water kept for the image or not, boat's water-like bg prototype is gone
        assert [p.row for p in v.restrict(keep).provenance if p.group == "bg"] == [1]


# --------------------------------------------------------------------------- support masks (App. C.5)


def _sample(att: np.ndarray, size: int | None = None) -> Sample:
    size = size or att.shape[0]
    return Sample(np.zeros((size, size, 3), np.uint8), att.astype(np.float32))


class FixedProposer:
    """Proposes the given masks for every image; fallback thresholds as the NCut/SAM proposers'."""

    name = "fixed"

    def __init__(self, proposals):
        self.proposals, self.seen = proposals, []

    def thresholds(self, attributions):
        return M.BG_BELOW, M.FG_ABOVE

    def propose(self, image, features):
        self.seen.append(tuple(features.shape))
        return self.proposals


def test_fallback_thresholds_are_the_authors():
    assert (M.BG_BELOW, M.FG_ABOVE) == (0.2, 0.5)
    a = np.array([[0.0, 0.2, 0.3], [0.5, 0.51, 1.0], [0.19, 0.49, 0.7]], np.float32)
    fg, bg, how = M.fg_bg_masks([], a)
    assert how == "thresholds"
    assert fg.tolist() == [[False] * 3, [False, True, True], [False, False, True]]  # A > 0.5
    assert bg.tolist() == [[True, False, False], [False] * 3, [True, False, False]]  # A < 0.2
    fg1, bg1, how1 = M.fg_bg_masks([np.ones((3, 3), bool)], a)  # one proposal is not enough
    assert how1 == "thresholds" and (fg1 == fg).all() and (bg1 == bg).all()


def test_attribution_is_min_max_normalised_per_image():
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    feats = torch.zeros(2, 1, 8, 8)
    proposer = FixedProposer([])
    masks = M.class_masks([_sample(a), _sample(a * 7 + 3)], feats, proposer)
    assert (masks.fg[0] == masks.fg[1]).all() and (masks.bg[0] == masks.bg[1]).all()
    assert (masks.fg[0] == (a > 0.5)).all()
    np.testing.assert_allclose(M.normalise(a * 7 + 3), a, atol=1e-6)
    assert (M.normalise(np.full((2, 2), 4.0)) == 0).all()
    # normalised at the image's resolution: a one-cell peak keeps its top at 1 after bilinear resizing
    peak = np.zeros((4, 4), np.float32)
    peak[1, 1] = 5.0
    big = M.image_attribution(peak, (16, 16))
    assert big.min() == 0 and big.max() == pytest.approx(1.0)
    up = F.interpolate(torch.from_numpy(peak)[None, None], size=(16, 16), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()
    np.testing.assert_allclose(big, up / up.max(), atol=1e-6)
    fg = M.class_masks([_sample(peak, 16)], torch.zeros(1, 1, 4, 4), FixedProposer([])).fg[0]
    assert (fg == (up / up.max() > 0.5)).all() and fg.sum() > (up / 5 > 0.5).sum()


def _erode_cross(m: np.ndarray) -> np.ndarray:
    """One erosion by the 3×3 cross, outside the image counting as inside (the border does not erode)."""
    p = np.pad(m, 1, constant_values=True)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def test_bg_from_proposals_is_restricted_to_low_attribution_and_eroded_once_by_a_cross():
    h = w = 16
    obj = np.zeros((h, w), bool)
    obj[4:10, 4:10] = True
    a = np.where(obj, 1.0, 0.0).astype(np.float32)
    a[12:, :3] = 0.3  # low-ranked but not low enough: bg must leave it out
    a[0, 15] = 0.05
    notch = np.zeros((h, w), bool)
    notch[13, 10] = True  # a pixel whose diagonal neighbour is outside the bg: a cross keeps it, a box would not
    proposals = [obj, ~obj & ~notch, notch]
    a[notch] = 0.9  # the notch ranks between the object and the rest
    fg, bg, how = M.fg_bg_masks(proposals, a)
    assert how == "proposals" and (fg == obj).all()
    want = _erode_cross(~obj & ~notch & (a < 0.2))
    assert (bg == want).all()
    assert bg[0, 0] and bg[15, 15]  # the image border does not erode
    assert not bg[3, 5] and bg[2, 5]  # one layer only comes off next to the object
    assert bg[12, 9] and not bg[12, 10]  # cross, not a 3×3 box: (12, 9) touches the notch only diagonally


def test_threshold_proposer_uses_multi_otsu_over_all_the_class_maps_with_the_middle_band_ignored():
    rng = np.random.default_rng(0)
    levels = [rng.uniform(0.0, 0.1, 300), rng.uniform(0.45, 0.55, 200), rng.uniform(0.9, 1.0, 100)]
    low, high = M.multi_otsu(np.concatenate(levels))
    assert 0.09 <= low < 0.45 and 0.54 <= high < 0.9  # each the centre of its class's last histogram bin
    with pytest.raises(ValueError):
        M.multi_otsu(np.array([0.0, 1.0, 1.0]))
    # two maps whose own thresholds differ: every image is cut at the class's pooled thresholds
    one = np.concatenate([levels[0], levels[1], levels[2], levels[1][:76]]).reshape(26, 26).astype(np.float32)
    two = rng.uniform(0.6, 1.0, (26, 26)).astype(np.float32) ** 3
    proposer = M.ThresholdProposer()
    pooled = M.multi_otsu(np.concatenate([M.normalise(one).ravel(), M.normalise(two).ravel()]))
    assert proposer.thresholds([one, two]) == pooled
    assert pooled != M.multi_otsu(M.normalise(one)) and pooled != M.multi_otsu(M.normalise(two))
    masks = M.class_masks([_sample(one), _sample(two)], torch.zeros(2, 1, 26, 26), proposer)
    assert masks.how == ["thresholds", "thresholds"]
    for a, fg, bg in zip((one, two), masks.fg, masks.bg, strict=True):
        n = M.normalise(a)
        assert (fg == (n > pooled[1])).all() and (bg == (n < pooled[0])).all()
        assert not (fg | bg)[(n >= pooled[0]) & (n <= pooled[1])].any()  # the middle band is neither
    flat = [np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)]
    assert proposer.thresholds(flat) == (0.2, 0.5)  # too few values for three classes: the authors' defaults


def test_masks_are_made_at_image_resolution_and_reduced_to_the_grid_bilinearly():
    a = np.zeros((4, 4), np.float32)
    a[1:3, 1:3] = 1.0
    proposer = FixedProposer([])
    masks = M.class_masks([_sample(a, 32)], torch.zeros(1, 1, 8, 8), proposer)
    # A is resized to the 32 px image (bilinear), thresholded there, then reduced to the 8x8 grid
    big = M.image_attribution(a, (32, 32))
    want = (
        F.interpolate(
            torch.from_numpy((big > 0.5).astype(np.float32))[None, None],
            size=(8, 8),
            mode="bilinear",
            align_corners=False,
        )[0, 0]
        > 0
    ).numpy()
    fg, _ = masks.on_grid((8, 8))
    assert masks.fg.shape == (1, 32, 32) and (masks.fg[0] == (big > 0.5)).all() and (fg[0] == want).all()
    one = np.zeros((16, 16), bool)
    one[1, 1] = True  # bilinear weight 1/4 at cell (0, 0)'s sample point: a cell touched counts
    assert M.mask_to_grid(one, (4, 4)).tolist() == [[True, False, False, False]] + [[False] * 4] * 3


# --------------------------------------------------------------------------- knowing when NCut fires (item 8)


def test_ncut_reads_the_dino_keys_whatever_the_extractor(tiny_stages, monkeypatch):
    """MaskCut cuts DINO keys: the masks stage hands ncut the DINO part's features, also for `--extractor sd`."""
    from ovdiff_cli.method.stage2_prototypes.classbuild import mask_batches
    from ovdiff_cli.method.stage2_prototypes.features import images_to_tensor

    assert (
        ProtoConfig().mask_features == "dino" and M.MaskCutProposer.uses_features and M.FastNCutProposer.uses_features
    )
    assert not M.ThresholdProposer.uses_features and not M.SamProposer.uses_features

    class Recording(FixedProposer):
        uses_features, resamples = True, False

        def input_side(self, feature_size: int, stride: int) -> int:
            return feature_size

    p = Recording([])
    monkeypatch.setattr(tiny_stages, "mask_proposer", lambda name: p)
    cfg = dataclasses.replace(PRESETS["tiny"].protos, extractor="sd")
    image = np.random.default_rng(0).integers(0, 256, (cfg.feature_size, cfg.feature_size, 3), dtype=np.uint8)
    g = (cfg.feature_size // 8, cfg.feature_size // 8)
    ((first, coded, counts, feats),) = mask_batches([Sample(image, np.ones((8, 8), np.float32))], tiny_stages, cfg, {g})
    dino = tiny_stages.part("dino")(images_to_tensor([image], cfg.feature_size))
    sd = tiny_stages.part("sd")(images_to_tensor([image], cfg.feature_size))
    assert p.seen == [tuple(dino.shape[1:])] and dino.shape[1] != sd.shape[1]
    torch.testing.assert_close(feats, dino)
    assert counts == {"proposals": 0, "thresholds": 1} and coded.keys() == {g} and coded[g].shape == (1, *g)


def test_class_record_counts_proposals_and_fallbacks(tiny_stages, tmp_path):
    from typer.testing import CliRunner

    from ovdiff_cli.cli.app import app

    cache = str(tmp_path / "c")
    res = CliRunner().invoke(
        app, ["protos", "add", "cat", "--preset", "tiny", "--cache", cache, "--device", "cpu", "--n-images", "2"]
    )
    assert res.exit_code == 0, res.output
    from ovdiff_cli.engines.catalogue import find_classes
    from ovdiff_cli.store.cache import Cache

    records = [rec for _, rec in find_classes(Cache(cache))]  # one per extractor part, the same masks
    assert sorted(r["part"] for r in records) == ["clip", "dino", "sd"] and len({r["mask_id"] for r in records}) == 1
    rec = records[0]
    assert rec["mask_proposals"] + rec["mask_thresholds"] == 2 and rec["mask_proposer"] == "ncut"
    assert all(
        (r["mask_proposals"], r["mask_thresholds"]) == (rec["mask_proposals"], rec["mask_thresholds"]) for r in records
    )
    res = CliRunner().invoke(app, ["protos", "list", "-v", "--cache", cache], env={"COLUMNS": "250"})
    assert (
        res.exit_code == 0 and f"{rec['mask_proposals']} proposals, {rec['mask_thresholds']} thresholds" in res.output
    )


def test_ncut_proposes_masks_on_the_default_features_of_the_full_size_architectures(sd15_random_stages):
    """sd15-random: SD1.5/DINO/CLIP architectures, random weights. A bright box on dark noise is cut out.

    Measured while choosing where NCut runs: on this image DINO keys give an 80-cell object for the
    ~66-cell box, the joint features 99 (their SD part never cuts: random SD queries have cosines
    ≥ 0.3 everywhere, above τ); on SD's own noise samples no part cuts at all. NCut reads the
    `mask_features` part (DINO) whatever the extractor spec.
    """
    from ovdiff_cli.method.stage2_prototypes.features import images_to_tensor

    rng = np.random.default_rng(0)
    image = rng.uniform(0, 60, (128, 128, 3)).astype(np.uint8)
    box = np.zeros((128, 128), bool)
    box[40:100, 20:90] = True
    image[box] = 240
    att = box.reshape(16, 8, 16, 8).mean(axis=(1, 3)).astype(np.float32)  # the box's coverage per 8×8 cell
    feats = sd15_random_stages.part(ProtoConfig().mask_features)(images_to_tensor([image], 128))
    masks = M.class_masks([Sample(image, att)], feats, M.MaskCutProposer())
    assert masks.how == ["proposals"]
    grid_box = M.mask_to_grid(box, (16, 16))
    (fg,), (bg,) = masks.on_grid((16, 16))
    iou = (fg & grid_box).sum() / (fg | grid_box).sum()
    assert iou > 0.6 and not (bg & grid_box).any()
