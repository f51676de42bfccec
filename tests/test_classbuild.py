"""The streamed class build (`classbuild`): batching changes nothing, DINO is featurised once for the
masks and its own prototypes, and a spill file that cannot be written is a cache error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ovdiff_cli.engines.support import ensure_support_set
from ovdiff_cli.engines.vocab import ensure_classes
from ovdiff_cli.errors import CacheError
from ovdiff_cli.method.stage2_prototypes.aggregation import encode_masks
from ovdiff_cli.models.presets import get_preset
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.store.keys import class_ids

TINY = get_preset("tiny")


def _built(cache: Cache, stages, proto_cfg) -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    ensure_classes(cache, stages, ["cat"], 0, TINY.sample, proto_cfg)
    pids = class_ids("cat", 0, stages.specs, TINY.sample, proto_cfg)
    return {p: (cache.class_record(pid), cache.class_arrays(pid)) for p, pid in pids.items()}


@pytest.mark.parametrize("proposer", ["ncut", "threshold"])  # threshold: multi-Otsu over all N maps, once
def test_one_image_per_batch_builds_what_the_whole_set_at_once_builds(tiny_stages, tmp_path, proposer):
    n = TINY.sample.n_images
    assert n > 2
    cfg = dataclasses.replace(TINY.protos, mask_proposer=proposer)
    whole = _built(Cache(tmp_path / "whole"), tiny_stages, dataclasses.replace(cfg, batch_size=n))
    single = _built(Cache(tmp_path / "single"), tiny_stages, dataclasses.replace(cfg, batch_size=1))
    assert whole.keys() == single.keys() == {"sd", "dino", "clip"}
    for part, (rec, arrays) in whole.items():
        other_rec, other = single[part]
        assert (rec["mask_proposals"], rec["mask_thresholds"]) == (
            other_rec["mask_proposals"],
            other_rec["mask_thresholds"],
        )
        assert arrays.keys() == other.keys() and "masks" in arrays and "fg/part_labels" in arrays
        for name, a in arrays.items():
            # raw features (not unit vectors): batched passes differ in float rounding at ~1e-6 of their scale
            np.testing.assert_allclose(a, other[name], rtol=1e-5, atol=1e-5, err_msg=f"{part} {name}")


def test_the_part_the_proposer_reads_is_featurised_once(tiny_stages, tmp_path):
    """ncut cuts DINO keys: the dino part is built from the batches that make the masks, not extracted again."""
    cache = Cache(tmp_path / "c")
    ensure_support_set(cache, tiny_stages, "cat", 0, TINY.sample)
    before = tiny_stages.calls.get("extract", 0)
    ensure_classes(cache, tiny_stages, ["cat"], 0, TINY.sample, TINY.protos)
    assert TINY.protos.extractor == "sd+dino+clip" and TINY.protos.mask_proposer == "ncut"
    assert tiny_stages.calls["extract"] - before == 3 * TINY.sample.n_images


def test_a_spill_file_that_cannot_be_written_is_a_cache_error(tiny_stages, tmp_path, monkeypatch):
    import tempfile

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    cache = Cache(tmp_path / "c")
    ensure_support_set(cache, tiny_stages, "cat", 0, TINY.sample)
    monkeypatch.setattr(tempfile, "TemporaryFile", full_disk)
    with pytest.raises(CacheError, match="cannot write the cache at .*No space left on device"):
        ensure_classes(cache, tiny_stages, ["cat"], 0, TINY.sample, TINY.protos)
    monkeypatch.undo()
    assert all(
        cache.class_record(pid) is None
        for pid in class_ids("cat", 0, tiny_stages.specs, TINY.sample, TINY.protos).values()
    )


def test_no_earlier_batch_is_alive_while_the_next_is_made(tiny_stages, tmp_path, monkeypatch):
    """One batch of features at a time: every layer of the stream (iter_features, the masks, the
    accumulators) drops its batch before asking for the next, so a build's peak holds one batch."""
    import weakref

    from ovdiff_cli.method.stage2_prototypes import features

    made: list[weakref.ref] = []
    alive_at_call: list[int] = []
    call = features.Part.__call__

    def watched(self, images):
        alive_at_call.append(sum(r() is not None for r in made))
        out = call(self, images)
        made.append(weakref.ref(out))
        return out

    cache = Cache(tmp_path / "c")
    ensure_support_set(cache, tiny_stages, "cat", 0, TINY.sample)
    monkeypatch.setattr(features.Part, "__call__", watched)
    ensure_classes(cache, tiny_stages, ["cat"], 0, TINY.sample, dataclasses.replace(TINY.protos, batch_size=1))
    assert len(alive_at_call) == 3 * TINY.sample.n_images and set(alive_at_call) == {0}


@pytest.mark.parametrize("first", ["sd+dino+clip", "sd"])  # masks made in this build / cached by an earlier one
def test_each_part_reduces_the_masks_from_the_images_resolution_in_one_step(tiny_stages, tmp_path, first):
    """sdov gen_proto_*.py resize each mask image straight to the feature grid (bilinear, a touched cell
    counts): CLIP's 32² from 512², not from the 64² mask grid. CLIP's masked cells are the one-step
    reduction of the image-resolution masks, also when the class's masks were cached by an `sd` build."""
    import torch

    from ovdiff_cli.engines.support import load_samples
    from ovdiff_cli.method.stage2_prototypes.classbuild import mask_grid
    from ovdiff_cli.method.stage2_prototypes.masks import class_masks, mask_to_grid

    cfg = dataclasses.replace(TINY.protos, mask_proposer="threshold")  # masks from the maps alone: easy to redo here
    cache = Cache(tmp_path / "c")
    for spec in dict.fromkeys([first, "sd+dino+clip"]):
        ensure_classes(cache, tiny_stages, ["cat"], 0, TINY.sample, dataclasses.replace(cfg, extractor=spec))
    pid = class_ids("cat", 0, tiny_stages.specs, TINY.sample, dataclasses.replace(cfg, extractor="clip"))["clip"]
    rec, arrays = cache.class_record(pid), cache.class_arrays(pid)
    samples = load_samples(cache, rec["support_id"], rec["n_images"])
    proposer = tiny_stages.mask_proposer("threshold")
    masks = class_masks(samples, torch.zeros(len(samples), 0, 1, 1), proposer)
    grid = tuple(arrays["fg/part_labels"].shape[1:])
    stored = mask_grid(cfg)
    assert grid != stored and samples[0].image.shape[0] > stored[0]
    for group, labels, full in (("fg", arrays["fg/part_labels"], masks.fg), ("bg", arrays["bg/part_labels"], masks.bg)):
        once = np.stack([mask_to_grid(m, grid) for m in full])
        twice = np.stack([mask_to_grid(mask_to_grid(m, stored), grid) for m in full])
        np.testing.assert_array_equal(labels >= 0, once, err_msg=group)
        assert not np.array_equal(once, twice), group  # the data tell the two apart
    np.testing.assert_array_equal(arrays["masks"], encode_masks(*masks.on_grid(stored)))  # stored on the mask grid
