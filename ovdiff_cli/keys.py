"""The cache keys, in one home: support-set id, class id (pid) and text-embedding id.

Every key is computed from settings and model specs alone (`ModelSpecs`), so looking a cached
support set, class or prompt embedding up never loads a model. The extractor spec has one
spelling (`config.normalise_extractor`, which `ProtoConfig` applies to itself), so a class built
from Python and one built from the CLI share their key. tests/test_keys.py pins the values: a change here
invalidates users' caches and must be deliberate (bump PROTO_VERSION).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cache import short_hash

if TYPE_CHECKING:
    from .config import ProtoConfig, SampleConfig
    from .models.presets import ModelSpecs

PROTO_VERSION = 2  # bump when the way prototypes are computed changes: old entries are then rebuilt
SCHEDULER = "dpmsolver++"  # the sampler of every support set (paper App. C.5); part of its key


# --------------------------------------------------------------------------- identities of models


def sd_source(spec: str, weights_seed: int) -> str:
    """What a Stable Diffusion spec loads: a hub id or folder as given, `random:<size>:seed<N>` for random weights."""
    if spec in ("tiny", "random"):
        return f"random:{'tiny' if spec == 'tiny' else 'full'}:seed{weights_seed}"
    return spec


def generator_identity(specs: ModelSpecs) -> dict:
    """The support-set generator's identity (what `Generator.identity()` returns), from specs alone."""
    if specs.preset.weights == "procedural":
        from .procedural import WORLD_VERSION

        return {"generator": "procedural", "world_version": WORLD_VERSION}
    return {"model": sd_source(specs.models["sd"], specs.weights_seed), "revision": None, "scheduler": SCHEDULER}


def clip_text_id(source: str, weights_seed: int) -> str:
    """Key of the text embeddings of an open_clip text tower (random weights: by their seed too)."""
    return f"open_clip-text:{source}" + (f"@seed{weights_seed}" if source in ("tiny", "random") else "")


def text_embedding_id(specs: ModelSpecs) -> str:
    """The category filter scorer's identity (`ImageTextScorer.identity()`), from specs alone."""
    if specs.preset.weights == "procedural":
        from .procedural import WORLD_VERSION

        return f"procedural-scorer/v{WORLD_VERSION}"
    return clip_text_id(specs.models["clip"], specs.weights_seed)


def model_identity(specs: ModelSpecs, proto_cfg: ProtoConfig) -> dict:
    """The model sources a class's prototypes depend on: generator, extractor parts, proposer.

    The weights seed is included because it seeds the random-weight presets' models.
    """
    used = {"sd", *proto_cfg.extractor.split("+")} - {"sam"}
    if proto_cfg.mask_proposer == "sam":
        used.add("sam")
    models = {k: specs.models[k] for k in sorted(used) if k in specs.models}
    return {"preset": specs.preset.name, "weights_seed": specs.weights_seed, **models}


# --------------------------------------------------------------------------- the keys


def support_id(class_norm: str, seed: int, specs: ModelSpecs, config: SampleConfig) -> str:
    """Cache key of a support set: everything that changes its pixels, nothing that does not (N, batch)."""
    return short_hash(class_norm, seed, generator_identity(specs), config.fingerprint_fields())


def support_key(class_norm: str, seed: int, sample_cfg: SampleConfig) -> str:
    """What fixes a support set's pixels apart from the models: name, seed, sampler settings, N."""
    return short_hash("support", class_norm, seed, sample_cfg.fingerprint_fields(), sample_cfg.n_images)


def class_id(class_norm: str, seed: int, specs: ModelSpecs, sample_cfg: SampleConfig, proto_cfg: ProtoConfig) -> str:
    """Cache key of one class's prototypes (24 hex characters).

    Keyed by the support set (`support_key`), the models the class depends on (`model_identity`), the
    extractor, the mask proposer, K and the K-means and feature settings; not by stuff/thing, which
    is recorded and can change in place.
    """
    return short_hash(
        "protos", PROTO_VERSION, class_norm, seed, proto_cfg.extractor, support_key(class_norm, seed, sample_cfg),
        model_identity(specs, proto_cfg), proto_cfg.mask_proposer, proto_cfg.k_parts, proto_cfg.kmeans_iters,
        proto_cfg.kmeans_max_points, proto_cfg.feature_size,
    )  # fmt: skip
