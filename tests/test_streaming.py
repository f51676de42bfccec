"""A vocabulary read per image. A `StreamedVocabulary` over heads reads only the classes an image
keeps and gives the bank, and so the labels, of the vocabulary held in memory, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ovdiff_cli.method.stage4_segment.bank import assemble_vocabulary
from ovdiff_cli.method.stage4_segment.stream import StreamedVocabulary
from ovdiff_cli.types import ClassPrototypes

STUFF = {3, 7, 10}


def _classes(n: int, dim: int = 24, seed: int = 0) -> list[ClassPrototypes]:
    """Random classes with uneven row counts (a kind missing here and there), some of them stuff."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = {"class": 1, "instance": int(rng.integers(0, 5)), "part": int(rng.integers(1, 6))}
        fg = {k: rng.standard_normal((r, dim)).astype(np.float32) for k, r in rows.items() if r or k != "instance"}
        bg = {} if i in STUFF else {k: rng.standard_normal((r + 1, dim)).astype(np.float32) for k, r in rows.items()}
        out.append(ClassPrototypes(f"c{i}", "stuff" if i in STUFF else "thing", fg, bg, pid=f"pid{i}"))
    return out


def _head(c: ClassPrototypes) -> ClassPrototypes:
    rows = {f"{g}/{k}": a.shape[0] for g, t in (("fg", c.fg), ("bg", c.bg)) for k, a in t.items()}
    return ClassPrototypes(c.name, c.kind, {}, {}, pid=c.pid, rows=rows, stamp="t0")


class Reader:
    """A cache stand-in that counts which class parts are read."""

    def __init__(self, classes: list[ClassPrototypes]):
        self.by_pid = {c.pid: c for c in classes}
        self.reads: list[str] = []

    def __call__(self, pid: str) -> ClassPrototypes:
        self.reads.append(pid)
        return self.by_pid[pid]


class Memo:
    def __init__(self):
        self.arrays: dict[tuple[str, str], np.ndarray] = {}

    def vocab_array(self, vid: str, name: str) -> np.ndarray | None:
        return self.arrays.get((vid, name))

    def put_vocab_array(self, vid: str, name: str, array: np.ndarray) -> None:
        self.arrays[(vid, name)] = np.array(array)


SETTINGS = [
    {},  # the paper: bg prototypes, stuff filter at 0.85
    {"stuff_threshold": 0.1},  # the filter drops rows (random rows' cosines are small)
    {"stuff_filter": False},
    {"background": False},
    {"bg_threshold": 0.3},  # w/o bg prototypes
    {"kinds": ("class", "part")},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_a_streamed_restriction_is_the_full_one_bit_for_bit_reading_only_the_kept_classes(settings):
    classes = _classes(14)
    full = assemble_vocabulary(classes, **settings)
    reader = Reader(classes)
    streamed = StreamedVocabulary([_head(c) for c in classes], reader, **settings)
    stuff_reads = len(reader.reads)
    assert len(streamed) == len(full.bank or full)
    assert torch.equal(streamed.stuff_sim, (full.bank or full).stuff_sim[: streamed.n_bg])
    for keep in ([0, 3], [1, 2, 5, 10, 13], [7], list(range(14)), [4, 4, 2]):
        reader.reads.clear()
        want, got = full.restrict(keep), streamed.restrict(keep)
        assert sorted(reader.reads) == sorted({f"pid{i}" for i in keep})  # the kept classes, once each
        assert torch.equal(got.protos, want.protos)  # the same rows, order and values: the same cosines
        assert torch.equal(got.owner, want.owner) and got.labels == want.labels
        assert torch.equal(got.index, want.index) and torch.equal(got.stuff_sim, want.stuff_sim)
        assert got.provenance == want.provenance
        assert (got.stuff_threshold, got.bg_threshold) == (want.stuff_threshold, want.bg_threshold)
    for i in range(len(streamed)):  # --explain's numbering: the full vocabulary's
        assert streamed.source(i) == full.source(i)
    if settings.get("background", True) and "bg_threshold" not in settings:
        assert stuff_reads > 0  # the stuff scores were computed by reading the classes


def test_stuff_scores_are_computed_once_per_vocabulary_and_kept_under_its_id():
    classes = _classes(12)
    memo, first, second = Memo(), Reader(classes), Reader(classes)
    a = StreamedVocabulary([_head(c) for c in classes], first, memo=memo)
    assert first.reads and len(memo.arrays) == 1
    b = StreamedVocabulary([_head(c) for c in classes], second, memo=memo)
    assert second.reads == [] and torch.equal(a.stuff_sim, b.stuff_sim)  # a second run reads no class
    rewritten = [_head(c) for c in classes]
    rewritten[5].stamp = "t1"  # a class written again under its id is another vocabulary
    StreamedVocabulary(rewritten, Reader(classes), memo=memo)
    assert len(memo.arrays) == 2


def test_stuff_scores_in_budget_sized_batches_equal_one_batch(monkeypatch):
    import ovdiff_cli.method.stage4_segment.stream as stream

    classes = _classes(12)
    whole = StreamedVocabulary([_head(c) for c in classes], Reader(classes)).stuff_sim
    monkeypatch.setattr(stream, "STUFF_BUDGET", 1)  # one stuff class at a time
    reader = Reader(classes)
    batched = StreamedVocabulary([_head(c) for c in classes], reader).stuff_sim
    assert torch.equal(whole, batched)
    things = sum(1 for c in classes if c.kind == "thing")
    assert len(reader.reads) == len(STUFF) * (1 + things)  # each batch of stuff reads every thing once
    monkeypatch.setattr(stream, "STUFF_BUDGET", 10**9)
    reader = Reader(classes)
    assert torch.equal(StreamedVocabulary([_head(c) for c in classes], reader).stuff_sim, whole)
    assert len(reader.reads) == len(STUFF) + things  # one batch: every class read once


def test_a_class_changed_under_the_run_is_one_clear_error():
    from ovdiff_cli.errors import OvdiffError

    classes = _classes(5)
    heads = [_head(c) for c in classes]
    classes[2].fg["part"] = classes[2].fg["part"][:1]
    with pytest.raises(OvdiffError, match="'c2' changed in the cache"):
        StreamedVocabulary(heads, Reader(classes)).restrict([2])


def _select_reference(image_emb, class_embs, eta):
    """The filter's step 1 as a Python loop over the classes (what `select_classes` computed before issue 38)."""
    scores = class_embs.float() @ image_emb.float()
    probs = scores.softmax(0)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    passed = [i for i in range(len(order)) if probs[i] >= 1.0 / len(order)]
    if not passed:
        return order[:eta]
    if len(passed) <= eta:
        return passed
    keep = set(passed)
    return [i for i in order if i in keep][:eta]


@pytest.mark.parametrize("n", [3, 50, 10_000])
def test_the_filter_step_over_a_large_vocabulary_is_the_loop_it_replaces(n):
    from ovdiff_cli.method.stage3_filter.prefilter import select_classes

    g = torch.Generator().manual_seed(n)
    embs = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    for _ in range(4):
        image = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
        for eta in (1, 4, 10, n + 1):
            assert select_classes(image, embs, eta) == _select_reference(image, embs, eta)
    flat = torch.zeros(n, 16)  # every class equally likely: all pass, ties in class order
    flat[:, 0] = 1
    assert select_classes(torch.eye(16)[0], flat, 3) == _select_reference(torch.eye(16)[0], flat, 3) == [0, 1, 2][:n]


def test_a_cold_large_vocabulary_encodes_its_prompts_in_batches_with_a_progress_line(capsys, monkeypatch):
    import ovdiff_cli.method.stage3_filter.prefilter as prefilter

    class Scorer:
        calls: list[int] = []

        def identity(self) -> str:
            return "toy"

        def encode_texts(self, prompts):
            self.calls.append(len(prompts))
            return torch.nn.functional.normalize(torch.randn(len(prompts), 8), dim=1)

    monkeypatch.setattr(prefilter, "ENCODE_BATCH", 40)
    scorer = Scorer()
    prefilter.CategoryFilter(scorer, None, [f"thing {i}" for i in range(100)], eta=3)
    assert scorer.calls == [40, 40, 20]
    err = capsys.readouterr().err
    assert "encoded 40/100 class prompts" in err and "encoded 100/100" in err
