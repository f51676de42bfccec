"""`ovdiff eval`: score ovdiff (or saved masks) on a segmentation benchmark under one protocol."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from .common import Run, make_run
from .options import (
    AddressOpt,
    CacheOpt,
    ClipModelOpt,
    DeviceOpt,
    DinoModelOpt,
    DtypeOpt,
    EngineOpt,
    EtaOpt,
    ExtractorOpt,
    FgThresholdOpt,
    FilterModelOpt,
    FilterOpt,
    GeneratorOpt,
    JsonOpt,
    KPartsOpt,
    NImagesOpt,
    NoBgProtosOpt,
    NoStuffFilterOpt,
    PartModelOpt,
    PresetOpt,
    ProposerOpt,
    ProtoKindsOpt,
    QuietOpt,
    SamModelOpt,
    SdModelOpt,
    SeedOpt,
    segment_overrides,
    ShortSideOpt,
    SlideOpt,
    StrideOpt,
    StuffThresholdOpt,
    VerboseOpt,
    WindowsOpt,
    WorkersOpt,
)
from .output import print_results, result_line

if TYPE_CHECKING:
    from ..eval.datasets import SegDataset
    from ..eval.evaluate import EvalResult, Predict

DATASETS_HELP = "voc, context, object (with background); voc20, context59, ade, stuff, cityscapes (without)."


def eval_cmd(
    dataset: Annotated[str, typer.Argument(help=DATASETS_HELP, show_default=False)],
    root: Annotated[Path, typer.Option("--root", help="The dataset folder in its mmsegmentation layout, e.g. data/VOC2012.", show_default=False)],
    pred: Annotated[Optional[Path], typer.Option("--pred", help="Score saved masks <id>.png from this folder instead of running a model.", show_default=False)] = None,
    offset: Annotated[Optional[int], typer.Option("--offset", help="With --pred: dataset index = mask value - offset \\[default: 0 with background, 1 without, as ovdiff segment writes].", show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated support-set seeds; reports mean ± σ over them \\[default: --seed].", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N images of the split, for a quick look.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write metrics.json and report.html here.", show_default=False)] = None,
    classes_file: Annotated[Optional[Path], typer.Option("--classes-file", help="Class names of a dataset of your own in this layout, one per line, line k = label k \\[default: classes.txt in --root if present].", show_default=False)] = None,
    raw_names: Annotated[bool, typer.Option("--raw-names", help="Use the dataset's own class names, not the paper's corrections (App. C.3).")] = False,
    use_filter: FilterOpt = None,
    eta: EtaOpt = None,
    slide: SlideOpt = None,
    windows: WindowsOpt = None,
    stride: StrideOpt = None,
    short_side: ShortSideOpt = None,
    no_bg_protos: NoBgProtosOpt = False,
    fg_threshold: FgThresholdOpt = None,
    no_stuff_filter: NoStuffFilterOpt = False,
    stuff_threshold: StuffThresholdOpt = None,
    protos: ProtoKindsOpt = None,
    extractor: ExtractorOpt = None,
    mask_proposer: ProposerOpt = None,
    n_images: NImagesOpt = None,
    k_parts: KPartsOpt = None,
    sd_model: SdModelOpt = None,
    clip_model: ClipModelOpt = None,
    dino_model: DinoModelOpt = None,
    part_model: PartModelOpt = None,
    filter_model: FilterModelOpt = None,
    generator: GeneratorOpt = None,
    sam_model: SamModelOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    cache: CacheOpt = None,
    preset: PresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    seed: SeedOpt = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Evaluate on a benchmark split: per-class IoU, mIoU, pixel accuracy, seconds/image.

    Protocol of the prior work (TCL/GroupViT): short side 448, sliding windows, ignore label 255, mIoU
    from one confusion matrix over the split. Without-background benchmarks ignore background pixels
    and use no background prototypes (paper A.3).

    Example: ovdiff eval voc --root data/VOC2012 --seeds 0,1,2,3,4 --out reports/voc

    Example: ovdiff eval voc --root data/VOC2012 --pred masks/ --out reports/mine

    Example (offline): ovdiff demo --out demo && ovdiff eval voc --root demo/data --preset procedural

    Example: ovdiff eval voc --root data/VOC2012 --json | jq .miou

    Example (a Ray cluster): ovdiff eval voc --root /shared/VOC2012 --engine ray --address HEAD:6379
    """
    from ..eval.datasets import load_dataset
    from ..engines.raycluster import check_engine, engine_session
    from ..eval.evaluate import metrics_document, predictions_from_dir, protocol, write_report
    from ..errors import OvdiffError

    method = segment_overrides(use_filter, eta, slide, windows, stride, short_side, no_bg_protos, fg_threshold,
                               no_stuff_filter, stuff_threshold, protos)  # fmt: skip
    run = make_run(
        cache, preset, device, dtype, seed, verbose, quiet, sd_model=sd_model, clip_model=clip_model,
        dino_model=dino_model, sam_model=sam_model, part_models=part_model, filter_model=filter_model, generator=generator, sample={"n_images": n_images},
        protos={"extractor": extractor, "mask_proposer": mask_proposer, "k_parts": k_parts}, segment=method,
        json_out=json_out,
    )
    check_engine(engine, address, workers)
    if pred is None:
        _parse_seeds(seeds, seed)  # checked before the dataset is read
    custom = _custom_classes(root, classes_file)
    ds = load_dataset(dataset, root, limit=limit, raw_names=raw_names, custom_classes=custom)
    if custom is not None:
        run.say(f"classes from {classes_file or Path(root) / 'classes.txt'}: {escape(', '.join(custom))}")
    if out is not None:
        from ..io.outdir import check_not_in_cache
        from ..io.outdir import check_out_dir

        check_not_in_cache(out, run.cache_dir, "--out")
        out = check_out_dir(out, "metrics.json and report.html")  # before any work, not after the whole run
    if pred is not None:
        if seeds is not None:
            raise OvdiffError("--seeds needs a model; --pred scores masks that already exist")
        if engine != "local":
            raise OvdiffError("--pred scores saved masks here: it takes no --engine")
        results = [_score(run, ds, predictions_from_dir(pred, ds, offset), "masks")]
        record = protocol(ds, None, None, None, predictions=str(pred))
    else:
        if offset is not None:
            raise OvdiffError("--offset only applies to --pred")
        seed_list = _parse_seeds(seeds, seed)
        run.say(f"thing/stuff kinds: {escape(ds.kinds_record()['list'])}")
        with engine_session(engine, address):
            results = [_score(run, ds, _model_predictor(run, ds, s, engine, workers), f"seed {s}") for s in seed_list]
        record = protocol(ds, seed_list, run.preset.name, run.stages.specs.identity(), run.sample, run.protos, run.segment)
    runs = results if len(results) > 1 else None
    if not run.json and not run.quiet:
        print_results(run.console, ds, results)
    if out is not None:
        try:
            json_path, html_path = write_report(results[-1], out, ds, runs=runs, run_protocol=record)
        except OSError as e:
            raise OvdiffError(f"cannot write the report to {out} ({e.strerror or e}); the results are kept in {_keep(results)}") from e
        run.say(f"wrote {json_path} and {html_path}")
    if run.json:
        run.emit(metrics_document(results[-1], ds, runs, record))
    else:
        run.result(result_line(ds, results))


def _keep(results: list[EvalResult]) -> str:
    """Save the metrics where writing is likely to work (the temporary folder) when --out failed at the end."""
    import json
    import tempfile

    fd, path = tempfile.mkstemp(prefix="ovdiff-eval-", suffix=".json")
    with open(fd, "w") as f:
        json.dump([r.to_dict() for r in results], f, indent=2)
    return path


def _custom_classes(root: Path, classes_file: Path | None) -> list[str] | None:
    """--classes-file, else a classes.txt in --root (as `ovdiff demo` writes beside its VOC tree)."""
    from ..names import parse_class_list
    from .options import read_classes_file

    path = classes_file if classes_file is not None else Path(root).expanduser() / "classes.txt"
    if classes_file is None and not path.is_file():
        return None
    return parse_class_list(None, read_classes_file(path))


def _parse_seeds(spec: str | None, default: int) -> list[int]:
    from ..errors import OvdiffError

    if spec is None:
        return [default]
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise OvdiffError(f"--seeds {spec!r}: give comma-separated integers, e.g. --seeds 0,1,2,3,4") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise OvdiffError(f"--seeds {spec!r}: give distinct comma-separated integers")
    from ..limits import check_seed

    for s in seeds:
        check_seed(s, "seeds")
    return seeds


def _model_predictor(run: Run, ds: SegDataset, seed: int, engine: str = "local", workers: int | None = None) -> Predict:
    """Build (or load) the prototypes of the benchmark's classes for `seed`, and a predictor over them
    (with `engine` "ray", both on Ray, in the session the caller opened)."""
    from ..engines.folder import build_vocabulary
    from ..eval.evaluate import benchmark_classes, protocol_config, segmenter_predictor

    names, kinds = benchmark_classes(ds), ds.kinds()
    with run.progress() as bar:
        task = bar.add_task(f"prototypes (seed {seed})", total=len(names))
        built: set[str] = set()

        def on_event(stage: str, name: str, done: int, total: int) -> None:
            built.add(name)
            stage = "prototypes" if stage == "ray" else stage
            bar.update(task, completed=len(built) - 1, description=f"{stage:<10} {name[:30]} (seed {seed})")

        classes = build_vocabulary(run.pipe, names, kinds, engine=engine, workers=workers, on_event=on_event, seed=seed)
        bar.update(task, completed=len(names), description=f"prototypes (seed {seed})")
    if engine == "ray":
        from ..engines.raycluster import dataset_predictions

        return dataset_predictions(run.run, classes, protocol_config(run.segment, ds), run.protos.extractor, ds, workers)
    segmenter = run.stages.segmenter(classes, protocol_config(run.segment, ds), run.protos.extractor, run.cache)
    return segmenter_predictor(segmenter, ds)


def _score(run: Run, ds: SegDataset, predict: Predict, what: str) -> EvalResult:
    from ..eval.evaluate import evaluate

    with run.progress() as bar:
        task = bar.add_task(f"{ds.name} ({what})", total=len(ds))

        def on_image(done: int, total: int, running: float) -> None:
            bar.update(task, completed=done, description=f"{ds.name} ({what}) mIoU {100 * running:.1f}")
            if run.verbose:
                run.err.print(f"{escape(ds.infos[done - 1].id)}: running mIoU {100 * running:.1f}", highlight=False)

        return evaluate(ds, predict, on_image=on_image)
