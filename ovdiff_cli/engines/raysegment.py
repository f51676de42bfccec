"""The Ray engine's segmentation (`segment --engine ray`, `eval --engine ray`): a Ray Data stream of images through an
actor pool of segmenters. On one machine the workers get the classes' heads and open the cache themselves, reading
each image's kept classes as a local run does (memory does not grow with the vocabulary); on a cluster of several
machines, whose workers cannot open this machine's cache, the vocabulary's arrays go to the object store. The
cluster and class builds are `raycluster`'s."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OvdiffError
from .raycluster import driver_threads, require_ray, root_cause, session, set_threads, worker_resources, worker_stages

if TYPE_CHECKING:
    from ..config import RunConfig, SegmentConfig
    from ..eval.datasets import ItemInfo, SegDataset
    from ..eval.evaluate import Predict
    from ..io.images import InputImage
    from ..io.outputs import JobSummary, OutputWriter
    from ..store.cache import Cache
    from ..types import ClassParts


FALSE_ALARM = b"has constructor arguments in the object store"


class SegmentWorker:
    """A Ray Data actor: the extractor and the vocabulary, loaded once; segments a batch of paths.

    Rows in: index, path. Rows out: index, labels (H·W uint16 bytes: masks go beyond 254 classes), height, width, selected,
    timings and stats (JSON: label → [pixels, mean winning score]), io (seconds reading), error ("" when the image was segmented).
    """

    def __init__(
        self,
        run_cfg: RunConfig,
        vocab: list,
        seg_cfg: SegmentConfig,
        extractor_spec: str,
        loader: Callable[[str], np.ndarray],
        threads: int | None,
        cache_root: str | None = None,
    ):
        import ray

        from ..store.cache import Cache

        set_threads(threads)
        classes = ray.get(vocab[0])  # the vocabulary (heads with a cache to read them from), from the object store
        self.loader = loader
        cache = Cache(cache_root, create=False) if cache_root is not None else None
        self.segmenter = worker_stages(run_cfg).segmenter(classes, seg_cfg, extractor_spec, cache)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..io.images import InputImage
        from ..io.outputs import FAILURES, describe
        from .local import predict_group

        rows: list[dict] = []
        images, waiting = [], []  # the images read, and their rows
        for index, path in zip(batch["index"], batch["path"], strict=True):
            row = {
                "index": int(index),
                "labels": b"",
                "height": 0,
                "width": 0,
                "selected": "[]",
                "timings": "{}",
                "stats": "{}",
                "io": 0.0,
                "error": "",
            }
            rows.append(row)
            t0 = time.perf_counter()
            try:
                images.append(self.loader(str(path)))
            except (*FAILURES, OvdiffError) as e:
                row["error"] = describe(InputImage(Path(path), ""), e)
                continue
            row["io"] = time.perf_counter() - t0
            waiting.append((row, path))
        segs = predict_group(self.segmenter, images, False) if images else []
        for (row, path), seg in zip(waiting, segs, strict=True):
            if isinstance(seg, Exception):
                row["error"] = describe(InputImage(Path(path), ""), seg)
                continue
            row.update(
                labels=seg.labels.astype(np.uint16).tobytes(),
                height=seg.labels.shape[0],
                width=seg.labels.shape[1],
                selected=json.dumps(seg.selected),
                timings=json.dumps(seg.timings),
                stats=json.dumps(seg.stats),
            )
        return {
            k: np.array(
                [r[k] for r in rows], dtype=object if k in ("labels", "selected", "timings", "stats", "error") else None
            )
            for k in rows[0]
        }


def _stand_in(fd: int) -> tuple[int, int]:
    """(read end, write end) to put in place of `fd`: a raw pseudo-terminal of its size where `fd` is a
    terminal (rich asks `isatty` at every refresh and would stop drawing its live bar), else a pipe."""
    if not os.isatty(fd):
        return os.pipe()
    import fcntl
    import termios
    import tty

    reader, writer = os.openpty()
    tty.setraw(writer)  # bytes pass as written (no newline translation)
    fcntl.ioctl(writer, termios.TIOCSWINSZ, fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return reader, writer


@contextlib.contextmanager
def stderr_without(marker: bytes) -> Iterator[None]:
    """Route file descriptor 2 through a pump that drops each line holding `marker` and passes the rest at once.

    Ray's C++ logger writes its lines to the descriptor, past Python's `sys.stderr`, one whole line per write.
    """
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    reader, writer = _stand_in(saved)
    os.dup2(writer, 2)
    os.close(writer)

    def pump() -> None:
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # a pseudo-terminal whose other side closed
                return
            if not chunk:
                return
            if marker in chunk:
                chunk = b"".join(line for line in chunk.splitlines(keepends=True) if marker not in line)
            os.write(saved, chunk)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the stand-in's last write end closes: the pump reads what is left and stops
        thread.join(timeout=5)
        os.close(reader)
        os.close(saved)


def shipped(ray, classes: list[ClassParts], cache: Cache) -> tuple[list[ClassParts], str | None]:
    """What the workers get of `classes` (heads, `ensure_classes(arrays=False)`): on a one-machine Ray, the heads
    and the cache's folder, which every worker opens; else every class's arrays (read here, one copy)."""
    from ..store.protos import load_parts

    if sum(1 for node in ray.nodes() if node.get("Alive")) == 1:
        return classes, str(cache.root)
    return [load_parts(cache, {p: c.parts[p].pid for p in c.parts}) for c in classes], None


def _segment_rows(
    ray,
    run_cfg: RunConfig,
    classes: list[ClassParts],
    cache: Cache,
    seg_cfg: SegmentConfig,
    extractor_spec: str,
    paths: list[str],
    loader: Callable[[str], np.ndarray],
    workers: int | None,
    image_batch: int,
    in_order: bool = False,
) -> Iterator[dict]:
    """The rows `SegmentWorker` returns for `paths`, as they stream out of Ray Data (in order if asked)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = in_order
    n, resources = worker_resources(ray, workers)
    classes, cache_root = shipped(ray, classes, cache)
    vocab = ray.put(classes)
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    out = ds.map_batches(
        SegmentWorker,
        batch_size=max(1, image_batch),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(n, len(paths))),
        fn_constructor_kwargs={
            "run_cfg": run_cfg,
            "vocab": [vocab],
            "seg_cfg": seg_cfg,
            "extractor_spec": extractor_spec,
            "loader": loader,
            "threads": driver_threads(resources),
            "cache_root": cache_root,
        },
        **resources,
    )
    try:
        with stderr_without(FALSE_ALARM):
            yield from out.iter_rows()
    except ray.exceptions.RayError as e:
        raise root_cause(e) from None


def _labels(row: dict) -> np.ndarray:
    return np.frombuffer(row["labels"], dtype=np.uint16).reshape(int(row["height"]), int(row["width"])).astype(np.int32)


def segment_items(
    run_cfg: RunConfig,
    classes: list[ClassParts],
    cache: Cache,
    seg_cfg: SegmentConfig,
    extractor_spec: str,
    items: list[InputImage],
    writer: OutputWriter,
    address: str | None = None,
    workers: int | None = None,
) -> JobSummary:
    """`local.segment_paths` on Ray: masks (and overlays) written by `writer` as results arrive."""
    from ..io.images import load_image
    from ..method.stage4_segment.segmenter import Segmentation

    if items:
        with session(address) as ray:
            rows = _segment_rows(
                ray,
                run_cfg,
                classes,
                cache,
                seg_cfg,
                extractor_spec,
                [str(i.path) for i in items],
                load_image,
                workers,
                seg_cfg.image_batch,
            )
            for row in rows:
                item = items[row["index"]]
                if row["error"]:
                    writer.failed(item, row["error"])
                    continue
                stats = {int(k): (int(n), float(v)) for k, (n, v) in json.loads(row["stats"]).items()}
                seg = Segmentation(_labels(row), json.loads(row["selected"]), json.loads(row["timings"]), stats=stats)
                writer.write(item, seg, io_time=float(row["io"]))
    return writer.finish()


def dataset_predictions(
    run_cfg: RunConfig,
    classes: list[ClassParts],
    cache: Cache,
    seg_cfg: SegmentConfig,
    extractor_spec: str,
    dataset: SegDataset,
    workers: int | None = None,
) -> Predict:
    """`evaluate.segmenter_predictor` on Ray: labels in the dataset's index space, streamed in split order.

    Needs a running session (`session`). Images are read as the benchmarks store them
    (`datasets.load_image`); the predictor must be called for the split's images in order.
    """
    from ..eval.datasets import load_image

    ray = require_ray()
    infos = dataset.infos
    shift = 0 if dataset.has_background else 1  # as segmenter_predictor: segment labels, 0 = background
    rows = _segment_rows(
        ray,
        run_cfg,
        classes,
        cache,
        seg_cfg,
        extractor_spec,
        [str(i.image_path) for i in infos],
        load_image,
        workers,
        seg_cfg.image_batch,
        in_order=True,
    )

    def predict(image: np.ndarray, info: ItemInfo) -> np.ndarray:
        row = next(rows)
        expected = infos[row["index"]]
        if expected.id != info.id:
            raise OvdiffError(f"Ray returned image {expected.id} where {info.id} was expected")
        if row["error"]:
            raise OvdiffError(row["error"])
        return _labels(row) - shift

    return predict
