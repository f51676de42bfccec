"""Paper §3 "Category pre-filtering": the CLIP filter that picks the classes present (the authors' rule).

The filter chooses among the *thing* classes only: every stuff class is always kept (the authors'
`predict.py`), so |C| below counts things.
1. Class prompts "a <class>"; the image-to-prompt cosines go through a softmax *without* CLIP's
   logit scale, and classes with probability ≥ 1/|C| are kept (if none, the top η by score);
   more than η kept → the top η.
2. Every non-empty subset of the kept classes becomes a prompt "a <c1> and a <c2> …", and the
   subset whose prompt best matches the image (cosine) is the answer. Candidates, subsets and the
   classes inside a prompt come in the authors' order: class-list order when at most η pass the
   1/|C| rule, else best probability first (their top-η), subsets as `itertools.combinations`
   of that list; CLIP's text tower is order-sensitive, so this decides which prompts are scored.

A sigmoid-trained scorer (SigLIP2 through `--filter-model`) has no softmax over classes: each class
gets its own probability σ(t·cos + b) with the model's logit scale t and bias b. Step 1 then
normalises those probabilities to sum to one and keeps the same rule, so a class is kept when its
probability is at least the mean over the classes: the paper's 1/|C| means "at least as likely as
the average class", which is what it stays. Step 2 ranks by cosine as before (σ is monotone).

CLIP sees the working image (short side 448, Lanczos) squeezed to 512² (Lanczos) and then to 224²
without antialiasing, normalised with CLIP's own mean/std: the authors' input (`filter_input`).

Text embeddings are kept by prompt in a `types.TextMemo` (the run's cache), so a folder never re-encodes a prompt;
with a `types.VocabMemo` the class prompts' matrix is also kept whole under the vocabulary's id (`class_text_id`),
so a second run over a 10,000-class vocabulary reads one array instead of 10,000 entries.
"""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...types import ImageTextScorer, TextMemo, VocabMemo
from ..stage2_prototypes.features import clip_mean_std

ENCODE_BATCH = 2048  # prompts encoded between two progress lines of a cold large vocabulary
FILTER_SQUARE = 512  # the filter's image is first squeezed to 512² (sdov mmdata.prep_sample), then to CLIP's size


def class_prompt(name: str) -> str:
    return f"a {name}"


def class_text_id(fingerprint: str, prompts: list[str]) -> str:
    """The id of a vocabulary's class-prompt matrix: the text tower's identity and the prompts, in order."""
    from hashlib import sha256

    return sha256(repr((fingerprint, prompts)).encode("utf-8")).hexdigest()[:24]


def subset_prompt(names: list[str]) -> str:
    return " and ".join(class_prompt(n) for n in names)


def select_classes(
    image_emb: torch.Tensor, class_embs: torch.Tensor, eta: int, sigmoid: tuple[float, float] | None = None
) -> list[int]:
    """Step 1: indices of the candidate classes, in the order the subset prompts list them.

    image_emb (E,) and class_embs (C,E) unit vectors; softmax over the raw cosines (no logit scale),
    or with `sigmoid` = (logit scale, bias) of a SigLIP scorer its per-class sigmoid probabilities
    normalised to sum to one. At most η pass the 1/|C| rule → those, in class-list order; more →
    the η most probable, best first; none → the η best scores, best first.
    """
    if eta < 1:
        raise ValueError(f"eta must be at least 1, got {eta}")
    scores = class_embs.float() @ image_emb.float()
    if sigmoid is None:
        probs = scores.softmax(0)
    else:
        probs = torch.sigmoid(sigmoid[0] * scores + sigmoid[1])
        probs = probs / probs.sum().clamp_min(1e-30)
    order = torch.argsort(scores, descending=True, stable=True)
    passes = probs >= 1.0 / len(order)  # in tensors: no Python loop over a vocabulary's classes
    passed = int(passes.sum())
    if not passed:
        return order[:eta].tolist()
    if passed <= eta:
        return torch.nonzero(passes).flatten().tolist()
    return order[passes[order]][:eta].tolist()


def subsets(candidates: list[int]) -> list[list[int]]:
    """Every non-empty subset of `candidates`: by size, then as `itertools.combinations` of the list as given."""
    return [list(c) for k in range(1, len(candidates) + 1) for c in itertools.combinations(candidates, k)]


def best_subset(image_emb: torch.Tensor, candidates: list[int], prompt_embs: torch.Tensor) -> list[int]:
    """Step 2: the subset of `candidates` whose prompt best matches the image.

    prompt_embs (2^k-1, E): one unit vector per subset, in the order of `subsets(candidates)`.
    """
    options = subsets(candidates)
    if prompt_embs.shape[0] != len(options):
        raise ValueError(f"expected {len(options)} subset prompts, got {prompt_embs.shape[0]}")
    return options[int((prompt_embs.float() @ image_emb.float()).argmax())]


def filter_input(work: np.ndarray, size: int) -> torch.Tensor:
    """The working image HxWx3 uint8 (`targets.working_image`) → (1,3,size,size) float32 in [0,1], as the
    authors build CLIP's input: squeezed to FILTER_SQUARE² (Lanczos), then to size² bilinearly without
    antialiasing (sdov `mmdata.prep_sample`, then `clip_class`'s `Resize` on a tensor, which torchvision 0.13,
    their version, does not antialias). Nothing is cropped away."""
    im = Image.fromarray(work).resize((FILTER_SQUARE, FILTER_SQUARE), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


@torch.no_grad()
def image_embedding(scorer: ImageTextScorer, work: np.ndarray, size: int) -> torch.Tensor:
    """The working image HxWx3 uint8 → (E,) float32 unit vector on the CPU, as the filter compares it to prompts."""
    return scorer.encode_images(filter_input(work, size))[0].float().cpu()


class CategoryFilter:
    """Picks the classes present in an image; text embeddings come from `texts` (a `types.TextMemo`, e.g.
    the cache) when it has them, and are put there when encoded.

    `stuff[i]` marks class i as stuff: stuff classes are always kept and never scored, the filter
    chooses among the others (with no or one thing class there is nothing to choose). `vocab` keeps the
    class prompts' (C,E) matrix under `class_text_id` (`v/<id>/class_text` in the cache): a second filter
    over the same names reads it in one piece.
    """

    def __init__(
        self,
        scorer: ImageTextScorer,
        texts: TextMemo | None,
        class_names: list[str],
        eta: int = 10,
        size: int = 224,
        memo: int = 4096,
        stuff: list[bool] | None = None,
        vocab: VocabMemo | None = None,
    ):
        if eta < 1:
            raise ValueError(f"eta must be at least 1, got {eta}")
        stuff = list(stuff) if stuff is not None else [False] * len(class_names)
        if len(stuff) != len(class_names):
            raise ValueError(f"{len(stuff)} stuff flags for {len(class_names)} classes")
        self.scorer = scorer
        self.texts = texts
        self.all_names = list(class_names)
        self.stuff = [i for i, s in enumerate(stuff) if s]
        self.things = [i for i, s in enumerate(stuff) if not s]
        self.names = [self.all_names[i] for i in self.things]  # what CLIP chooses among
        self.eta = eta
        self.size = size
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memo_size = memo
        self._class_embs = self._class_embeddings(vocab) if len(self.names) > 1 else None

    def _class_embeddings(self, vocab: VocabMemo | None) -> torch.Tensor:
        """(C,E) class-prompt embeddings: the vocabulary's kept matrix, else by prompt (then kept whole)."""
        prompts = [class_prompt(n) for n in self.names]
        if vocab is None:
            return self.text_embeddings(prompts)
        vid = class_text_id(self.scorer.identity(), prompts)
        kept = vocab.vocab_array(vid, "class_text")
        if kept is not None and kept.shape[0] == len(prompts):
            return torch.from_numpy(np.array(kept, dtype=np.float32))
        embs = self.text_embeddings(prompts)
        vocab.put_vocab_array(vid, "class_text", embs.numpy())
        return embs

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """(T,E) float32 unit vectors: from memory, else `texts`, else the text encoder (then stored)."""
        fp = self.scorer.identity()
        missing = [p for p in dict.fromkeys(prompts) if p not in self._memo]
        stored = (
            self.texts.text_embeddings(fp, missing) if (self.texts is not None and missing) else [None] * len(missing)
        )
        fresh = [p for p, e in zip(missing, stored, strict=True) if e is None]
        found = {
            p: torch.from_numpy(np.asarray(e, np.float32))
            for p, e in zip(missing, stored, strict=True)
            if e is not None
        }
        if fresh:
            embs = self._encode(fresh)
            found.update(zip(fresh, embs, strict=True))
            if self.texts is not None:
                self.texts.put_text_embeddings(fp, {p: e.numpy() for p, e in zip(fresh, embs, strict=True)})
        for p, e in found.items():
            self._memo[p] = e
        out = torch.stack([self._memo[p] for p in prompts])
        for p in prompts:  # least recently used prompts leave first
            self._memo.move_to_end(p)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return out

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder over `prompts`, in batches of ENCODE_BATCH; a large vocabulary's first run (cold
        text cache) says how far it is on stderr, one line a batch."""
        if len(prompts) <= ENCODE_BATCH:
            return self.scorer.encode_texts(prompts).float().cpu()
        out = []
        for start in range(0, len(prompts), ENCODE_BATCH):
            out.append(self.scorer.encode_texts(prompts[start : start + ENCODE_BATCH]).float().cpu())
            done = start + len(out[-1])
            print(f"category filter: encoded {done}/{len(prompts)} class prompts (once; cached)", file=sys.stderr)
        return torch.cat(out)

    def embed(self, image: np.ndarray) -> torch.Tensor:
        """`image_embedding` with this filter's scorer and size: the only image-side work of `select`."""
        return image_embedding(self.scorer, image, self.size)

    def select(self, image: np.ndarray, embedding: torch.Tensor | None = None) -> list[int]:
        """Indices (0-based, ascending, into `class_names`) of the classes kept for image HxWx3 uint8
        (the working image, `targets.working_image`, as the segmenter passes it): the things CLIP
        picks, and every stuff class. An `embedding` from `embed` (of the same scorer
        and size) spares the image encoder."""
        return sorted([self.things[i] for i in self.select_things(image, embedding)] + self.stuff)

    def select_things(self, image: np.ndarray, embedding: torch.Tensor | None = None) -> list[int]:
        """Indices into `names` (the thing classes) that the two steps keep, in subset-prompt order."""
        if len(self.names) <= 1:
            return list(range(len(self.names)))
        img = self.embed(image) if embedding is None else embedding
        candidates = select_classes(img, self._class_embs, self.eta, getattr(self.scorer, "sigmoid", None))
        if len(candidates) == 1:
            return candidates
        options = subsets(candidates)
        embs = self.text_embeddings([subset_prompt([self.names[i] for i in s]) for s in options])
        return best_subset(img, candidates, embs)


class ClipScorer:
    """types.ImageTextScorer over an open_clip model (OpenAI CLIP ViT-B/16 by default).

    identity: the text tower's name for its embeddings' key (`store.keys.clip_text_id`: the source, and
    the seed of random weights).
    `sigmoid`: (logit scale, bias) for a sigmoid-trained model (SigLIP: it has a logit bias), else None.
    """

    def __init__(self, clip, device: torch.device, dtype: torch.dtype, identity: str):
        self.clip, self.device, self.dtype, self.text_id = clip, device, dtype, identity
        mean, std = clip_mean_std(self.clip.model.visual)  # the authors feed the filter CLIP's own statistics
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        bias = getattr(self.clip.model, "logit_bias", None)
        self.sigmoid = None if bias is None else (float(self.clip.model.logit_scale.exp()), float(bias))

    def identity(self) -> str:
        return self.text_id

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) float RGB in [0,1] → (B,E) float32 unit vectors (CLIP mean/std normalisation)."""
        x = ((images.to(self.device).float() - self.mean) / self.std).to(self.dtype)
        return F.normalize(self.clip.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: list[str], batch: int = 256) -> torch.Tensor:
        """T prompts → (T,E) float32 unit vectors.

        The context is cut to the longest prompt of each batch: with the causal mask and pooling at
        the end token, the tokens after it never influence the result, so this is exact and ~6× faster.
        """
        model = self.clip.model
        out = []
        for i in range(0, len(prompts), batch):
            ids = self.clip.tokenizer(prompts[i : i + batch]).to(self.device)
            if getattr(model, "text_pool_type", None) != "argmax" or getattr(model, "attn_mask", None) is None:
                out.append(F.normalize(model.encode_text(ids).float(), dim=-1))  # not a causal CLIP tower
                continue
            n = int(ids.argmax(dim=-1).max()) + 1  # the end token has the largest id
            ids = ids[:, :n]
            cast = model.transformer.get_cast_dtype()
            x = model.token_embedding(ids).to(cast) + model.positional_embedding[:n].to(cast)
            x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
            x = model.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
            if model.text_projection is not None:
                x = (
                    model.text_projection(x)
                    if isinstance(model.text_projection, torch.nn.Linear)
                    else x @ model.text_projection
                )
            out.append(F.normalize(x.float(), dim=-1))
        return torch.cat(out)
