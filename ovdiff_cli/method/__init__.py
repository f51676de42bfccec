"""The OVDiff method (paper §3), one module per step, in the paper's order. It reads no cache and no file.

| paper                                              | module                                         |
|----------------------------------------------------|------------------------------------------------|
| §3 "Support set generation" (App. C.1)             | `sampling`: SD draws N images + attribution    |
| §3 "Class prototypes" (App. C.2, C.5)              | `features` (Φ_v parts), `masks` (fg/bg, Γ),    |
|                                                    | `prototypes` (Eq. 1, K-means), `classbuild`    |
| §3 "Stuff filtering" (App. C.6)                    | `stuff`: the stuff/thing table                 |
| §3 "Category pre-filtering"                        | `filter`: the CLIP filter                      |
| §3 "Segmentation via prototype matching"           | `matching` (cosines, windows), `segment`       |
| App. A.5, explanations                             | `segment` (`Segmenter.source`, the winner map) |

`precision` holds the one arithmetic rule matching and K-means share (half inputs, fp32 sums).
Running the method over a cache, a folder or a cluster is `engines/`'s job (support sets stored:
`engines.support`; the user's photos: `engines.photos`; explanation files: `engines.explain`), and
contact sheets are drawn by `io.sheets`; the filter and the stuff table keep text embeddings through
`types.TextMemo`. `tests/test_architecture.py` checks that no module here imports those folders.
"""
