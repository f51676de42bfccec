"""The weights a preset needs: where each comes from on the Hugging Face hub, whether it is present,
and fetching them all once (`ovdiff models download`) so that later runs work offline.

Every model is named by the spec string the loaders take (`models/sd.py`, `models/vit.py`,
`masks.py`); a spec that is a local path, or a preset's built-in random / procedural model, needs
no download. Files go to the HF cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`), where the loaders
look for them, or with `local_dir` to one folder per model, to pass as --sd-model DIR etc.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLoadError, OvdiffError
from .checkpoints import CUTLER_SPEC, CUTLER_URL, url_dir
from .dense import FAMILIES

if TYPE_CHECKING:
    from .generators import GeneratorFamily
    from .presets import ModelSpecs

BUILT_IN = ("tiny", "random", "procedural")
MODEL_NAMES = {"sd": "Stable Diffusion", "clip": "CLIP", "dino": "DINO", "mae": "MAE", "sam": "SAM"}
HUB_TIMEOUT_S = 5.0
SD_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)


@dataclass(frozen=True)
class Weights:
    """One model's weights: role ("sd", "clip", "dino", "mae", "sam", "cutler"), the spec runs name it by,
    and where it lives: `repo` on the hub with the `files` (glob patterns) the loader reads, `source`
    "url" (one published file, `files[0]`, fetched from `url`: CutLER's checkpoint), or "local" (a
    path) / "built-in" (random or procedural, nothing to fetch)."""

    role: str
    spec: str
    source: str  # "hub", "url", "local" or "built-in"
    repo: str | None = None
    files: tuple[str, ...] = ()
    licence: str = ""  # licence and gating of a generator or extractor family ("gated" in it: accept the terms first)
    url: str | None = None

    @property
    def gated(self) -> bool:
        """Whether the hub asks a logged-in user to accept the model's terms before it serves the files."""
        return self.source == "hub" and "gated" in self.licence

    @property
    def key_files(self) -> tuple[str, ...]:
        """The files whose presence means the weights are there (patterns without wildcards)."""
        return tuple(f for f in self.files if "*" not in f)


def hf_cache_dir() -> Path:
    """The HF hub cache the loaders read: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def weights_for(role: str, spec: str) -> Weights:
    """Where the weights named by `spec` (as --sd-model / --clip-model / … take it) come from."""
    if spec in BUILT_IN or spec.startswith(("tiny:", "random:")):  # tiny:siglip2 etc.: a random filter model
        return Weights(role, spec, "built-in")
    if Path(spec).expanduser().exists():
        return Weights(role, spec, "local")
    if role == "cutler":  # CutLER's release is one file on its authors' server, not on the hub
        if spec in (CUTLER_SPEC, f"{CUTLER_SPEC}.pth"):
            return Weights(role, spec, "url", files=(f"{CUTLER_SPEC}.pth",), licence="CC BY-NC 4.0", url=CUTLER_URL)
        return Weights(role, spec, "local")
    if role == "sd":
        return Weights(role, spec, "hub", spec, SD_FILES)
    if role == "clip":
        repo = spec.removeprefix("hf-hub:") if spec.startswith("hf-hub:") else _open_clip_repo(spec)
        return Weights(role, spec, "hub", repo, ("open_clip_config.json", "open_clip_model.safetensors"))
    if role == "filter":  # open_clip with the tokenizer files SigLIP2 reads from its repository
        repo = spec.removeprefix("hf-hub:") if spec.startswith("hf-hub:") else _open_clip_repo(spec)
        return Weights(
            role,
            spec,
            "hub",
            repo,
            ("open_clip_config.json", "open_clip_model.safetensors", "tokenizer*", "special_tokens_map.json"),
        )
    if role in ("dino", "mae"):
        return Weights(role, spec, "hub", f"timm/{spec}", ("config.json", "model.safetensors"))
    if role == "sam":
        return Weights(role, spec, "hub", spec, ("config.json", "preprocessor_config.json", "model.safetensors"))
    if role == "generator":  # FAMILY or FAMILY=HUB_ID_OR_DIR (models/generators.py)
        from .generators import parse_generator

        family, source = parse_generator(spec, "hub")
        if Path(source).expanduser().exists():
            return Weights(role, source, "local")
        return Weights(role, source, "hub", source, generator_files(family), family.licence)
    if role in FAMILIES:  # timm's hub copies: timm/NAME.TAG
        repo = spec.removeprefix("hf-hub:") if spec.startswith("hf-hub:") else f"timm/{spec}"
        return Weights(role, spec, "hub", repo, ("config.json", "model.safetensors"), FAMILIES[role].licence)
    raise ValueError(f"unknown model role {role!r}")


def generator_files(family: GeneratorFamily) -> tuple[str, ...]:
    """The files of a generator family's diffusers repository the loaders read: SD's, SDXL's second text encoder,
    SD3's and FLUX's transformer (FLUX: T5 as the second)."""
    if family.pipeline == "sd":
        return SD_FILES
    no_unet = tuple(f for f in SD_FILES if not f.startswith("unet/"))
    if family.pipeline == "flux":  # T5 and the transformer in shards, each with its index (models/flux.py)
        return (
            *no_unet,
            "tokenizer_2/*",
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors.index.json",
            "text_encoder_2/model-*.safetensors",
            "transformer/config.json",
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            "transformer/diffusion_pytorch_model-*.safetensors",
        )
    second = ("tokenizer_2/*", "text_encoder_2/config.json", "text_encoder_2/model.safetensors")
    if family.pipeline == "sd3":  # a transformer instead of a UNet; no T5 (models/mmdit.py)
        return (*no_unet, *second, "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors")
    return (*SD_FILES, *second)


def _open_clip_repo(spec: str) -> str:
    """The hub repository open_clip fetches `NAME:TAG` from (its pretrained table)."""
    import open_clip

    name, _, tag = spec.partition(":")
    cfg = open_clip.get_pretrained_cfg(name, tag or "openai") or {}
    if not cfg.get("hf_hub"):
        raise OvdiffError(f"open_clip has no hub copy of {spec!r}: give a local weights file as the clip model")
    model_id, _ = os.path.split(cfg["hf_hub"])  # 'org/name/' (default file) or 'org/name/file', as open_clip reads it
    return model_id


def needed(models: dict[str, str], extractor: str, mask_proposer: str) -> list[Weights]:
    """Every weight a run with these model specs, extractor and mask proposer loads: the generator
    (sd), the filter's CLIP, each extractor part's backbone, and SAM when it proposes the masks.
    models: role → spec, with the extractor families' and the filter's resolved (`ModelSpecs.spec`,
    `filtermodels.filter_source`)."""
    from .sam import SAM_SPEC

    parts = extractor.split("+") + (
        ["dino"] if mask_proposer in ("ncut", "ncut-fast") else []
    )  # ncut cuts DINO ViT-B/8 keys
    roles = ["sd"] if "sd" in parts or not models.get("generator") else []  # SD1.5: generator or SD features
    roles += ["generator", "clip", "filter"] + [p for p in ("dino", "mae", *FAMILIES) if p in parts]
    specs = {r: models[r] for r in roles if models.get(r)}
    if mask_proposer == "sam":
        specs["sam"] = models.get("sam") or SAM_SPEC
    if mask_proposer == "cutler":
        specs["cutler"] = models.get("cutler") or CUTLER_SPEC
    return [weights_for(role, spec) for role, spec in specs.items()]


def present(w: Weights, cache_dir: Path | None = None) -> bool | None:
    """Whether the weights are on disk (in the HF cache for hub weights); None for built-in models."""
    if w.source == "built-in":
        return None
    if w.source == "local":
        return Path(w.spec).expanduser().exists()
    if w.source == "url":
        return (url_dir() / w.files[0]).is_file()
    from huggingface_hub import try_to_load_from_cache

    root = cache_dir or hf_cache_dir()
    return all(isinstance(try_to_load_from_cache(w.repo, f, cache_dir=str(root)), str) for f in w.key_files)


def in_folder(w: Weights, folder: Path) -> bool:
    """Whether a `download(..., local_dir=folder)` copy of `w` is complete."""
    return all((folder / f).is_file() for f in w.key_files)


Downloader = Callable[..., str]


def download(w: Weights, local_dir: Path | None = None, downloader: Downloader | None = None) -> Path | None:
    """Fetch `w`'s files into the HF cache (or `local_dir`); return where they are (None: nothing to fetch).

    downloader: huggingface_hub's `snapshot_download` (tests pass a stand-in); for "url" weights,
    `fetch_url`'s (url, destination) callable.
    """
    if w.source == "url":
        return fetch_url(w, local_dir, downloader)
    if w.source != "hub":
        return None
    if downloader is None:
        from huggingface_hub import snapshot_download as downloader
    try:
        if local_dir is not None:
            path = downloader(repo_id=w.repo, allow_patterns=list(w.files), local_dir=str(local_dir))
        else:
            path = downloader(repo_id=w.repo, allow_patterns=list(w.files), cache_dir=str(hf_cache_dir()))
    except Exception as e:  # network, auth and disk errors all end as one line naming the repository
        cause = " ".join(str(e).split()) or type(e).__name__  # whole, on one line
        raise OvdiffError(f"cannot download {w.role} weights {w.repo}: {type(e).__name__}: {cause}") from e
    return Path(path)


def fetch_url(w: Weights, local_dir: Path | None = None, downloader: Downloader | None = None) -> Path:
    """Fetch a published file (`w.url`) into `url_dir()` (or `local_dir`), then check it before keeping it.

    CutLER publishes no checksum of its checkpoint, so what is checked is its structure: it must load as
    the detector (every key and shape of the Cascade Mask R-CNN layout, `models.cutler.load_cutler`); a
    file that does not is deleted and the error names why. downloader(url, destination) defaults to
    `torch.hub.download_url_to_file`."""
    from .cutler import load_cutler

    if downloader is None:
        from torch.hub import download_url_to_file as downloader
    folder = Path(local_dir) if local_dir is not None else url_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / w.files[0]
    try:
        downloader(w.url, str(path))
    except Exception as e:  # network and disk errors: one line naming the address
        cause = " ".join(str(e).split()) or type(e).__name__
        raise OvdiffError(f"cannot download {w.role} weights {w.url}: {type(e).__name__}: {cause}") from e
    try:
        import torch

        load_cutler(str(path), torch.device("cpu"))
    except OvdiffError:
        path.unlink(missing_ok=True)
        raise
    return folder


def role_specs(specs: ModelSpecs) -> dict[str, str]:
    """A run's model specs by role, as `needed` takes them: the preset's with the run's overrides, each
    extractor family's, and the filter's own source (none when it is the run's CLIP)."""
    from .filtermodels import filter_source

    models = {**specs.models, **{p: s for p in FAMILIES if (s := specs.spec(p)) is not None}}
    models.pop("filter", None)
    if (source := filter_source(specs.models.get("filter"), specs.preset.weights)) is not None:
        models["filter"] = source
    return models


def fetch_all(
    wanted: list[Weights], local_dir: Path | None = None, on_weight: Callable[[Weights, str], None] | None = None
) -> dict[str, Path]:
    """Each weight in `wanted` in turn: left alone when it is not on the hub ("elsewhere") or already there
    ("present": in the HF cache, or complete in `local_dir`/ROLE), else fetched ("downloading", reported
    before the download starts). Returns role → the folder each hub weight was put in under `local_dir`."""
    folders: dict[str, Path] = {}
    for w in wanted:
        if w.source not in ("hub", "url"):
            if on_weight is not None:
                on_weight(w, "elsewhere")
            continue
        folder = Path(local_dir).expanduser() / w.role if local_dir is not None else None
        there = in_folder(w, folder) if folder is not None else present(w)
        if on_weight is not None:
            on_weight(w, "present" if there else "downloading")
        if not there:
            download(w, folder)
        if folder is not None:
            folders[w.role] = folder
    return folders


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks the libraries to use the HF cache only (they then fail at once on a miss)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


@functools.lru_cache
def hub_unreachable(endpoint: str) -> str | None:
    """Why the hub at `endpoint` cannot be reached (None: it answered, even with an error status).

    Asked once per process: without it, an unreachable hub costs minutes of the libraries' retries per file.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {getattr(reason, 'strerror', None) or reason}"


def check_hub(role: str, spec: str) -> None:
    """Before a model is built: a ModelLoadError in seconds when its weights must come from the hub
    (not local, not built in, not in the HF cache) and the hub cannot be reached. HF_HUB_OFFLINE: no check."""
    if hub_offline():
        return
    try:
        w = weights_for(role, spec)
    except (ValueError, OvdiffError):  # no hub layout known here (sam2) or a bad spec: the loader says so
        return
    if w.source != "hub" or present(w):
        return
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"
    if (why := hub_unreachable(endpoint)) is not None:
        cause = ConnectionError(
            f"not in the HF cache {hf_cache_dir()}, and the model hub {endpoint} cannot be reached ({why})"
        )
        raise ModelLoadError(MODEL_NAMES.get(role, role), role, spec, cause, w.repo)
