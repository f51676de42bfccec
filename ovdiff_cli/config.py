"""The paper's defaults (App. C.5, DESIGN.md), in one place; the CLI reads its defaults from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

def normalise_extractor(spec: str) -> str:
    """One spelling per extractor spec, part of the cache key: parts lower-cased and stripped
    ("SD + DINO+CLIP" → "sd+dino+clip"). `ProtoConfig` applies it to itself, so Python and CLI agree."""
    return "+".join(part.strip().lower() for part in spec.split("+"))


REFINERS = ("none", "pamr", "sam2")  # SegmentConfig.refine: none is the paper's path (method/refine.py)
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

    def fingerprint_fields(self) -> dict:
        """Settings that change the pixels; n_images and batch_size do not (images are seeded one by one)."""
        d = asdict(self)
        for k in ("n_images", "batch_size"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class ProtoConfig:
    """Prototype construction (paper §3 "Representing categories", Tables A.5-A.7)."""

    extractor: str = "sd+dino+clip"
    mask_proposer: str = "ncut"
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

    def __post_init__(self):
        object.__setattr__(self, "extractor", normalise_extractor(self.extractor))


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
    refine: str = "none"  # beyond the paper: "pamr" or "sam2" refine the label scores (method/refine.py)


@dataclass(frozen=True)
class RunConfig:
    """Where and how models run; shared by every command."""

    preset: str = "sd15"
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    model_overrides: dict = field(default_factory=dict)


def with_overrides(base, user: dict | None, what: str = "config"):
    """A config (`base`: a preset's SampleConfig, ProtoConfig or SegmentConfig) with the user's values
    (None = not given), as every command and the Python API resolve options; a field the config
    lacks is an error listing the valid ones."""
    from dataclasses import fields, replace

    from .errors import OvdiffError

    names = {f.name for f in fields(base)}
    unknown = sorted(set(user or {}) - names)
    if unknown:
        raise OvdiffError(f"unknown {what} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return replace(base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in (user or {}).items() if v is not None})
