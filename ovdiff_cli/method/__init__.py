"""The OVDiff method (paper §3): one sub-package per stage, named in the paper's order. It reads no cache and no file.

| paper                                           | package               | modules                                      |
|-------------------------------------------------|-----------------------|----------------------------------------------|
| §3 "Support set generation" (App. C.1)          | `stage1_support`      | `sampling`: SD draws N images + attribution  |
| §3 "Class prototypes" (App. C.2, C.5, C.6)      | `stage2_prototypes`   | `masks` (fg/bg, Γ), `features` (Φ_v parts),  |
|                                                 |                       | `aggregation` (Eq. 1, K-means), `classbuild`,|
|                                                 |                       | `stuff` (the stuff/thing table)              |
| §3 "Category pre-filtering"                     | `stage3_filter`       | `prefilter`: the CLIP filter                 |
| §3 "Segmentation via prototype matching", A.5   | `stage4_segment`      | `targets`, `matching`, `segmenter`           |

`beyond` holds the backends past the paper, apart from its stages: today's generators (SDXL, SD3, FLUX),
today's dense extractors, and refinement of the label map (PAMR, SAM 2). `precision` holds the one arithmetic
rule matching and K-means share (half inputs, fp32 sums). Running the method over a cache, a folder or a
cluster is `engines/`'s job; `tests/test_architecture.py` checks that no module here imports those folders.
"""
