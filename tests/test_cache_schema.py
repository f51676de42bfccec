"""The cache's one schema: every kind of entry the writers produce verifies sound, survives
`cache verify --repair` untouched and round-trips export/import; the writer refuses what the schema does
not describe; a class from the user's photos is a first-class citizen of verify, repair and sharing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_photos import write_photos
from typer.testing import CliRunner

from ovdiff_cli.bench.settings import synthetic_bank
from ovdiff_cli.cli.app import app
from ovdiff_cli.engines.photos import photo_class
from ovdiff_cli.engines.vocab import build_from_photos, ensure_classes, put_prototypes
from ovdiff_cli.method.stage3_filter.prefilter import CategoryFilter
from ovdiff_cli.models.presets import ModelSpecs, get_preset
from ovdiff_cli.store import schema
from ovdiff_cli.store.audit import check, verify
from ovdiff_cli.store.cache import Cache, close_cache
from ovdiff_cli.store.protos import VocabArrays
from ovdiff_cli.store.schema import SchemaViolation
from ovdiff_cli.store.sharing import export_classes, import_classes

runner = CliRunner()
PROC = ["--preset", "procedural", "--device", "cpu", "--dtype", "fp32"]
P = get_preset("procedural")


def kinds_in(cache: Cache) -> dict[str, set[bytes]]:
    """Kind name → keys of that kind in the cache, each entry classified by the schema alone."""
    out: dict[str, set[bytes]] = {}
    for k, v in cache.scan(b""):
        entry, _ = schema.entry_of(k)
        kind = schema.record_kind(entry, json.loads(v) if entry in schema.JSON_ENTRIES else {})
        out.setdefault(kind.name, set()).add(k)
    return out


@pytest.fixture(scope="module")
def every_kind(procedural_stages, tmp_path_factory):
    """One cache holding an entry of every kind, each written by the writer ovdiff uses for it."""
    root = tmp_path_factory.mktemp("kinds")
    cache = Cache(root / "cache")  # the schema record
    ensure_classes(cache, procedural_stages, ["kite"], 0, P.sample, P.protos)  # support set, images, class
    photos = write_photos(root / "photos", "my kite", 3)
    build_from_photos(cache, procedural_stages, "my kite", photos, 0, P.sample, P.protos)  # photos only
    build_from_photos(cache, procedural_stages, "ball", write_photos(root / "b", "ball", 2), 0, P.sample, P.protos, 2)
    (bank,) = synthetic_bank(["car"], {"procedural": 8}, 3, 0)
    put_prototypes(cache, procedural_stages.specs, bank, 0, P.sample, P.protos, source="test")
    cache.put_text_embeddings("test-model", {"a photo of a kite": np.eye(4, dtype=np.float32)[0]})
    VocabArrays(cache).put_vocab_array("0" * 24, "stuff_sim", np.array([0.5, -2.0], np.float32))  # streamed vocab
    CategoryFilter(procedural_stages.scorer(), cache, ["kite", "car"], vocab=VocabArrays(cache))  # v/<fid>/class_text
    return cache


def test_a_vocabulary_array_of_the_wrong_shape_or_norm_is_reported(tmp_path):
    cache = Cache(tmp_path / "c")
    memo = VocabArrays(cache)
    memo.put_vocab_array("1" * 24, "class_text", np.full((2, 4), 0.5, np.float32))  # unit rows: sound
    assert verify(cache) == []
    memo.put_vocab_array("2" * 24, "class_text", np.ones((2, 4), np.float32))  # rows of norm 2
    memo.put_vocab_array("3" * 24, "stuff_sim", np.ones((2, 2), np.float32))  # not one number per prototype
    problems = " ".join(map(str, verify(cache)))
    assert "not unit vectors" in problems and "not one number per prototype" in problems


def test_every_kind_the_writers_produce_is_in_the_schema_and_verifies_sound(every_kind):
    found = kinds_in(every_kind)
    # a kind added to the schema without a writer above (or a writer producing an unknown kind) fails here
    assert set(found) == {k.name for k in schema.KINDS}, set(found) ^ {k.name for k in schema.KINDS}
    assert verify(every_kind) == []
    before = dict(every_kind.scan(b""))
    audit = check(every_kind, repair=True)
    assert audit.problems == [] and not audit.lost_photos
    assert dict(every_kind.scan(b"")) == before  # repair of a sound cache changes nothing


def test_every_exported_kind_round_trips_export_and_import(every_kind, tmp_path):
    found = kinds_in(every_kind)
    pids = sorted(k.decode()[2:] for name in ("class", "photo-class", "outside-class") for k in found[name])
    export_classes(every_kind, pids, tmp_path / "all.safetensors")
    other = Cache(tmp_path / "other")
    assert import_classes(other, tmp_path / "all.safetensors") == pids
    assert verify(other) == []
    imported = kinds_in(other)
    exported = {k.name for k in schema.KINDS if k.exported}
    assert {n for n in imported if n != "schema"} == exported
    for name in exported:
        for k in found[name] if name != "photo-note" else imported[name]:
            a, b = every_kind.get(k), other.get(k)
            assert b is not None, (name, k)
            if name in schema.JSON_ENTRIES or name.endswith("class") or name == "photo-note":
                assert json.loads(a) == json.loads(b), (name, k)
            else:
                assert a == b, (name, k)  # arrays bit for bit
    specs = ModelSpecs.of("procedural")
    assert photo_class(other, "my kite", 0, specs)["photos"] == photo_class(every_kind, "my kite", 0, specs)["photos"]


def test_the_writer_refuses_what_the_schema_does_not_describe(every_kind):
    pid, rec = next((p, r) for p, r in every_kind.classes() if "photo_note" in r)
    arrays = every_kind.class_arrays(pid)
    with pytest.raises(SchemaViolation, match="unknown field.*'colour'"):
        every_kind.put_class(pid, dict(rec, colour="red"), arrays)
    with pytest.raises(SchemaViolation, match="n_photos"):
        every_kind.put_class(pid, dict(rec, n_photos="three"), arrays)
    with pytest.raises(SchemaViolation, match="no kind of cache entry"):
        every_kind.put_class("not-an-id", rec, arrays)
    with pytest.raises(SchemaViolation, match="photo-note record has no 'photos'"):
        every_kind.put_note("0" * 24, {"name": "kite", "seed": 0})
    assert verify(every_kind) == []  # nothing was written


# --------------------------------------------------------------------------- the CLI, as issue 36 found it


def test_a_photo_class_is_sound_survives_repair_and_is_shared_by_export(tmp_path):
    photos = write_photos(tmp_path / "p", "my kite", 3)
    cache = ["--cache", str(tmp_path / "c")]
    assert runner.invoke(app, ["protos", "add", "my kite", "--images", str(photos), "-q", *cache, *PROC]).exit_code == 0
    res = runner.invoke(app, ["cache", "verify", "--json", *cache])
    assert res.exit_code == 0 and json.loads(res.stdout)["sound"] is True, res.output
    res = runner.invoke(app, ["cache", "verify", "--repair", *cache])
    assert res.exit_code == 0 and "cache is sound" in res.output and "removed" not in res.output, res.output
    assert photo_class(Cache(tmp_path / "c"), "my kite", 0, ModelSpecs.of("procedural")) is not None
    out = tmp_path / "kite.safetensors"
    assert runner.invoke(app, ["protos", "export", str(out), "my kite", *cache]).exit_code == 0
    other = ["--cache", str(tmp_path / "other")]
    res = runner.invoke(app, ["protos", "import", str(out), *other])
    assert res.exit_code == 0, res.output
    from ovdiff_cli.procedural import write_voc

    write_voc(tmp_path / "data", 1, seed=2)
    seg = ["segment", str(tmp_path / "data/VOC2012/JPEGImages"), "--classes", "my kite", "--no-build"]
    res = runner.invoke(app, [*seg, "--out", str(tmp_path / "o"), "--json", *other, *PROC])
    assert res.exit_code == 0 and json.loads(res.stdout)["written"] == 1, res.output  # found by its name
    close_cache(tmp_path / "c")
    close_cache(tmp_path / "other")


def test_repair_that_loses_the_photos_says_to_give_them_again(tmp_path):
    photos = write_photos(tmp_path / "p", "my kite", 3)
    cache = ["--cache", str(tmp_path / "c")]
    assert runner.invoke(app, ["protos", "add", "my kite", "--images", str(photos), "-q", *cache, *PROC]).exit_code == 0
    c = Cache(tmp_path / "c")
    (pid,) = [p for p, _ in c.classes()]
    psid = c.class_record(pid)["photo_set"]
    c.write({f"p/{pid}/a/fg/class".encode(): b"broken", f"s/{psid}/img/00000".encode(): b"broken"})
    res = runner.invoke(app, ["cache", "verify", "--repair", *cache])
    assert res.exit_code == 0, res.output
    assert "protos add 'my kite' --images DIR" in res.output, res.output
    assert runner.invoke(app, ["cache", "verify", *cache]).exit_code == 0
    assert photo_class(c, "my kite", 0, ModelSpecs.of("procedural")) is None
    close_cache(tmp_path / "c")
