"""The small interfaces every stage plugs into, and the typed values that pass between stages.

Real models (Stable Diffusion, CLIP, DINO) and the procedural world implement the same
protocols, so the pipeline never special-cases a preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from .config import SampleConfig, SegmentConfig
    from .models.presets import ModelSpecs


@dataclass
class Sample:
    """One support image and its attribution map.

    image: HxWx3 uint8 RGB. attribution: hxw float32, >= 0, larger = more attention to the class name.
    """

    image: np.ndarray
    attribution: np.ndarray


class Generator(Protocol):
    """Draws support images of a class, with attribution maps (paper §3, "Support set generation")."""

    def identity(self) -> dict:
        """Model ids/revisions and scheduler: recorded in the cache and part of the support-set key."""
        ...

    def generate(self, class_name: str, seeds: list[int], config: SampleConfig) -> list[Sample]:
        """One sample per seed; the same (class_name, seed, config) always gives the same sample."""
        ...


class Extractor(Protocol):
    """A backbone of dense features Φ_v (paper §3, App. C.2); `features.Part` wraps it with its
    input size and per-location L2 normalisation.

    `__call__(images)`: images (B,3,H,W) float32 RGB in [0,1], H and W multiples of `stride`,
    → (B,D,H/stride,W/stride) float.
    """

    name: str
    stride: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class MaskProposer(Protocol):
    """Class-agnostic object proposals Γ (paper §3) and the fallback for images where it finds none.

    The masks stage (`masks.class_masks`) sees a whole class at once: it asks `thresholds` once for
    all N attribution maps, then `propose` per image. `uses_features`: whether `propose` reads the
    features (the `mask_features` part's, e.g. DINO keys for ncut; else it is given a (0,h,w)
    placeholder that only carries the grid), so masks are keyed by the features only when they matter.
    A proposer that uses features also says at which side they are made, `input_side(feature_size,
    stride)`, and whether the images are resized to it with Lanczos first (`resamples`, MaskCut's own
    pass) rather than as the support images' feature pass resizes them.
    """

    name: str
    uses_features: bool

    def propose(self, image: np.ndarray, features: torch.Tensor) -> list[np.ndarray]:
        """image HxWx3 uint8; features (D,h,w) → bool masks on the feature grid or at the image's size
        (possibly none), one of them the background."""
        ...

    def thresholds(self, attributions: list[np.ndarray]) -> tuple[float, float]:
        """(low, high) for images with fewer than two proposals: bg = A < low, fg = A > high on the
        min–max normalised attribution A; attributions are the class's N raw hxw maps."""
        ...


class TextMemo(Protocol):
    """Text embeddings kept between runs, by the text encoder's identity and then by prompt; the cache
    (`store.cache.Cache`) is one. The category filter and the stuff table read and write it."""

    def text_embeddings(self, fingerprint: str, prompts: list[str]) -> list[np.ndarray | None]: ...

    def put_text_embeddings(self, fingerprint: str, embeddings: dict[str, np.ndarray]) -> None: ...


class VocabMemo(Protocol):
    """Arrays computed once per vocabulary and kept under its id (e.g. in the cache), so a second run reads them."""

    def vocab_array(self, vocab_id: str, name: str) -> np.ndarray | None: ...

    def put_vocab_array(self, vocab_id: str, name: str, array: np.ndarray) -> None: ...


class ImageTextScorer(Protocol):
    """An aligned image/text encoder pair (CLIP) for the category pre-filter."""

    def identity(self) -> str:
        """Fingerprint of the text tower: the key under which text embeddings are cached."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) float32 RGB in [0,1] at the scorer's input size → (B,E) unit vectors."""
        ...

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        """T prompts → (T,E) unit vectors."""
        ...


class StageSource(Protocol):
    """What the pipeline functions (`ensure_support_set`, `ensure_classes`) need from a run: the model
    specs that name the cache keys, where models run, and each stage, built on first use.

    `compose.Stages` is the implementation; nothing is built until a stage is asked for, and
    `segmenter` returns a `segment.Segmenter` over the run's extractor parts and scorer.
    """

    specs: ModelSpecs
    device: torch.device
    dtype: torch.dtype

    def generator(self) -> Generator: ...

    def part(self, name: str) -> Extractor:
        """One extractor part by name (`features.Part`: L2-normalised features at the part's input size)."""
        ...

    def mask_proposer(self, name: str) -> MaskProposer: ...

    def scorer(self) -> ImageTextScorer: ...

    def segmenter(self, classes: list[ClassParts], cfg: SegmentConfig, extractor_spec: str, cache=None): ...


@dataclass
class ClassPrototypes:
    """Prototypes of one class in one feature space (paper §3 "Prototype aggregation").

    fg / bg map a prototype kind ("class", "instance", "part") to an (n, D) float32 array.
    Stuff classes have no bg prototypes. `sources` maps "fg/instance" etc. to the support
    image index each prototype row came from (-1 for prototypes pooled over all images), for --explain.
    A *head* (`engines.vocab.load_heads`) has empty fg/bg and says only how many rows each array has
    (`rows`): a segmenter over heads reads the arrays of the classes an image keeps, per image.
    """

    name: str
    kind: str  # "thing" or "stuff"
    fg: dict[str, np.ndarray]
    bg: dict[str, np.ndarray] = field(default_factory=dict)
    pid: str = ""
    sources: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # a head's row counts ("fg/class" → n): arrays not read
    stamp: str = ""  # a head's record time: a class rewritten under the same id is another vocabulary


@dataclass
class ClassParts:
    """One class of a vocabulary: its prototypes in each part of the extractor spec, in spec order.

    The authors keep one prototype set per extractor (sdov predict.py); each part's set is a
    `ClassPrototypes` with its own cache id (`parts[p].pid`).
    """

    name: str
    kind: str
    parts: dict[str, ClassPrototypes]

    @property
    def pids(self) -> list[str]:
        return [p.pid for p in self.parts.values()]
