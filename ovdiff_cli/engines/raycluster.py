"""The Ray engine (`--engine ray`, the `ray` extra): class builds and segmentation on a Ray cluster.

The engine decides where work runs, never what it computes: its workers call the same library
functions as the local path (`vocab.build_class`, `local.predict_group`), so the outputs equal a
local run's, bit for bit.

- Class builds run on a pool of long-lived actors (`ClassBuilder`), each loading the models once
  and building class after class: Ray's GPU *tasks* restart their process per call and would reload
  SD for every class. A worker builds into a scratch cache on its node's local disk and hands each
  class back as the bytes `protos export` writes; only the driver writes the user's cache (LMDB
  must not live on a network filesystem). A worker whose process dies is restarted by Ray and its
  class retried; classes already cached are never sent.
- Segmentation streams the image paths through Ray Data: `map_batches` over an actor pool of
  segmenters (`SegmentWorker`), each holding the extractor and the vocabulary (put once in the
  object store). Workers read the images themselves, so the inputs must be visible at the same
  path on every node (a shared filesystem); the driver writes the outputs as the local job does.

On a CPU, torch's results depend on its thread count, so CPU workers use the driver's.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidSetting, OvdiffError

if TYPE_CHECKING:
    from ..compose import Stages
    from ..config import ProtoConfig, RunConfig, SampleConfig
    from ..store.cache import Cache
    from .photos import PhotoSet

ENGINES = ("local", "ray")
MAX_RESTARTS = 3  # a class builder's process may die this often (each time its class is retried)
# Ray (ray#57733) logs this error from the driver's core worker for every Ray Data actor it starts: its own
# operator holds the argument in the object store for the actors' whole life, so the warning never applies.
SCRATCH_PREFIX = "ovdiff-ray-"  # workers' scratch caches: <tmp>/ovdiff-ray-<job id>, one per node and job


def check_engine(engine: str, address: str | None = None, workers: int | None = None) -> None:
    """Refuse an unknown engine, Ray options without `--engine ray`, or a missing extra, before any work."""
    if engine not in ENGINES:
        raise InvalidSetting("engine", f"{engine!r} is unknown; choose one of: {', '.join(ENGINES)}")
    for setting, value in (("address", address), ("workers", workers)):
        if engine != "ray" and value is not None:
            raise InvalidSetting(setting, "applies to the ray engine only")
    if workers is not None:
        from ..limits import in_range

        in_range("workers", workers, " workers")
    if engine == "ray":
        require_ray()


def require_ray():
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise OvdiffError("the ray engine needs Ray: pip install 'ovdiff[ray]'") from None
    return ray


@contextlib.contextmanager
def session(address: str | None = None) -> Iterator[Any]:
    """Ray connected: to the cluster at `address`, else to a new local instance (shut down after).

    An instance this process already joined (a notebook, the tests) is used as it is and left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    import logging

    if address is not None:
        check_reachable(address)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our progress bars say what Ray Data's log would
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise OvdiffError(f"cannot start or reach {where}: {e}") from e
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT address must accept a connection, else a one-line error now (Ray itself retries for minutes).

    Other forms ("auto", "ray://…") are left to Ray.
    """
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise OvdiffError(
            f"cannot reach the Ray cluster at {address}: {e.strerror or e} (is 'ray start --head' running there?)"
        ) from None


def engine_session(engine: str, address: str | None = None):
    """One Ray session around a whole command with `--engine ray` (its steps share it); else nothing."""
    return session(address) if engine == "ray" else contextlib.nullcontext()


def worker_resources(ray, workers: int | None) -> tuple[int, dict[str, float]]:
    """(number of workers, what each asks for): one GPU each when the cluster has GPUs, else one CPU.

    Default count: one per GPU, else 2.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = workers or gpus or 2
    return n, ({"num_gpus": 1} if gpus else {"num_cpus": 1})


def worker_stages(run_cfg: RunConfig) -> Stages:
    """The stages a local run of these options builds (same preset, model sources, device rule and dtype)."""
    from ..compose import Stages

    return Stages.for_run(run_cfg.preset, run_cfg.device, run_cfg.dtype, run_cfg.model_overrides)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def driver_threads(resources: dict[str, float]) -> int | None:
    """The driver's torch thread count for CPU workers (their results then equal a local run's)."""
    import torch

    return None if "num_gpus" in resources else torch.get_num_threads()


def root_cause(e: Exception) -> Exception:
    """The user's error inside a Ray error (a task's, a dead actor's, memory), so it reaches the CLI as one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, OvdiffError):
        return cause
    text = str(cause or e).strip()
    return OvdiffError(f"a Ray worker failed: {text.splitlines()[0] if text else type(e).__name__}")


# --------------------------------------------------------------------------- class builds


class ClassBuilder:
    """A Ray actor that loads the models once and builds class after class into a scratch cache."""

    def __init__(self, run_cfg: RunConfig, sample_cfg: SampleConfig, proto_cfg: ProtoConfig, threads: int | None):
        import ray

        from ..store.cache import Cache

        set_threads(threads)
        self.stages = worker_stages(run_cfg)
        self.sample_cfg, self.proto_cfg = sample_cfg, proto_cfg
        # One scratch cache per node and job, shared by its actors: a restarted actor resumes the
        # support sets its predecessor had sampled.
        self.root = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{ray.get_runtime_context().get_job_id()}"
        self.cache = Cache(self.root)

    def build(self, norm: str, seed: int, kind: str | None) -> tuple[str, bytes]:
        """(name, export bytes) of class `norm` built under the driver's settings."""
        from ..store.sharing import export_bytes
        from .vocab import build_class

        pids = build_class(self.cache, self.stages, norm, seed, self.sample_cfg, self.proto_cfg, kind)
        return norm, export_bytes(self.cache, pids)

    def build_photos(self, norm: str, kind: str | None, photos: PhotoSet, note: dict) -> bytes:
        """The export bytes of class `norm` built from the user's `photos` (read by the driver) and the
        note's number of generated images, as `vocab.build_from_photos` builds it locally."""
        from ..config import beside_photos
        from ..store.sharing import export_bytes
        from .photos import ensure_photo_set
        from .vocab import build_class

        ensure_photo_set(self.cache, self.stages, norm, photos, self.sample_cfg)
        sample_cfg = beside_photos(self.sample_cfg, note["n_generated"])
        return export_bytes(
            self.cache,
            build_class(self.cache, self.stages, norm, note["seed"], sample_cfg, self.proto_cfg, kind, photo=note),
        )

    def close(self) -> None:
        """Remove the scratch cache (the run is over; a killed actor's is left in the temp dir)."""
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def _class_builders(
    ray, wanted: int, workers: int | None, run_cfg: RunConfig, sample_cfg: SampleConfig, proto_cfg: ProtoConfig
) -> Iterator[list]:
    """At most `wanted` restartable `ClassBuilder` actors (as many as `workers` allows); afterwards their scratch
    caches are removed and the actors stopped, whatever happened."""
    n, resources = worker_resources(ray, workers)
    actor = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(ClassBuilder)
    threads = driver_threads(resources)
    actors = [actor.options(**resources).remote(run_cfg, sample_cfg, proto_cfg, threads) for _ in range(min(n, wanted))]
    try:
        yield actors
    finally:
        with contextlib.suppress(Exception):
            ray.get([a.close.remote() for a in actors], timeout=30)
        for a in actors:
            ray.kill(a)


def build_classes(
    cache: Cache,
    run_cfg: RunConfig,
    names: list[str],
    seed: int,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    kinds: dict[str, str] | None = None,
    address: str | None = None,
    workers: int | None = None,
    on_class: Callable[[str, int, int], None] | None = None,
) -> list[str]:
    """Build on Ray the classes of `names` that need models, importing each into `cache` as it arrives.

    `run_cfg` says which models and how they run, as for a local run. Returns the names built (none
    when every class is cached: then Ray is not even started).
    `on_class(name, done, total)` after each import. Afterwards `vocab.ensure_classes` finds them
    cached (and makes the model-free thing → stuff changes).
    """
    from ..models.presets import ModelSpecs
    from ..store.sharing import import_bytes
    from .vocab import classes_to_build

    specs = ModelSpecs.of(run_cfg.preset, run_cfg.model_overrides)
    todo = classes_to_build(cache, specs, names, seed, sample_cfg, proto_cfg, kinds)
    if not todo:
        return []
    with session(address) as ray, _class_builders(ray, len(todo), workers, run_cfg, sample_cfg, proto_cfg) as actors:
        from ray.util import ActorPool

        pool = ActorPool(actors)
        built: list[str] = []
        for norm, kind in todo.items():
            pool.submit(lambda a, v: a.build.remote(*v), (norm, seed, kind))
        while pool.has_next():
            try:
                norm, data = pool.get_next_unordered()
            except ray.exceptions.RayError as e:
                raise root_cause(e) from None
            import_bytes(cache, data)
            built.append(norm)
            if on_class is not None:
                on_class(norm, len(built), len(todo))
    return built


def photo_builder(pipeline: Any, engine: str, address: str | None, workers: int | None) -> Callable | None:
    """How `Pipeline.photo_class` builds a class of photos on `engine`: on a Ray worker (`build_photo_class`
    with the pipeline's cache and settings), or None for this process."""
    if engine != "ray":
        return None
    return partial(
        build_photo_class,
        pipeline.cache,
        pipeline.run_config,
        pipeline.sample_config,
        pipeline.proto_config,
        address=address,
        workers=workers,
    )


def build_photo_class(
    cache: Cache,
    run_cfg: RunConfig,
    sample_cfg: SampleConfig,
    proto_cfg: ProtoConfig,
    norm: str,
    photos: PhotoSet,
    note: dict,
    kind: str | None,
    address: str | None = None,
    workers: int | None = None,
) -> None:
    """Build on one Ray worker the class of `photos` (`protos add NAME --images DIR --engine ray`) and import it
    into `cache`. The photos travel with the call (the driver read and checked them); they stay in the worker's
    scratch cache, as generated support images do."""
    from ..store.sharing import import_bytes

    with session(address) as ray, _class_builders(ray, 1, workers, run_cfg, sample_cfg, proto_cfg) as (builder,):
        try:
            data = ray.get(builder.build_photos.remote(norm, kind, photos, note))
        except ray.exceptions.RayError as e:
            raise root_cause(e) from None
    import_bytes(cache, data)
