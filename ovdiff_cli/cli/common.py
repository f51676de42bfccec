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

from ..config import ProtoConfig, SampleConfig
from ..errors import OvdiffError
from .options import flag
from .output import LogProgress, make_console

if TYPE_CHECKING:
    from ..api import Catalogue, ModelOptions, Pipeline


@dataclass
class Out:
    """Where and how a command prints: results on stdout (stderr with --json), progress and errors on stderr."""

    console: Console
    err: Console
    verbose: bool = False
    quiet: bool = False
    json: bool = False

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


class Run(Out):
    """What one command invocation works with: the library's session (`api.Pipeline`: settings resolved
    and checked, cache and models opened lazily) and where and how the command prints."""

    def __init__(self, pipe: Pipeline, out: Out):
        super().__init__(out.console, out.err, out.verbose, out.quiet, out.json)
        self.pipe = pipe


def printer(verbose: bool = False, quiet: bool = False, json_out: bool = False) -> Out:
    """How a command prints; json_out: stdout is kept for one JSON document, so tables and messages go to stderr."""
    return Out(make_console(stderr=json_out), make_console(stderr=True), verbose, quiet, json_out)


def make_run(
    cache: Path | None,
    preset: str | None,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    verbose: bool = False,
    quiet: bool = False,
    models: ModelOptions | None = None,
    sample: dict | None = None,
    protos: dict | None = None,
    segment: dict | None = None,
    json_out: bool = False,
) -> Run:
    """The session of a command: `api.Pipeline` over the options the user gave (None: the preset's), every
    setting checked by the library as it is made, before any progress bar or model starts.

    json_out: stdout is kept for one JSON document, so tables and messages go to stderr.
    """
    from ..api import Pipeline, quiet_libraries

    pipe = Pipeline(preset, cache, device, dtype, seed, models, sample, protos, segment)
    if quiet:
        quiet_libraries()
    return Run(pipe, printer(verbose, quiet, json_out))


def catalogue_run(
    cache: Path | None, verbose: bool = False, quiet: bool = False, json_out: bool = False, create: bool = False
) -> tuple[Catalogue, Out]:
    """The catalogue of a command that only reads or writes the cache (no preset, no models); a --cache
    that holds no cache is an error unless `create`."""
    from ..api import Catalogue

    return Catalogue(cache, create=create), printer(verbose, quiet, json_out)


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
    from ..api import ModelOptions

    proposer = [proto_cfg.mask_proposer] if proto_cfg.mask_proposer in ("sam", "cutler") else []
    roles = ["sd", "clip", "dino", *proposer, "generator", "filter"]
    for role in roles:  # each option made from the library's table of model roles
        if specs.models.get(role) and specs.models[role] != specs.preset.models.get(role):
            parts += [flag(ModelOptions.setting_of(role)), shlex.quote(specs.models[role])]
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
        from ..api import ModelOptions

        setting = ModelOptions.setting_of(e.role)
        if setting == "part_model":  # an extractor family: --part-model PART=SPEC
            fetch, local = f"--part-model {shlex.quote(f'{e.role}={e.spec}')}", f"--part-model {e.role}=DIR"
        elif setting in {name for name, _, _ in ModelOptions.table()}:
            fetch, local = f"{flag(setting)} {shlex.quote(e.spec)}", f"{flag(setting)} DIR"
        else:
            fetch, local = f"--extractor {e.role}", None
        local = f"pass a local copy with {local}, " if local else ""
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
