"""The stuff table, the vocabulary stage over the cache, export/import, and `ovdiff protos` through the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ovdiff_cli.classnames import CORRECTIONS, PROMPT_OVERLAY
from ovdiff_cli.classnames.lists import ADE, CITYSCAPES, COCO_STUFF_ONLY, COCO_THINGS, CONTEXT, VOC
from ovdiff_cli.cli.app import app
from ovdiff_cli.cli.common import phrase
from ovdiff_cli.compose import Stages
from ovdiff_cli.engines.catalogue import find_classes
from ovdiff_cli.engines.vocab import ensure_classes, load_class
from ovdiff_cli.errors import MissingClasses, OvdiffError
from ovdiff_cli.method.stage2_prototypes import stuff
from ovdiff_cli.models.presets import get_preset
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.store.keys import MASK_VERSION, PROTO_VERSION, class_ids, mask_id
from ovdiff_cli.store.sharing import export_classes, import_classes

TINY = get_preset("tiny")
SAMPLE = TINY.sample
PROTOS = TINY.protos

# --------------------------------------------------------------------------- stuff / things


def covered_names() -> list[str]:
    """Every benchmark class name (raw and corrected) the stuff table must classify."""
    names = set(COCO_THINGS) | set(COCO_STUFF_ONLY) | set(CONTEXT[1:]) | set(ADE) | set(CITYSCAPES) | set(VOC[1:])
    for fixes in (*CORRECTIONS.values(), PROMPT_OVERLAY):
        names |= set(fixes.values())
    return sorted(names)


def test_table_covers_every_benchmark_name_without_contradiction():
    assert not stuff.STUFF & stuff.THINGS
    assert [n for n in covered_names() if stuff.lookup(n) is None] == []
    assert all(stuff.lookup(n) == "thing" for n in COCO_THINGS)
    # COCO-Stuff's 91 stuff labels are stuff, except the paper's own correction (blanket is bedding)
    assert [n for n in COCO_STUFF_ONLY if stuff.lookup(n) != "stuff"] == ["blanket"]


def test_paper_corrections_of_chatgpt():
    for name in ("glass", "blanket", "trade name"):
        assert stuff.classify(name) == ("thing", "table")
    for name in ("land", "sand", "snow", "ground", "earth"):
        assert stuff.classify(name) == ("stuff", "table")


def test_lookup_ignores_case_separators_and_plurals():
    assert stuff.classify("Sky") == ("stuff", "table")
    assert stuff.classify("floor-other") == ("stuff", "table")
    assert stuff.classify("cats") == ("thing", "table")
    assert stuff.classify("glasses") == ("thing", "table")
    assert stuff.classify("shelf") == ("stuff", "table")
    assert stuff.classify("chocolate glazed donut") == ("thing", "fallback")  # head noun
    assert stuff.classify("glass of water") == ("thing", "fallback")
    assert stuff.classify("pikachu") == ("thing", "fallback")  # no stages: the default


class _FakeScorer:
    """Text space where a prompt's embedding is one-hot on the 'sea' / 'cat' axis if it mentions them."""

    def __init__(self):
        self.encoded = 0

    def identity(self) -> str:
        return "fake-text"

    def encode_texts(self, prompts):
        self.encoded += len(prompts)
        out = torch.full((len(prompts), 3), 0.01)
        for i, p in enumerate(prompts):
            out[i, 0] += p in ("a sea", "a ocean")
            out[i, 1] += p in ("a cat", "a kitten")
            out[i, 2] += 0.001 * i  # ties broken, but never near the two axes
        return torch.nn.functional.normalize(out, dim=1)


class _FakeStages:
    def __init__(self):
        self.text = _FakeScorer()

    def scorer(self):
        return self.text


def test_unknown_names_take_the_nearest_table_name_in_text_space(cache_dir):
    stages, cache = _FakeStages(), Cache(cache_dir)
    assert stuff.nearest_known("ocean", stages, cache) == ("stuff", "sea")
    assert stuff.classify("kitten", stages, cache) == ("thing", "fallback")
    n_table = len(stuff.STUFF | stuff.THINGS)
    assert stages.text.encoded == n_table + 2  # the table once (cached), then one prompt per new name


# --------------------------------------------------------------------------- the vocabulary stage


def _calls(stages) -> tuple[int, int]:
    return stages.calls.get("generate", 0), stages.calls.get("extract", 0)


N_PARTS = len(PROTOS.extractor.split("+"))  # each part featurises every support image once (ncut reuses dino's)


def test_adding_b_after_a_never_recomputes_a(tiny_stages, cache_dir):
    cache = Cache(cache_dir)
    g0, e0 = _calls(tiny_stages)
    (cat,) = ensure_classes(cache, tiny_stages, ["cat"], 0, SAMPLE, PROTOS)
    assert _calls(tiny_stages) == (g0 + SAMPLE.n_images, e0 + N_PARTS * SAMPLE.n_images)
    pids_a = class_ids("cat", 0, tiny_stages.specs, SAMPLE, PROTOS)
    recs_a = {p: cache.class_record(pid) for p, pid in pids_a.items()}
    arrays_a = {p: cache.class_arrays(pid) for p, pid in pids_a.items()}

    g1, e1 = _calls(tiny_stages)
    events = []
    both = ensure_classes(cache, tiny_stages, ["cat", "dog"], 0, SAMPLE, PROTOS, on_event=lambda *e: events.append(e))
    assert _calls(tiny_stages) == (g1 + SAMPLE.n_images, e1 + N_PARTS * SAMPLE.n_images)  # dog only
    assert ("cached", "cat", 1, 1) in events and not any(e[1] == "cat" and e[0] != "cached" for e in events)
    for p, pid in pids_a.items():
        assert cache.class_record(pid) == recs_a[p]
        for name, arr in cache.class_arrays(pid).items():
            np.testing.assert_array_equal(arr, arrays_a[p][name])

    g2, e2 = _calls(tiny_stages)
    again = ensure_classes(cache, tiny_stages, ["dog", "cat"], 0, SAMPLE, PROTOS, build=False)
    assert _calls(tiny_stages) == (g2, e2)
    assert [p.name for p in again] == ["dog", "cat"] and again[1].pids == both[0].pids == cat.pids == list(
        pids_a.values()
    )
    fresh = Stages.for_run("tiny", "cpu", "fp32")  # a new run, as a new process: cached classes load no model
    assert [p.pids for p in ensure_classes(cache, fresh, ["cat", "dog"], 0, SAMPLE, PROTOS)] == [cat.pids, both[1].pids]
    assert fresh.store.loaded == [] and fresh.calls == {}

    # one prototype set per part, each in its own space: float32, Eq. 1 rows per image, parts ≤ K
    assert list(cat.parts) == ["sd", "dino", "clip"] and cat.kind == "thing"
    for name, protos in cat.parts.items():
        assert set(protos.fg) == set(protos.bg) == {"class", "instance", "part"}
        d = protos.fg["class"].shape[1]
        assert all(a.dtype == np.float32 and a.shape[1] == d for a in (*protos.fg.values(), *protos.bg.values()))
        assert len(protos.fg["instance"]) <= SAMPLE.n_images and len(protos.fg["part"]) <= PROTOS.k_parts
        assert protos.sources["fg/class"].tolist() == [-1] and len(protos.sources["fg/instance"]) == len(
            protos.fg["instance"]
        )
        rec = recs_a[name]
        assert rec["kind_source"] == "table" and rec["extractor"] == rec["part"] == name
        stride = tiny_stages.part(name).stride
        assert rec["feature_grid"] == [PROTOS.feature_size // stride] * 2
        assert rec["arrays"]["fg/part_labels"]["shape"] == [SAMPLE.n_images, *rec["feature_grid"]]
        assert rec["arrays"]["masks"]["shape"] == [SAMPLE.n_images, *rec["mask_grid"]]
        np.testing.assert_array_equal(arrays_a[name]["masks"], arrays_a["sd"]["masks"])  # one set of masks
    # each part in its own space (tiny SD: 160 query channels, DINO and CLIP: 64 keys), never one joint space
    assert {n: p.fg["class"].shape[1] for n, p in cat.parts.items()} == {"sd": 160, "dino": 64, "clip": 64}


def test_a_class_built_for_sd_dino_clip_serves_its_parts_with_no_build(cache_dir):
    """The masks depend on the support set and the proposer (ncut on DINO keys), not on the spec:
    segmenting with `dino` alone after building `sd+dino+clip` loads no generator and builds nothing;
    adding a new part (mae) reuses the support images and the masks."""
    cache = Cache(cache_dir)
    (full,) = ensure_classes(cache, Stages.for_run("tiny", "cpu", "fp32"), ["cat"], 0, SAMPLE, PROTOS)
    stages = Stages.for_run("tiny", "cpu", "fp32")
    dino_cfg = dataclasses.replace(PROTOS, extractor="dino")
    (dino,) = ensure_classes(cache, stages, ["cat"], 0, SAMPLE, dino_cfg, build=False)
    assert stages.calls == {} and stages.store.loaded == [] and dino.pids == [full.parts["dino"].pid]
    np.testing.assert_array_equal(dino.parts["dino"].fg["part"], full.parts["dino"].fg["part"])
    seg_cfg = dataclasses.replace(TINY.segment, use_filter=False)
    labels = stages.segmenter([dino], seg_cfg, "dino", cache).predict(np.zeros((96, 120, 3), np.uint8)).labels
    assert labels.shape == (96, 120) and "generate" not in stages.calls and stages.store.loaded == ["dino"]

    (more,) = ensure_classes(cache, stages, ["cat"], 0, SAMPLE, dataclasses.replace(PROTOS, extractor="dino+mae"))
    assert "generate" not in stages.calls and more.pids[0] == full.parts["dino"].pid  # mae built from cached images
    np.testing.assert_array_equal(
        cache.class_arrays(more.pids[1], ["masks"])["masks"], cache.class_arrays(full.pids[0], ["masks"])["masks"]
    )


def test_keys_follow_what_each_entry_depends_on(tiny_stages):
    """Masks: support set + proposer (+ the features it cuts); a part: its masks + that part alone."""
    ids = class_ids("cat", 0, tiny_stages.specs, SAMPLE, PROTOS)
    assert class_ids("cat", 0, tiny_stages.specs, SAMPLE, dataclasses.replace(PROTOS, extractor="clip+dino")) == {
        "clip": ids["clip"],
        "dino": ids["dino"],
    }
    mid = mask_id("cat", 0, tiny_stages.specs, SAMPLE, PROTOS)
    assert mid == mask_id("cat", 0, tiny_stages.specs, SAMPLE, dataclasses.replace(PROTOS, extractor="sd", k_parts=2))
    assert mid != mask_id("cat", 0, tiny_stages.specs, SAMPLE, dataclasses.replace(PROTOS, mask_features="clip"))
    assert mid != mask_id("cat", 0, tiny_stages.specs, SAMPLE, dataclasses.replace(PROTOS, mask_proposer="threshold"))
    assert mid != mask_id("cat", 1, tiny_stages.specs, SAMPLE, PROTOS)
    assert mid != mask_id("cat", 0, tiny_stages.specs, dataclasses.replace(SAMPLE, n_images=2), PROTOS)
    # the threshold proposer reads no features: which part they would come from does not matter
    thr = dataclasses.replace(PROTOS, mask_proposer="threshold")
    assert mask_id("cat", 0, tiny_stages.specs, SAMPLE, thr) == mask_id(
        "cat", 0, tiny_stages.specs, SAMPLE, dataclasses.replace(thr, mask_features="clip")
    )
    assert ids["sd"] != class_ids("cat", 0, tiny_stages.specs, SAMPLE, dataclasses.replace(PROTOS, k_parts=2))["sd"]
    # older entries are never read: prototypes v1 one joint space per spec, v2 unstreamed K-means, v3 normalised
    # features and a K-means sample; masks v2 ncut as the former ncut-fast (issue 23 made it MaskCut)
    assert (PROTO_VERSION, MASK_VERSION) == (5, 3)


def test_a_class_built_while_waiting_for_its_lock_is_not_built_again(tiny_stages, cache_dir, monkeypatch):
    """Two processes adding the same class: the second finds it built once it holds the lock."""
    cache, other = Cache(cache_dir), Cache(cache_dir)
    real_lock = cache.lock

    @contextlib.contextmanager
    def lock_lost_to_another_process(name):
        ensure_classes(other, tiny_stages, ["cow"], 0, SAMPLE, PROTOS)  # the other process wins the race
        with real_lock(name):
            yield

    monkeypatch.setattr(cache, "lock", lock_lost_to_another_process)
    g0, e0 = _calls(tiny_stages)
    (cow,) = ensure_classes(cache, tiny_stages, ["cow"], 0, SAMPLE, PROTOS)
    assert _calls(tiny_stages) == (g0 + SAMPLE.n_images, e0 + N_PARTS * SAMPLE.n_images)  # built once, by the other
    assert cow.pids == list(class_ids("cow", 0, tiny_stages.specs, SAMPLE, PROTOS).values())


def test_missing_classes_without_build_name_the_command(tiny_stages, cache_dir):
    g0, e0 = _calls(tiny_stages)
    with pytest.raises(MissingClasses, match=r"no prototypes cached for 'zebra'") as info:
        ensure_classes(Cache(cache_dir), tiny_stages, ["zebra"], 3, SAMPLE, PROTOS, build=False)
    assert _calls(tiny_stages) == (g0, e0)
    assert info.value.names == ["zebra"] and info.value.seed == 3 and "ovdiff" not in str(info.value)
    assert "build them with: ovdiff protos add zebra --seed 3 --preset tiny" in phrase(info.value)
    assert phrase(info.value).endswith("--mask-proposer ncut")
    # the command repeats every setting that keys the class and differs from the preset's
    odd = dataclasses.replace(PROTOS, mask_proposer="threshold", k_parts=2)
    with pytest.raises(MissingClasses) as info:
        ensure_classes(
            Cache(cache_dir), tiny_stages, ["zebra"], 3, dataclasses.replace(SAMPLE, n_images=2), odd, build=False
        )
    assert phrase(info.value).endswith("--mask-proposer threshold --n-images 2 --k-parts 2")
    sam = Stages.for_run("tiny", "cpu", "fp32", {"sam": "my/sam"})
    with pytest.raises(MissingClasses) as info:
        ensure_classes(
            Cache(cache_dir), sam, ["zebra"], 3, SAMPLE, dataclasses.replace(PROTOS, mask_proposer="sam"), build=False
        )
    assert phrase(info.value).endswith("--mask-proposer sam --sam-model my/sam")
    with pytest.raises(OvdiffError, match="unknown extractor part"):
        ensure_classes(
            Cache(cache_dir), tiny_stages, ["zebra"], 3, SAMPLE, dataclasses.replace(PROTOS, extractor="sd+resnet")
        )


def test_stuff_classes_store_no_bg_and_kind_overrides_rebuild_without_sampling(tiny_stages, cache_dir):
    cache = Cache(cache_dir)
    sky, horse = ensure_classes(cache, tiny_stages, ["sky", "horse"], 0, SAMPLE, PROTOS)
    assert sky.kind == "stuff" and all(p.bg == {} for p in sky.parts.values())
    assert not any(n.startswith("bg/") for pid in sky.pids for n in cache.class_record(pid)["arrays"])
    assert horse.kind == "thing" and all(p.bg for p in horse.parts.values())

    g0, e0 = _calls(tiny_stages)
    (horse_stuff,) = ensure_classes(cache, tiny_stages, ["horse"], 0, SAMPLE, PROTOS, kinds={"horse": "stuff"})
    assert _calls(tiny_stages) == (g0, e0)  # thing → stuff only drops the bg prototypes
    assert all(p.bg == {} for p in horse_stuff.parts.values())
    assert all(cache.class_record(pid)["kind_source"] == "user" for pid in horse.pids)
    np.testing.assert_array_equal(horse_stuff.parts["sd"].fg["part"], horse.parts["sd"].fg["part"])

    (sky_thing,) = ensure_classes(cache, tiny_stages, ["sky"], 0, SAMPLE, PROTOS, kinds={"sky": "thing"})
    assert _calls(tiny_stages) == (g0, e0 + N_PARTS * SAMPLE.n_images)  # stuff → thing re-extracts, never re-samples
    assert sky_thing.kind == "thing" and sky_thing.parts["clip"].bg and sky_thing.pids == sky.pids
    np.testing.assert_array_equal(sky_thing.parts["dino"].fg["instance"], sky.parts["dino"].fg["instance"])
    with pytest.raises(OvdiffError, match="kind must be 'stuff' or 'thing'"):
        ensure_classes(cache, tiny_stages, ["sky"], 0, SAMPLE, PROTOS, kinds={"sky": "blob"})


def test_threshold_proposer_thresholds_every_image_and_the_record_says_so(tiny_stages, cache_dir):
    cfg = dataclasses.replace(PROTOS, mask_proposer="threshold", extractor="dino")
    (p,) = ensure_classes(Cache(cache_dir), tiny_stages, ["boat"], 0, SAMPLE, cfg)
    rec = Cache(cache_dir).class_record(p.pids[0])
    assert (rec["mask_proposals"], rec["mask_thresholds"]) == (0, SAMPLE.n_images) and rec[
        "mask_proposer"
    ] == "threshold"
    assert p.pids[0] != class_ids("boat", 0, tiny_stages.specs, SAMPLE, PROTOS)["dino"]  # the proposer is in the key


def test_export_rm_import_round_trips_bit_exactly(tiny_stages, cache_dir, tmp_path):
    cache = Cache(cache_dir)
    ensure_classes(cache, tiny_stages, ["cat", "sky"], 0, SAMPLE, PROTOS)
    before = {pid: (rec, cache.class_arrays(pid)) for pid, rec in find_classes(cache)}
    assert len(before) == 2 * N_PARTS
    path = tmp_path / "vocab.safetensors"
    assert export_classes(cache, list(before), path) > 0
    for pid in before:
        cache.remove_class(pid)
    assert find_classes(cache) == []
    assert sorted(import_classes(cache, path)) == sorted(before)
    for pid, (rec, arrays) in before.items():
        assert cache.class_record(pid) == rec
        got = cache.class_arrays(pid)
        assert set(got) == set(arrays)
        for name, a in arrays.items():
            assert got[name].dtype == a.dtype and got[name].tobytes() == a.tobytes() and got[name].shape == a.shape
    assert load_class(cache, next(iter(before))).fg["class"].dtype == np.float32
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(OvdiffError, match="cannot read"):
        import_classes(cache, tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- CLI


def _run(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_protos_cli_add_list_show_export_rm_import(cache_dir, tmp_path):
    common = ["--cache", str(cache_dir)]
    r = _run("protos", "add", "cat", "--stuff", "sky", "-q", "--preset", "tiny", "--device", "cpu", *common)
    assert r.exit_code == 0, r.output
    r = _run("protos", "list", *common)
    assert r.exit_code == 0 and "cat" in r.output and "sky" in r.output and "stuff" in r.output
    assert "2 class(es) (6 entries, one per extractor part) in" in r.output  # classes, not class × part entries
    assert re.search(r"\d+ fg \+ \d+ bg", r.output)
    lines = _run("protos", "list", "-q", *common).output.strip().splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == ["cat"] * 3 + ["sky"] * 3  # one entry per part
    assert sorted(line.split("\t")[3] for line in lines if "cat" in line) == ["clip", "dino", "sd"]
    assert len(_run("protos", "list", "-q", "--extractor", "dino+clip", *common).output.strip().splitlines()) == 4

    sheet = tmp_path / "sheet.png"
    r = _run("protos", "show", "cat", "--out", str(sheet), *common)
    assert r.exit_code == 0 and sheet.stat().st_size > 0

    exported = tmp_path / "v.safetensors"
    r = _run("protos", "export", str(exported), *common)
    assert r.exit_code == 0 and ": 2 class(es) (6 entries, one per extractor part)" in r.output
    r = _run("protos", "rm", "cat", "sky", *common)
    assert r.exit_code == 0 and "removed 2 class(es) (6 entries" in r.output
    assert _run("protos", "list", "-q", *common).output.strip() == ""
    r = _run("protos", "import", str(exported), *common)
    assert r.exit_code == 0 and "imported 2 class(es) (6 entries, one per extractor part)" in r.output
    assert r.output.count("cat") == 1  # each name once
    assert len(_run("protos", "list", "-q", *common).output.strip().splitlines()) == 6

    pid = lines[0].split("\t")[0]
    assert _run("protos", "rm", pid[:8], "--with-support", *common).exit_code == 0
    assert len(_run("protos", "list", "-q", *common).output.strip().splitlines()) == 5


def test_classes_built_with_a_sam_model_are_found_by_segment_and_eval(tiny_sam_dir, tmp_path):
    """The SAM model is part of a class's key, so every command that looks classes up takes --sam-model."""
    from PIL import Image

    from ovdiff_cli.io.palette import voc_palette
    from ovdiff_cli.procedural import write_voc

    write_voc(tmp_path / "data", 1)
    truth = tmp_path / "data" / "VOC2012" / "SegmentationClass" / "world_00000.png"
    with Image.open(truth) as im:  # a one-class dataset: kite (1), everything else background
        labels = np.asarray(im)
        im = Image.fromarray(np.where((labels == 1) | (labels == 255), labels, 0).astype(np.uint8), mode="P")
        im.putpalette(voc_palette().reshape(-1).tolist())
        im.save(truth)
    (tmp_path / "data" / "classes.txt").write_text("kite\n")
    common = [
        "--preset",
        "procedural",
        "--cache",
        str(tmp_path / "c"),
        "--device",
        "cpu",
        "--mask-proposer",
        "sam",
        "--sam-model",
        str(tiny_sam_dir),
    ]
    r = _run("protos", "add", "kite", "--n-images", "2", *common)
    assert r.exit_code == 0, r.output
    image = str(tmp_path / "data" / "VOC2012" / "JPEGImages" / "world_00000.jpg")
    r = _run(
        "segment", image, "--classes", "kite", "--out", str(tmp_path / "m"), "--no-build", "--n-images", "2", *common
    )
    assert r.exit_code == 0, r.output
    r = _run("eval", "voc", "--root", str(tmp_path / "data"), "--n-images", "2", *common)
    assert r.exit_code == 0 and "mIoU" in r.output, r.output


def test_protos_cli_errors_are_one_line(cache_dir):
    common = ["--cache", str(cache_dir)]
    Cache(cache_dir)  # an empty cache: rm and show find no class in it (no cache at all is another error)
    for args, msg in [
        (("add", "cat", "--extractor", "sd+vgg", "--preset", "tiny"), "unknown extractor part"),
        (("add", "--stuff", "sky", "--thing", "sky", "--preset", "tiny"), "both --stuff and --thing"),
        (("rm", "nothing-here"), "no cached class matches"),
        (("show", "cat", "--out", "x.png"), "no cached class matches"),
    ]:
        r = CliRunner().invoke(app, ["protos", *args, *common])
        assert r.exit_code == 2 and msg in r.output, r.output


def test_every_protos_command_shows_an_example_and_takes_only_options_it_uses():
    models = ("--preset", "--device", "--dtype")
    for cmd, takes, refuses in [
        ("add", ("--cache", *models, "--seed", "--sam-model"), ()),
        ("list", ("--cache", "--seed", "--extractor"), models),
        ("rm", ("--cache", "--with-support"), models),
        ("show", ("--cache",), models),
        ("export", ("--cache",), models),
        ("import", ("--cache",), (*models, "--seed")),
    ]:
        r = CliRunner().invoke(app, ["protos", cmd, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0 and "Example: ovdiff protos " + cmd in r.output
        for opt in (*takes, "--verbose", "--quiet"):
            assert opt in r.output, (cmd, opt)
        for opt in refuses:
            assert opt not in r.output, (cmd, opt)
