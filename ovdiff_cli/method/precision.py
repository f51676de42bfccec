"""Half-precision arithmetic with fp32 accumulation, the one rule the matching and K-means share.

Features may be fp16/bf16 (the GPU path runs the backbones in half precision); products of them
are summed in fp32 so that cosines and distances keep fp32 resolution (a bf16 cosine has ~3
significant digits, too few to rank near-equal prototypes).
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M,K) @ b (K,N) → (M,N) float32, accumulated in fp32 whatever the inputs' dtype.

    On CUDA half inputs stay half (cuBLAS accumulates in fp32 and writes fp32: `out_dtype`); elsewhere
    they are upcast, since CPU half matmuls round their output to the input dtype.
    """
    if a.dtype == b.dtype and a.dtype in HALF and a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def bmm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N) → (..., M, N) float32, as `mm_f32` for batches.

    On CUDA half inputs are multiplied as they are (no fp32 copy of `a`: the attribution capture's
    queries are the largest tensors of a sampling step); elsewhere both are upcast first.
    """
    if a.dtype == b.dtype and a.dtype in HALF and a.is_cuda:
        lead, (m, k), n = a.shape[:-2], a.shape[-2:], b.shape[-1]
        out = torch.bmm(a.reshape(-1, m, k), b.reshape(-1, k, n), out_dtype=torch.float32)
        return out.view(*lead, m, n)
    return a.float() @ b.float()
