"""The options several commands share, declared once, their defaults read from the config dataclasses,
and the parsing they share (`--windows`, `--protos`, `--classes-file`); `flag` names a setting's option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig
from ..errors import OvdiffError
from ..models.checkpoints import CUTLER_SPEC
from ..models.sam import SAM_SPEC

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
SdModelOpt = Annotated[
    str | None,
    typer.Option("--sd-model", help="Stable Diffusion hub id or local diffusers directory.", show_default=False),
]
SamModelOpt = Annotated[
    str | None,
    typer.Option(
        "--sam-model",
        help=f"SAM hub id or local directory for --mask-proposer sam \\[default: {SAM_SPEC}].",
        show_default=False,
    ),
]
MaskModelOpt = Annotated[
    str | None,
    typer.Option(
        "--mask-model",
        help=f"CutLER checkpoint for --mask-proposer cutler: a .pth file in detectron2's format \\[default: {CUTLER_SPEC}, "
        "fetched by `ovdiff models download`].",
        show_default=False,
    ),
]
ClipModelOpt = Annotated[
    str | None,
    typer.Option(
        "--clip-model",
        help="CLIP spec: ViT-B-16:openai, hf-hub:ORG/REPO, or a local weights file or downloaded folder.",
        show_default=False,
    ),
]
DinoModelOpt = Annotated[
    str | None,
    typer.Option(
        "--dino-model", help="DINO timm name, or a local weights file or downloaded folder.", show_default=False
    ),
]
GeneratorOpt = Annotated[
    str | None,
    typer.Option(
        "--generator",
        help="Support-set generator beyond SD1.5: sd-turbo, sdxl, sdxl-turbo, sd3, flux-schnell (flux), flux-dev, optionally =HUB_ID_OR_DIR (Turbo and flux-schnell: 4 steps, no guidance; flux-dev: guidance 3.5) \\[default: SD1.5 from --sd-model].",
        show_default=False,
    ),
]
FilterModelOpt = Annotated[
    str | None,
    typer.Option(
        "--filter-model",
        help="The category filter's model: clip (the run's CLIP, the paper's), siglip2, pecore, or an open_clip NAME:TAG or hf-hub:ORG/REPO \\[default: clip].",
        show_default=False,
    ),
]
PartModelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--part-model",
        help="PART=SPEC: the model of an extractor family (dinov2, dinov2reg, dinov3, siglip2, pecore, radio): a timm name.tag, hf-hub:ORG/REPO, or a local weights file or downloaded folder (repeatable) \\[default: README's model table].",
        show_default=False,
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
        "use_filter": use_filter,
        "eta": eta,
        "slide": slide,
        "windows": sizes,
        "stride": stride,
        "short_side": short_side,
        "bg_prototypes": False if no_bg_protos else None,
        "fg_threshold": fg_threshold,
        "stuff_filter": False if no_stuff_filter else None,
        "stuff_threshold": stuff_threshold,
        "proto_kinds": kinds,
    }


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
