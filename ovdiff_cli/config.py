"""The paper's defaults (App. C.5), in one place; the CLI reads its defaults from here.

Each config checks itself when it is made (`__post_init__`, ranges from `limits.RANGES`), so a
setting that cannot work is the same `InvalidSetting` from Python (`ovdiff.Pipeline(segment=…)`),
from the CLI and from `dataclasses.replace`, before any model loads. The facts those checks and the
cache keys need (extractor parts, mask proposers, prototype kinds) live here too, below the method.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field

from .errors import InvalidSetting
from .limits import MAX_N_IMAGES, MAX_WINDOWS, check_seed, in_range

# Extractor families beyond the paper's (models/dense.FAMILIES holds their models, keyed by these names).
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # whether it is there is known when a model first loads
DTYPES = ("auto", "fp16", "float16", "bf16", "fp32", "float32")
FAMILY_PARTS = ("dinov2", "dinov2reg", "dinov3", "siglip2", "pecore", "radio")
PARTS = ("sd", "clip", "dino", "mae", *FAMILY_PARTS)  # the paper's parts, then today's families
PROPOSERS = ("cutler", "ncut", "ncut-fast", "threshold", "sam")  # support-mask proposers (method/stage2_prototypes/)
FEATURE_PROPOSERS = ("ncut", "ncut-fast")  # the proposers that cut a part's features (ProtoConfig.mask_features)
MASK_STRIDE = 8  # support masks are stored on the feature_size/8 grid; each part reduces them from the images' resolution (classbuild)
PROTO_KINDS = ("class", "instance", "part")
SCHEDULER = "dpmsolver++"  # the sampler of every SD support set (paper App. C.5); part of its key
FLOW_SCHEDULER = "flow-match-euler"  # SD3's and FLUX's own sampler: part of their support sets' key
ATTRIBUTION = 2  # how a generator's attribution maps are summed, part of its support sets' key:
# 2 (issue 23): per layer, head and token, bicubic and clamped at 0, as the authors' sd.py; 1: bilinear sums


def generator_fields(model: str, revision: str | None, scheduler: str, family: str | None = None) -> dict:
    """A support-set generator's identity, part of its support sets' key: what it loads, how it samples and how its
    attribution maps are summed (and, past SD1.5, its family). The one writer: the generators and `store.keys`."""
    fields = {"model": model, "revision": revision, "scheduler": scheduler, "attribution": ATTRIBUTION}
    return fields if family is None else {**fields, "family": family}


def normalise_extractor(spec: str) -> str:
    """One spelling per extractor spec, part of the cache key: parts lower-cased and stripped
    ("SD + DINO+CLIP" → "sd+dino+clip"). `ProtoConfig` applies it to itself, so Python and CLI agree."""
    return "+".join(part.strip().lower() for part in spec.split("+"))


def parse_spec(spec: str) -> list[str]:
    """`sd+dino+clip` → ["sd", "dino", "clip"], or a one-line error naming the valid parts."""
    parts = normalise_extractor(spec).split("+")
    bad = [p for p in parts if p not in PARTS]
    if not spec.strip() or bad:
        raise InvalidSetting(
            "extractor",
            f"{spec!r}: unknown extractor part {(bad or [spec])[0]!r}; "
            f"use {', '.join(PARTS)} or a + combination such as sd+dino+clip (or 'procedural')",
        )
    if len(set(parts)) != len(parts):
        raise InvalidSetting("extractor", f"{spec!r} names a part twice")
    return parts


def spec_parts(spec: str) -> list[str]:
    """The parts of an extractor spec: `sd+dino+clip` → ["sd", "dino", "clip"]; `procedural` → ["procedural"]."""
    return ["procedural"] if spec == "procedural" else parse_spec(spec)


def proposer_uses_features(name: str) -> bool:
    """Whether the mask proposer called `name` reads a part's features (its masks then depend on them)."""
    if name not in PROPOSERS:
        raise InvalidSetting("mask_proposer", f"{name!r} is unknown; choose one of: {', '.join(PROPOSERS)}")
    return name in FEATURE_PROPOSERS


def at_least_one(setting: str, value: object) -> None:
    """InvalidSetting unless `value` is an int of at least 1 (settings without a stated upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidSetting(setting, f"must be a whole number of at least 1, got {value!r:.40}")


def as_tuple(setting: str, value: object, example: tuple) -> tuple:
    """A tuple setting given as a tuple or a list (JSON has no tuples), as a tuple; else InvalidSetting."""
    if not isinstance(value, (tuple, list)):
        raise InvalidSetting(setting, f"takes a tuple such as {example}, got {type(value).__name__} {value!r:.40}")
    return tuple(value)


REFINERS = ("none", "pamr", "sam2")  # SegmentConfig.refine: none is the paper's path (method/beyond/refine.py)
NEGATIVE_PROMPT = "text, low quality, blurry, cartoon, meme, low resolution, bad, poor, faded"
PROMPT_TEMPLATE = "A good picture of a {}"


@dataclass(frozen=True)
class InputSize:
    """How a part resizes a window (or the whole image) before extraction (sdov `predict.py`).

    With `square`, every crop becomes square×square (SD 512, CLIP and MAE 448), so target features
    match the scale at which the 512 px support images were featurised. Otherwise a crop with both
    sides at most `cap` runs as it is (DINO), a larger one is scaled so its short side is `cap` and
    its long side at most `long_cap`; with no cap at all, every crop runs as it is.
    """

    square: int | None = None
    cap: int | None = None
    long_cap: int | None = None

    def __call__(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the part sees for a crop of height×width (before rounding up to its stride)."""
        if self.square:
            return self.square, self.square
        if self.cap is None or max(height, width) <= self.cap:
            return height, width
        scale = self.cap / min(height, width)
        if self.long_cap is not None:
            scale = min(scale, self.long_cap / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))


# The input size of each extractor part at inference: the authors' (sdov predict.py: SDFeats.resize,
# ViTFeats.resize). Presets with small models give their own equivalents (Preset.inputs).
PART_INPUTS: dict[str, InputSize] = {
    "sd": InputSize(square=512),
    "clip": InputSize(square=448),
    "dino": InputSize(cap=448, long_cap=800),
    "mae": InputSize(square=448),
    "procedural": InputSize(),
}


@dataclass(frozen=True)
class SampleConfig:
    """Support-set generation (paper §3 "Support set generation", App. C.5)."""

    n_images: int = 32
    prompt_template: str = PROMPT_TEMPLATE
    negative_prompt: str = NEGATIVE_PROMPT
    guidance_scale: float = 8.0
    steps: int = 30
    size: int = 512
    batch_size: int = 4
    attribution_size: int = 64  # every attribution map is resized to this square

    def __post_init__(self):
        in_range("n_images", self.n_images, " support images per class")
        in_range("batch_size", self.batch_size)
        in_range("steps", self.steps)
        in_range("size", self.size, " pixels")
        in_range("guidance_scale", self.guidance_scale)
        if self.size % 8:
            raise InvalidSetting(
                "size", f"must be a positive multiple of 8 (Stable Diffusion's latent stride), got {self.size}"
            )
        at_least_one("attribution_size", self.attribution_size)
        if not self.guidance_scale > 0:
            raise InvalidSetting("guidance_scale", f"must be a positive number, got {self.guidance_scale}")
        for name in ("prompt_template", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise InvalidSetting(name, f"takes text, got {type(getattr(self, name)).__name__}")
        if self.prompt_template.count("{}") != 1:
            raise InvalidSetting(
                "prompt_template",
                f"must contain '{{}}' exactly once (where the class name goes), got {self.prompt_template!r}",
            )

    def fingerprint_fields(self) -> dict:
        """Settings that change the pixels; n_images and batch_size do not (images are seeded one by one)."""
        d = asdict(self)
        for k in ("n_images", "batch_size"):
            d.pop(k)
        return d


def beside_photos(cfg: SampleConfig, n_generated: int) -> SampleConfig:
    """The sampler settings of a class built from the user's photos plus `n_generated` generated images, as
    its cache keys and its build read them: the one SampleConfig whose n_images may be 0 (photos alone)."""
    if isinstance(n_generated, bool) or not isinstance(n_generated, int) or not 0 <= n_generated <= MAX_N_IMAGES:
        raise InvalidSetting("n_images", f"must be in 0..{MAX_N_IMAGES} beside photos, got {n_generated!r:.40}")
    out = copy.copy(cfg)
    object.__setattr__(out, "n_images", n_generated)  # past __post_init__, whose range starts at 1
    return out


PROTO_DTYPES = ("fp32", "fp16")  # prototype storage in the cache (`ProtoConfig.proto_dtype`)


@dataclass(frozen=True)
class ProtoConfig:
    """Prototype construction (paper §3 "Representing categories", Tables A.5-A.7)."""

    extractor: str = "sd+dino+clip"
    mask_proposer: str = (
        "cutler"  # Γ: CutLER's detector, as the paper and the authors (method/stage2_prototypes/cutler.py)
    )
    mask_features: str = "dino"  # the part whose features ncut cuts (CutLER's MaskCut: DINO ViT-B/8 keys)
    k_parts: int = 32
    kmeans_iters: int = 300  # the authors' scikit-learn KMeans: at most 300 Lloyd iterations, its tolerance rule
    feature_size: int = 512  # support images are featurised at this side length
    # Support images per extractor call: one batch of features is alive at a time. 1 keeps a 512 px
    # build within 1.5 GB beyond the models in fp32 (4 held 2.1 GB) and was no slower on the CPU.
    batch_size: int = 1
    # None: K-means on every masked cell of a region, as the authors; a number: on a seeded sample of at
    # most that many cells (faster for large N; not the authors')
    kmeans_max_points: int | None = None
    # how prototypes are stored in the cache: "fp32", or "fp16" (half the disk and page cache; its own cache
    # key; read back as float32, so cosines are accumulated in fp32 as with fp32 storage)
    proto_dtype: str = "fp32"

    def __post_init__(self):
        if self.proto_dtype not in PROTO_DTYPES:
            raise InvalidSetting(
                "proto_dtype", f"must be one of {', '.join(PROTO_DTYPES)}, got {self.proto_dtype!r:.40}"
            )
        if not isinstance(self.extractor, str):
            raise InvalidSetting("extractor", f"takes a spec such as sd+dino+clip, got {type(self.extractor).__name__}")
        object.__setattr__(self, "extractor", normalise_extractor(self.extractor))
        spec_parts(self.extractor)
        proposer_uses_features(self.mask_proposer)
        if self.mask_features not in (*PARTS, "procedural"):
            raise InvalidSetting(
                "mask_features", f"{self.mask_features!r} is unknown; choose one of: {', '.join(PARTS)}"
            )
        in_range("k_parts", self.k_parts)
        at_least_one("feature_size", self.feature_size)
        if self.feature_size < 8 or self.feature_size % MASK_STRIDE:
            raise InvalidSetting("feature_size", f"must be a multiple of {MASK_STRIDE} pixels, got {self.feature_size}")
        for name in ("batch_size", "kmeans_iters", "kmeans_max_points"):
            if getattr(self, name) is not None or name != "kmeans_max_points":  # None: every cell
                at_least_one(name, getattr(self, name))


@dataclass(frozen=True)
class SegmentConfig:
    """Inference (paper §3 "Segmentation via prototype matching", App. C.5)."""

    windows: tuple[int, ...] = (448, 336)
    stride: int = 224
    short_side: int = 448
    slide: bool = True
    use_filter: bool = True
    eta: int = 10
    stuff_threshold: float = 0.85
    stuff_filter: bool = True
    background: bool = True
    bg_prototypes: bool = True  # False: background = best fg similarity below fg_threshold (paper A.2)
    fg_threshold: float = 0.72
    proto_kinds: tuple[str, ...] = ("class", "instance", "part")
    filter_size: int = 224
    image_batch: int = 4  # images segmented together: their windows share the extractor's batches
    refine: str = "none"  # beyond the paper: "pamr" or "sam2" refine the label scores (method/beyond/refine.py)

    def __post_init__(self):
        """Every setting in its range: sizes the machine can hold, thresholds cosines in -1..1."""
        in_range("eta", self.eta, " classes per image")
        in_range("short_side", self.short_side, " pixels")
        in_range("stride", self.stride, " pixels")
        windows = as_tuple("windows", self.windows, (448, 336))
        if not 1 <= len(windows) <= MAX_WINDOWS:
            raise InvalidSetting("windows", f"takes 1 to {MAX_WINDOWS} sizes, got {len(windows)}")
        for w in windows:
            in_range("windows", w, " pixels")
        object.__setattr__(self, "windows", windows)
        in_range("fg_threshold", self.fg_threshold, " (a cosine similarity)")
        in_range("stuff_threshold", self.stuff_threshold, " (a cosine similarity)")
        in_range("image_batch", self.image_batch, " images")
        in_range("filter_size", self.filter_size, " pixels")
        kinds = as_tuple("proto_kinds", self.proto_kinds, PROTO_KINDS)
        if not kinds or any(k not in PROTO_KINDS for k in kinds):
            raise InvalidSetting("proto_kinds", f"takes one or more of {', '.join(PROTO_KINDS)}; got {kinds!r:.60}")
        object.__setattr__(self, "proto_kinds", kinds)
        if self.refine not in REFINERS:
            raise InvalidSetting("refine", f"{self.refine!r} is unknown; choose one of: {', '.join(REFINERS)}")


@dataclass(frozen=True)
class RunConfig:
    """Where and how models run; shared by every command."""

    preset: str = "sd15"
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    model_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        check_seed(self.seed)
        if not isinstance(self.device, str) or not DEVICE.fullmatch(self.device):
            raise InvalidSetting("device", f"{self.device!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
        if self.dtype not in DTYPES:
            raise InvalidSetting("dtype", f"{self.dtype!r} is unknown; use auto, fp16, bf16 or fp32")


def with_overrides(base, user: dict | None, what: str = "config"):
    """A config (`base`: a preset's SampleConfig, ProtoConfig or SegmentConfig) with the user's values
    (None = not given), as every command and the Python API resolve options; a field the config
    lacks is an error listing the valid ones."""
    from dataclasses import fields, replace

    names = {f.name for f in fields(base)}
    unknown = sorted(set(user or {}) - names)
    if unknown:
        raise InvalidSetting(what, f"has unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return replace(
        base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in (user or {}).items() if v is not None}
    )
