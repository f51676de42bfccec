"""The CLIP BPE tokenizer, rebuilt offline from the vocabulary file that open_clip ships.

Stable Diffusion v1.5's tokenizer is OpenAI CLIP's; open_clip's package carries its BPE merges,
so the tiny and random presets get the real tokenizer with no download.
"""

from __future__ import annotations

import functools
import gzip
import os

N_MERGES = 49152 - 256 - 2  # open_clip's SimpleTokenizer: lines 1..48894 of the file are merges


def _vocab_file() -> str:
    import open_clip

    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-unicode table, as CLIP uses it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(token → id, merges) exactly as open_clip builds them; ids 49406/49407 are start/end of text."""
    with gzip.open(_vocab_file()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def offline_clip_tokenizer(model_max_length: int = 77):
    """A `transformers.CLIPTokenizer` equal to SD v1.5's, built with no network access."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length)


def tiny_clip_text_config(hidden_act: str):
    """A CLIP text encoder of width 32 over the real vocabulary and context (49,408 tokens, 77 positions), the
    text tower of every tiny generator (SD1.5's activation is quick_gelu, SDXL's, SD3's and FLUX's gelu)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act=hidden_act,
    )
