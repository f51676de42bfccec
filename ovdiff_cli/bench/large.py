"""The bench's large-vocabulary section (issues 28, 38): ten thousand classes of the paper's size in one cache.

Every class is synthetic (random unit prototypes of the preset's feature dimensions, N = K =
bank_rows) and written through `put_prototypes`, under the ids `ensure_classes` looks up, so
reading one costs what reading a built one does. Each measurement runs in a new process, as a
user's `segment` or `protos add` starts with nothing else in it: reading the vocabulary class by class
as a segment reads it (time and memory at a tenth and at all of the classes), segmenting one encoded
image with all of them against 20, the category filter over all of the names, a segment's memory with
100 classes and with all of them, and adding one real class to the cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..classnames.lists import ADE, CITYSCAPES, CONTEXT, STUFF, VOC
from .settings import BenchSettings, dims_text, fresh_cache, preset_configs, synthetic_bank, write_images
from .stats import clock_of, figure, in_child, interleaved_pairs, ratios, timed, with_cpu_time

MEMORY_BASELINE = 100  # the vocabulary size a large one's segment memory is compared with (issue 38: within 10%)

if TYPE_CHECKING:
    from ..store.cache import Cache


def vocabulary_names(n: int) -> list[str]:
    """n distinct class names: the benchmarks' own names first, then numbered variants of them
    ("cat 2"), so prompts have the length of real ones."""
    base = list(dict.fromkeys(x for x in (*VOC[1:], *STUFF, *ADE, *CONTEXT, *CITYSCAPES) if x != "background"))
    out = list(base)
    k = 2
    while len(out) < n:
        out += [f"{b} {k}" for b in base]
        k += 1
    return out[:n]


def _configs(s: BenchSettings):
    base_sample, base_proto, _ = preset_configs(s.preset)
    return (
        replace(base_sample, n_images=s.n_images, steps=s.steps, size=s.size),
        replace(base_proto, feature_size=s.feature_size, k_parts=s.k_parts, proto_dtype=s.large_proto_dtype),
    )


def check_disk(s: BenchSettings, dim: dict[str, int], root: Path) -> int:
    """The bytes the section's cache will take (prototypes in their stored dtype, LMDB's pages and the blobs'
    headers counted as a tenth more); one clear error before any work when `root`'s disk has less free."""
    import shutil

    from ..errors import OvdiffError

    width = 2 if s.large_proto_dtype == "fp16" else 4
    rows = 2 * (1 + 2 * s.bank_rows)  # fg and bg: 1 class + N instance + K part prototypes
    need = int(1.1 * s.large_classes * rows * sum(dim.values()) * width)
    free = shutil.disk_usage(root).free
    if free < need:
        raise OvdiffError(
            f"the large_vocab section needs {need / 2**30:.1f} GiB free at {root} for {s.large_classes} classes "
            f"({s.large_proto_dtype} prototypes) and {free / 2**30:.1f} GiB is free: free disk or leave the section out"
        )
    return need


def fill_vocabulary(cache: Cache, s: BenchSettings, names: list[str], dim: dict[str, int], seed: int) -> float:
    """Write `names` as synthetic classes of the paper's size, a hundred at a time; seconds taken."""
    from ..compose import Stages
    from ..engines.vocab import put_prototypes

    specs = Stages.for_run(s.preset, "cpu", "fp32").specs  # ids only: no model is loaded
    sample_cfg, proto_cfg = _configs(s)
    t0 = time.perf_counter()
    for i in range(0, len(names), 100):
        for proto in synthetic_bank(names[i : i + 100], dim, s.bank_rows, seed + i):
            put_prototypes(cache, specs, proto, seed, sample_cfg, proto_cfg, source="bench")
    return time.perf_counter() - t0


def _status_mib(fields: tuple[str, ...]) -> dict[str, float]:
    out = dict.fromkeys(fields, 0.0)
    try:
        for line in open("/proc/self/status"):  # noqa: SIM115
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


class AnonPeak:
    """The peak of this process's own (anonymous) memory while open, in MiB, sampled every `every` seconds.

    Linux keeps a high-water mark only of the whole RSS, which also counts the file pages of LMDB's map: the
    OS page cache, shared and reclaimable, which the kernel maps in large runs around each page read (reading
    the heads of 10,000 classes maps most of the file), so it says nothing of what a process holds."""

    def __init__(self, every: float = 0.002):
        import threading

        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.base = self.peak = 0.0

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _status_mib(("RssAnon",))["RssAnon"])

    def __enter__(self) -> AnonPeak:
        self.base = self.peak = _status_mib(("RssAnon",))["RssAnon"]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mib(("RssAnon",))["RssAnon"])


def load_vocabulary(settings: dict, cache_root: str, n: int, seed: int) -> dict:
    """Run in a new process: read the first n classes of the filled cache as a streamed segment reads them (heads
    from `ensure_classes(arrays=False)`, then each class part's arrays with `load_class`, let go before the next).
    Seconds, the float32 bytes read, and in MiB the peak growth of the process's own memory (`AnonPeak`) and the
    growth of its file-backed pages (LMDB's map: the OS page cache, shared and reclaimable)."""
    from ..compose import Stages
    from ..engines.vocab import ensure_classes
    from ..store.cache import Cache
    from ..store.protos import load_class

    s = BenchSettings(**settings)
    stages = Stages.for_run(s.preset, "cpu", "fp32")
    sample_cfg, proto_cfg = _configs(s)
    cache = Cache(cache_root)
    names = vocabulary_names(n)
    before = _status_mib(("RssFile",))["RssFile"]
    with AnonPeak() as own:
        t0 = time.perf_counter()
        heads = ensure_classes(cache, stages, names, seed, sample_cfg, proto_cfg, build=False, arrays=False)
        nbytes = 0
        for head in heads:
            for part in head.parts.values():
                arrays = load_class(cache, part.pid)
                nbytes += sum(a.nbytes for g in (arrays.fg, arrays.bg) for a in g.values())
                del arrays
        seconds = time.perf_counter() - t0
    file_pages = _status_mib(("RssFile",))["RssFile"] - before
    return {"seconds": seconds, "proto_mib": nbytes / 2**20, "own_peak": own.peak - own.base, "file": file_pages}


def _segment_setup(s: BenchSettings, device: str, dtype: str):
    """(stages, sample config, proto config, segment config, the extractor parts, the filter's scorer), all loaded."""
    from ..compose import Stages
    from ..config import spec_parts

    stages = Stages.for_run(s.preset, device, dtype)
    sample_cfg, proto_cfg = _configs(s)
    cfg = replace(preset_configs(s.preset)[2], short_side=s.short_side, windows=s.windows, stride=s.stride, eta=s.eta)
    parts = [stages.part(p) for p in spec_parts(proto_cfg.extractor)]
    return stages, sample_cfg, proto_cfg, cfg, parts, stages.scorer()


def segment_large(
    settings: dict, cache_root: str, image_dir: str, device: str, dtype: str, seed: int, root: str
) -> dict:
    """Run in a new process: encode one image once (the backbones' work, the same whatever the vocabulary; kept
    at root/large-encoded.pt for `segment_memory`); the filter over all of the names, cold (nothing cached) once,
    then warm; then `predict_encoded` with the 20 first classes and with all of them in interleaved pairs."""
    import torch

    from ..engines.vocab import ensure_classes
    from ..io.images import load_image
    from ..method.stage3_filter.prefilter import CategoryFilter
    from ..method.stage4_segment.segmenter import encode_image
    from ..method.stage4_segment.targets import working_image
    from ..store.cache import Cache
    from ..store.protos import VocabArrays

    s = BenchSettings(**settings)
    stages, sample_cfg, proto_cfg, cfg, parts, scorer = _segment_setup(s, device, dtype)
    image = load_image(next(Path(image_dir).glob("*.jpg")))
    encode_image(parts, scorer, cfg, image, stages.device)  # warm-up: kernel selection at this shape
    t_enc, enc = timed(lambda: encode_image(parts, scorer, cfg, image, stages.device), stages.device)
    torch.save(enc, Path(root) / "large-encoded.pt")
    cache = Cache(cache_root)
    names = vocabulary_names(s.large_classes)
    # the filter as the segment's own builds it: cold, every prompt is encoded and kept (by prompt and as the
    # vocabulary's matrix); warm, the matrix is read back in one piece
    work = working_image(image, cfg.short_side)

    def select():
        return CategoryFilter(scorer, cache, names, s.eta, cfg.filter_size, vocab=VocabArrays(cache)).select(work)

    cold = [timed(select, stages.device)[0]]
    warm = [timed(select, stages.device)[0] for _ in range(s.repeats)]
    # as `segment` and `eval` run: heads (no array read) and a segmenter that reads each image's kept classes
    few = ensure_classes(cache, stages, names[: s.bank_classes], seed, sample_cfg, proto_cfg, build=False, arrays=False)
    many = ensure_classes(cache, stages, names, seed, sample_cfg, proto_cfg, build=False, arrays=False)
    segs = [stages.segmenter(c, cfg, proto_cfg.extractor, cache, scorer=scorer) for c in (few, many)]
    del few, many
    for seg in segs:
        seg.predict_encoded(enc)  # warm-up: the subset prompts are encoded and cached once
    runs: dict[int, list[dict]] = {0: [], 1: []}

    def side(j: int):
        return lambda: runs[j].append(segs[j].predict_encoded(enc).timings)

    t_many, t_few = interleaved_pairs(side(1), side(0), s.large_pairs, stages.device)
    return {
        "encode": t_enc,
        "many": t_many,
        "few": t_few,
        "filter_many": [r["filter"] for r in runs[1]],
        "cold": cold,
        "warm": warm,
    }


def segment_memory(settings: dict, cache_root: str, root: str, k: int, device: str, dtype: str, seed: int) -> dict:
    """Run in a new process: a segment's memory with the first k classes, as `segment` runs (heads, each image's
    kept classes read from the cache), on the image `segment_large` encoded. The base is taken once the models
    and the encoded image are in memory; the peak covers the heads, the segmenter and two `predict_encoded`."""
    import gc

    import torch

    from ..engines.vocab import ensure_classes
    from ..method.stage4_segment.targets import working_image
    from ..store.cache import Cache

    s = BenchSettings(**settings)
    stages, sample_cfg, proto_cfg, cfg, _, scorer = _segment_setup(s, device, dtype)
    enc = torch.load(Path(root) / "large-encoded.pt", weights_only=False)
    cache = Cache(cache_root)
    names = vocabulary_names(s.large_classes)[:k]
    gc.collect()
    before = _status_mib(("RssFile", "VmRSS"))
    with AnonPeak() as own:
        heads = ensure_classes(cache, stages, names, seed, sample_cfg, proto_cfg, build=False, arrays=False)
        seg = stages.segmenter(heads, cfg, proto_cfg.extractor, cache, scorer=scorer)
        del heads
        for _ in range(2):
            seg.predict_encoded(enc)
    after = _status_mib(("RssFile", "VmRSS"))
    kept = seg.filter.select(working_image(enc.image, cfg.short_side)) if seg.filter else list(range(k))
    nbytes = sum(v.restrict(kept).protos.numel() * 4 for v in seg.vocabs)  # one image's bank
    return {
        "rss_base": before["VmRSS"],
        "beyond": own.peak - own.base,
        "file": after["RssFile"] - before["RssFile"],
        "vocab_mib": nbytes / 2**20,
        "kept": len(kept),
    }


def add_pairs(settings: dict, cache_root: str, device: str, dtype: str, seed: int, root: str) -> dict:
    """Run in a new process: `protos add` of one class into the filled cache and into an empty one, in
    interleaved pairs; wall seconds and this process's CPU seconds (all its threads: what another process does
    on the machine is not counted in them). Pair i builds a class neither cache has held (a new name per pair,
    both sides the same), so no side re-adds what it removed."""
    from ..compose import Stages
    from ..engines.vocab import ensure_classes
    from ..store.cache import Cache

    s = BenchSettings(**settings)
    stages = Stages.for_run(s.preset, device, dtype)
    sample_cfg, proto_cfg = _configs(s)
    big = Cache(cache_root)
    extra = [f"okapi {i}" for i in range(s.large_pairs + 1)]
    cpu: dict[str, list[float]] = {"add": [], "alone": []}

    def build(cache: Cache, name: str) -> None:
        ensure_classes(cache, stages, [name], seed, sample_cfg, proto_cfg, kinds={name: "thing"})

    build(fresh_cache(Path(root), "large-warmup-"), extra[-1])  # models loaded, kernels chosen
    todo_big, todo_alone = iter(extra), iter(extra)
    empty = iter(
        [fresh_cache(Path(root), "large-alone-") for _ in range(s.large_pairs)]
    )  # opened before the clock, as `big`
    os.sync()  # the fill's pages are on disk before the clock runs (see the vocabulary section)
    t_add, t_alone = interleaved_pairs(
        with_cpu_time(lambda: build(big, next(todo_big)), cpu["add"]),
        with_cpu_time(lambda: build(next(empty), next(todo_alone)), cpu["alone"]),
        s.large_pairs,
        stages.device,
    )
    return {
        "add": t_add,
        "alone": t_alone,
        "add_cpu": cpu["add"],
        "alone_cpu": cpu["alone"],
        "device": stages.device.type,
    }


def bench_large_vocab(s: BenchSettings, dim: dict[str, int], device: str, dtype: str, seed: int, root: Path) -> dict:
    """The section: fill a cache with `large_classes` synthetic classes, then each measurement in a new process."""
    n, small = s.large_classes, max(1, s.large_classes // 10)
    check_disk(s, dim, root)
    cache = fresh_cache(root, "large-")
    t_fill = fill_vocabulary(cache, s, vocabulary_names(n), dim, seed)
    os.sync()
    args = [asdict(s), str(cache.root)]
    loads: dict[int, list[dict]] = {small: [], n: []}
    for r in range(s.repeats):
        for k in (small, n) if r % 2 == 0 else (n, small):
            loads[k].append(
                in_child("ovdiff_cli.bench.large:load_vocabulary", [*args, k, seed], root, f"large-load-{k}")
            )
    folder = write_images(root / "large-images", 1, s.image_hw, seed)
    seg = in_child(
        "ovdiff_cli.bench.large:segment_large",
        [*args, str(folder), device, dtype, seed, str(root)],
        root,
        "large-segment",
    )
    mem = {
        k: in_child("ovdiff_cli.bench.large:segment_memory", [*args, str(root), k, device, dtype, seed], root, tag)
        for k, tag in ((min(MEMORY_BASELINE, n), "large-memory-few"), (n, "large-memory"))
    }
    add = in_child("ovdiff_cli.bench.large:add_pairs", [*args, device, dtype, seed, str(root)], root, "large-add")
    return _section(s, n, small, t_fill, loads, seg, mem, add, dim)


def _section(
    s: BenchSettings,
    n: int,
    small: int,
    t_fill: float,
    loads: dict[int, list[dict]],
    seg: dict,
    mem: dict[int, dict],
    add: dict,
    dim: dict[str, int],
) -> dict:
    def col(k: int, key: str) -> list[float]:
        return [r[key] for r in loads[k]]

    per_class = [(b["seconds"] / n) / (a["seconds"] / small) for a, b in zip(loads[small], loads[n], strict=True)]
    held = [r["own_peak"] / r["proto_mib"] for r in loads[n]]
    total_many = [seg["encode"] + t for t in seg["many"]]
    total_few = [seg["encode"] + t for t in seg["few"]]
    share = [100 * f / t for f, t in zip(seg["filter_many"], total_many, strict=True)]
    few_k = min(MEMORY_BASELINE, n)
    beyond, beyond_few = mem[n]["beyond"], mem[few_k]["beyond"]
    c_add, clock = clock_of(add["device"], add["add"], add["add_cpu"])
    c_alone, _ = clock_of(add["device"], add["alone"], add["alone_cpu"])
    return {
        "figures": {
            "fill": figure(f"write {n} classes (put_prototypes)", "s", [t_fill]),
            "load_small": figure(f"read {small} classes, one at a time", "s", col(small, "seconds")),
            "load": figure(f"read {n} classes, one at a time", "s", col(n, "seconds")),
            "load_per_class": figure(f"  time per class, {n} / {small}", "×", per_class, 1.2),
            "load_mib": figure(f"  prototypes of {n} classes (float32)", "MiB", col(n, "proto_mib")),
            "load_peak": figure("  peak growth of own memory while reading", "MiB", col(n, "own_peak")),
            "load_held": figure(f"  peak own memory / the {n} classes' bytes (1: all held)", "×", held),
            "load_file": figure("  RSS growth, LMDB map pages (page cache)", "MiB", col(n, "file")),
            "segment_few": figure(f"segment, {s.bank_classes} classes + background", "s/image", total_few),
            "segment_many": figure(f"segment, {n} classes + background", "s/image", total_many),
            "segment_ratio": figure(f"  {n} / {s.bank_classes} classes", "×", ratios(total_many, total_few), 1.3),
            "matching_ratio": figure("  of which after the backbones, ratio", "×", ratios(seg["many"], seg["few"])),
            "filter_cold": figure(f"filter over {n} names, cold (nothing cached)", "s", seg["cold"]),
            "filter_warm": figure(f"filter over {n} names, warm (cached matrix)", "s", seg["warm"]),
            "filter_share": figure(f"  filter's share of a segment, {n} classes", "%", share),
            "rss_base": figure(
                f"RSS with the models and the encoded image ({n} classes' run)", "MiB", [mem[n]["rss_base"]]
            ),
            "rss_beyond": figure("  own memory beyond them, peak (RssAnon)", "MiB", [beyond], 1536),
            "rss_beyond_few": figure(f"  the same with {few_k} classes", "MiB", [beyond_few]),
            "rss_ratio": figure(f"  {n} / {few_k} classes", "×", [beyond / beyond_few], 1.1),
            "rss_vocab": figure("  of which one image's bank (kept classes, float32)", "MiB", [mem[n]["vocab_mib"]]),
            "rss_file": figure("  LMDB map pages mapped meanwhile (page cache, shared)", "MiB", [mem[n]["file"]]),
            "add": figure(f"protos add 1 class to {n} cached", "s", add["add"]),
            "alone": figure("build that class alone", "s", add["alone"]),
            "add_wall_ratio": figure("  add / alone, wall time", "×", ratios(add["add"], add["alone"])),
            "add_ratio": figure(f"  add / alone, {clock}", "×", ratios(c_add, c_alone), 1.02),
        },
        "notes": [
            f"{n} SYNTHETIC classes (random unit prototypes, fg+bg × (1 class + {s.bank_rows} instance + "
            f"{s.bank_rows} part), D={dims_text(dim)}, all things, stored {s.large_proto_dtype}) written with "
            f"put_prototypes; each measurement in a new process; reading: heads, then each class part's arrays "
            f"(load_class, as a streamed segment reads a kept class), let go before the next; segment: heads and "
            f"the streamed vocabulary, one image encoded once ({seg['encode']:.3g} s, the same for any vocabulary) "
            f"+ predict_encoded, {s.large_pairs} interleaved pairs, η={s.eta} (kept {mem[n]['kept']}); memory: a "
            f"process per vocabulary size, base after the models and the encoded image, own memory = anonymous "
            f"RSS sampled every 2 ms (LMDB's mapped file pages apart: page cache); add: {s.large_pairs} "
            f"pairs, a new class name per pair, the target on the {clock}"
        ],
    }
