"""Paper §3 "Class prototypes" (App. C.2): the dense feature extractors Φ_v, one `Part` per feature space.

Each part turns RGB images into a feature grid: Stable Diffusion's UNet cross-attention queries
(stride 8), CLIP ViT-B/16 keys of the second-to-last block (stride 16), DINO ViT-B/8 or MAE keys of
the last block (stride 8 / 16). Every ViT part normalises its pixels with ImageNet's mean/std, CLIP
too, as the authors do for support images and targets alike (sdov `gen_vit_features.py`,
`predict.py`); only the category filter feeds CLIP its own statistics (filter.py). A spec such as `sd+dino+clip` names several parts; as the authors
do, each keeps its own prototypes and its own input size (`config.PART_INPUTS`), and their class
score maps are averaged at inference (matching.py), never their features concatenated.

Output tensors are in the models' dtype on their device: float32 on CPU, fp16/bf16 end to end
on the GPU path (the matching stage compares them there, with fp32 accumulation). Each backbone
takes the model it reads in its constructor; `compose.build_part` builds a part by name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ...config import InputSize
from ...errors import OvdiffError

if TYPE_CHECKING:
    import torch

    from ...models.sd import SDComponents
    from ...models.vit import ClipModel
    from ...types import Extractor

NOISE_SEED = 0  # SD features are a function of the image alone: the same noise for every image and run
LATENT_SEED = 1  # … and the same draw from the VAE posterior (the authors sample it: sdov `sd.py` `encode`)
SD_TIMESTEP = 200  # paper App. C.2; fixed, so the extractor spec alone names the features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
POS_CACHE = 8  # CLIP positional embeddings kept, one per input grid size


def _fit(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Bilinearly resize (B,3,H,W) up to the next multiple of `multiple` on each side (no-op if it is one)."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    th, tw = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    if (th, tw) == (h, w):
        return images
    return F.interpolate(images, size=(th, tw), mode="bilinear", align_corners=False)


def clip_mean_std(visual) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of an open_clip vision tower's inputs, as the category filter feeds it:
    its own, else OpenAI CLIP's."""
    return (
        tuple(getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN),
        tuple(getattr(visual, "image_std", None) or OPENAI_CLIP_STD),
    )


def _normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    return (images - m) / s


# --------------------------------------------------------------------------- Stable Diffusion


def sd_feature_layers(unet) -> list:
    """The UNet cross-attention layers the paper reads queries from (App. C.2, Table A.6), by position.

    First cross-attention layer of the first down block, every layer of the mid block, every layer
    of the first and second cross-attention up blocks (paper's Up-1, Up-2), the last layer of the last
    up block. On SD1.5 these are 9 of its 16 layers (indices 0, 6-12, 15); smaller UNets with fewer
    layers per block get the same selection. Returns the `Transformer2DModel`s.
    """
    down = [b for b in unet.down_blocks if getattr(b, "attentions", None)]
    up = [b for b in unet.up_blocks if getattr(b, "attentions", None)]
    mid = list(getattr(unet.mid_block, "attentions", None) or [])
    if not down or len(up) < 3 or not mid:
        raise ValueError("UNet does not have SD1.5's layout of cross-attention blocks")
    return [down[0].attentions[0], *mid, *up[-3].attentions, *up[-2].attentions, up[-1].attentions[-1]]


class SDPart:
    """Queries of SD's cross-attention layers at t=200, empty prompt (App. C.2); stride 8.

    Image → VAE latent (a seeded sample of the posterior, as the authors' `encode`, × scaling factor) →
    noised to `timestep` with a fixed noise field →
    one UNet pass; each hooked layer's `attn2.to_q` output is bilinearly resized to the latent grid
    and the layers are concatenated (channels 320+1280+3·1280+3·640+320 = 7680 on SD1.5).
    """

    name = "sd"
    stride = 8

    def __init__(self, sd: SDComponents, device: torch.device):
        import torch

        self.sd, self.device = sd, device
        self.timestep = SD_TIMESTEP  # not a parameter: the spec "sd" must name one feature space
        self.layers = sd_feature_layers(self.sd.unet)
        tok = self.sd.tokenizer
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.inference_mode():
            self.empty = self.sd.text_encoder(ids.to(device))[0]
        alphas = self.sd.scheduler.alphas_cumprod
        if not 0 <= self.timestep < len(alphas):
            raise OvdiffError(f"SD timestep must be in 0..{len(alphas) - 1}, got {self.timestep}")
        self.alpha_bar = float(alphas[self.timestep])

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        g = torch.Generator(device="cpu").manual_seed(NOISE_SEED)
        return torch.randn((1, *shape), generator=g)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1], H and W multiples of 8 → (B,C,H/8,W/8) in the UNet's dtype.

        The VAE encodes one image at a time (its 512 px activations are the largest of the build)
        and each hooked layer's queries are resized straight into their channels of the output, so
        the features exist once, not as a list of maps and their concatenation.
        """
        import torch
        import torch.nn.functional as F

        unet, vae = self.sd.unet, self.sd.vae
        with torch.inference_mode():
            x = images.to(self.device, vae.dtype) * 2 - 1
            z0 = torch.cat([sample_latent(vae, xi) for xi in x.split(1)]) * vae.config.scaling_factor
            b, _, h, w = z0.shape
            noise = self._noise(tuple(z0.shape[1:])).to(z0.device, z0.dtype)
            zt = math.sqrt(self.alpha_bar) * z0 + math.sqrt(1 - self.alpha_bar) * noise
            blocks = [blk.attn2.to_q for layer in self.layers for blk in layer.transformer_blocks]
            ends = list(itertools.accumulate(q.out_features for q in blocks))
            out = torch.empty((b, ends[-1], h, w), dtype=unet.dtype, device=zt.device)
            filled: list[int] = []

            def into(i: int):
                def hook(_m, _i, q: torch.Tensor) -> None:
                    grid = F.interpolate(_to_grid(q, h, w), size=(h, w), mode="bilinear", align_corners=False)
                    out[:, ends[i] - q.shape[-1] : ends[i]] = grid
                    filled.append(i)

                return hook

            hooks = [q.register_forward_hook(into(i)) for i, q in enumerate(blocks)]
            try:
                t = torch.full((b,), self.timestep, device=zt.device, dtype=torch.long)
                unet(zt.to(unet.dtype), t, encoder_hidden_states=self.empty.expand(b, -1, -1).to(unet.dtype))
            finally:
                for hk in hooks:
                    hk.remove()
            if sorted(filled) != list(range(len(blocks))):
                raise RuntimeError(f"SD feature hooks fired {len(filled)} times for {len(blocks)} layers")
            return out


def sample_latent(vae, x: torch.Tensor) -> torch.Tensor:
    """One image (1,3,H,W) in [-1,1] → a sample of the VAE's posterior, mean + std · ε (1,4,H/8,W/8).

    The authors sample (`latent_dist.sample()`, sdov `sd.py`) rather than take the mean; ε here is a
    fixed seeded field (`LATENT_SEED`), so a support image and a target give the same latent every run.
    """
    import torch

    dist = vae.encode(x).latent_dist
    g = torch.Generator(device="cpu").manual_seed(LATENT_SEED)
    eps = torch.randn(tuple(dist.mean.shape), generator=g).to(dist.mean.device, dist.mean.dtype)
    return dist.mean + dist.std * eps


def _to_grid(q: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, L, C) tokens of a UNet level whose grid is the latent grid divided by a power of two → (B,C,h',w')."""
    b, n, c = q.shape
    f = 1
    while True:
        gh, gw = math.ceil(h / f), math.ceil(w / f)
        if gh * gw == n:
            return q.transpose(1, 2).reshape(b, c, gh, gw)
        if gh * gw < n:
            raise ValueError(f"{n} query tokens do not fit a {h}x{w} latent grid")
        f *= 2


# --------------------------------------------------------------------------- CLIP


class ClipKeysPart:
    """Keys of the second-to-last block of open_clip's VisionTransformer (App. C.2); stride = patch (16).

    open_clip does not resize positional embeddings at run time: the grid part is resized here
    (bicubic, once per input size) so the model runs at the inference window size. The last
    `POS_CACHE` sizes are kept: sliding windows need two, one pass per image (--no-slide over
    pictures of many shapes) would otherwise keep one per aspect ratio for the whole run.
    """

    name = "clip"

    def __init__(self, clip: ClipModel, device: torch.device):
        self.device = device
        self.visual = clip.model.visual
        if len(self.visual.transformer.resblocks) < 2:
            raise ValueError("CLIP vision tower needs at least two blocks")
        self.stride = int(self.visual.conv1.stride[0])
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD  # the authors', not CLIP's own (module docstring)
        self._pos: dict[tuple[int, int], torch.Tensor] = {}

    def positional(self, gh: int, gw: int) -> torch.Tensor:
        """(1 + gh·gw, C) positional embedding for a gh×gw patch grid."""
        import torch
        import torch.nn.functional as F

        if (gh, gw) not in self._pos:
            if len(self._pos) >= POS_CACHE:
                del self._pos[next(iter(self._pos))]  # the oldest size
            pos = self.visual.positional_embedding
            cls, grid = pos[:1], pos[1:]
            g = math.isqrt(grid.shape[0])
            if (g, g) == (gh, gw):
                self._pos[(gh, gw)] = pos
            else:
                img = grid.float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
                img = F.interpolate(img, size=(gh, gw), mode="bicubic", align_corners=False)
                grid = img.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)
                self._pos[(gh, gw)] = torch.cat([cls, grid], dim=0)
        return self._pos[(gh, gw)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] → (B,C,H/16,W/16) keys (class token dropped)."""
        import torch
        import torch.nn.functional as F

        v = self.visual
        dtype = v.conv1.weight.dtype
        with torch.inference_mode():
            x = _normalise(_fit(images.to(self.device, torch.float32), self.stride), self.mean, self.std)
            x = v.conv1(x.to(dtype))
            b, c, gh, gw = x.shape
            x = x.reshape(b, c, gh * gw).permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype).view(1, 1, c).expand(b, -1, -1)
            x = torch.cat([cls, x], dim=1) + self.positional(gh, gw).to(x.dtype)
            x = v.ln_pre(v.patch_dropout(x))
            blocks = v.transformer.resblocks
            if not v.transformer.batch_first:
                x = x.transpose(0, 1)
            for blk in blocks[:-2]:
                x = blk(x)
            if not v.transformer.batch_first:
                x = x.transpose(0, 1)
            blk = blocks[-2]
            w, bias = blk.attn.in_proj_weight, blk.attn.in_proj_bias
            d = w.shape[1]
            keys = F.linear(blk.ln_1(x), w[d : 2 * d], None if bias is None else bias[d : 2 * d])
            return keys[:, 1:].transpose(1, 2).reshape(b, d, gh, gw)


# --------------------------------------------------------------------------- DINO / MAE (timm)


class TimmPart:
    """A timm ViT as a feature part: stride = its patch, its own pixel mean/std (ImageNet's by default)."""

    def __init__(self, model: torch.nn.Module, kind: str, device: torch.device):
        self.device, self.name, self.model = device, kind, model
        self.stride = int(model.patch_embed.patch_size[0])
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean") or IMAGENET_MEAN)
        self.std = tuple(cfg.get("std") or IMAGENET_STD)

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] → the model's input: fitted to the stride, normalised, in the model's dtype."""
        import torch

        x = _normalise(_fit(images.to(self.device, torch.float32), self.stride), self.mean, self.std)
        return x.to(self.model.patch_embed.proj.weight.dtype)


class TimmKeysPart(TimmPart):
    """Keys of the last block of a timm ViT (DINO ViT-B/8, MAE), prefix tokens dropped; stride = patch."""

    def __init__(self, model: torch.nn.Module, kind: str, device: torch.device):
        if len(model.blocks) < 2:
            raise ValueError(f"{kind} ViT needs at least two blocks")
        super().__init__(model, kind, device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] → (B,C,H/p,W/p) keys of `blocks[-1].attn.qkv`."""
        import torch

        m = self.model
        with torch.inference_mode():
            x = self.model_input(images)
            b, _, h, w = x.shape
            gh, gw = h // self.stride, w // self.stride
            # Keys are a per-token projection of the last block's input: prefix tokens are not needed.
            (tokens,) = m.forward_intermediates(
                x, indices=[len(m.blocks) - 2], stop_early=True, intermediates_only=True, output_fmt="NLC"
            )
            blk = m.blocks[-1]
            attn = blk.attn
            qkv = attn.qkv(blk.norm1(tokens))
            n = qkv.shape[1]
            k = qkv.reshape(b, n, 3, attn.num_heads, -1)[:, :, 1]
            k = attn.k_norm(k.transpose(1, 2)).transpose(1, 2).reshape(b, n, -1)
            return k.transpose(1, 2).reshape(b, -1, gh, gw)


# --------------------------------------------------------------------------- combination


class Part:
    """One feature space: a backbone (`types.Extractor`), its stride and its input size (App. C.2).

    Each part of a spec keeps its own prototypes and is matched on its own (late fusion): it is
    never resized to another part's grid or concatenated with it. `compose.build_part` builds one.
    """

    def __init__(self, name: str, backbone: Extractor, input_size: InputSize):
        self.name, self.backbone, self.stride, self.input_size = name, backbone, backbone.stride, input_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float32 RGB in [0,1], H and W multiples of `stride` → (B,D,H/stride,W/stride)
        in the models' dtype on their device: the backbone's raw features, as the authors average and
        cluster them (prototypes.py); matching normalises both sides when it compares them."""
        import torch

        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B,3,H,W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"image size {h}x{w} is not a multiple of the extractor stride {self.stride}")
        with torch.inference_mode():
            return self.backbone(images)

    def fit(self, size: int) -> int:
        """`size` rounded up to a multiple of the stride (a support set's feature size for a patch-14 ViT)."""
        return math.ceil(size / self.stride) * self.stride

    def window(self, crops: torch.Tensor) -> torch.Tensor:
        """Features of target crops (B,3,h,w) in [0,1] at this part's input size (`input_size`, the
        patches that fit in it): (B,D,h',w') on the part's own grid."""
        return self(self._resized(crops))

    def resize(self, crop: torch.Tensor) -> torch.Tensor:
        """One crop (3,h,w) as `window` feeds it to the backbone, (3,h',w'): crops of any sizes that
        resize alike can then share a forward pass (`matching.window_features`)."""
        return self._resized(crop[None])[0]

    def _resized(self, crops: torch.Tensor) -> torch.Tensor:
        """As the authors' `resize` (sdov predict.py): a tensor resize, bilinear without antialiasing, to the
        part's input size; then the patch embedding's view of it, floor(side / patch) patches a side (the
        last pixels of a 448×597 crop go unseen: 56×74 DINO patches, 448×592 px)."""
        import torch.nn.functional as F

        th, tw = (max(s, self.stride) for s in self.input_size(*crops.shape[-2:]))
        if (th, tw) != tuple(crops.shape[-2:]):
            crops = F.interpolate(crops, size=(th, tw), mode="bilinear", align_corners=False).clamp(0, 1)
        return crops[..., : th // self.stride * self.stride, : tw // self.stride * self.stride]


# --------------------------------------------------------------------------- many images


def images_to_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    """HxWx3 uint8 RGB images → (B,3,size,size) float32 in [0,1] (antialiased bilinear resize)."""
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        t = torch.tensor(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        out.append(t)
    return torch.cat(out)


def iter_features(
    extractor: Part,
    images: list[np.ndarray],
    size: int,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Features of many images with one loaded extractor, `batch_size` at a time, as they are made.

    images: HxWx3 uint8, each resized to size×size (size a multiple of the stride). Yields
    (index of the batch's first image, (B, D, size/stride, size/stride) features in the extractor's
    dtype); only one batch is alive if the caller drops it before the next. `on_progress(done, total)`
    after each batch.
    """
    if size % extractor.stride:
        raise OvdiffError(f"feature size {size} must be a multiple of the extractor's stride {extractor.stride}")
    if not images:
        raise ValueError("extracting features needs at least one image")
    for i in range(0, len(images), batch_size):
        f = extractor(images_to_tensor(images[i : i + batch_size], size))
        if on_progress:
            on_progress(min(i + batch_size, len(images)), len(images))
        yield i, f
        del f  # before the next batch is made, or two would be alive while it is
