"""The benchmark job (`ovdiff eval`, `Pipeline.evaluate`): a split scored under one protocol, as a library call.

In order:
1. check everything a run needs before any work: the seeds, the engine, the dataset folder and its
   class list (`classes.txt` in the root, or a file given), the report folder;
2. per seed: build (or read) the benchmark's classes on the chosen engine (`folder.build_vocabulary`),
   then label the split with them, here or on Ray workers, under the benchmark's protocol
   (`eval.evaluate.protocol_config`: no background and no bg prototypes where the benchmark has none);
   or, with `pred`, read saved masks instead of running a model;
3. score each run with one confusion matrix over the split (`eval.evaluate.evaluate`), and write
   metrics.json and report.html; if writing fails at the end, the scores are kept in a temporary file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidSetting, OvdiffError

if TYPE_CHECKING:
    from ..eval.datasets import SegDataset
    from ..eval.evaluate import EvalResult, Predict
    from .folder import OnEvent, Session

OnScore = Callable[[str, int, int, float, str], None]  # (run: "seed 3" or "masks", done, total, running mIoU, image id)
OnNote = Callable[[str], None]


@dataclass
class BenchmarkRun:
    """What a benchmark job measured: the dataset, one result per seed (or one for saved masks), the
    protocol record (metrics.json's "protocol") and where the report went (None without `out`)."""

    dataset: SegDataset
    results: list[EvalResult]
    record: dict
    report: tuple[Path, Path] | None = None

    @property
    def runs(self) -> list[EvalResult] | None:
        """The per-seed results when there are several (mean ± σ over them), else None."""
        return self.results if len(self.results) > 1 else None

    def document(self) -> dict:
        """metrics.json's content (`ovdiff eval --json`)."""
        from ..eval.report import metrics_document

        return metrics_document(self.results[-1], self.dataset, self.runs, self.record)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Distinct seeds in the range of `seed`, or a typed error."""
    from ..limits import check_seed

    if isinstance(seeds, (str, bytes, dict)) or not hasattr(seeds, "__iter__"):
        raise InvalidSetting("seeds", f"takes a list of seeds, e.g. [0, 1, 2]; got {seeds!r:.40}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidSetting("seeds", f"takes distinct seeds, e.g. 0,1,2,3,4; got {seeds!r:.60}")
    for s in seeds:
        check_seed(s, "seeds")
    return seeds


def custom_classes(root: Path | str, classes_file: Path | str | None) -> list[str] | None:
    """The class list of a dataset of your own: `classes_file`, else a classes.txt in `root` (as
    `ovdiff demo` writes beside its VOC tree), else None (the benchmark's own)."""
    from ..names import parse_class_list

    path = Path(classes_file).expanduser() if classes_file is not None else Path(root).expanduser() / "classes.txt"
    if classes_file is None and not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidSetting("classes_file", f"{path} cannot be read: {getattr(e, 'strerror', None) or e}") from e
    return parse_class_list(None, text)


def evaluate_benchmark(
    session: Session,
    dataset: str,
    root: Path | str,
    *,
    seeds: Sequence[int] | None = None,
    pred: Path | str | None = None,
    offset: int | None = None,
    limit: int | None = None,
    out: Path | str | None = None,
    classes_file: Path | str | None = None,
    raw_names: bool = False,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    on_event: OnEvent | None = None,
    on_score: OnScore | None = None,
    on_note: OnNote | None = None,
) -> BenchmarkRun:
    """Score the session's method (or the saved masks in `pred`) on benchmark `dataset` at `root`.

    seeds: support-set seeds, one run each (default: the session's seed); engine "local" or "ray"
    (`address`, `workers`) builds the classes and labels the images; out: the folder for metrics.json
    and report.html. on_event as `build_vocabulary`'s, preceded per seed by ("benchmark", "seed S", 0, number of classes);
    on_score(run, done, total, running mIoU, image id) after each image; on_note(text) for what the
    user should know before the work (the class list used, the thing/stuff kinds).
    """
    from ..eval.datasets import load_dataset
    from ..eval.evaluate import benchmark_classes, predictions_from_dir, protocol
    from ..inputs import check_path
    from ..io.outdir import check_not_in_cache, check_out_dir
    from .raycluster import check_engine, engine_session

    check_path("root", root, "the dataset's folder")
    for name, value in (("pred", pred), ("out", out), ("classes_file", classes_file)):
        if value is not None:
            check_path(name, value, "a path")
    check_engine(engine, address, workers)
    if pred is not None:
        if seeds is not None:
            raise InvalidSetting("seeds", "apply to a model's predictions, not to saved masks (pred)")
        if engine != "local":
            raise InvalidSetting("engine", "must be local when scoring saved masks (pred): they are read here")
    elif offset is not None:
        raise InvalidSetting("offset", "applies only to saved masks (pred)")
    seed_list = check_seeds([session.run_config.seed] if seeds is None else seeds) if pred is None else None
    custom = custom_classes(root, classes_file)
    ds = load_dataset(dataset, root, limit=limit, raw_names=raw_names, custom_classes=custom)
    if custom is not None and on_note is not None:
        on_note(f"classes from {classes_file or Path(root) / 'classes.txt'}: {', '.join(custom)}")
    if out is not None:
        check_not_in_cache(out, session.cache_dir)
        out = check_out_dir(out, "metrics.json and report.html")  # before any work, not after the whole run
    if pred is not None:
        results = [_score(ds, predictions_from_dir(pred, ds, offset), "masks", on_score)]
        record = protocol(ds, None, None, None, predictions=str(pred))
    else:
        if on_note is not None:
            on_note(f"thing/stuff kinds: {ds.kinds_record()['list']}")
        results = []
        with engine_session(engine, address):
            for seed in seed_list:
                if on_event is not None:
                    on_event("benchmark", f"seed {seed}", 0, len(benchmark_classes(ds)))
                predict = _model_predictor(session, ds, seed, engine, workers, on_event)
                results.append(_score(ds, predict, f"seed {seed}", on_score))
        record = protocol(
            ds,
            seed_list,
            session.stages.specs.preset.name,
            session.stages.specs.identity(),
            session.sample_config,
            session.proto_config,
            session.segment_config,
        )
    done = BenchmarkRun(ds, results, record)
    if out is not None:
        done.report = _write(done, Path(out))
    return done


def _model_predictor(
    session: Session, ds: SegDataset, seed: int, engine: str, workers: int | None, on_event: OnEvent | None
) -> Predict:
    """The prototypes of the benchmark's classes for `seed` (built or read), and a predictor over them."""
    from ..eval.evaluate import benchmark_classes, protocol_config, segmenter_predictor
    from .folder import build_vocabulary

    classes = build_vocabulary(
        session,
        benchmark_classes(ds),
        ds.kinds(),
        engine=engine,
        workers=workers,
        on_event=on_event,
        seed=seed,
        arrays=False,  # heads: a segmenter (local, or a Ray worker) reads each image's kept classes from the cache
    )
    cfg = protocol_config(session.segment_config, ds)
    if engine == "ray":
        from .raysegment import dataset_predictions

        return dataset_predictions(
            session.run_config, classes, session.cache, cfg, session.proto_config.extractor, ds, workers
        )
    segmenter = session.stages.segmenter(classes, cfg, session.proto_config.extractor, session.cache)
    return segmenter_predictor(segmenter, ds)


def _score(ds: SegDataset, predict: Predict, what: str, on_score: OnScore | None) -> EvalResult:
    from ..eval.evaluate import evaluate

    def on_image(done: int, total: int, running: float) -> None:
        on_score(what, done, total, running, ds.infos[done - 1].id)

    return evaluate(ds, predict, on_image=None if on_score is None else on_image)


def _write(done: BenchmarkRun, out: Path) -> tuple[Path, Path]:
    """metrics.json and report.html in `out`; on failure the scores go to a temporary file, named in the error."""
    import json
    import tempfile

    from ..eval.report import write_report

    try:
        return write_report(done.results[-1], out, done.dataset, runs=done.runs, run_protocol=done.record)
    except OSError as e:
        fd, kept = tempfile.mkstemp(prefix="ovdiff-eval-", suffix=".json")
        with open(fd, "w") as f:
            json.dump([r.to_dict() for r in done.results], f, indent=2)
        raise OvdiffError(
            f"cannot write the report to {out} ({e.strerror or e}); the results are kept in {kept}"
        ) from e
