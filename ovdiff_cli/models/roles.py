"""The model roles, declared once: each role's setting (the name errors use; the CLI's option is it with
dashes, `sd_model` → --sd-model), what it loads, its help and default. The CLI's model options,
`models download`, `doctor` and `serve` are made from this table, and `check_models` checks a run's
model sources against it, at construction, for the API and the CLI alike."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..config import FAMILY_PARTS
from ..errors import InvalidSetting


@dataclass(frozen=True)
class Role:
    """role: the key of `Pipeline(models=…)`; setting: its name in errors and options; model: what it loads
    (for messages); help: the option's help; default: shown in help (None: the preset's); local: a spec
    shaped like a path must exist."""

    role: str
    setting: str
    model: str
    help: str
    default: str | None = None
    local: bool = True


PART_SETTING = "part_model"  # the extractor families share one option: --part-model PART=SPEC
ROLES: dict[str, Role] = {
    r.role: r
    for r in (
        Role("sd", "sd_model", "Stable Diffusion", "Stable Diffusion hub id or local diffusers directory."),
        Role(
            "clip",
            "clip_model",
            "CLIP",
            "CLIP spec: ViT-B-16:openai, hf-hub:ORG/REPO, or a local weights file or downloaded folder.",
        ),
        Role("dino", "dino_model", "DINO", "DINO timm name, or a local weights file or downloaded folder."),
        Role(
            "sam",
            "sam_model",
            "SAM",
            "SAM hub id or local directory, for the sam mask proposer.",
            "facebook/sam-vit-base",
        ),
        Role(
            "cutler",
            "mask_model",
            "CutLER",
            "CutLER checkpoint, for the cutler mask proposer: a .pth file in detectron2's format (fetched by "
            "`ovdiff models download`).",
            "cutler_cascade_final",
        ),
        Role(
            "sam2",
            "sam2_model",
            "SAM 2",
            "SAM 2 hub id or local directory, for the sam2 refiner.",
            "facebook/sam2.1-hiera-large",
        ),
        Role(
            "filter",
            "filter_model",
            "filter",
            "The category filter's model: clip (the run's CLIP, the paper's), siglip2, pecore, or an open_clip "
            "NAME:TAG or hf-hub:ORG/REPO.",
            "clip",
            local=False,
        ),
        Role(
            "generator",
            "generator",
            "generator",
            "Support-set generator beyond SD1.5: sd-turbo, sdxl, sdxl-turbo, sd3, flux-schnell (flux), flux-dev, "
            "optionally =HUB_ID_OR_DIR (Turbo and flux-schnell: 4 steps, no guidance; flux-dev: guidance 3.5).",
            "SD1.5 from the sd model",
            local=False,
        ),
        Role("mae", "mae_model", "MAE", "MAE timm name, or a local weights file or downloaded folder."),
    )
}
PART_HELP = (
    f"PART=SPEC: the model of an extractor family ({', '.join(FAMILY_PARTS)}): a timm name.tag, hf-hub:ORG/REPO, "
    "or a local weights file or downloaded folder (repeatable)."
)
MODEL_ROLES = (*ROLES, *FAMILY_PARTS)


def setting_of(role: str) -> str:
    """The setting that names `role` in errors: sd → sd_model, an extractor family → part_model."""
    return ROLES[role].setting if role in ROLES else PART_SETTING


@dataclass(frozen=True)
class ModelOptions:
    """The model sources a command was given, as its options hold them (None: the preset's); `roles()`
    turns them into `Pipeline(models=…)`'s role → spec, checking --part-model's PART=SPEC form."""

    sd_model: str | None = None
    clip_model: str | None = None
    dino_model: str | None = None
    sam_model: str | None = None
    mask_model: str | None = None
    sam2_model: str | None = None
    filter_model: str | None = None
    generator: str | None = None
    part_model: tuple[str, ...] = ()

    @classmethod
    def table(cls) -> list[tuple[str, str, str | None]]:
        """(setting, help, default) of each field, in order, from the roles table: the CLI's model options."""
        by_setting = {r.setting: r for r in ROLES.values()}
        return [
            (f.name, PART_HELP, "README's model table")
            if f.name == PART_SETTING
            else (f.name, by_setting[f.name].help, by_setting[f.name].default)
            for f in fields(cls)
        ]

    @staticmethod
    def setting_of(role: str) -> str:
        """The setting (and option) that gives `role` its source: sd → sd_model, dinov2 → part_model."""
        return setting_of(role)

    @staticmethod
    def takes_folder(role: str) -> bool:
        """Whether `role`'s source may be a local folder (not the filter's: a name or NAME:TAG)."""
        return ROLES[role].local if role in ROLES else True

    def roles(self) -> dict[str, str]:
        from .overrides import parse_part_models

        by_setting = {r.setting: r.role for r in ROLES.values()}
        given = {by_setting[f.name]: getattr(self, f.name) for f in fields(self) if f.name != PART_SETTING}
        return {**{r: s for r, s in given.items() if s is not None}, **parse_part_models(list(self.part_model or ()))}


def check_models(models: dict[str, str]) -> dict[str, str]:
    """`models` (role → spec) checked once, at construction: known roles, a filter spec of the known
    forms, a path-shaped spec that exists. Typed errors name the role's
    setting (`filter_model`), as the CLI's options do."""
    from .overrides import check_filter_model

    unknown = sorted(set(models) - set(MODEL_ROLES))
    if unknown:
        raise InvalidSetting(
            "models", f"has unknown role(s) {', '.join(unknown)}; valid roles: {', '.join(MODEL_ROLES)}"
        )
    for role, spec in models.items():
        if role == "filter":
            check_filter_model(spec)
        elif role in ROLES and not ROLES[role].local:
            continue
        elif _missing_path(spec):
            model = ROLES[role].model if role in ROLES else role
            raise InvalidSetting(
                setting_of(role),
                f"{spec}: no such file or folder; give the path of a downloaded copy of the {model} weights",
            )
    return models


def _missing_path(spec: str) -> bool:
    """A spec shaped like a path (not a hub id "org/name" or a built-in name) that does not exist."""
    looks_local = spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
    return looks_local and not Path(spec).expanduser().exists()
