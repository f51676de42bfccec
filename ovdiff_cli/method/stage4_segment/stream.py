"""Paper §3 "Segmentation via prototype matching" over a vocabulary of any size: prototypes read per image.

`assemble_vocabulary` holds every prototype of a vocabulary in memory. A `StreamedVocabulary` holds only
where each class's rows sit in that full bank (their counts, from the cache's records) and one number per
background prototype, its stuff score (`stuff_scores`: computed once per vocabulary by streaming the
classes a few at a time, and kept under the vocabulary's id, `vocabulary_id`). `restrict(keep)` reads
the arrays of the classes an image keeps (at most η things and the stuff classes) and returns the
`PrototypeBank` that `assemble_vocabulary(...).restrict(keep)` returns: the same rows in the same order,
with the same labels, indices and stuff scores, so the labels are the same bit for bit while memory
does not grow with the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import OvdiffError
from ...types import ClassPrototypes, VocabMemo
from .bank import NO_SCORE, PrototypeBank, Provenance

Read = Callable[[str], ClassPrototypes]  # a class part's id → its arrays (`engines.vocab.load_class`)
STUFF_BUDGET = 256 * 2**20  # bytes of stuff-class fg prototypes held at once while scoring the bg rows


@dataclass(frozen=True)
class Block:
    """The rows of one (group, class, kind) array in the full vocabulary: [start, start + n)."""

    group: str
    cls: int
    kind: str
    start: int
    n: int


def vocabulary_id(heads: list[ClassPrototypes], kinds: tuple[str, ...], groups: tuple[str, ...]) -> str:
    """The id of what `stuff_scores` depends on: each class part (id, kind, row counts, when it was written),
    in order, and the prototype kinds and groups in play."""
    from hashlib import sha256

    text = repr(([(h.pid, h.kind, sorted(h.rows.items()), h.stamp) for h in heads], kinds, groups))
    return sha256(text.encode("utf-8")).hexdigest()[:24]


def _unit_rows(a: np.ndarray) -> torch.Tensor:
    """(n,D) → float32 unit rows, computed as `assemble_vocabulary` normalises its bank (row by row)."""
    t = torch.from_numpy(np.array(a, dtype=np.float32, copy=True))
    return t.div_(t.norm(2, 1, keepdim=True).clamp_min(1e-12))


class StreamedVocabulary:
    """One part's vocabulary whose prototypes stay in the cache until an image keeps their class.

    heads: the classes' heads (`ClassPrototypes` with `rows` and no arrays), in vocabulary order; read:
    a class part's id → its arrays. The other arguments are `assemble_vocabulary`'s. memo: where the bg
    rows' stuff scores (`stuff_scores`) are kept under the vocabulary's id (a second run reads them).
    """

    bank = None  # like a full PrototypeBank, it is not cut from a larger one

    def __init__(
        self,
        heads: list[ClassPrototypes],
        read: Read,
        kinds: tuple[str, ...] = ("class", "instance", "part"),
        background: bool = True,
        stuff_filter: bool = True,
        stuff_threshold: float = 0.85,
        bg_threshold: float | None = None,
        memo: VocabMemo | None = None,
        device: torch.device | str = "cpu",
    ):
        if not heads:
            raise ValueError("a vocabulary needs at least one class")
        self.names = [h.name for h in heads]
        self.heads, self.read, self.kinds = heads, read, tuple(kinds)
        self.groups = ("bg", "fg") if background and bg_threshold is None else ("fg",)
        self.stuff_threshold = stuff_threshold if stuff_filter else None
        self.bg_threshold = bg_threshold if background else None
        self.device = torch.device(device)
        # the row counts and first rows of every (group, class, kind) array in the full vocabulary, as tables:
        # group-major, then class, then kind (stuff classes keep fg prototypes only); a few bytes a class
        counts = np.zeros((len(self.groups), len(heads), len(self.kinds)), np.int64)
        for ci, h in enumerate(heads):
            for gi, group in enumerate(self.groups):
                if group == "bg" and h.kind == "stuff":
                    continue
                counts[gi, ci] = [int(h.rows.get(f"{group}/{kind}", 0)) for kind in self.kinds]
        flat = counts.ravel()
        self._counts, self._first = counts, (np.cumsum(flat) - flat).reshape(counts.shape)
        self.size = int(flat.sum())
        self.n_bg = int(counts[self.groups.index("bg")].sum()) if "bg" in self.groups else 0
        if self.n_bg == self.size:
            raise ValueError("no foreground prototypes of the requested kinds in any class")
        self._blocks = np.flatnonzero(flat)  # the non-empty arrays, in row order
        self._starts = self._first.ravel()[self._blocks]
        self.stuff_sim = self._stuff_sim(memo)

    def _stuff_sim(self, memo: VocabMemo | None) -> torch.Tensor:
        if not any(h.kind == "stuff" for h in self.heads) or not self.n_bg:
            return torch.full((self.n_bg,), NO_SCORE)  # nothing to compare: nothing to read or keep
        vid = self.id()
        kept = memo.vocab_array(vid, "stuff_sim") if memo is not None else None
        if kept is not None and kept.shape == (self.n_bg,):
            return torch.from_numpy(np.array(kept, dtype=np.float32))
        sims = stuff_scores(self)
        if memo is not None:
            memo.put_vocab_array(vid, "stuff_sim", sims.numpy())
        return sims

    def __len__(self) -> int:
        return self.size

    def id(self) -> str:
        return vocabulary_id(self.heads, self.kinds, self.groups)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> StreamedVocabulary:
        """The banks `restrict` returns go to `device`; nothing else moves (there is nothing else to move)."""
        self.device = torch.device(device)
        return self

    def source(self, index: int) -> Provenance:
        """Provenance of the prototype at position `index` of the full vocabulary."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        j = int(np.searchsorted(self._starts, index, side="right")) - 1
        gi, ci, ki = np.unravel_index(self._blocks[j], self._counts.shape)
        return Provenance(int(ci), self.groups[gi], self.kinds[ki], index - int(self._starts[j]))

    def bg_classes(self) -> list[int]:
        """The classes with background rows (the thing classes), in vocabulary order."""
        if "bg" not in self.groups:
            return []
        return np.flatnonzero(self._counts[self.groups.index("bg")].sum(1)).tolist()

    def _arrays(self, ci: int, group: str, one: ClassPrototypes) -> Iterator[tuple[Block, np.ndarray]]:
        if group not in self.groups:
            return
        gi = self.groups.index(group)
        table = one.bg if group == "bg" else one.fg
        for ki, kind in enumerate(self.kinds):
            n = int(self._counts[gi, ci, ki])
            if not n:
                continue
            b = Block(group, ci, kind, int(self._first[gi, ci, ki]), n)
            a = table.get(b.kind)
            if a is None or a.shape[0] != b.n:
                raise OvdiffError(
                    f"class {self.names[ci]!r} changed in the cache while segmenting ({group}/{b.kind}): "
                    "start the run again"
                )
            yield b, a

    def restrict(self, keep: list[int]) -> PrototypeBank:
        """The bank of the classes `keep` (0-based), as `assemble_vocabulary(...).restrict(keep)` makes it:
        their fg prototypes and, as background, their bg prototypes that pass the stuff filter."""
        keep = sorted(set(keep))
        read = {ci: self.read(self.heads[ci].pid) for ci in keep}  # only the kept classes' arrays
        rows: list[torch.Tensor] = []
        index: list[torch.Tensor] = []
        sims: list[torch.Tensor] = []
        prov: list[Provenance] = []
        owners: list[int] = []
        for group in self.groups:
            for ci in keep:
                for b, a in self._arrays(ci, group, read[ci]):
                    sel = torch.arange(b.n)
                    if group == "bg":
                        sim = self.stuff_sim[b.start : b.start + b.n]
                        if self.stuff_threshold is not None:
                            sel = torch.nonzero(sim <= self.stuff_threshold).flatten()
                        sim = sim[sel]
                    else:
                        sim = torch.full((len(sel),), NO_SCORE)
                    if not len(sel):
                        continue
                    rows.append(_unit_rows(a)[sel])
                    index.append(b.start + sel)
                    sims.append(sim)
                    prov += [Provenance(ci, group, b.kind, r) for r in sel.tolist()]
                    owners += [0 if group == "bg" else ci + 1] * len(sel)
        del read
        labels = sorted(set(owners) | ({0} if self.bg_threshold is not None else set()))
        pos = {lab: i for i, lab in enumerate(labels)}
        dim = next((r.shape[1] for r in rows), 1)
        dev = self.device
        return PrototypeBank(
            self.names,
            (torch.cat(rows) if rows else torch.zeros(0, dim)).to(dev),
            torch.tensor([pos[o] for o in owners], dtype=torch.long, device=dev),
            labels,
            prov,
            (torch.cat(index) if index else torch.zeros(0, dtype=torch.long)).to(dev),
            (torch.cat(sims) if sims else torch.zeros(0)).to(dev),
            self.stuff_threshold,
            self.bg_threshold,
        )


def stuff_scores(vocab: StreamedVocabulary) -> torch.Tensor:
    """(n_bg,) float32: each bg prototype's best cosine to any stuff class's fg prototype (NO_SCORE without
    stuff classes or bg rows), as `assemble_vocabulary` computes it, reading the classes from the cache:
    the stuff classes' fg prototypes a budget's worth at a time, and for each such batch the thing
    classes' bg rows once, gathered into blocks of a budget's size (one product per block and stuff
    class), so memory stays within twice `STUFF_BUDGET` whatever the vocabulary."""
    out = torch.full((vocab.n_bg,), NO_SCORE)
    stuff = [ci for ci, h in enumerate(vocab.heads) if h.kind == "stuff"]
    things = vocab.bg_classes()
    if vocab.n_bg == 0 or not stuff or not things:
        return out
    batch: list[torch.Tensor] = []
    held = 0
    for j, ci in enumerate(stuff):
        one = vocab.read(vocab.heads[ci].pid)
        arrs = [np.asarray(one.fg[k], np.float32) for k in vocab.kinds if k in one.fg and np.size(one.fg[k])]
        if arrs:
            fg = F.normalize(torch.from_numpy(np.concatenate(arrs)).float(), dim=1)
            batch.append(fg)
            held += fg.numel() * 4
        if batch and (held >= STUFF_BUDGET or j == len(stuff) - 1):
            for rows, bg in _bg_blocks(vocab, things):
                for fg in batch:
                    out[rows] = torch.maximum(out[rows], (bg @ fg.T).max(dim=1).values)
            batch, held = [], 0
    return out


def _bg_blocks(vocab: StreamedVocabulary, things: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows in the bg numbering, their unit rows) of the thing classes' bg prototypes, a budget at a time."""
    rows: list[torch.Tensor] = []
    blocks: list[torch.Tensor] = []
    held = 0
    for n, ci in enumerate(things):
        for b, a in vocab._arrays(ci, "bg", vocab.read(vocab.heads[ci].pid)):
            blocks.append(F.normalize(_unit_rows(a), dim=1))
            rows.append(torch.arange(b.start, b.start + b.n))
            held += blocks[-1].numel() * 4
        if blocks and (held >= STUFF_BUDGET or n == len(things) - 1):
            yield torch.cat(rows), torch.cat(blocks)
            rows, blocks, held = [], [], 0
