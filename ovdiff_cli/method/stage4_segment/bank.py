"""Paper §3 "Segmentation via prototype matching" (App. C.5): the prototypes in play, one bank per feature space.

A `PrototypeBank` holds every prototype of the classes in play in one feature space (one extractor part) with its
label: the foreground prototypes of class k get label k (its 1-based position in the class list), and the
background label 0 owns the union of the things' background prototypes that survive the "stuff" filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ...types import ClassPrototypes

NO_SCORE = -2.0  # below any cosine: a label without prototypes never wins
STUFF_CHUNK = 65536  # bg prototypes compared with the stuff classes at a time (~2 GiB at D=7680)


@dataclass(frozen=True)
class Provenance:
    """Where a prototype came from: class `cls` (0-based), "fg" or "bg", its kind and row."""

    cls: int
    group: str
    kind: str
    row: int


@dataclass
class PrototypeBank:
    """The prototypes in play, grouped by label.

    protos: (P,D) float32 unit rows, sorted by `owner`; owner: (P,) int64 index into `labels`;
    labels: the label of each local label index (0 = background, k = names[k-1]); index: (P,) int64
    position of each prototype in the full vocabulary (what --explain reports); stuff_sim: (P,)
    float32, a bg prototype's best cosine to any stuff class's fg prototype (NO_SCORE for fg rows
    and without stuff classes): one number per row, not one per class, so a vocabulary of a
    thousand classes does not hold a (P, classes) table; bg_threshold: when set, background
    is scored by this constant instead of prototypes (paper A.2, "w/o bg prototypes"); bank: the
    full vocabulary a restricted one was cut from (`index` points into it).
    """

    names: list[str]
    protos: torch.Tensor
    owner: torch.Tensor
    labels: list[int]
    provenance: list[Provenance]
    index: torch.Tensor
    stuff_sim: torch.Tensor
    stuff_threshold: float | None = 0.85
    bg_threshold: float | None = None
    bank: PrototypeBank | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.protos.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> PrototypeBank:
        bank = None if self.bank is None else self.bank.to(device, dtype)
        shared = bank is not None and self.bank.protos is self.protos  # every row kept: one copy on the device too
        return replace(
            self,
            protos=bank.protos if shared else self.protos.to(device, dtype),
            owner=self.owner.to(device),
            index=self.index.to(device),
            stuff_sim=self.stuff_sim.to(device),
            bank=bank,
        )

    def source(self, index: int) -> Provenance:
        """Provenance of the prototype at position `index` of the full vocabulary."""
        return (self.bank or self).provenance[index]

    def restrict(self, keep: list[int]) -> PrototypeBank:
        """Only the classes `keep` (0-based): their fg prototypes and, as background, their bg
        prototypes that pass the stuff filter, which is computed once against every stuff class
        of the vocabulary (as the authors do), whichever classes an image keeps."""
        if self.bank is not None:
            return self.bank.restrict(keep)
        cols = torch.tensor(sorted(set(keep)), dtype=torch.long, device=self.protos.device)
        in_keep = torch.zeros(len(self.names), dtype=torch.bool, device=self.protos.device)
        in_keep[cols] = True
        owner_cls = torch.tensor([p.cls for p in self.provenance], dtype=torch.long, device=self.protos.device)
        rows = in_keep[owner_cls]
        if self.stuff_threshold is not None:
            rows &= self.stuff_sim <= self.stuff_threshold
        sel = torch.nonzero(rows).flatten()
        old_labels = [self.labels[o] for o in self.owner[sel].tolist()]
        labels = sorted(set(old_labels) | ({0} if self.bg_threshold is not None else set()))
        pos = {lab: i for i, lab in enumerate(labels)}
        every = len(sel) == len(self)  # rows stay sorted: the same tensors, not a second copy of the prototypes
        return PrototypeBank(
            self.names,
            self.protos if every else self.protos[sel],
            torch.tensor([pos[lab] for lab in old_labels], dtype=torch.long, device=self.protos.device),
            labels,
            [self.provenance[i] for i in sel.tolist()],
            self.index if every else self.index[sel],
            self.stuff_sim if every else self.stuff_sim[sel],
            self.stuff_threshold,
            self.bg_threshold,
            self,
        )


def assemble_vocabulary(
    classes: list[ClassPrototypes],
    kinds: tuple[str, ...] = ("class", "instance", "part"),
    background: bool = True,
    stuff_filter: bool = True,
    stuff_threshold: float = 0.85,
    bg_threshold: float | None = None,
) -> PrototypeBank:
    """The vocabulary of `classes`: fg prototypes of the given kinds, plus a background label.

    background=False labels every pixel with a named class (paper A.3). With `bg_threshold`, the
    background is every pixel whose best fg similarity is below it, and no bg prototypes are used.
    Otherwise the background owns the bg prototypes of the thing classes; stuff classes keep fg
    prototypes only, and with `stuff_filter` a thing's bg prototype is dropped when its cosine
    to any stuff class's fg prototype exceeds `stuff_threshold` (all stuff classes of `classes`,
    whichever an image keeps).
    """
    if not classes:
        raise ValueError("a vocabulary needs at least one class")
    dim = _dim(classes)
    prov: list[Provenance] = []
    blocks: list[np.ndarray] = []
    for group in ("bg", "fg") if background and bg_threshold is None else ("fg",):
        for ci, c in enumerate(classes):
            if group == "bg" and c.kind == "stuff":
                continue  # stuff classes keep fg prototypes only
            table = c.bg if group == "bg" else c.fg
            for kind in kinds:
                arr = np.asarray(table.get(kind, np.zeros((0, dim))), np.float32).reshape(-1, dim)
                prov += [Provenance(ci, group, kind, r) for r in range(arr.shape[0])]
                blocks.append(arr)
    owners = [0 if p.group == "bg" else p.cls + 1 for p in prov]
    if not any(owners):
        raise ValueError("no foreground prototypes of the requested kinds in any class")
    protos = torch.from_numpy(np.concatenate(blocks))
    del blocks
    # F.normalize in place (the same values): one copy of the prototypes, not two
    protos.div_(protos.norm(2, 1, keepdim=True).clamp_min(1e-12))
    stuff_sim = torch.full((len(prov),), NO_SCORE)
    stuff_fg = [
        F.normalize(fg.float(), dim=1) for c in classes if c.kind == "stuff" and (fg := _stack([c.fg], kinds)).shape[0]
    ]
    bg_rows = torch.nonzero(torch.tensor([p.group == "bg" for p in prov])).flatten()
    for start in range(
        0, len(bg_rows) if stuff_fg else 0, STUFF_CHUNK
    ):  # a block of bg rows at a time, never a copy of all
        rows = bg_rows[start : start + STUFF_CHUNK]
        bg = F.normalize(protos[rows], dim=1)
        for fg in stuff_fg:
            stuff_sim[rows] = torch.maximum(stuff_sim[rows], (bg @ fg.T).max(dim=1).values)
    labels = sorted(set(owners) | ({0} if background and bg_threshold is not None else set()))
    pos = {lab: i for i, lab in enumerate(labels)}
    full = PrototypeBank(
        [c.name for c in classes],
        protos,
        torch.tensor([pos[o] for o in owners], dtype=torch.long),
        labels,
        prov,
        torch.arange(len(prov)),
        stuff_sim,
        stuff_threshold if stuff_filter else None,
        bg_threshold if background else None,
    )
    return full.restrict(list(range(len(classes))))


def _dim(classes: list[ClassPrototypes]) -> int:
    for c in classes:
        for arr in c.fg.values():
            if np.ndim(arr) == 2 and np.shape(arr)[0]:
                return int(np.shape(arr)[1])
    raise ValueError("no foreground prototypes in any class")


def _stack(tables: list[dict[str, np.ndarray]], kinds: tuple[str, ...]) -> torch.Tensor:
    arrs = [np.asarray(t[k], np.float32) for t in tables for k in kinds if k in t and np.size(t[k])]
    if not arrs:
        return torch.zeros(0, 1)
    return torch.from_numpy(np.concatenate(arrs))
