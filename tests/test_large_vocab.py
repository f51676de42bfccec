"""What a vocabulary of a thousand classes holds. One copy of the prototypes in a
`Vocabulary` (no (prototypes × classes) stuff table, no second copy for "every class"), and cached
arrays decoded straight from LMDB's map."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _bank(n: int, stuff: set[int]):
    from ovdiff_cli.bench.settings import synthetic_bank
    from ovdiff_cli.types import ClassPrototypes

    out = []
    for i, c in enumerate(synthetic_bank([f"c{i}" for i in range(n)], {"x": 16}, 4, 0)):
        p = c.parts["x"]
        out.append(ClassPrototypes(p.name, "stuff", p.fg) if i in stuff else p)
    return out


def test_a_vocabulary_of_every_class_is_one_copy_with_one_stuff_score_per_row():
    from ovdiff_cli.method.stage4_segment.bank import assemble_vocabulary

    classes = _bank(12, stuff={3, 7})
    v = assemble_vocabulary(classes)
    assert v.bank is not None and v.protos.data_ptr() == v.bank.protos.data_ptr()  # not a restricted copy
    assert v.to("cpu").protos.data_ptr() == v.to("cpu").bank.protos.data_ptr()
    assert v.stuff_sim.shape == (len(v.bank),)  # one number per prototype, whatever the class count
    # the number is the best cosine of a bg row to any stuff class's fg prototype (as the (P, C) table's max)
    bg = torch.tensor([p.group == "bg" for p in v.bank.provenance])
    stuff_fg = torch.from_numpy(np.concatenate([a for i in (3, 7) for a in classes[i].fg.values()]))
    want = (F.normalize(v.bank.protos[bg], dim=1) @ F.normalize(stuff_fg, dim=1).T).max(dim=1).values
    assert torch.allclose(v.bank.stuff_sim[bg], want, atol=1e-6)
    assert (v.bank.stuff_sim[~bg] == -2.0).all()
    # a per-image restriction keeps its own small copy
    r = v.restrict([0, 3])
    assert r.protos.data_ptr() != v.protos.data_ptr() and len(r) < len(v)


def test_class_arrays_are_decoded_from_the_map_equal_to_what_was_put(tmp_path):
    from ovdiff_cli.store.blobs import decode_array, encode_array
    from ovdiff_cli.store.cache import Cache

    a = np.random.default_rng(0).standard_normal((65, 33)).astype(np.float32)
    assert np.array_equal(decode_array(memoryview(encode_array(a))), a)
    cache = Cache(tmp_path / "c")
    rec = {"name": "cat", "norm": "cat", "seed": 0, "extractor": "procedural", "kind": "thing"}
    cache.put_class("1" * 24, rec, {"fg/instance": a, "masks": np.ones((2, 4, 4), np.uint8)})
    got = cache.class_arrays("1" * 24)
    assert np.array_equal(got["fg/instance"], a) and got["fg/instance"].flags.writeable
    assert got["masks"].dtype == np.uint8 and cache.class_arrays("1" * 24, ["nothing"]) == {}


def test_a_segmenter_keeps_no_second_copy_of_the_classes_arrays():
    import gc
    import weakref

    from ovdiff_cli.config import SegmentConfig
    from ovdiff_cli.method.stage4_segment.segmenter import Segmenter
    from ovdiff_cli.types import ClassParts

    class Part:  # what the Segmenter reads of an extractor part before segmenting: its name
        name = "x"

    classes = [ClassParts(p.name, p.kind, {"x": p}) for p in _bank(6, stuff={2})]
    arrays = [weakref.ref(a) for c in classes for table in (c.parts["x"].fg, c.parts["x"].bg) for a in table.values()]
    seg = Segmenter([Part()], classes, SegmentConfig(use_filter=False), torch.device("cpu"))
    pids = [c.pids for c in classes]
    del classes
    gc.collect()
    assert arrays and all(r() is None for r in arrays)  # the vocabularies hold the prototypes; nothing else does
    assert [c.name for c in seg.classes] == [f"c{i}" for i in range(6)] and [c.pids for c in seg.classes] == pids
    assert [c.kind for c in seg.classes].count("stuff") == 1
