"""The two large-vocabulary benchmarks' class lists, kept as package data (one name a line).

- ade847.tsv: ADE20K-full's 847 classes (A-847), `<ADE object id>\\t<name>` in label order: line k is
  label k of the detectron2 label maps. The list and the ids are Mask2Former's
  `ADE20K_SEM_SEG_FULL_CATEGORIES` (register_ade20k_full.py; its prepare_ade20k_full_sem_seg.py maps
  ADE20K_2021_17_01's `*_seg.png` object ids through them), as SAN, CAT-Seg and ODISE use it. Names
  are WordNet synonym sets ("building, edifice").
- pc459.txt: PASCAL Context's 459 classes (PC-459), the dataset's own labels.txt in order: line k is
  LabelMap value k+1, i.e. label k of the detectron2 label maps (CAT-Seg's prepare_pascal_context_459.py,
  ODISE's prepare_pascal_ctx_full_sem_seg.py).

Neither list has a thing/stuff answer from the OVDiff authors: their classes are classified by ovdiff's
stuff table, as a vocabulary of one's own is (`KIND_LISTS["table"]`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_HERE = Path(__file__).parent


@cache
def ade847_rows() -> tuple[tuple[int, str], ...]:
    """(ADE object id, full synonym-set name) of each A-847 class, in label order."""
    rows = []
    for line in (_HERE / "ade847.tsv").read_text(encoding="utf-8").splitlines():
        ade_id, name = line.split("\t")
        rows.append((int(ade_id), name))
    return tuple(rows)


@cache
def pc459_names() -> tuple[str, ...]:
    """PC-459's names as its labels.txt spells them, in label order."""
    return tuple(ln for ln in (_HERE / "pc459.txt").read_text(encoding="utf-8").splitlines() if ln)


def short_names(synsets: tuple[str, ...]) -> list[str]:
    """One prompt per synonym set: its first word, or, where another set starts with the same word,
    "first (second)" ("pot (flowerpot)" beside "pot"), so that no two classes share a prompt."""
    first = [s.split(",")[0].strip() for s in synsets]
    counts: dict[str, int] = {}
    for f in first:
        counts[f] = counts.get(f, 0) + 1
    out = []
    for f, s in zip(first, synsets, strict=True):
        words = [w.strip() for w in s.split(",")]
        out.append(f if counts[f] == 1 or len(words) == 1 else f"{f} ({words[1]})")
    return out
