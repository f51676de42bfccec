"""The cache tools report damage and salvage what is intact: JSON errors, verify --json on a damaged data file,
every field value checked by import and verify, repair of a cut data file (procedural preset)."""

from __future__ import annotations

import json

import pytest
from conftest import PROC, copy_of_api_cache
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.store.cache import ENV_DIRNAME, close_cache

runner = CliRunner()


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


def test_verify_json_reports_a_damaged_data_file(api_world, tmp_path):
    cache = copy_of_api_cache(api_world, tmp_path)
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
def test_import_and_verify_check_every_field_value(api_world, tmp_path, field, value):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from ovdiff_cli.store.cache import Cache, class_key

    cache = copy_of_api_cache(api_world, tmp_path)
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


def test_repair_of_a_cut_data_file_salvages_every_class_whose_bytes_remain(api_world, tmp_path):
    """A file cut short loses the tree's upper pages (LMDB writes them last; here every branch page of the
    kept part is also zeroed, as in a large cache cut to a third): repair must read every intact leaf page.
    A class counts as intact when every value of its prototypes and support set is still in the kept
    bytes (a plain substring search, independent of any page reader)."""
    from test_cache_damage import class_units, entries, kept_classes

    cache = copy_of_api_cache(api_world, tmp_path)
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
