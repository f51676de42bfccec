"""Options shared by several commands, declared once with their defaults read from the config
dataclasses, the per-run context they build, and what several commands print."""

from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from ..config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig
from ..errors import OvdiffError
from ..models.sam import SAM_SPEC

if TYPE_CHECKING:
    from ..api import Pipeline
    from ..store.cache import Cache
    from ..compose import Stages
    from ..eval.datasets import SegDataset
    from ..eval.evaluate import EvalResult
    from ..models.presets import Preset

_P, _D, _S = ProtoConfig(), SampleConfig(), SegmentConfig()  # defaults shown in --help; presets may override them

CacheOpt = Annotated[
    Optional[Path],
    typer.Option("--cache", envvar="OVDIFF_CACHE", help="Cache directory \\[default: $OVDIFF_CACHE, else the user cache dir].", show_default=False),
]
PresetOpt = Annotated[
    Optional[str],
    typer.Option("--preset", envvar="OVDIFF_PRESET", help=f"Models: sd15 (real weights), tiny, sd15-random, procedural, modern (SDXL-Turbo + DINOv3 + SigLIP2, unmeasured) \\[default: {RunConfig().preset}].", show_default=False),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on a GPU that has it, else fp16; fp32 on CPU), fp16, bf16, fp32.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed of the support sets (part of the cache key).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more about each step.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, tables or library warnings; errors and the final result line only.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout (progress and messages go to stderr).")]
SdModelOpt = Annotated[Optional[str], typer.Option("--sd-model", help="Stable Diffusion hub id or local diffusers directory.", show_default=False)]
SamModelOpt = Annotated[Optional[str], typer.Option("--sam-model", help=f"SAM hub id or local directory for --mask-proposer sam \\[default: {SAM_SPEC}].", show_default=False)]
ClipModelOpt = Annotated[Optional[str], typer.Option("--clip-model", help="CLIP spec: ViT-B-16:openai, hf-hub:ORG/REPO, or a local weights file or downloaded folder.", show_default=False)]
DinoModelOpt = Annotated[Optional[str], typer.Option("--dino-model", help="DINO timm name, or a local weights file or downloaded folder.", show_default=False)]
GeneratorOpt = Annotated[Optional[str], typer.Option("--generator", help="Support-set generator beyond SD1.5: sd-turbo, sdxl, sdxl-turbo, sd3, flux-schnell (flux), flux-dev, optionally =HUB_ID_OR_DIR (Turbo and flux-schnell: 4 steps, no guidance; flux-dev: guidance 3.5) \\[default: SD1.5 from --sd-model].", show_default=False)]
FilterModelOpt = Annotated[Optional[str], typer.Option("--filter-model", help="The category filter's model: clip (the run's CLIP, the paper's), siglip2, pecore, or an open_clip NAME:TAG or hf-hub:ORG/REPO \\[default: clip].", show_default=False)]
PartModelOpt = Annotated[Optional[list[str]], typer.Option("--part-model", help="PART=SPEC: the model of an extractor family (dinov2, dinov2reg, dinov3, siglip2, pecore, radio): a timm name.tag, hf-hub:ORG/REPO, or a local weights file or downloaded folder (repeatable) \\[default: README's model table].", show_default=False)]
ExtractorOpt = Annotated[Optional[str], typer.Option("--extractor", help=f"Features: sd, clip, dino, mae or a + combination \\[default: {_P.extractor}].", show_default=False)]
ProposerOpt = Annotated[Optional[str], typer.Option("--mask-proposer", help=f"fg/bg masks of support images: ncut (normalised cuts on DINO keys), threshold (multi-Otsu on the attribution, the paper's -CutLER), sam \\[default: {_P.mask_proposer}].", show_default=False)]
KPartsOpt = Annotated[Optional[int], typer.Option("--k-parts", help=f"Part prototypes per region K \\[default: {_P.k_parts}].", show_default=False)]
NImagesOpt = Annotated[Optional[int], typer.Option("--n-images", help=f"Support images per class N \\[default: {_D.n_images}; the offline presets use fewer].", show_default=False)]
FilterOpt = Annotated[Optional[bool], typer.Option("--filter/--no-filter", help=f"CLIP category pre-filter \\[default: {'on' if _S.use_filter else 'off'}].", show_default=False)]
EtaOpt = Annotated[Optional[int], typer.Option("--eta", help=f"At most this many classes per image after the filter \\[default: {_S.eta}].", show_default=False)]
SlideOpt = Annotated[Optional[bool], typer.Option("--slide/--no-slide", help=f"Sliding windows, or one pass over the whole image \\[default: {'slide' if _S.slide else 'no-slide'}].", show_default=False)]
WindowsOpt = Annotated[Optional[str], typer.Option("--windows", help=f"Window sizes in px \\[default: {','.join(map(str, _S.windows))}].", show_default=False)]
StrideOpt = Annotated[Optional[int], typer.Option("--stride", help=f"Window stride in px \\[default: {_S.stride}].", show_default=False)]
ShortSideOpt = Annotated[Optional[int], typer.Option("--short-side", help=f"Images are resized to this short side first \\[default: {_S.short_side}].", show_default=False)]
NoBgProtosOpt = Annotated[bool, typer.Option("--no-bg-protos", help="Ablation: no background prototypes; background where the best fg similarity is below --fg-threshold (paper A.2).")]
FgThresholdOpt = Annotated[Optional[float], typer.Option("--fg-threshold", help=f"Threshold for --no-bg-protos \\[default: {_S.fg_threshold}].", show_default=False)]
NoStuffFilterOpt = Annotated[bool, typer.Option("--no-stuff-filter", help="Keep things' bg prototypes that look like a stuff class.")]
StuffThresholdOpt = Annotated[Optional[float], typer.Option("--stuff-threshold", help=f"Stuff filter cosine threshold \\[default: {_S.stuff_threshold}].", show_default=False)]
ProtoKindsOpt = Annotated[Optional[str], typer.Option("--protos", help=f"Prototype kinds to use, any of class,instance,part \\[default: {','.join(_S.proto_kinds)}].", show_default=False)]
ClassesFileOpt = Annotated[Optional[Path], typer.Option("--classes-file", help="A file with one class name per line.", show_default=False)]
EngineOpt = Annotated[str, typer.Option("--engine", help="Where the work runs: local (this process) or ray (a Ray cluster; pip install 'ovdiff\\[ray]').")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="With --engine ray: the cluster to join, e.g. 10.0.0.1:6379 from 'ray start --head' \\[default: start a local Ray instance].", show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="With --engine ray: worker actors, each with the models loaded once \\[default: one per GPU of the cluster, else 2].", show_default=False)]


@dataclass
class Run:
    """What one command invocation works with: the library's session (`api.Pipeline`: settings resolved
    and checked, cache and models opened lazily) and where and how the command prints."""

    pipe: Pipeline
    console: Console
    err: Console
    verbose: bool = False
    quiet: bool = False
    json: bool = False

    @property
    def run(self) -> RunConfig:
        return self.pipe.run_config

    @property
    def sample(self) -> SampleConfig:
        return self.pipe.sample_config

    @property
    def protos(self) -> ProtoConfig:
        return self.pipe.proto_config

    @property
    def segment(self) -> SegmentConfig:
        return self.pipe.segment_config

    @property
    def preset(self) -> Preset:
        return self.pipe.preset

    @property
    def cache_dir(self) -> Path:
        return self.pipe.cache_dir

    @property
    def cache(self) -> Cache:
        return self.pipe.cache

    @property
    def stages(self) -> Stages:
        """The run's stages (`compose.Stages`); models are built only when a stage needs them."""
        return self.pipe.stages

    def say(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def result(self, msg: str) -> None:
        """The final result line: printed even with --quiet (to stderr with --json)."""
        self.console.print(msg, highlight=False, soft_wrap=True)

    def emit(self, obj: object) -> None:
        """With --json: `obj` as the one JSON document on stdout."""
        import json

        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def progress(self) -> Progress:
        """A rich progress bar (disabled with --quiet); off a terminal, plain lines at least every 10 s."""
        if not self.quiet and not self.err.is_terminal:
            return LogProgress(self.err)
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return Progress(
            TextColumn("{task.description}", style="progress.description", markup=False), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.err, disable=self.quiet, transient=False,
        )


class LogProgress(Progress):
    """rich's Progress for logs and pipes, where its live bar would show only once, at the end: one
    heartbeat thread prints the rows of the unfinished tasks (rich's own columns, plain text) every
    `every` seconds of wall time, however long or short each task is, and a line while no task runs."""

    def __init__(self, console: Console, every: float = 10.0):
        from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        super().__init__(TextColumn("{task.description}", markup=False), MofNCompleteColumn(), TimeElapsedColumn(),
                         TextColumn("left"), TimeRemainingColumn(), console=console, disable=True)  # fmt: skip
        self.every, self.began = every, time.monotonic()
        self.stopping = threading.Event()
        self.beat = threading.Thread(target=self.heartbeat, name="ovdiff-progress", daemon=True)

    def start(self) -> None:
        super().start()
        self.began = time.monotonic()
        self.beat.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.beat.is_alive():
            self.beat.join()
        super().stop()

    def heartbeat(self) -> None:
        while not self.stopping.wait(self.every):
            self.print_state()

    def print_state(self) -> None:
        """The unfinished tasks' rows, or how long the command has run while none is."""
        with self._lock:
            active = [t for t in self.tasks if t.visible and not t.finished]
        if active:
            print_unpadded(self.console, self.make_tasks_table(active))
        else:
            self.console.print(f"working … {time.monotonic() - self.began:.0f} s", highlight=False)


def print_unpadded(console: Console, renderable: object) -> None:
    """Print `renderable`; off a terminal without the blanks rich pads each line with to the table's
    width, so piped lines end where their text does."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as text:
        console.print(renderable, highlight=False)
    console.out("\n".join(line.rstrip() for line in text.get().splitlines()), highlight=False)


def make_run(
    cache: Path | None,
    preset: str | None,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    verbose: bool = False,
    quiet: bool = False,
    sd_model: str | None = None,
    clip_model: str | None = None,
    dino_model: str | None = None,
    sam_model: str | None = None,
    part_models: list[str] | None = None,
    filter_model: str | None = None,
    generator: str | None = None,
    sample: dict | None = None,
    sam2_model: str | None = None,
    protos: dict | None = None,
    segment: dict | None = None,
    json_out: bool = False,
) -> Run:
    """The session of a command: `api.Pipeline` over the options the user gave (None: the preset's).

    json_out: stdout is kept for one JSON document, so tables and messages go to stderr.
    """
    from ..api import Pipeline
    from ..models.overrides import check_filter_model, parse_part_models
    from ..models.sd import missing_local

    models = {"sd": sd_model, "clip": clip_model, "dino": dino_model, "sam": sam_model, "sam2": sam2_model,
              "filter": check_filter_model(filter_model), "generator": generator, **parse_part_models(part_models or [])}  # fmt: skip
    local = (("--sd-model", sd_model, "Stable Diffusion"), ("--clip-model", clip_model, "CLIP"),
             ("--dino-model", dino_model, "DINO"), ("--sam-model", sam_model, "SAM"))  # fmt: skip
    for option, spec, model in local:
        if spec and (problem := missing_local(spec, option, model)):
            raise OvdiffError(problem)
    # Each config checks its values as it is made, before any progress bar or model starts.
    pipe = Pipeline(preset, cache, device, dtype, seed, models, sample, protos, segment)
    run = Run(pipe, console=make_console(stderr=json_out), err=make_console(stderr=True), verbose=verbose, quiet=quiet,
              json=json_out)  # fmt: skip
    if quiet:
        from ..libs import quiet_libraries

        quiet_libraries()
    return run


def cache_run(cache: Path | None, verbose: bool = False, quiet: bool = False, json_out: bool = False,
              create: bool = True) -> Run:  # fmt: skip
    """The context of a command that only reads or writes the cache (no models, no method settings);
    `create=False` for commands that only read: a --cache that holds no cache is then an error."""
    from ..api import Pipeline

    pipe = Pipeline(RunConfig().preset, cache, create_cache=create)  # no model loads: the preset is never used
    return Run(pipe, console=make_console(stderr=json_out), err=make_console(stderr=True), verbose=verbose,
               quiet=quiet, json=json_out)  # fmt: skip


def make_console(stderr: bool = False) -> Console:
    """A rich console; off a terminal (a pipe, a file) it never wraps or cuts a table's cells, so each
    row stays on one line for grep and cut."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = 100_000
    return console


def segment_overrides(
    use_filter: bool | None = None,
    eta: int | None = None,
    slide: bool | None = None,
    windows: str | None = None,
    stride: int | None = None,
    short_side: int | None = None,
    no_bg_protos: bool = False,
    fg_threshold: float | None = None,
    no_stuff_filter: bool = False,
    stuff_threshold: float | None = None,
    protos: str | None = None,
) -> dict:
    """The method switches shared by `segment` and `eval`, checked, as SegmentConfig overrides."""
    from ..config import PROTO_KINDS

    kinds = None
    if protos is not None:
        kinds = tuple(k.strip() for k in protos.split(",") if k.strip())
        if not kinds or any(k not in PROTO_KINDS for k in kinds):
            raise OvdiffError(f"--protos takes a comma list of {', '.join(PROTO_KINDS)}; got {protos!r}")
    sizes = None  # ranges are checked by the merged SegmentConfig itself
    if windows is not None:
        try:
            sizes = tuple(int(v) for v in windows.split(",") if v.strip())
        except ValueError:
            raise OvdiffError(f"--windows takes comma-separated pixel sizes, e.g. 448,336; got {windows!r}") from None
        if not sizes:
            raise OvdiffError(f"--windows takes comma-separated pixel sizes, e.g. 448,336; got {windows!r}")
    return {
        "use_filter": use_filter, "eta": eta, "slide": slide, "windows": sizes, "stride": stride,
        "short_side": short_side, "bg_prototypes": False if no_bg_protos else None, "fg_threshold": fg_threshold,
        "stuff_filter": False if no_stuff_filter else None, "stuff_threshold": stuff_threshold, "proto_kinds": kinds,
    }


def human_size(n: float) -> str:
    """Bytes for a table: 512 B, 1.5 KiB, 3.2 MiB, 1.1 GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def read_classes_file(path: Path | None) -> str | None:
    """The text of --classes-file, or a one-line error."""

    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of a name
    except (OSError, UnicodeDecodeError) as e:
        raise OvdiffError(f"cannot read --classes-file {path}: {getattr(e, 'strerror', None) or e}") from e


def result_line(ds: SegDataset, results: list[EvalResult]) -> str:
    """The one line `eval` and `demo` end with, --quiet or not: mIoU (mean ± σ over seeds) and the paper's."""
    from ..eval.evaluate import aggregate
    from ..eval.paper import paper_reference

    last = results[-1]
    if len(results) > 1:
        m = aggregate(results)["miou"]
        score = f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f} over {len(results)} seeds" if m else "n/a"
    else:
        score = "n/a" if last.miou != last.miou else f"{100 * last.miou:.1f}"
    paper = paper_reference(ds)
    ref = f" (paper, {paper['table']}: {100 * paper['miou']:.1f})" if paper else ""
    return escape(f"{ds.name} mIoU {score}{ref} · {last.n_images} images, {len(ds.classes)} classes")


def print_results(run: Run, ds: SegDataset, results: list[EvalResult], seconds_per_image: float | None = None) -> None:
    """The per-class table of `eval` and `demo`; `seconds_per_image` when the predictions were timed
    elsewhere (saved masks)."""
    import math

    from rich.table import Table

    from ..eval.evaluate import aggregate

    if run.quiet:
        return
    summary = aggregate(results) if len(results) > 1 else None
    table = Table(title=f"{ds.name}: {results[-1].n_images} images, {len(ds.classes)} classes")
    table.add_column("class")
    table.add_column("IoU %", justify="right")

    def fmt(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f}"

    for j, name in enumerate(ds.classes):
        if summary and summary["per_class_iou"][name]:
            s = summary["per_class_iou"][name]
            table.add_row(escape(name), f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
        else:
            table.add_row(escape(name), fmt(results[-1].per_class_iou[j]))
    table.add_section()
    if summary:
        table.add_row("[bold]mIoU[/]", f"[bold]{100 * summary['miou']['mean']:.1f} ± {100 * summary['miou']['std']:.1f}[/]")
        pa = summary["pixel_accuracy"]
        table.add_row("pixel accuracy", f"{100 * pa['mean']:.1f} ± {100 * pa['std']:.1f}")
    else:
        table.add_row("[bold]mIoU[/]", f"[bold]{fmt(results[-1].miou)}[/]")
        table.add_row("pixel accuracy", fmt(results[-1].pixel_accuracy))
    if seconds_per_image is None:
        seconds_per_image = sum(r.seconds_per_image for r in results) / len(results)
    table.add_row("seconds/image", f"{seconds_per_image:.3f}")
    run.console.print(table)


# Settings whose option is not "--" + the field name with dashes.
FLAGS = {"guidance_scale": "--guidance", "image_batch": "--batch-size", "use_filter": "--filter",
         "proto_kinds": "--protos"}  # fmt: skip


def flag(setting: str) -> str:
    """The command-line option of a config field: n_images → --n-images."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def add_command(names: list[str], seed: int, specs, sample_cfg: SampleConfig, proto_cfg: ProtoConfig) -> str:
    """The `ovdiff protos add …` line that builds these classes under the same cache keys: seed, preset,
    extractor and mask proposer always; N, K and model sources where they differ from the preset's."""
    import shlex

    parts = ["ovdiff", "protos", "add", *(shlex.quote(n) for n in names), "--seed", str(seed),
             "--preset", specs.preset.name, "--extractor", proto_cfg.extractor,
             "--mask-proposer", proto_cfg.mask_proposer]  # fmt: skip
    if sample_cfg.n_images != specs.preset.sample.n_images:
        parts += ["--n-images", str(sample_cfg.n_images)]
    if proto_cfg.k_parts != specs.preset.protos.k_parts:
        parts += ["--k-parts", str(proto_cfg.k_parts)]
    roles = ["sd", "clip", "dino"] + (["sam"] if proto_cfg.mask_proposer == "sam" else [])
    for role in roles:
        if specs.models.get(role) and specs.models[role] != specs.preset.models.get(role):
            parts += [f"--{role}-model", shlex.quote(specs.models[role])]
    for role, option in (("generator", "--generator"), ("filter", "--filter-model")):
        if specs.models.get(role) and specs.models[role] != specs.preset.models.get(role):
            parts += [option, shlex.quote(specs.models[role])]
    for part in proto_cfg.extractor.split("+"):  # today's families: --part-model PART=SPEC
        if part in specs.models and specs.models[part] != specs.preset.models.get(part):
            parts += ["--part-model", shlex.quote(f"{part}={specs.models[part]}")]
    return " ".join(parts)


def phrase(e: OvdiffError) -> str:
    """The one line the CLI prints for a library error: its fields in the CLI's options, and the next command."""
    from .. import errors

    if isinstance(e, errors.InvalidSetting):
        return f"{flag(e.setting)} {e.detail}"
    if isinstance(e, errors.ModelLoadError):
        from ..models.weights import ROLE_OPTION

        option = ROLE_OPTION.get(e.role)
        fetch = f"{option} {shlex.quote(e.spec)}" if option else f"--extractor {e.role}"
        local = f"pass a local copy with {option} DIR, " if option else ""
        way_out = (f"{e}; or fetch them where there is network with: ovdiff models download {fetch}; or {local}"
                   "run offline with --preset tiny / --preset procedural")  # fmt: skip
        return way_out + ("; or use --mask-proposer ncut, which needs no extra weights" if e.role == "sam" else "")
    if isinstance(e, errors.MissingClasses):
        return f"{e.plain}; build them with: {add_command(e.names, e.seed, e.specs, e.sample_cfg, e.proto_cfg)}"
    if isinstance(e, errors.NoSupportSet):
        return f"{e}; draw it first with: ovdiff sample {shlex.quote(e.name)} --seed {e.seed} --preset {e.preset}"
    if isinstance(e, errors.IncompleteSupportSet):
        return f"{e}; complete it with: ovdiff sample {shlex.quote(e.name)}"
    if isinstance(e, errors.ClassNotFound):
        return f"{e}: see 'ovdiff protos list'"
    if isinstance(e, errors.NoImagesFound) and not e.recursive:
        return f"no images found in {', '.join(e.inputs)} (add --recursive to look into subfolders)"
    if isinstance(e, errors.SupportImagesMissing):
        preset = f" --preset {e.preset}" if e.preset else ""
        return f"{e}; this redraws them: ovdiff sample {shlex.quote(e.name)} --seed {e.seed}{preset}"
    return str(e)


def fail(msg: str, code: int = 2) -> None:
    """Print one error line and exit."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(printable(msg))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def printable(text: str) -> str:
    """`text` with the undecodable bytes of non-UTF-8 file names (surrogate escapes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
