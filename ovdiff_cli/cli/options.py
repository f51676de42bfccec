"""The options several commands share, declared once, their defaults read from the config dataclasses,
and the parsing they share (`--windows`, `--protos`, `--classes-file`); `flag` names a setting's option."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import typer

from ..api import ModelOptions
from ..config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig
from ..errors import OvdiffError

_P, _D, _S = ProtoConfig(), SampleConfig(), SegmentConfig()  # defaults shown in --help; presets may override them

CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        envvar="OVDIFF_CACHE",
        help="Cache directory \\[default: $OVDIFF_CACHE, else the user cache dir].",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        envvar="OVDIFF_PRESET",
        help=f"Models: sd15 (real weights), tiny, sd15-random, procedural, modern (SDXL-Turbo + DINOv3 + SigLIP2, unmeasured) \\[default: {RunConfig().preset}].",
        show_default=False,
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on a GPU that has it, else fp16; fp32 on CPU), fp16, bf16, fp32.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed of the support sets (part of the cache key).")]
HostOpt = Annotated[
    str,
    typer.Option(
        "--host", help="Address to listen on; 127.0.0.1 serves this machine only (0.0.0.0: anyone who can reach it)."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more about each step.")]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="No progress bars, tables or library warnings; errors and the final result line only."
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result as one JSON document on stdout (progress and messages go to stderr)."
    ),
]
ExtractorOpt = Annotated[
    str | None,
    typer.Option(
        "--extractor",
        help=f"Features: sd, clip, dino, mae or a + combination \\[default: {_P.extractor}].",
        show_default=False,
    ),
]
ProposerOpt = Annotated[
    str | None,
    typer.Option(
        "--mask-proposer",
        help=f"fg/bg masks of support images: cutler (CutLER's detector, the paper's Γ; --mask-model), ncut (MaskCut, CutLER's normalised cuts, on DINO keys of a 480² pass), ncut-fast (lighter: cuts the 512 pass pooled to 32²), threshold (multi-Otsu on the attribution, the paper's -CutLER), sam \\[default: {_P.mask_proposer}].",
        show_default=False,
    ),
]
KPartsOpt = Annotated[
    int | None,
    typer.Option("--k-parts", help=f"Part prototypes per region K \\[default: {_P.k_parts}].", show_default=False),
]
ProtoDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--proto-dtype",
        help="Store prototypes in the cache as fp32 or fp16 (half the disk and page cache; its own cache entries; matched in fp32) \\[default: fp32].",
        show_default=False,
    ),
]
NImagesOpt = Annotated[
    int | None,
    typer.Option(
        "--n-images",
        help=f"Support images per class N \\[default: {_D.n_images}; the offline presets use fewer].",
        show_default=False,
    ),
]
FilterOpt = Annotated[
    bool | None,
    typer.Option(
        "--filter/--no-filter",
        help=f"CLIP category pre-filter \\[default: {'on' if _S.use_filter else 'off'}].",
        show_default=False,
    ),
]
EtaOpt = Annotated[
    int | None,
    typer.Option(
        "--eta", help=f"At most this many classes per image after the filter \\[default: {_S.eta}].", show_default=False
    ),
]
SlideOpt = Annotated[
    bool | None,
    typer.Option(
        "--slide/--no-slide",
        help=f"Sliding windows, or one pass over the whole image \\[default: {'slide' if _S.slide else 'no-slide'}].",
        show_default=False,
    ),
]
WindowsOpt = Annotated[
    str | None,
    typer.Option(
        "--windows", help=f"Window sizes in px \\[default: {','.join(map(str, _S.windows))}].", show_default=False
    ),
]
StrideOpt = Annotated[
    int | None, typer.Option("--stride", help=f"Window stride in px \\[default: {_S.stride}].", show_default=False)
]
ShortSideOpt = Annotated[
    int | None,
    typer.Option(
        "--short-side",
        help=f"Images are resized to this short side first \\[default: {_S.short_side}].",
        show_default=False,
    ),
]
NoBgProtosOpt = Annotated[
    bool,
    typer.Option(
        "--no-bg-protos",
        help="Ablation: no background prototypes; background where the best fg similarity is below --fg-threshold (paper A.2).",
    ),
]
FgThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--fg-threshold", help=f"Threshold for --no-bg-protos \\[default: {_S.fg_threshold}].", show_default=False
    ),
]
NoStuffFilterOpt = Annotated[
    bool, typer.Option("--no-stuff-filter", help="Keep things' bg prototypes that look like a stuff class.")
]
StuffThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--stuff-threshold",
        help=f"Stuff filter cosine threshold \\[default: {_S.stuff_threshold}].",
        show_default=False,
    ),
]
ProtoKindsOpt = Annotated[
    str | None,
    typer.Option(
        "--protos",
        help=f"Prototype kinds to use, any of class,instance,part \\[default: {','.join(_S.proto_kinds)}].",
        show_default=False,
    ),
]
ClassesFileOpt = Annotated[
    Path | None, typer.Option("--classes-file", help="A file with one class name per line.", show_default=False)
]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="Where the work runs: local (this process) or ray (a Ray cluster; pip install 'ovdiff\\[ray]').",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --engine ray: the cluster to join, e.g. 10.0.0.1:6379 from 'ray start --head' \\[default: start a local Ray instance].",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="With --engine ray: worker actors, each with the models loaded once \\[default: one per GPU of the cluster, else 2].",
        show_default=False,
    ),
]


@dataclass
class MethodOptions:
    """The method switches `segment` and `eval` share, as SegmentConfig overrides (`overrides`); the
    config checks each value, --windows and --protos included, as the API's are checked."""

    use_filter: FilterOpt = None
    eta: EtaOpt = None
    slide: SlideOpt = None
    windows: WindowsOpt = None
    stride: StrideOpt = None
    short_side: ShortSideOpt = None
    no_bg_protos: NoBgProtosOpt = False
    fg_threshold: FgThresholdOpt = None
    no_stuff_filter: NoStuffFilterOpt = False
    stuff_threshold: StuffThresholdOpt = None
    protos: ProtoKindsOpt = None

    def overrides(self) -> dict:
        return {
            "use_filter": self.use_filter,
            "eta": self.eta,
            "slide": self.slide,
            "windows": None if self.windows is None else tuple(_number(v) for v in self.windows.split(",")),
            "stride": self.stride,
            "short_side": self.short_side,
            "bg_prototypes": False if self.no_bg_protos else None,
            "fg_threshold": self.fg_threshold,
            "stuff_filter": False if self.no_stuff_filter else None,
            "stuff_threshold": self.stuff_threshold,
            "proto_kinds": None if self.protos is None else tuple(k.strip() for k in self.protos.split(",")),
        }


def _number(text: str) -> int | str:
    """A comma list's item as an int where it is one (the config refuses the rest, naming the setting)."""
    try:
        return int(text)
    except ValueError:
        return text.strip()


@dataclass
class BuildOptions:
    """How missing classes are built: the support sets' size and the prototypes' extractor, masks and K."""

    extractor: ExtractorOpt = None
    mask_proposer: ProposerOpt = None
    n_images: NImagesOpt = None
    k_parts: KPartsOpt = None
    proto_dtype: ProtoDtypeOpt = None

    def sample(self) -> dict:
        return {"n_images": self.n_images}

    def protos(self) -> dict:
        return {
            "extractor": self.extractor,
            "mask_proposer": self.mask_proposer,
            "k_parts": self.k_parts,
            "proto_dtype": self.proto_dtype,
        }


@dataclass
class EngineOptions:
    """Where the work runs (`engine`, `address`, `workers` of the library's calls)."""

    engine: EngineOpt = "local"
    address: AddressOpt = None
    workers: WorkersOpt = None

    def calls(self) -> dict:
        return {"engine": self.engine, "address": self.address, "workers": self.workers}


def _model_option(setting: str, text: str, default: str | None) -> object:
    """The option of one model setting of the library's roles table (`api.ModelOptions.table`)."""
    shown = f"{text.removesuffix('.')} \\[default: {default}]." if default else text
    if setting == "part_model":
        return Annotated[list[str] | None, typer.Option(flag(setting), help=shown, show_default=False)]
    return Annotated[str | None, typer.Option(flag(setting), help=shown, show_default=False)]


def model_option(setting: str) -> object:
    """The option of one model setting, for a command that takes only some (`sample`: sd_model, generator)."""
    ((text, default),) = [(t, d) for name, t, d in ModelOptions.table() if name == setting]
    return _model_option(setting, text, default)


def _members(group: type) -> list[inspect.Parameter]:
    """The options a grouped parameter stands for, as parameters Typer reads."""
    if group is ModelOptions:
        typed = {name: _model_option(name, text, default) for name, text, default in group.table()}
    else:
        typed = typing.get_type_hints(group, include_extras=True)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None if f.name == "part_model" else f.default,
            annotation=typed[f.name],
        )
        for f in fields(group)
    ]


GROUPS = (ModelOptions, MethodOptions, BuildOptions, EngineOptions)


def grouped(command: typing.Callable) -> typing.Callable:
    """A command that takes option groups (`models: ModelOptions`, `method: MethodOptions`, …) as one
    parameter each: Typer sees every option of the group, the command gets the group, made once."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for p in inspect.signature(command).parameters.values():
        group = hints.get(p.name)
        if group in GROUPS:
            members = _members(group)
            groups[p.name] = (group, [m.name for m in members])
            params += members
        else:
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)))

    @functools.wraps(command)
    def run(**given: object) -> object:
        for name, (group, members) in groups.items():
            values = {m: given.pop(m) for m in members}
            if group is ModelOptions:
                values["part_model"] = tuple(values["part_model"] or ())
            given[name] = group(**values)
        return command(**given)

    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def read_classes_file(path: Path | None) -> str | None:
    """The text of --classes-file, or a one-line error."""

    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of a name
    except (OSError, UnicodeDecodeError) as e:
        raise OvdiffError(f"cannot read --classes-file {path}: {getattr(e, 'strerror', None) or e}") from e


# Settings whose option is not "--" + the field name with dashes.
FLAGS = {
    "guidance_scale": "--guidance",
    "image_batch": "--batch-size",
    "use_filter": "--filter",
    "proto_kinds": "--protos",
}


def flag(setting: str) -> str:
    """The command-line option of a config field: n_images → --n-images."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))
