"""The bench's "beyond" section: what the additions beyond the paper cost and change, on the procedural world.

`segment --refine pamr`, region voting (`--refine sam2` with the world's own regions standing in for
SAM 2's: the vote's cost and its ceiling; SAM 2's forward pass needs its weights) and `protos add
--images` (a class from photos against its generated twin). The world has known truth, so each
addition's effect is an mIoU on held-out scenes; everything runs on the CPU in seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .stats import figure

if TYPE_CHECKING:
    from .settings import BenchSettings

PHOTO_CLASS = "kite"


def _world_regions(label: np.ndarray) -> list[np.ndarray]:
    """The connected parts of each labelled value of a scene's truth: what a perfect region proposer finds."""
    import cv2

    out = []
    for v in np.unique(label):
        if v != 255:
            n, comp = cv2.connectedComponents((label == v).astype(np.uint8))
            out += [comp == i for i in range(1, n)]
    return out


def _photos(folder: Path, name: str, n: int, size: int) -> Path:
    from PIL import Image

    from ..procedural import support_sample

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):  # the world's drawings of the class, seeds apart from its generated set's
        Image.fromarray(support_sample(name, 10_000 + i, size, 16).image).save(folder / f"{i:02d}.png")
    return folder


def bench_beyond(s: BenchSettings, root: Path, seed: int) -> dict:
    """Seconds per image of each refiner, seconds to build a class from photos, and the mIoU each gives."""
    from ..compose import Stages
    from ..engines.vocab import build_from_photos, ensure_classes
    from ..eval.metrics import ConfusionMatrix
    from ..method.beyond.refine import PamrRefiner, RegionRefiner
    from ..models.presets import get_preset
    from ..procedural import LABELLED, render_scene
    from ..store.cache import Cache

    preset = get_preset("procedural")
    stages = Stages.for_run("procedural", "cpu", "fp32")
    rng = np.random.default_rng(seed)
    scenes = [render_scene(rng) for _ in range(s.beyond_scenes)]
    truth = {id(image): label for image, label in scenes}
    generated = ensure_classes(Cache(root / "beyond-gen"), stages, list(LABELLED), seed, preset.sample, preset.protos)

    def run(classes, refiner=None) -> tuple[float, float]:
        seg = stages.segmenter(classes, preset.segment, "procedural")
        seg.refiner = refiner
        cm, spent = ConfusionMatrix(len(LABELLED) + 1), 0.0
        for image, label in scenes:
            out = seg.predict(image)
            cm.update(out.labels, label)
            spent += out.timings.get("refine", 0.0)
        return 100 * cm.miou(), spent / len(scenes)

    plain = run(generated)[0]
    pamr = [run(generated, PamrRefiner()) for _ in range(s.repeats)]
    vote = [run(generated, RegionRefiner(lambda image: _world_regions(truth[id(image)]))) for _ in range(s.repeats)]
    cache = Cache(root / "beyond-photos")
    photos = _photos(root / "beyond-photos-in", PHOTO_CLASS, preset.sample.n_images, preset.sample.size)
    builds = []
    for r in range(s.repeats):
        t0 = time.perf_counter()
        build_from_photos(
            Cache(root / f"beyond-photos-{r}"), stages, PHOTO_CLASS, photos, seed, preset.sample, preset.protos
        )
        builds.append(time.perf_counter() - t0)
    build_from_photos(cache, stages, PHOTO_CLASS, photos, seed, preset.sample, preset.protos)
    mixed = ensure_classes(cache, stages, list(LABELLED), seed, preset.sample, preset.protos)
    return {
        "figures": {
            "plain_miou": figure("paper's path, mIoU", "%", [plain]),
            "pamr": figure("--refine pamr", "s/image", [p[1] for p in pamr]),
            "pamr_miou": figure("  mIoU with it", "%", [p[0] for p in pamr]),
            "vote": figure("region vote (world's regions)", "s/image", [v[1] for v in vote]),
            "vote_miou": figure("  mIoU with it (ceiling: perfect regions)", "%", [v[0] for v in vote]),
            "photos_build": figure(f"class from {preset.sample.n_images} photos", "s", builds),
            "photos_miou": figure(f"  mIoU, {PHOTO_CLASS} from photos", "%", [run(mixed)[0]]),
        },
        "notes": [
            f"procedural world, {len(scenes)} held-out scenes of {'/'.join(map(str, scenes[0][0].shape[:2]))} px, "
            f"classes {', '.join(LABELLED)}; the photos are the world's drawings of {PHOTO_CLASS!r} (seeds apart "
            "from its generated set); SAM 2's own forward pass is not timed (weights needed)"
        ],
    }
