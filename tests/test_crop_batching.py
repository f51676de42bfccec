"""On a GPU the crops of an image (windows of both sizes and the whole image) share each
part's forward passes. Checked on the CPU by forcing that path: the same labels, winners and scores
as the plain per-crop-size batches, with one backbone call per input size instead of one per crop size."""

from __future__ import annotations

import dataclasses

import numpy as np


def _segmenters(tiny_stages):
    from ovdiff_cli.bench.settings import synthetic_bank
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter
    from ovdiff_cli.models.presets import get_preset

    cfg = dataclasses.replace(get_preset("tiny").segment, use_filter=False)
    classes = synthetic_bank(["cat", "dog", "sky"], {"sd": 160, "dino": 64, "clip": 64}, 3, 0)
    parts = tiny_stages.segmenter(classes, cfg, "sd+dino+clip").parts
    plain = Segmenter(parts, classes, cfg, tiny_stages.device, merge_crops=False)
    merged = Segmenter(parts, classes, cfg, tiny_stages.device, merge_crops=True, window_batch=32)
    return cfg, parts, plain, merged


def test_merged_crop_batches_give_the_plain_results_with_one_pass_per_input_size(tiny_stages):
    from ovdiff_cli.method.stage4_segment.matching import window_boxes
    from ovdiff_cli.method.stage4_segment.segmenter import encode_image

    cfg, parts, plain, merged = _segmenters(tiny_stages)
    assert plain.window_batch == 8 and not plain.merge_crops  # the CPU default: a device choice, not a setting
    image = np.random.default_rng(3).integers(0, 256, (96, 150, 3), dtype=np.uint8)
    calls: dict[str, list[int]] = {p.name: [] for p in parts}
    inner = {p.name: p.backbone for p in parts}
    for p in parts:
        p.backbone = lambda x, n=p.name: calls[n].append(len(x)) or inner[n](x)
    try:
        a = plain.predict(image, explain=True, scores=True)
        plain_calls = {n: list(c) for n, c in calls.items()}
        for c in calls.values():
            c.clear()
        b = merged.predict(image, explain=True, scores=True)
    finally:
        for p in parts:
            p.backbone = inner[p.name]
    n_crops = sum(len(window_boxes(96, 150, w, cfg.stride)) for w in cfg.windows) + 1
    shapes = len({(min(w, 96), min(w, 150)) for w in cfg.windows} | {(96, 150)})  # each window size, the whole image
    assert len(plain_calls["sd"]) == shapes and sum(plain_calls["sd"]) == n_crops
    assert calls["sd"] == [n_crops] and calls["clip"] == [n_crops]  # square inputs: one pass for every crop
    assert len(calls["dino"]) == 3 and sum(calls["dino"]) == n_crops  # DINO keeps a pass per input size
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.winner, b.winner)
    assert np.allclose(a.scores, b.scores, atol=1e-5)
    # the backbones' half alone, as `encode_image` runs it: the same batches (shapes, crops, features)
    enc = encode_image(parts, None, cfg, image, tiny_stages.device)
    assert [(wb.shape, wb.jobs) for wb in enc.windows] == [
        (wb.shape, wb.jobs) for wb in _merged_windows(parts, cfg, image)
    ]


def _merged_windows(parts, cfg, image):
    import torch

    from ovdiff_cli.method.stage4_segment.matching import window_features
    from ovdiff_cli.method.stage4_segment.segmenter import to_tensor
    from ovdiff_cli.method.stage4_segment.targets import working_image

    x = to_tensor(working_image(image, cfg.short_side), torch.device("cpu"))
    return list(window_features([x], list(parts), tuple(cfg.windows), cfg.stride, 32, [p.resize for p in parts]))
