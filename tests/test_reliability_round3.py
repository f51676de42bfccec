"""Issue 24 (reliability, round 3): the Python API keeps the CLI's rules, no command writes over the
cache it reads, resumed runs trust only complete outputs of the same legend, cache tools report damage
and salvage what is intact. Each test is one reproduced case of the issue (procedural preset, offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app
from ovdiff_cli.errors import InvalidSetting, OvdiffError
from ovdiff_cli.io.images import MAX_PIXELS, ImageError
from ovdiff_cli.store.cache import ENV_DIRNAME, close_cache

PROC = ["--preset", "procedural", "--device", "cpu", "--dtype", "fp32"]
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A procedural pipeline with a built vocabulary, its cache, and a folder of four scenes."""
    root = tmp_path_factory.mktemp("rel3")
    pipe = ovdiff.Pipeline(preset="procedural", cache=root / "cache", device="cpu", dtype="fp32")
    vocab = pipe.vocabulary(["kite", "sky", "grass"])
    images = root / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(ovdiff.procedural_scene(seed=20 + i)).save(images / f"im_{i:02d}.png")
    return root, pipe, vocab, images


# --------------------------------------------------------------------------- the API's argument checks


@pytest.mark.parametrize("names", [["kite", None], [123], ["kite", "kite "], "kite", None, 5, []])
def test_vocabulary_names_follow_the_cli_rules(world, names):
    _, pipe, _, _ = world
    with pytest.raises(OvdiffError) as e:
        pipe.vocabulary(names, build=False)
    assert "\n" not in str(e.value)


def test_segment_refuses_a_missing_vocabulary_empty_and_oversized_images(world):
    _, pipe, vocab, _ = world
    scene = ovdiff.procedural_scene(seed=1)
    with pytest.raises(OvdiffError, match="Vocabulary"):
        pipe.segment(scene, None)
    with pytest.raises(OvdiffError, match="Vocabulary"):
        pipe.encode(scene).match("kite")
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint8), Image.new("RGB", (0, 0))):
        with pytest.raises(ImageError, match="empty"):
            pipe.segment(empty, vocab)
    side = int(MAX_PIXELS**0.5) + 1  # a view of one row: the check must refuse before any pixel is touched
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (side, side, 3), (0, 0, 1))
    with pytest.raises(ImageError, match="megapixels"):
        pipe.segment(huge, vocab)


def test_overlay_alpha_and_save_to_a_read_only_folder_are_typed_errors(world, tmp_path):
    _, pipe, vocab, _ = world
    result = pipe.segment(ovdiff.procedural_scene(seed=1), vocab)
    for alpha in (5, -0.1, float("nan"), "half"):
        with pytest.raises(InvalidSetting, match="alpha"):
            result.overlay(alpha=alpha)
    assert result.overlay(alpha=1.0).size[1] >= result.labels.shape[0]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anywhere: a path under a file cannot be written by anyone
            target = tmp_path / "a-file" / "mask.png"
            (tmp_path / "a-file").write_text("x")
        else:
            target = locked / "mask.png"
        with pytest.raises(OvdiffError, match="cannot write"):
            result.save(target)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    "kwargs", [{"size": (0, 0)}, {"size": (5, 100000)}, {"size": 7}, {"seed": -5}, {"seed": "a"}, {"size": (64.5, "x")}]
)
def test_procedural_scene_checks_its_arguments(kwargs):
    with pytest.raises(InvalidSetting):
        ovdiff.procedural_scene(**kwargs)


# --------------------------------------------------------------------------- nothing written over the cache


def _built_cache(world, tmp_path) -> Path:
    root, _, _, _ = world
    close_cache(root / "cache")
    dst = tmp_path / "cache"
    shutil.copytree(root / "cache", dst)
    return dst


def test_no_command_writes_inside_the_cache_it_reads(world, tmp_path):
    cache = _built_cache(world, tmp_path)
    _, _, _, images = world
    data = cache / ENV_DIRNAME / "data.mdb"
    before = data.read_bytes()
    common = ["--cache", str(cache)]
    for args in (
        ["protos", "export", str(data), "kite"],
        ["protos", "export", str(cache / "v.safetensors")],
        ["protos", "show", "kite", "--out", str(data)],
        ["segment", str(images), "--classes", "kite", "--out", str(cache / ENV_DIRNAME), "--no-build", *PROC],
    ):
        res = runner.invoke(app, [*args, *common])
        assert res.exit_code == 2 and "inside the cache" in res.output, (args, res.output)
    close_cache(cache)
    assert data.read_bytes() == before
    res = runner.invoke(app, ["protos", "list", *common, "--json"])
    assert res.exit_code == 0 and {c["class"] for c in json.loads(res.stdout)} == {"kite", "sky", "grass"}


# --------------------------------------------------------------------------- cache tools


def test_json_commands_print_a_json_error_object_on_error_exits(tmp_path):
    for args in (
        ["cache", "verify", "--json", "--cache", str(tmp_path / "nowhere")],
        ["protos", "list", "--json", "--cache", str(tmp_path / "nowhere")],
        ["segment", str(tmp_path / "absent.png"), "--classes", "kite", "--out", str(tmp_path / "m"), "--json", *PROC],
        ["cache", "info", "--json", "--cache", str(tmp_path / "nowhere")],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        doc = json.loads(res.stdout)
        assert doc["exit_code"] == 2 and doc["error"] and "\n" not in doc["error"], doc
    res = runner.invoke(app, ["cache", "verify", "--cache", str(tmp_path / "nowhere")])  # without --json: no document
    assert res.exit_code == 2 and not res.stdout.strip().startswith("{")


def test_verify_json_reports_a_damaged_data_file(world, tmp_path):
    cache = _built_cache(world, tmp_path)
    data = cache / ENV_DIRNAME / "data.mdb"
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 3])
    res = runner.invoke(app, ["cache", "verify", "--json", "--cache", str(cache)])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["sound"] is False and doc["repaired"] is False and "truncated" in doc["problems"][0]["reason"], doc
    res = runner.invoke(app, ["cache", "verify", "--json", "--repair", "--cache", str(cache)])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and doc["repaired"] is True and doc["problems"], res.output
    res = runner.invoke(app, ["cache", "verify", "--json", "--cache", str(cache)])
    assert res.exit_code == 0 and json.loads(res.stdout)["sound"] is True and json.loads(res.stdout)["problems"] == []


@pytest.mark.parametrize(
    "field,value",
    [
        ("kind", "bogus"),
        ("seed", -1),
        ("extractor", "resnet"),
        ("norm", ""),
        ("n_images", 0),
        ("name", 5),
        ("feature_grid", [16]),
    ],
)
def test_import_and_verify_check_every_field_value(world, tmp_path, field, value):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from ovdiff_cli.store.cache import Cache, class_key

    cache = _built_cache(world, tmp_path)
    export = tmp_path / "v.safetensors"
    assert runner.invoke(app, ["protos", "export", str(export), "kite", "--cache", str(cache)]).exit_code == 0
    with safe_open(str(export), framework="np") as f:
        meta = f.metadata()
    records = json.loads(meta["records"])
    pid = next(iter(records))
    records[pid][field] = value
    sums = json.loads(meta["sha256"])
    import hashlib

    meta["records"] = json.dumps(records)
    sums["__records__"] = hashlib.sha256(meta["records"].encode()).hexdigest()  # checksums agree: only values are bad
    meta["sha256"] = json.dumps(sums)
    save_file(load_file(str(export)), str(export), metadata=meta)
    fresh = tmp_path / "fresh"
    res = runner.invoke(app, ["protos", "import", str(export), "--cache", str(fresh)])
    assert res.exit_code == 2 and field in res.output and "nothing was imported" in res.output, res.output
    # the same bad value written into a cache in place: verify finds it, repair removes that class alone
    c = Cache(cache)
    rec = c.class_record(pid)
    c.write({class_key(pid): json.dumps(dict(rec, **{field: value})).encode()})
    close_cache(cache)
    res = runner.invoke(app, ["cache", "verify", "--json", "--cache", str(cache)])
    doc = json.loads(res.stdout)
    keys = [p["key"] for p in doc["problems"]]
    assert res.exit_code == 1 and f"p/{pid}" in keys and all(k.startswith(f"p/{pid}") for k in keys), doc
    assert runner.invoke(app, ["cache", "verify", "--repair", "--cache", str(cache)]).exit_code == 0
    res = runner.invoke(app, ["protos", "list", "--json", "--cache", str(cache)])
    assert {c["class"] for c in json.loads(res.stdout)} == {"sky", "grass"}


def test_repair_of_a_cut_data_file_salvages_every_class_whose_bytes_remain(world, tmp_path):
    """A file cut short loses the tree's upper pages (LMDB writes them last; here every branch page of the
    kept part is also zeroed, as in a large cache cut to a third): repair must read every intact leaf page.
    A class counts as intact when every value of its prototypes and support set is still in the kept
    bytes (a plain substring search, independent of any page reader)."""
    from test_cache_damage import class_units, entries, kept_classes

    cache = _built_cache(world, tmp_path)
    data = cache / ENV_DIRNAME / "data.mdb"
    blob = data.read_bytes()
    before = entries(cache)
    units = class_units(before)

    def damaged(cut: int) -> bytes:
        out = bytearray(blob[:cut])
        for p in range(2, cut // 4096):
            if int.from_bytes(out[p * 4096 + 10 : p * 4096 + 12], "little") == 1:  # a branch page
                out[p * 4096 : (p + 1) * 4096] = bytes(4096)
        return bytes(out)

    def intact(kept: bytes) -> set[str]:
        return {n for n, (core, support) in units.items() if all(before[k] in kept for k in core | support)}

    cut = next(
        c for c in (len(blob) * k // 12 for k in range(4, 12)) if intact(damaged(c))
    )  # a third, or the least cut keeping a class
    data.write_bytes(damaged(cut))
    res = runner.invoke(app, ["cache", "verify", "--repair", "--cache", str(cache)])
    assert res.exit_code == 0 and "repaired" in res.output, res.output
    after = entries(cache)
    kept = kept_classes(before, after)
    assert kept >= intact(damaged(cut)) and set(class_units(after)) == kept, (
        kept,
        intact(damaged(cut)),
        cut / len(blob),
    )


# --------------------------------------------------------------------------- resumed and interrupted runs


def _segment(world, out: Path, *extra: str):
    root, _, _, images = world
    return runner.invoke(
        app,
        [
            "segment",
            str(images),
            "--classes",
            "kite,sky,grass",
            "--out",
            str(out),
            "--cache",
            str(root / "cache"),
            *PROC,
            *extra,
        ],
    )


def test_skip_existing_redoes_empty_truncated_and_foreign_masks(world, tmp_path):
    out = tmp_path / "m"
    res = _segment(world, out, "-q")
    assert res.exit_code == 0, res.output
    good = {p.name: p.read_bytes() for p in out.glob("im_*.png")}
    (out / "im_00.png").write_bytes(b"")  # 0 bytes
    (out / "im_01.png").write_bytes(good["im_01.png"][: len(good["im_01.png"]) // 2])  # truncated
    foreign = Image.fromarray(np.full((8, 8), 9, np.uint8), mode="P")
    foreign.putpalette([v % 256 for v in range(768)])
    foreign.save(out / "im_02.png")  # label 9: not a mask of this 3-class run
    res = _segment(world, out, "--skip-existing")
    assert res.exit_code == 0 and "1 of 4 image(s) already done" in res.output, res.output
    assert {p.name: p.read_bytes() for p in out.glob("im_*.png")} == good


def test_resuming_with_another_format_is_refused(world, tmp_path):
    out = tmp_path / "m"
    assert _segment(world, out, "-q").exit_code == 0
    legend = (out / "classes.json").read_bytes()
    res = _segment(world, out, "--skip-existing", "--format", "npz")
    assert res.exit_code == 2 and "--format" in res.output and "png" in res.output, res.output
    assert not list(out.glob("*.npz")) and (out / "classes.json").read_bytes() == legend
    res = _segment(world, out, "--format", "npz", "--overwrite", "-q")  # replacing the set is still possible
    assert res.exit_code == 0 and len(list(out.glob("*.npz"))) == 4 and not list(out.glob("im_*.png")), res.output
    assert json.loads((out / "classes.json").read_text())["mask_format"] == "npz"
    res = _segment(world, out, "--skip-existing", "--format", "npz")
    assert res.exit_code == 0 and "4 of 4 image(s) already done" in res.output, res.output


def test_a_full_disk_leaves_only_whole_outputs_and_the_summary_counts_them(world, tmp_path):
    from conftest import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "small", "size=160k") as small:
        out = small / "m"
        res = _segment(world, out, "--overlay", "--explain", "--json")
        doc = json.loads(res.stdout)
        written = sorted(p.stem for p in out.glob("im_*.png"))
        stray = [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]
        assert not stray, stray
        assert doc["written"] == len(written) and doc["failed"] == 4 - len(written), (doc, written)
        assert doc["failed"] > 0, "the disk did not fill: make the tmpfs smaller"
        for name in written:  # each written image has every output, whole
            assert (out / "overlays" / f"{name}.jpg").is_file() and (out / "explain" / f"{name}.json").is_file()
            Image.open(out / "overlays" / f"{name}.jpg").load()
        failed = {Path(f["input"]).stem for f in doc["failures"]}
        leftovers = {p.name.split(".")[0] for p in out.rglob("im_*") if p.is_file()}
        assert not (leftovers & failed), leftovers & failed


def test_segment_never_writes_an_overlay_over_an_input(world, tmp_path):
    out = tmp_path / "m"
    (out / "overlays").mkdir(parents=True)
    shot = out / "overlays" / "im_00.jpg"
    Image.fromarray(ovdiff.procedural_scene(seed=3)).save(shot)
    before = shot.read_bytes()
    res = runner.invoke(
        app,
        [
            "segment",
            str(out / "overlays"),
            "--classes",
            "kite",
            "--out",
            str(out),
            "--overlay",
            "--cache",
            str(world[0] / "cache"),
            *PROC,
        ],
    )
    assert res.exit_code == 2 and "would overwrite the input" in res.output, res.output
    assert shot.read_bytes() == before


@pytest.mark.parametrize(
    "kwargs",
    [{"cache": 123}, {"models": ["sd"]}, {"models": {"sd": 5}}, {"sample": 5}, {"segment": ["eta"]}, {"protos": "sd"}],
)
def test_pipeline_arguments_of_the_wrong_type_are_typed_errors(kwargs, tmp_path):
    with pytest.raises(InvalidSetting):
        ovdiff.Pipeline(**{"preset": "procedural", "cache": tmp_path / "c", **kwargs})


def test_vocabulary_kinds_must_be_a_table(world):
    _, pipe, _, _ = world
    with pytest.raises(InvalidSetting, match="kinds"):
        pipe.vocabulary(["kite"], kinds=["stuff"])
