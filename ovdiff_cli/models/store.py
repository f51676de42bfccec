"""The model store: each raw model of a run built once, on first use, from its spec.

Stages never look models up: the composition module (`ovdiff_cli.compose`) asks the store for the
models a stage needs and hands them to the stage's constructor, as segment-anything's
`SamPredictor(sam)` takes its model. Nothing is built before it is asked for, so a run that finds
everything in the cache loads no weights at all (`loaded` says what was built).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import OvdiffError
from .presets import ModelSpecs, resolve_device, resolve_dtype, role_dtype
from .sam import SAM_SPEC
from .weights import check_hub

if TYPE_CHECKING:
    from .sd import SDComponents
    from .vit import ClipModel


class ModelStore:
    """Raw models by role (sd, clip, dino, mae, sam, sam2), built lazily on `device` in `dtype`."""

    def __init__(self, specs: ModelSpecs, device: str = "auto", dtype: str = "auto"):
        self.specs = specs
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.dtype_setting = dtype
        self._built: dict[str, Any] = {}

    def dtype_of(self, role: str):
        """The dtype `role`'s model is built in (`presets.role_dtype`: the authors' on a GPU with --dtype auto)."""
        return role_dtype(role, self.dtype_setting, self.device)

    @property
    def loaded(self) -> list[str]:
        """The roles whose models have been built so far, in build order."""
        return list(self._built)

    def _once(self, role: str, build: Callable[[], Any], spec: str | None = None) -> Any:
        """The model of `role`, built on first use; `spec`: the weights it loads, whose hub is checked first
        (`weights.check_hub`; None: nothing to fetch)."""
        if role not in self._built:
            if spec is not None:
                check_hub(role, spec)
            self._built[role] = build()
        return self._built[role]

    def _spec(self, role: str) -> str:
        spec = self.specs.spec(role)
        if spec is None:
            raise OvdiffError(f"preset {self.specs.preset.name!r} has no {role} model")
        return spec

    def sd(self) -> SDComponents:
        """Stable Diffusion's parts (UNet, VAE, text encoder, tokenizer, scheduler)."""
        from .sd import load_sd, random_sd

        spec, seed = self._spec("sd"), self.specs.weights_seed
        if spec in ("tiny", "random"):
            size = "tiny" if spec == "tiny" else "full"
            return self._once("sd", lambda: random_sd(size, seed, self.device, self.dtype_of("sd")))
        return self._once("sd", lambda: load_sd(spec, self.device, self.dtype_of("sd")), spec)

    def clip(self) -> ClipModel:
        """The open_clip model with its tokenizer."""
        from .vit import load_clip

        spec = self._spec("clip")
        return self._once(
            "clip", lambda: load_clip(spec, self.device, self.dtype_of("clip"), self.specs.weights_seed), spec
        )

    def vit(self, kind: str):
        """A timm ViT: `kind` is "dino" or "mae"."""
        from .vit import load_timm_vit

        spec = self._spec(kind)
        return self._once(
            kind, lambda: load_timm_vit(spec, kind, self.device, self.dtype_of(kind), self.specs.weights_seed), spec
        )

    def generator_parts(self):
        """The components of the `--generator` family's pipeline (`models.generators`): SD's, SDXL's, SD3's or FLUX's."""
        from .generators import load_sdxl, parse_generator, tiny_sdxl
        from .sd import load_sd, random_sd

        family, source = parse_generator(self._spec("generator"), self.specs.preset.weights)
        seed = self.specs.weights_seed
        if family.pipeline == "sd3":
            from .mmdit import load_sd3, tiny_sd3

            build = (
                (lambda: tiny_sd3(seed, self.device, self.dtype))
                if source == "tiny"
                else (lambda: load_sd3(source, self.device, self.dtype))
            )
        elif family.pipeline == "flux":
            from .flux import flux_text_len, load_flux, tiny_flux

            build = (
                (lambda: tiny_flux(seed, not family.turbo, self.device, self.dtype))
                if source == "tiny"
                else (lambda: load_flux(source, flux_text_len(family.turbo), self.device, self.dtype))
            )
        elif family.pipeline == "sd":
            build = (
                (lambda: random_sd("tiny", seed, self.device, self.dtype))
                if source == "tiny"
                else (lambda: load_sd(source, self.device, self.dtype))
            )
        else:
            build = (
                (lambda: tiny_sdxl(seed, self.device, self.dtype))
                if source == "tiny"
                else (lambda: load_sdxl(source, self.device, self.dtype))
            )
        return self._once("generator", build, None if source == "tiny" else self._spec("generator"))

    def filter_model(self) -> ClipModel:
        """The category filter's image/text model: `--filter-model` (`models.filtermodels`), else the run's CLIP."""
        from .filtermodels import filter_source, load_filter_model

        source = filter_source(self.specs.models.get("filter"), self.specs.preset.weights)
        if source is None:
            return self.clip()
        return self._once(
            "filter", lambda: load_filter_model(source, self.device, self.dtype, self.specs.weights_seed), source
        )

    def dense(self, part: str):
        """The timm ViT of an extractor family of `models.dense` (dinov2, dinov3, siglip2, …)."""
        from .dense import load_dense

        spec = self._spec(part)
        return self._once(part, lambda: load_dense(part, spec, self.device, self.dtype, self.specs.weights_seed), spec)

    def sam(self):
        """transformers' SAM `mask-generation` pipeline (`sam` spec, default facebook/sam-vit-base)."""
        from .sam import load_sam  # transformers' pipeline module loads slowly: only for SAM

        spec = self.specs.models.get("sam") or SAM_SPEC
        return self._once("sam", lambda: load_sam(spec, self.device, self.dtype), spec)

    def cutler(self):
        """CutLER's detector (`cutler` spec: the released checkpoint by name or path, or tiny/random), fp32."""
        from .cutler import load_cutler

        spec = self._spec("cutler")
        return self._once("cutler", lambda: load_cutler(spec, self.device, self.specs.weights_seed))

    def sam2(self):
        """transformers' SAM 2 `mask-generation` pipeline (`sam2` spec, default facebook/sam2.1-hiera-large)."""
        from .sam2 import SAM2_SPEC, load_sam2

        spec = self.specs.models.get("sam2") or SAM2_SPEC
        return self._once("sam2", lambda: load_sam2(spec, self.device, self.dtype))
