"""Paper §3 "Class prototypes", one class: its support images → masks → each part's prototypes, streamed.

A class's support images pass through each extractor part a batch at a time; each batch's masks are
folded into the part's `prototypes.RegionAccumulator`s on that part's grid, then the batch is
dropped, so a build's memory does not grow with the number of support images N. The masks are made
once per class (`masks.class_masks`, the authors' rule, on DINO keys for ncut whatever the spec),
at the images' resolution (the part whose features the proposer reads is built from the same batches
when they are its own: `proposer_pass`), and
reduced from there to every grid the build needs in one step (512 → 32 for CLIP, as the authors'
scripts do; never through another grid). Pure of the cache: `vocab` reads support sets and masks
from it and commits what this yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ...config import MASK_STRIDE, proposer_uses_features

if TYPE_CHECKING:
    import torch

    from ...config import ProtoConfig
    from ...types import Sample, StageSource
    from .aggregation import Batch

Progress = Callable[[str], "Callable[[int, int], None] | None"]  # stage ("masks", "extract") → on_progress(done, total)


def mask_grid(proto_cfg: ProtoConfig) -> tuple[int, int]:
    """The grid support masks are stored on: feature_size / MASK_STRIDE on each side."""
    g = proto_cfg.feature_size // MASK_STRIDE
    return g, g


def mask_batches(
    samples: list[Sample],
    stages: StageSource,
    proto_cfg: ProtoConfig,
    grids: set[tuple[int, int]],
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, dict[tuple[int, int], np.ndarray], dict[str, int], torch.Tensor | None]]:
    """fg/bg masks of support images (`masks.class_masks`, the authors' rule), one batch at a time.

    The proposer reads the `mask_features` part's features when it uses features (ncut: DINO keys
    by default, whatever the extractor spec, at its own input side: `proposer_pass`), else a placeholder; its fallback thresholds come once
    from all N attribution maps, so batching changes nothing. The masks, made at the images'
    resolution, are reduced straight to each of `grids` (`ClassMasks.on_grid`: one bilinear step,
    as the authors reduce their mask images to each feature grid). Yields (index of the batch's
    first image, grid → coded masks (B,*grid) uint8 (`encode_masks`), how many of the batch took
    their masks from the proposals and from the thresholds, the batch's features (B,D,h,w) when they
    can serve the part's prototypes, else None), so that part is built in the same pass when it can be.
    """
    import torch

    from .aggregation import encode_masks
    from .features import iter_features
    from .masks import class_masks, lanczos

    g = proto_cfg.feature_size // MASK_STRIDE
    proposer = stages.mask_proposer(proto_cfg.mask_proposer)
    thresholds = proposer.thresholds([s.attribution for s in samples])
    step = proto_cfg.batch_size
    pass_ = proposer_pass(samples, stages, proto_cfg)
    if pass_ is not None:
        side, shared = pass_
        images = [lanczos(s.image, side) if proposer.resamples else s.image for s in samples]
        batches = iter_features(stages.part(proto_cfg.mask_features), images, side, step, on_progress)
    else:
        shared, batches = False, ((i, None) for i in range(0, len(samples), step))
    for first, feats in batches:
        chunk = samples[first : first + step]
        masks = class_masks(
            chunk, feats if feats is not None else torch.zeros(len(chunk), 0, g, g), proposer, thresholds
        )
        yield (
            first,
            {grid: encode_masks(*masks.on_grid(grid)) for grid in grids},
            masks.counts(),
            feats if shared else None,
        )
        del feats, masks  # a generator's loop variables outlive the yield: drop them before the next batch


def proposer_pass(samples: list[Sample], stages: StageSource, proto_cfg: ProtoConfig) -> tuple[int, bool] | None:
    """The side at which the proposer's features are made, and whether that pass also serves the
    `mask_features` part's prototypes (same side, same pixels: always for ncut-fast; for MaskCut when
    its input is the support images as they are); None when the proposer reads no features."""
    proposer = stages.mask_proposer(proto_cfg.mask_proposer)
    if not proposer.uses_features:
        return None
    side = proposer.input_side(proto_cfg.feature_size, stages.part(proto_cfg.mask_features).stride)
    as_they_are = not proposer.resamples or all(s.image.shape[:2] == (side, side) for s in samples)
    return side, side == proto_cfg.feature_size and as_they_are


def on_part_grid(coded: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coded masks (B,*grid) made for a part's feature grid → fg, bg (B,*grid) bool."""
    from .aggregation import decode_masks

    if tuple(coded.shape[1:]) != tuple(grid):
        raise ValueError(f"masks on a {coded.shape[1]}x{coded.shape[2]} grid for features on {grid[0]}x{grid[1]}")
    return decode_masks(coded)


def part_grid(stages: StageSource, part: str, feature_size: int) -> tuple[int, int]:
    """The feature grid of `part` for support images at `feature_size` (rounded up to its stride)."""
    extractor = stages.part(part)
    side = extractor.fit(feature_size) // extractor.stride
    return side, side


def part_prototypes(
    samples: list[Sample],
    stages: StageSource,
    proto_cfg: ProtoConfig,
    parts: list[str],
    seed: int,
    stuff: bool,
    masks: tuple[np.ndarray, dict[str, int]] | None = None,
    spill_dir: str | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray], dict[str, int]]]:
    """The prototypes of one class in each of `parts`, yielded part by part as each is done.

    masks: the class's coded masks on the mask grid (N,g,g) and their proposal/threshold counts
    when already known (a cached part of the same masks), else None. They serve as they are the
    parts whose feature grid is the mask grid (SD and DINO at stride 8); for any other grid (CLIP at
    stride 16) the masks are made again from the support images, since a part's masks come from the
    images' resolution in one step, never from another grid. Masks made here are made once for all
    `parts`, and the `mask_features` part, when it is among `parts` and the proposer reads it, is
    built from the same batches. Yields (part, arrays: `prototypes.build_prototypes`' plus "masks",
    the coded masks on the mask grid, counts {"proposals", "thresholds"}). Part-cell spill files go
    to `spill_dir` (an OSError there is the caller's to phrase).
    """
    from .aggregation import build_prototypes
    from .features import iter_features

    on = progress or (lambda stage: None)
    images = [s.image for s in samples]

    def aggregate(batches: Iterator[Batch]) -> dict[str, np.ndarray]:
        return build_prototypes(
            batches, proto_cfg.k_parts, seed, stuff, proto_cfg.kmeans_iters, proto_cfg.kmeans_max_points, spill_dir
        )

    def extracted(part: str, coded: np.ndarray) -> Iterator[Batch]:
        extractor = stages.part(part)
        for first, feats in iter_features(
            extractor, images, extractor.fit(proto_cfg.feature_size), proto_cfg.batch_size, on("extract")
        ):
            yield feats, *on_part_grid(coded[first : first + len(feats)], tuple(feats.shape[-2:]))
            del feats

    stored = mask_grid(proto_cfg)
    grids = {p: part_grid(stages, p, proto_cfg.feature_size) for p in parts}
    built: dict[str, dict[str, np.ndarray]] = {}
    remake = masks is None or not set(grids.values()) <= {stored}
    reads = False  # whether the masks' pass builds the `mask_features` part too
    if remake and proto_cfg.mask_features in parts and proposer_uses_features(proto_cfg.mask_proposer):
        reads = proposer_pass(samples, stages, proto_cfg)[1]
    if not remake:
        coded, counts = {stored: masks[0]}, masks[1]
    else:  # the masks on every grid, and from the same batches the part whose features the proposer reads
        codes: dict[tuple[int, int], list[np.ndarray]] = {g: [] for g in {stored, *grids.values()}}
        counts = {"proposals": 0, "thresholds": 0}

        def masked() -> Iterator[Batch]:
            for _, code, n, feats in mask_batches(samples, stages, proto_cfg, set(codes), on("masks")):
                for g, c in code.items():
                    codes[g].append(c)
                counts.update({k: counts[k] + v for k, v in n.items()})
                if reads:
                    yield feats, *on_part_grid(code[grids[proto_cfg.mask_features]], tuple(feats.shape[-2:]))
                del feats

        if reads:
            built[proto_cfg.mask_features] = aggregate(masked())
        else:
            for _ in masked():  # yields nothing: every mask is made, no part is built from its features
                pass
        coded = {g: np.concatenate(c) for g, c in codes.items()}
    for part in sorted(parts, key=lambda p: p not in built):  # the part built with the masks first
        arrays = built.pop(part, None) or aggregate(extracted(part, coded[grids[part]]))
        arrays["masks"] = coded[stored]  # on the mask grid: the same array in every part of these masks
        yield part, arrays, counts
