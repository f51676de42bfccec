"""Errors a user can act on, typed: each carries the fields of what went wrong.

The library's messages name settings as the config dataclasses do (`n_images`) and never a command
line; the CLI (`cli/common.phrase`) turns the fields into its own options and the next command.
"""

from __future__ import annotations

from typing import Any


class OvdiffError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class CacheError(OvdiffError):
    """The cache cannot be opened or written (version, disk, permissions)."""


class InvalidSetting(OvdiffError):
    """A setting that cannot work. setting: its config field name (`n_images`, `extractor`, `device`);
    detail: the rest of the sentence, which starts with the setting's name; way_out: another setting
    that resolves it, named after the sentence (the CLI names its option there instead)."""

    def __init__(self, setting: str, detail: str, way_out: str | None = None):
        super().__init__(f"{setting} {detail}" + (f" (setting {way_out})" if way_out else ""))
        self.setting, self.detail, self.way_out = setting, detail, way_out


class ModelLoadError(OvdiffError):
    """Model weights could not be loaded. role: "sd", "clip", "dino", "mae" or "sam"; repo: the hub
    repository to download for a local copy (None: the spec itself)."""

    def __init__(self, model: str, role: str, spec: str, cause: Exception, repo: str | None = None):
        why = " ".join(str(cause).split()) or type(cause).__name__  # whole, on one line: offline errors say what to do
        super().__init__(
            f"cannot load {model} weights '{spec}' ({type(cause).__name__}: {why}); download them once where "
            f"there is network (hf download {repo or spec} --local-dir DIR) and use the local copy"
        )
        self.model, self.role, self.spec, self.repo = model, role, spec, repo


class MissingCheckpoint(OvdiffError):
    """CutLER's checkpoint (the `cutler` mask proposer's weights) is not on disk; nothing falls back silently."""

    def __init__(self, path: str, url: str):
        super().__init__(
            f"the CutLER checkpoint {path} is not there; fetch it with: ovdiff models download (from {url}), "
            "give a local copy as the cutler model, or choose mask_proposer ncut (no extra weights)"
        )
        self.path, self.url = path, url


class MissingClasses(OvdiffError):
    """Classes asked for without building (build=False) that are not cached under these settings.

    names: the normalised names; settings: what keys them (seed, model specs, sample and proto configs).
    """

    def __init__(self, names: list[str], seed: int, specs: Any, sample_cfg: Any, proto_cfg: Any):
        self.plain = (
            f"no prototypes cached for {', '.join(map(repr, names))} with extractor {proto_cfg.extractor}, "
            f"seed {seed}, preset {specs.preset.name}"
        )
        super().__init__(self.plain)
        self.names, self.seed, self.specs, self.sample_cfg, self.proto_cfg = names, seed, specs, sample_cfg, proto_cfg

    def way_out(self, how: str) -> MissingClasses:
        """This error, its message followed by `how` to build the classes (the caller's words for it)."""
        self.args = (f"{self.plain}; {how}",)
        return self


class NoSupportSet(OvdiffError):
    """No support image of a class is cached for this seed and these sampler settings and models."""

    def __init__(self, name: str, seed: int, preset: str):
        super().__init__(f"no support set of {name!r} (seed {seed}, preset {preset}) in this cache")
        self.name, self.seed, self.preset = name, seed, preset


class IncompleteSupportSet(OvdiffError):
    """A support set holds fewer images than asked for."""

    def __init__(self, sid: str, name: str, have: int, need: int):
        super().__init__(f"support set {sid} of {name!r} holds {have} of {need} images")
        self.sid, self.name, self.have, self.need = sid, name, have, need


class ClassNotFound(OvdiffError):
    """No cached class matches a name or id (with the seed / extractor filters given, if any)."""

    def __init__(self, target: str, seed: int | None = None, extractor: str | None = None):
        filters = "".join(
            [f", seed {seed}" if seed is not None else "", f", extractor {extractor}" if extractor else ""]
        )
        super().__init__(f"no cached class matches {target!r}{filters}")
        self.target, self.seed, self.extractor = target, seed, extractor


class NoImagesFound(OvdiffError):
    """Inputs that hold no image; recursive: whether subfolders were searched."""

    def __init__(self, inputs: list[str], recursive: bool):
        super().__init__(
            f"no images found in {', '.join(inputs)}" + ("" if recursive else " (subfolders not searched)")
        )
        self.inputs, self.recursive = inputs, recursive


class SupportImagesMissing(OvdiffError):
    """A cached class whose support images are not in the cache (imported prototypes carry none, and
    `cache verify --repair` keeps a class whose broken support images it removed)."""

    def __init__(self, name: str, seed: int, preset: str | None):
        super().__init__(
            f"the support images of {name!r} are not in this cache (imported prototypes carry none; "
            "a repair removes broken ones)"
        )
        self.name, self.seed, self.preset = name, seed, preset


class MissingLibrary(OvdiffError):
    """An optional library a call needs is not installed. package: what to pip install; call: the caller."""

    def __init__(self, package: str, call: str):
        super().__init__(f"{call} needs the optional package {package}: pip install {package}")
        self.package, self.call = package, call


class RemoteInput(OvdiffError):
    """An image given as a URL: ovdiff reads local files only (it never downloads)."""

    def __init__(self, url: str):
        super().__init__(
            f"{url} is a URL: ovdiff reads local images only; download it first (e.g. curl -O URL) "
            "and give the file, a PIL image or an array"
        )
        self.url = url


class LongNameWarning(UserWarning):
    """A class name that does not fit the text encoder's context; the CLI prints it as one line."""
