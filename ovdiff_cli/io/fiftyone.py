"""ovdiff as a FiftyOne model: `dataset.apply_model(fiftyone_model(pipe, names), "ovdiff")` labels every image
of a dataset as `ovdiff segment` does, and `mask_targets` names the label values for FiftyOne's
`evaluate_segmentations`. FiftyOne is optional: imported on use, a clear error when it is absent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from .adapters import require, to_fiftyone


class Segments(Protocol):
    """What the model needs of an `ovdiff.Pipeline` (io/ sits below the API, so it names no API class)."""

    def as_vocabulary(self, vocabulary: Any) -> Any: ...

    def segment(self, image: Any, vocabulary: Any) -> Any: ...


def fiftyone_model(pipeline: Segments, vocabulary: Iterable[str] | Any):
    """A `fiftyone.core.models.Model` (for an `ovdiff.Pipeline`) segmenting each image (HxWx3 uint8 RGB, as FiftyOne loads it) against
    `vocabulary` (or a list of names, built or read from the cache) into an `fo.Segmentation`; its
    `mask_targets` (label value → class name, 0 → "background") go to `dataset.mask_targets[field]`.
    `predict_all` segments a batch as `Pipeline.segment` does a list (apply_model's batch_size)."""
    fom = require("fiftyone.core.models", "fiftyone", "fiftyone_model()")
    vocab = pipeline.as_vocabulary(vocabulary)
    targets = {0: "background", **{k + 1: n for k, n in enumerate(vocab.names)}}

    class OvdiffModel(fom.Model):
        """ovdiff's segmentation of one vocabulary, as FiftyOne's image models are called."""

        mask_targets = targets

        @property
        def media_type(self) -> str:
            return "image"

        @property
        def ragged_batches(self) -> bool:
            return False  # no transforms: every image is segmented at its own size

        @property
        def transforms(self) -> None:
            return None

        @property
        def preprocess(self) -> bool:
            return False

        @preprocess.setter
        def preprocess(self, value: bool) -> None:
            pass  # nothing to apply: FiftyOne's decoded arrays are segmented as they are

        def predict(self, arg: np.ndarray):
            return to_fiftyone(pipeline.segment(np.asarray(arg), vocab).labels, targets)[0]

        def predict_all(self, args):
            results = pipeline.segment([np.asarray(a) for a in args], vocab)
            return [to_fiftyone(r.labels, targets)[0] for r in results]

    return OvdiffModel()
