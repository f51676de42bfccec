"""The cache keys, in one home: support-set id, mask id, class-part id (pid) and text-embedding id.

Every key is computed from settings and model specs alone (`ModelSpecs`), so looking a cached
support set, class or prompt embedding up never loads a model. The extractor spec has one
spelling (`config.normalise_extractor`, which `ProtoConfig` applies to itself), so a class built
from Python and one built from the CLI share their key. tests/test_keys.py pins the values: a change here
invalidates users' caches and must be deliberate (bump PROTO_VERSION).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import FLOW_SCHEDULER, SCHEDULER, generator_fields
from .cache import short_hash

if TYPE_CHECKING:
    from ..config import ProtoConfig, SampleConfig
    from ..models.presets import ModelSpecs

PROTO_VERSION = 5  # bump when the way prototypes are computed changes: old entries are then rebuilt
# prototypes 3: streamed build, K-means on a bottom-k sample of masked cells (8192 at most), fp32 sums
# prototypes 4 (issue 23): raw features averaged and clustered; scikit-learn's K-means on every masked
# cell; each part's masks reduced from the images' resolution in one step; CLIP features of
# ImageNet-normalised pixels (one bump for all of issue 23)
# prototypes 5 (issue 35): SD features of a seeded VAE posterior sample; an image with no fg cell on a part's grid
# adds no bg either
MASK_VERSION = 3  # bump when the way support masks are computed changes: their classes are then rebuilt
# masks 2: the authors' support-mask rule (normalised attribution, bg cleanup, 0.2/0.5 fallback, multi-Otsu)
# masks 3: ncut is MaskCut as published (480² Lanczos input, τ 0.15, 3 cuts, masked patches kept in the graph)


# --------------------------------------------------------------------------- identities of models


def sd_source(spec: str, weights_seed: int) -> str:
    """What a Stable Diffusion spec loads: a hub id or folder as given, `random:<size>:seed<N>` for random weights."""
    if spec in ("tiny", "random"):
        return f"random:{'tiny' if spec == 'tiny' else 'full'}:seed{weights_seed}"
    return spec


def generator_identity(specs: ModelSpecs) -> dict:
    """The support-set generator's identity (what `Generator.identity()` returns), from specs alone."""
    if specs.preset.weights == "procedural":
        from ..procedural import ProceduralGenerator

        return ProceduralGenerator().identity()  # a constant of the world, no model
    if specs.models.get("generator"):  # --generator: the family and its source
        from ..models.generators import MMDIT_PIPELINES, parse_generator

        family, source = parse_generator(specs.models["generator"], specs.preset.weights)
        scheduler = FLOW_SCHEDULER if family.pipeline in MMDIT_PIPELINES else SCHEDULER
        return generator_fields(sd_source(source, specs.weights_seed), None, scheduler, family.name)
    return generator_fields(sd_source(specs.models["sd"], specs.weights_seed), None, SCHEDULER)


def clip_text_id(source: str, weights_seed: int) -> str:
    """Key of the text embeddings of an open_clip text tower (random weights: by their seed too)."""
    random = source.split(":")[0] in ("tiny", "random")  # tiny, random, tiny:siglip2, …
    return f"open_clip-text:{source}" + (f"@seed{weights_seed}" if random else "")


def _models(specs: ModelSpecs, used: set[str]) -> dict:
    """Model sources among `used`, with the preset and the seed of its random weights."""
    models = {k: specs.spec(k) for k in sorted(used) if specs.spec(k) is not None}
    return {"preset": specs.preset.name, "weights_seed": specs.weights_seed, **models}


def mask_models(specs: ModelSpecs, proto_cfg: ProtoConfig) -> dict:
    """The model sources a class's support masks depend on: the generator and the proposer's model
    (CutLER's checkpoint, SAM's, or the part whose features ncut cuts). The weights seed seeds the random-weight presets."""
    from ..config import proposer_uses_features

    used = {"sd"}
    if proto_cfg.mask_proposer in ("sam", "cutler"):
        used.add(proto_cfg.mask_proposer)
    elif proposer_uses_features(proto_cfg.mask_proposer):
        used.add(proto_cfg.mask_features)
    return _models(specs, used)


def part_models(specs: ModelSpecs, part: str) -> dict:
    """The model source one part's prototypes depend on, beyond its masks."""
    return _models(specs, {part})


# --------------------------------------------------------------------------- the keys


def support_id(class_norm: str, seed: int, specs: ModelSpecs, config: SampleConfig) -> str:
    """Cache key of a support set: everything that changes its pixels, nothing that does not (N, batch)."""
    return short_hash(class_norm, seed, generator_identity(specs), config.fingerprint_fields())


def support_key(class_norm: str, seed: int, sample_cfg: SampleConfig, photos: str | None = None) -> str:
    """What fixes a support set's pixels apart from the models: name, seed, sampler settings, N generated
    images, and the content hash of the user's photos when there are some (`protos add --images`)."""
    fixed = ("support", class_norm, seed, sample_cfg.fingerprint_fields(), sample_cfg.n_images)
    return short_hash(*fixed) if photos is None else short_hash(*fixed, {"photos": photos})


def photo_set_id(class_norm: str, photos: str, specs: ModelSpecs, config: SampleConfig) -> str:
    """Cache key of a support set of the user's photos: their content hash, and what their attribution maps
    depend on (the generator's model, prompt and sizes)."""
    return short_hash("photos", class_norm, photos, generator_identity(specs), config.fingerprint_fields())


def photo_class_id(class_norm: str, seed: int, specs: ModelSpecs) -> str:
    """Key of the note that `class_norm` is built from the user's photos (for this seed and generator)."""
    return short_hash("photo-class", class_norm, seed, generator_identity(specs))


def photo_note_key(note_id: str) -> bytes:
    """The key of the note that says a class name is built from the user's photos (`photo_class_id`)."""
    return b"u/" + note_id.encode()


def mask_id(
    class_norm: str,
    seed: int,
    specs: ModelSpecs,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    photos: str | None = None,
) -> str:
    """Cache key of a class's support masks: the support set, the proposer and what it runs on.

    Not the extractor spec: every part of every spec built from the same support set and proposer
    shares the masks (as the authors' CutLER masks serve SD, CLIP and DINO alike).
    """
    from ..config import proposer_uses_features

    features = proto_cfg.mask_features if proposer_uses_features(proto_cfg.mask_proposer) else None
    return short_hash(
        "masks",
        MASK_VERSION,
        class_norm,
        seed,
        support_key(class_norm, seed, sample_cfg, photos),
        mask_models(specs, proto_cfg),
        proto_cfg.mask_proposer,
        features,
        proto_cfg.feature_size,
    )


def part_id(class_norm: str, seed: int, part: str, mid: str, specs: ModelSpecs, proto_cfg: ProtoConfig) -> str:
    """Cache key of one class's prototypes in one extractor part (24 hex characters).

    Keyed by the masks (`mask_id`), the part and its model, K, the K-means and feature settings and, when
    not fp32, the prototypes' storage dtype;
    not by the other parts of the spec, and not by stuff/thing, which is recorded and can change in place.
    """
    return short_hash(
        "protos",
        PROTO_VERSION,
        class_norm,
        seed,
        part,
        mid,
        part_models(specs, part),
        proto_cfg.k_parts,
        proto_cfg.kmeans_iters,
        proto_cfg.kmeans_max_points,
        proto_cfg.feature_size,
        *(() if proto_cfg.proto_dtype == "fp32" else (proto_cfg.proto_dtype,)),  # fp32 keys as before
    )


def class_ids(
    class_norm: str,
    seed: int,
    specs: ModelSpecs,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    photos: str | None = None,
) -> dict[str, str]:
    """Part → `part_id` of a class for each part of `proto_cfg.extractor`, in spec order (no model loads);
    `photos`: the content hash of the user's photos in its support set (None: generated images only)."""
    from ..config import spec_parts

    mid = mask_id(class_norm, seed, specs, sample_cfg, proto_cfg, photos)
    return {p: part_id(class_norm, seed, p, mid, specs, proto_cfg) for p in spec_parts(proto_cfg.extractor)}
