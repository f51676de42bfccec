"""Damaged caches report every problem and salvage what is intact: verify --json over flipped bytes, repair of a
cut file, a broken support image truncating its set while the class stays."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from conftest import PROC
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def six_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    names = ["kite", "boat", "sky", "grass", "car", "cat"]  # cat is not drawn by the world: its build order differs
    res = runner.invoke(app, ["protos", "add", *names, "--cache", str(root / "cache"), "-q", *PROC])
    assert res.exit_code == 0, res.output
    from ovdiff_cli.store.cache import close_cache

    close_cache(root / "cache")
    return root / "cache"


def test_verify_json_reports_every_problem_of_a_cache_with_flipped_bytes(six_classes, tmp_path):
    cache = shutil.copytree(six_classes, tmp_path / "c")
    data = cache / "ovdiff.lmdb" / "data.mdb"
    blob = bytearray(data.read_bytes())
    rng = random.Random(1)
    for _ in range(50):
        blob[rng.randrange(8192, len(blob))] ^= 0xFF
    blob[blob.find(b'"kind_source"') + 3] ^= 0xFF  # one class record among them (main stopped at the first)
    data.write_bytes(bytes(blob))
    plain = runner.invoke(app, ["cache", "verify", "--cache", str(cache)])
    res = runner.invoke(app, ["cache", "verify", "--json", "--cache", str(cache)])
    assert res.exit_code == 1 == plain.exit_code, res.output
    report = json.loads(res.stdout)
    assert report["sound"] is False and report["classes"] == 6
    assert len(report["problems"]) == plain.output.count("broken ") > 5


def test_repair_of_a_cut_file_keeps_every_class_whose_own_pages_are_intact(six_classes, tmp_path):
    """A class part's prototypes do not need its support images: a cut that loses the images but not the
    record and arrays keeps the class (main kept none of a cache cut in half when the images were lost)."""
    from test_cache_damage import class_units, entries, pages_of_keys

    original = (six_classes / "ovdiff.lmdb" / "data.mdb").read_bytes()
    before = entries(six_classes)
    _, deps = pages_of_keys(
        original, max((0, 1), key=lambda m: int.from_bytes(original[m * 4096 + 144 :][:8], "little"))
    )
    units = class_units(before)
    saved = {}
    for percent in (40, 50, 90):  # main kept none at 40%: the class's support images were cut off
        cut = len(original) * percent // 100
        whole = {n for n, (core, _) in units.items() if all(max(deps[k]) < cut // 4096 for k in core)}
        cache = shutil.copytree(six_classes, tmp_path / str(percent))
        (cache / "ovdiff.lmdb" / "data.mdb").write_bytes(original[:cut])
        res = runner.invoke(app, ["cache", "verify", "--repair", "--cache", str(cache)])
        assert res.exit_code == 0, res.output
        after = entries(cache)
        kept = {n for n, (core, _) in class_units(after).items() if all(after[k] == before[k] for k in core)}
        assert kept == set(class_units(after)) and kept >= whole, (percent, kept, whole)
        saved[percent] = len(kept)
    assert saved[40] >= 1 and saved[90] >= 4, saved


def test_a_broken_support_image_truncates_its_set_and_keeps_the_class(six_classes, tmp_path):
    from ovdiff_cli.store.cache import Cache, close_cache

    cache = shutil.copytree(six_classes, tmp_path / "c")
    c = Cache(cache)
    pid, rec = next((p, r) for p, r in c.classes() if r["name"] == "kite")
    arrays = c.class_arrays(pid)
    c.write({f"s/{rec['support_id']}/img/00003".encode(): b"\x89PNG broken"})
    res = runner.invoke(app, ["cache", "verify", "--repair", "--cache", str(cache)])
    assert res.exit_code == 0 and "img/00003" in res.output, res.output
    assert c.support_meta(rec["support_id"])["n_images"] == 3  # the images before the broken one
    kept = c.class_arrays(pid)
    assert c.class_record(pid) == rec and all((kept[n] == a).all() for n, a in arrays.items())
    assert runner.invoke(app, ["cache", "verify", "--cache", str(cache)]).exit_code == 0
    show = ["protos", "show", "kite", "--out", str(tmp_path / "k.png"), "--cache", str(cache)]
    res = runner.invoke(app, show)
    assert res.exit_code == 2 and "ovdiff sample kite --seed 0 --preset procedural" in res.output, res.output
    assert runner.invoke(app, ["sample", "kite", "--cache", str(cache), "-q", *PROC]).exit_code == 0
    assert runner.invoke(app, show).exit_code == 0  # the lost images were drawn again, as they were
    close_cache(cache)
