"""`--proto-dtype fp16` stores prototypes in half precision under their own cache key; they are read
back as float32, so matching accumulates in fp32 as with fp32 storage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.compose import Stages
from ovdiff_cli.config import ProtoConfig
from ovdiff_cli.engines.vocab import ensure_classes, load_class, put_prototypes
from ovdiff_cli.errors import InvalidSetting
from ovdiff_cli.models.presets import PRESETS
from ovdiff_cli.store.cache import Cache
from ovdiff_cli.store.keys import class_ids


def test_fp16_prototypes_are_half_the_bytes_under_their_own_key_and_read_as_float32(tmp_path):
    from ovdiff_cli.bench.settings import synthetic_bank

    preset = PRESETS["procedural"]
    specs = Stages.for_run("procedural", "cpu", "fp32").specs
    half = replace(preset.protos, proto_dtype="fp16")
    cache = Cache(tmp_path / "c")
    (cls,) = synthetic_bank(["kite"], {"procedural": 512}, 8, 0)
    (p32,) = put_prototypes(cache, specs, cls, 0, preset.sample, preset.protos, "test")
    (p16,) = put_prototypes(cache, specs, cls, 0, preset.sample, half, "test")
    assert p32 != p16 and class_ids("kite", 0, specs, preset.sample, preset.protos) == {"procedural": p32}
    rec16, rec32 = cache.class_record(p16), cache.class_record(p32)
    assert rec16["arrays"]["fg/part"]["dtype"] == "<f2" and rec32["arrays"]["fg/part"]["dtype"] == "<f4"
    assert cache.class_size(p16) < 0.6 * cache.class_size(p32)
    got = load_class(cache, p16)
    want = cls.parts["procedural"].fg["part"]
    assert got.fg["part"].dtype == np.float32
    np.testing.assert_array_equal(got.fg["part"], want.astype(np.float16).astype(np.float32))
    assert np.abs(got.fg["part"] - want).max() < 1e-3
    # a run asking for fp16 finds the fp16 class, as built; the fp32 run its own
    stages = Stages.for_run("procedural", "cpu", "fp32")
    (heads,) = ensure_classes(cache, stages, ["kite"], 0, preset.sample, half, build=False, arrays=False)
    assert heads.parts["procedural"].pid == p16


def test_proto_dtype_is_checked_and_offered_on_the_commands():
    with pytest.raises(InvalidSetting, match="proto_dtype"):
        ProtoConfig(proto_dtype="bf16")
    for command in ("segment", "eval", "protos add"):
        res = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "--proto-dtype" in res.output, command
