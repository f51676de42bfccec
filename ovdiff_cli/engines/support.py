"""Support sets in the cache (paper §3 "Support set generation", stored): drawn once, resumed, read back.

`ensure_support_set` draws only the images a class's set lacks, batch by batch, each batch committed
in one transaction, so a killed run loses at most one batch; a lock per set makes a second process
wait and then find the work done. The drawing itself is `method.stage1_support.sampling`'s; this module is its
persistence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import names
from ..config import SCHEDULER
from ..errors import IncompleteSupportSet, NoSupportSet
from ..method.stage1_support.sampling import image_seed
from ..store.cache import now_iso
from ..store.keys import support_id
from ..types import Sample

if TYPE_CHECKING:
    from ..config import SampleConfig
    from ..models.presets import ModelSpecs
    from ..store.cache import Cache
    from ..types import StageSource


def _new_meta(class_name: str, norm: str, seed: int, config: SampleConfig, generator, stages: StageSource) -> dict:
    meta = {
        "name": class_name,
        "norm": norm,
        "seed": seed,
        "prompt": config.prompt_template.format(norm),
        **config.fingerprint_fields(),
        "scheduler": SCHEDULER,
        "generator": generator.identity(),
        "models": stages.specs.identity(),
        "device": str(stages.device),
        "dtype": str(stages.dtype).removeprefix("torch."),
        "created_at": now_iso(),
        "n_images": 0,
    }
    if hasattr(generator, "token_indices"):
        meta["token_indices"] = generator.token_indices(norm, config)
    return meta


def ensure_support_set(
    cache: Cache,
    stages: StageSource,
    class_name: str,
    seed: int,
    config: SampleConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[str, dict]:
    """Make sure the first `config.n_images` support images of a class are cached; return (sid, meta).

    Only missing images are generated, batch by batch, each batch committed in one transaction:
    a killed run loses at most one batch and the next run resumes. A lock per support set makes a
    second process wait, then find the work done. `on_progress(done, total)` counts images. The
    generator (Stable Diffusion) is built only when an image is missing.
    """
    norm = names.validate(class_name)
    sid = support_id(norm, seed, stages.specs, config)
    total = config.n_images
    meta = cache.support_meta(sid)
    if meta is None or meta["n_images"] < total:
        with cache.lock(sid):
            meta = cache.support_meta(sid)  # another process may have drawn them while we waited
            done = 0 if meta is None else meta["n_images"]
            if on_progress:
                on_progress(min(done, total), total)
            if done < total:
                from ..limits import check_room

                check_room(cache.root, total - done, config.size, config.attribution_size)
            generator = stages.generator() if done < total else None
            if meta is None:
                meta = _new_meta(class_name, norm, seed, config, generator, stages)
            while done < total:
                seeds = [image_seed(norm, seed, i) for i in range(done, min(done + config.batch_size, total))]
                samples = generator.generate(norm, seeds, config)
                cache.put_support_batch(sid, meta, done, [s.image for s in samples], [s.attribution for s in samples])
                done += len(samples)
                if on_progress:
                    on_progress(done, total)
            meta = cache.support_meta(sid)
    elif on_progress:
        on_progress(total, total)
    return sid, meta


def load_samples(cache: Cache, sid: str, n: int) -> list[Sample]:
    """The first `n` cached support images of `sid` with their attribution maps."""
    meta = cache.support_meta(sid)
    have = 0 if meta is None else meta["n_images"]
    if have < n:
        raise IncompleteSupportSet(sid, meta["name"] if meta else "?", have, n)
    return [Sample(image=cache.support_image(sid, i), attribution=cache.attribution(sid, i)) for i in range(n)]


def cached_support_set(
    cache: Cache, specs: ModelSpecs, class_name: str, seed: int, config: SampleConfig
) -> tuple[dict, list[Sample]]:
    """(meta, every cached image) of a class's support set, found with no model loaded; NoSupportSet if none is."""
    norm = names.validate(class_name)
    sid = support_id(norm, seed, specs, config)
    meta = cache.support_meta(sid)
    if not meta or meta["n_images"] == 0:
        raise NoSupportSet(norm, seed, specs.preset.name)
    return meta, load_samples(cache, sid, meta["n_images"])


@dataclass
class SampleRun:
    """What `sample_classes` did: per class its support-set id, the images per class, how many were
    drawn now (the rest were cached) and the seconds it took."""

    names: list[str]
    ids: list[str]
    n_images: int
    generated: int
    seconds: float


def sample_classes(
    cache: Cache,
    stages: StageSource,
    class_names: list[str],
    seed: int,
    config: SampleConfig,
    on_event: Callable[[str, str, int, int], None] | None = None,
) -> SampleRun:
    """`ovdiff sample`: the support set of every class drawn or completed with one set of stages (one model
    load); on_event("sample", class, done, total) counts each class's images."""
    start, before = time.perf_counter(), stages.calls.get("generate", 0)
    ids = []
    for name in class_names:
        progress = None if on_event is None else (lambda done, total, name=name: on_event("sample", name, done, total))
        ids.append(ensure_support_set(cache, stages, name, seed, config, progress)[0])
    return SampleRun(
        list(class_names), ids, config.n_images, stages.calls.get("generate", 0) - before, time.perf_counter() - start
    )


def write_support_sheet(
    cache: Cache, specs: ModelSpecs, class_name: str, seed: int, config: SampleConfig, out: Path
) -> tuple[dict, int]:
    """A contact sheet of a class's cached support set (image | attribution map pairs) written to `out`
    (PNG/JPEG); (the set's meta, images drawn). No model is loaded."""
    from ..io.sheets import contact_sheet, save_sheet

    meta, samples = cached_support_set(cache, specs, class_name, seed, config)
    title = f"{meta['prompt']}  |  seed {meta['seed']}  |  {len(samples)} images, attribution maps beside them"
    save_sheet(contact_sheet(samples, title), out)
    return meta, len(samples)
