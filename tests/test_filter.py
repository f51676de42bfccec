"""The category pre-filter: the scoring rule, the η cap, the subset choice, and the text-embedding cache."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovdiff_cli.method.stage3_filter.prefilter import (
    CategoryFilter,
    best_subset,
    select_classes,
    subset_prompt,
    subsets,
)
from ovdiff_cli.store.cache import Cache

E = 8


def emb(*v: float) -> torch.Tensor:
    return F.normalize(torch.tensor(v + (0.0,) * (E - len(v))), dim=0)


def test_scoring_rule_is_softmax_of_raw_cosines_against_one_over_c():
    image = emb(1, 1, 0.2)
    classes = torch.stack([emb(1), emb(0, 1), emb(0, 0, 1), emb(0, 0, 0, 1)])
    # cosines .70 .70 .14 0: with CLIP's logit scale (100) only the first two would pass, but
    # unscaled probabilities are .32 .32 .18 .16 against 1/4
    assert select_classes(image, classes, eta=10) == [0, 1]
    cos = classes @ image
    assert torch.allclose(cos.softmax(0)[:2], torch.full((2,), 0.32), atol=0.01)


def test_eta_caps_the_candidates_to_the_best_scores():
    image = emb(1, 0.9, 0.8, 0.7, 0.1, 0.1)
    classes = torch.stack([emb(*([0] * i + [1])) for i in range(6)])
    assert select_classes(image, classes, eta=10) == [0, 1, 2, 3]
    assert select_classes(image, classes, eta=2) == [0, 1]
    assert select_classes(image, classes, eta=1) == [0]


def test_subsets_in_candidate_order_and_best_subset_choice():
    assert subsets([3, 1]) == [[3], [1], [3, 1]]  # the candidates' order, as given
    assert len(subsets(list(range(5)))) == 31
    assert subset_prompt(["kite", "sky"]) == "a kite and a sky"
    image = emb(1, 1, 0, 0)
    prompts = torch.stack([emb(1), emb(0, 1), emb(0, 0, 1), emb(1, 1), emb(1, 0, 1), emb(0, 1, 1), emb(1, 1, 1)])
    assert best_subset(image, [0, 1, 2], prompts) == [0, 1]


class StubScorer:
    """Texts embed by the classes they name; an image shows class i by a white i-th block in its top row."""

    names = ["cat", "dog", "sky", "car"]

    def __init__(self):
        self.text_calls = 0
        self.encoded: list[str] = []

    def identity(self) -> str:
        return "stub/v1"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        present = images[:, 0, 28, 28::56][:, : len(self.names)] > 0.5  # 56-px blocks of the top row
        return F.normalize(torch.cat([present.float(), torch.zeros(len(images), E - len(self.names))], 1) + 1e-4, dim=1)

    def encode_texts(self, prompts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        self.encoded += prompts
        out = []
        for p in prompts:
            v = torch.zeros(E)
            for i, n in enumerate(self.names):
                if f"a {n}" in p.split(" and "):
                    v[i] = 1
            out.append(F.normalize(v, dim=0))
        return torch.stack(out)


def image_with(present: list[int]) -> np.ndarray:
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, present, :] = 255
    return np.repeat(np.repeat(img, 56, 0), 56, 1)


def test_category_filter_keeps_the_present_classes_and_caches_text(cache_dir):
    cache = Cache(cache_dir)
    scorer = StubScorer()
    f = CategoryFilter(scorer, cache, StubScorer.names, eta=3, size=224)
    assert f.select(image_with([0, 2])) == [0, 2]
    first = scorer.text_calls
    assert first == 2  # the class prompts, then the subset prompts
    assert f.select(image_with([0, 2])) == [0, 2]
    assert scorer.text_calls == first  # memory
    fresh = StubScorer()
    again = CategoryFilter(fresh, Cache(cache_dir), StubScorer.names, eta=3, size=224)
    assert again.select(image_with([0, 2])) == [0, 2]
    assert fresh.text_calls == 0  # every prompt came from the LMDB cache
    again.select(image_with([1, 3]))
    assert fresh.encoded and all(" and " in p or p in ("a dog", "a car") for p in fresh.encoded)
    assert "a dog and a car" in fresh.encoded and "a cat and a sky" not in fresh.encoded


def test_clip_scorer_truncated_context_equals_open_clip_encode_text(tiny_stages):
    """Cutting the context to the longest prompt is exact (causal mask, end-token pooling)."""
    scorer = tiny_stages.scorer()
    model = scorer.clip.model
    assert model.text_pool_type == "argmax" and model.attn_mask is not None  # the truncating path runs
    prompts = ["a cat", "a chocolate glazed donut and a sky", "a dog and a cat and a potted plant"]
    with torch.no_grad():
        want = F.normalize(model.encode_text(scorer.clip.tokenizer(prompts)).float(), dim=-1)
    torch.testing.assert_close(scorer.encode_texts(prompts, batch=2), want, rtol=1e-4, atol=1e-5)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = F.normalize(model.encode_image((x - scorer.mean) / scorer.std).float(), dim=-1)
    torch.testing.assert_close(scorer.encode_images(x), ref)


def test_a_vocabularys_class_prompts_are_kept_whole_and_read_in_one_piece(cache_dir):
    """A second run over the same names reads the (C,E) matrix under the vocabulary's id: no prompt is looked up
    one by one (10,000 reads for a large vocabulary) and none is encoded; the choices are the same."""
    from ovdiff_cli.method.stage3_filter.prefilter import class_text_id
    from ovdiff_cli.store.protos import VocabArrays

    class CountingCache(Cache):
        looked_up = 0

        def text_embeddings(self, fingerprint, prompts):
            CountingCache.looked_up += len(prompts)
            return super().text_embeddings(fingerprint, prompts)

    first = CategoryFilter(StubScorer(), Cache(cache_dir), StubScorer.names, eta=3, vocab=VocabArrays(Cache(cache_dir)))
    prompts = [f"a {n}" for n in StubScorer.names]
    kept = VocabArrays(Cache(cache_dir)).vocab_array(class_text_id("stub/v1", prompts), "class_text")
    assert kept is not None and np.array_equal(kept, first.text_embeddings(prompts).numpy())
    fresh, cache = StubScorer(), CountingCache(cache_dir)
    again = CategoryFilter(fresh, cache, StubScorer.names, eta=3, vocab=VocabArrays(cache))
    assert CountingCache.looked_up == 0 and fresh.text_calls == 0
    assert again.select(image_with([0, 2])) == first.select(image_with([0, 2])) == [0, 2]
    CountingCache.looked_up = 0  # the subset prompts of `select` are looked up by prompt, as before
    other = CategoryFilter(StubScorer(), cache, ["dog", "cat"], eta=3, vocab=VocabArrays(cache))  # its own id
    swapped = VocabArrays(cache).vocab_array(class_text_id("stub/v1", ["a dog", "a cat"]), "class_text")
    assert CountingCache.looked_up == 2 and np.array_equal(swapped, kept[[1, 0]])
    assert other.select(image_with([1])) == [0]  # a dog: the first of its names
