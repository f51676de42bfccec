"""The per-run context of a command (`Run`: the library's `Pipeline` and how the command prints), and the
one line the CLI prints for a library error (`phrase`, with the next command)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress

from ..config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig
from ..errors import OvdiffError
from .options import flag
from .output import LogProgress, make_console

if TYPE_CHECKING:
    from ..api import Pipeline
    from ..compose import Stages
    from ..models.presets import Preset
    from ..store.cache import Cache


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
            TextColumn("{task.description}", style="progress.description", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            disable=self.quiet,
            transient=False,
        )


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
    mask_model: str | None = None,
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

    models = {
        "sd": sd_model,
        "clip": clip_model,
        "dino": dino_model,
        "sam": sam_model,
        "cutler": mask_model,
        "sam2": sam2_model,
        "filter": check_filter_model(filter_model),
        "generator": generator,
        **parse_part_models(part_models or []),
    }
    local = (
        ("--sd-model", sd_model, "Stable Diffusion"),
        ("--clip-model", clip_model, "CLIP"),
        ("--dino-model", dino_model, "DINO"),
        ("--sam-model", sam_model, "SAM"),
        ("--mask-model", mask_model, "CutLER"),
    )
    for option, spec, model in local:
        if spec and (problem := missing_local(spec, option, model)):
            raise OvdiffError(problem)
    # Each config checks its values as it is made, before any progress bar or model starts.
    pipe = Pipeline(preset, cache, device, dtype, seed, models, sample, protos, segment)
    run = Run(
        pipe,
        console=make_console(stderr=json_out),
        err=make_console(stderr=True),
        verbose=verbose,
        quiet=quiet,
        json=json_out,
    )
    if quiet:
        from ..libs import quiet_libraries

        quiet_libraries()
    return run


def cache_run(
    cache: Path | None, verbose: bool = False, quiet: bool = False, json_out: bool = False, create: bool = True
) -> Run:
    """The context of a command that only reads or writes the cache (no models, no method settings);
    `create=False` for commands that only read: a --cache that holds no cache is then an error."""
    from ..api import Pipeline

    pipe = Pipeline(RunConfig().preset, cache, create_cache=create)  # no model loads: the preset is never used
    return Run(
        pipe,
        console=make_console(stderr=json_out),
        err=make_console(stderr=True),
        verbose=verbose,
        quiet=quiet,
        json=json_out,
    )


def add_command(names: list[str], seed: int, specs, sample_cfg: SampleConfig, proto_cfg: ProtoConfig) -> str:
    """The `ovdiff protos add …` line that builds these classes under the same cache keys: seed, preset,
    extractor and mask proposer always; N, K and model sources where they differ from the preset's."""
    import shlex

    parts = [
        "ovdiff",
        "protos",
        "add",
        *(shlex.quote(n) for n in names),
        "--seed",
        str(seed),
        "--preset",
        specs.preset.name,
        "--extractor",
        proto_cfg.extractor,
        "--mask-proposer",
        proto_cfg.mask_proposer,
    ]
    if sample_cfg.n_images != specs.preset.sample.n_images:
        parts += ["--n-images", str(sample_cfg.n_images)]
    if proto_cfg.k_parts != specs.preset.protos.k_parts:
        parts += ["--k-parts", str(proto_cfg.k_parts)]
    if proto_cfg.proto_dtype != "fp32":
        parts += ["--proto-dtype", proto_cfg.proto_dtype]
    roles = ["sd", "clip", "dino"] + ([proto_cfg.mask_proposer] if proto_cfg.mask_proposer in ("sam", "cutler") else [])
    for role in roles:
        if specs.models.get(role) and specs.models[role] != specs.preset.models.get(role):
            option = "--mask-model" if role == "cutler" else f"--{role}-model"
            parts += [option, shlex.quote(specs.models[role])]
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
        return f"{flag(e.setting)} {e.detail}" + (f" ({flag(e.way_out)})" if e.way_out else "")
    if isinstance(e, errors.ModelLoadError):
        from ..models.weights import ROLE_OPTION

        option = ROLE_OPTION.get(e.role)
        fetch = f"{option} {shlex.quote(e.spec)}" if option else f"--extractor {e.role}"
        local = f"pass a local copy with {option} DIR, " if option else ""
        way_out = (
            f"{e}; or fetch them where there is network with: ovdiff models download {fetch}; or {local}"
            "run offline with --preset tiny / --preset procedural"
        )
        return way_out + ("; or use --mask-proposer ncut, which needs no extra weights" if e.role == "sam" else "")
    if isinstance(e, errors.MissingCheckpoint):
        return (
            f"the CutLER checkpoint {e.path} is not there: run `ovdiff models download` (fetches {e.url}), "
            "pass a local copy with --mask-model PATH, or choose --mask-proposer ncut"
        )
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
