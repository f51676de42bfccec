"""Each config refuses, as it is made, every value the CLI refuses: `ovdiff.Pipeline(...)`,
`dataclasses.replace` and the command line raise the same `InvalidSetting`, before any work."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app
from ovdiff_cli.cli.common import phrase
from ovdiff_cli.config import ProtoConfig, RunConfig, SampleConfig, SegmentConfig
from ovdiff_cli.errors import InvalidSetting
from ovdiff_cli.limits import MAX_WINDOWS, RANGES


def outside(setting: str) -> list:
    """Values outside `setting`'s stated range, as the boundary test tries them on the CLI: just below,
    just above, not finite (for a float range), not a number."""
    lo, hi = RANGES[setting]
    values = [lo - 1, hi + 1, "abc", True]
    return values + ([math.nan, math.inf] if isinstance(lo, float) else [1e30])


def cases(settings: tuple[str, ...], more: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return [(s, v) for s in settings for v in outside(s)] + more


SAMPLE = cases(
    ("n_images", "batch_size", "steps", "guidance_scale", "size"),
    [
        ("size", 60),
        ("guidance_scale", 0.0),
        ("prompt_template", "a photo"),
        ("prompt_template", "{} {}"),
        ("attribution_size", 0),
        ("negative_prompt", 3),
    ],
)
PROTO = cases(
    ("k_parts",),
    [
        ("extractor", "sd+vgg"),
        ("extractor", "clip+clip"),
        ("extractor", ""),
        ("extractor", 3),
        ("mask_proposer", "cut"),
        ("mask_features", "vgg"),
        ("feature_size", 60),
        ("feature_size", 0),
        ("batch_size", 0),
        ("kmeans_iters", 0),
        ("kmeans_max_points", -1),
    ],
)
SEGMENT = cases(
    ("eta", "short_side", "stride", "fg_threshold", "stuff_threshold", "image_batch", "filter_size"),
    [
        ("windows", (0,)),
        ("windows", (448, 4097)),
        ("windows", ()),
        ("windows", (448,) * (MAX_WINDOWS + 1)),
        ("windows", 448),
        ("windows", ("abc",)),
        ("refine", "crf"),
        ("proto_kinds", ("class", "pixel")),
        ("proto_kinds", ()),
        ("proto_kinds", "class"),
    ],
)


def ids(cases: list[tuple[str, object]]) -> list[str]:
    return [f"{s}={v!r}" for s, v in cases]


def refused(make) -> InvalidSetting:
    with pytest.raises(InvalidSetting) as info:
        make()
    return info.value


@pytest.mark.parametrize(("setting", "value"), SAMPLE, ids=ids(SAMPLE))
def test_sample_config_refuses_at_construction(setting, value, tmp_path):
    from_api = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", sample={setting: value}))
    assert from_api.setting == setting and str(refused(lambda: SampleConfig(**{setting: value}))) == str(from_api)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("setting", "value"), PROTO, ids=ids(PROTO))
def test_proto_config_refuses_at_construction(setting, value, tmp_path):
    from_api = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", protos={setting: value}))
    assert from_api.setting == setting and str(refused(lambda: ProtoConfig(**{setting: value}))) == str(from_api)


@pytest.mark.parametrize(("setting", "value"), SEGMENT, ids=ids(SEGMENT))
def test_segment_config_refuses_at_construction(setting, value, tmp_path):
    from_api = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", segment={setting: value}))
    assert from_api.setting == setting and str(refused(lambda: SegmentConfig(**{setting: value}))) == str(from_api)


@pytest.mark.parametrize("seed", outside("seed"))
def test_run_config_refuses_a_seed_outside_64_bits(seed, tmp_path):
    from_api = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", seed=seed))
    assert from_api.setting == "seed" and str(refused(lambda: RunConfig(seed=seed))) == str(from_api)


def test_lists_are_taken_for_tuples_as_json_gives_them():
    cfg = SegmentConfig(windows=[96, 64], proto_kinds=["class"])
    assert cfg.windows == (96, 64) and cfg.proto_kinds == ("class",)


CLI = [  # (command line, the Pipeline keywords that say the same)
    (["segment", "IMAGE", "--classes", "kite", "--out", "OUT", "--stride", "0"], {"segment": {"stride": 0}}),
    (["segment", "IMAGE", "--classes", "kite", "--out", "OUT", "--eta=0"], {"segment": {"eta": 0}}),
    (
        ["segment", "IMAGE", "--classes", "kite", "--out", "OUT", "--windows", "448,0"],
        {"segment": {"windows": (448, 0)}},
    ),
    (["segment", "IMAGE", "--classes", "kite", "--out", "OUT", "--short-side=-5"], {"segment": {"short_side": -5}}),
    (
        ["segment", "IMAGE", "--classes", "kite", "--out", "OUT", "--fg-threshold", "1.5"],
        {"segment": {"fg_threshold": 1.5}},
    ),
    (["segment", "IMAGE", "--classes", "kite", "--out", "OUT", "--seed=-1"], {"seed": -1}),
    (["protos", "add", "kite", "--k-parts", "0"], {"protos": {"k_parts": 0}}),
    (["protos", "add", "kite", "--extractor", "sd+vgg"], {"protos": {"extractor": "sd+vgg"}}),
    (["sample", "kite", "--n-images", "0"], {"sample": {"n_images": 0}}),
    (["sample", "kite", "--size", "60"], {"sample": {"size": 60}}),
]


@pytest.mark.parametrize(("argv", "keywords"), CLI, ids=[" ".join(a[:2] + a[-2:]) for a, _ in CLI])
def test_the_cli_prints_the_libraries_error_in_its_own_options(argv, keywords, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    fresh = tmp_path / "fresh"
    argv = [str(image) if a == "IMAGE" else str(fresh / "out") if a == "OUT" else a for a in argv]
    res = CliRunner().invoke(app, [*argv, "--preset", "procedural", "--cache", str(fresh / "cache")])
    error = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=fresh / "cache", **keywords))
    assert res.exit_code == 2 and res.output.strip() == f"error: {phrase(error)}", res.output
    assert not fresh.exists()


# Issue 34: one set of rules. Each bad setting is refused by the library as the Pipeline is made, with the
# same InvalidSetting naming the setting, whether it comes from Python, a command or `ovdiff serve`.
SEGMENT_ARGV = ["segment", "IMAGE", "--classes", "kite", "--out", "OUT"]
SETTINGS = [  # (setting, command-line options, the Pipeline keywords that say the same)
    ("device", ["--device", "gpu"], {"device": "gpu"}),
    ("device", ["--device", "cuda:x"], {"device": "cuda:x"}),
    ("dtype", ["--dtype", "fp8"], {"dtype": "fp8"}),
    ("filter_model", ["--filter-model", "bogus"], {"models": {"filter": "bogus"}}),
    ("sd_model", ["--sd-model", "/no/such/sd-folder"], {"models": {"sd": "/no/such/sd-folder"}}),
    ("clip_model", ["--clip-model", "./no-such-clip.bin"], {"models": {"clip": "./no-such-clip.bin"}}),
    ("sam2_model", ["--sam2-model", "/no/such/sam2"], {"models": {"sam2": "/no/such/sam2"}}),
    ("part_model", ["--part-model", "dinov2=/no/such/dinov2"], {"models": {"dinov2": "/no/such/dinov2"}}),
    ("proto_kinds", ["--protos", "class,pixel"], {"segment": {"proto_kinds": ("class", "pixel")}}),
    ("proto_kinds", ["--protos", ","], {"segment": {"proto_kinds": ("", "")}}),
    ("windows", ["--windows", "448,abc"], {"segment": {"windows": (448, "abc")}}),
]


@pytest.mark.parametrize(("setting", "options", "keywords"), SETTINGS, ids=[" ".join(o) for _, o, _ in SETTINGS])
def test_a_bad_setting_is_the_same_typed_error_from_the_api_and_the_cli(setting, options, keywords, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    fresh = tmp_path / "fresh"
    argv = [str(image) if a == "IMAGE" else str(fresh / "out") if a == "OUT" else a for a in SEGMENT_ARGV]
    res = CliRunner().invoke(app, [*argv, *options, "--preset", "procedural", "--cache", str(fresh / "cache")])
    error = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=fresh / "cache", **keywords))
    assert error.setting == setting
    assert res.exit_code == 2 and res.output.strip() == f"error: {phrase(error)}", res.output
    assert not fresh.exists()


SERVE = [s for s in SETTINGS if s[0] in ("device", "dtype", "filter_model", "sd_model", "sam2_model", "part_model")]


@pytest.mark.parametrize(("setting", "options", "keywords"), SERVE, ids=[" ".join(o) for _, o, _ in SERVE])
def test_serve_refuses_a_bad_setting_as_the_api_does_before_it_listens(setting, options, keywords, tmp_path):
    res = CliRunner().invoke(app, ["serve", *options, "--preset", "procedural", "--cache", str(tmp_path / "c")])
    error = refused(lambda: ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", **keywords))
    assert res.exit_code == 2 and res.output.strip() == f"error: {phrase(error)}", res.output
    assert "http://" not in res.output


def test_a_part_model_not_of_the_part_form_names_the_option_on_both_sides(tmp_path):
    from ovdiff import ModelOptions

    error = refused(lambda: ovdiff.Pipeline(preset="procedural", models=ModelOptions(part_model=("bogus=x",))))
    assert error.setting == "part_model" and "PART=SPEC" in str(error)
    res = CliRunner().invoke(app, ["doctor", "--preset", "procedural", "--part-model", "bogus=x"])
    assert res.exit_code == 2 and res.output.strip() == f"error: {phrase(error)}", res.output


@pytest.mark.parametrize(
    ("keywords", "setting"),
    [
        ({"models": {"unet": "x"}}, "models"),
        ({"segment": {"etaa": 4}}, "segment"),
        ({"sample": {"n_image": 4}}, "sample"),
        ({"protos": {"extractorr": "sd"}}, "protos"),
    ],
)
def test_unknown_roles_and_config_fields_are_typed_errors_naming_where(keywords, setting):
    error = refused(lambda: ovdiff.Pipeline(preset="procedural", **keywords))
    assert error.setting == setting and next(iter(next(iter(keywords.values())))) in str(error)


def test_pipeline_refuses_an_unknown_device_at_construction_not_at_first_use(tmp_path):
    with pytest.raises(InvalidSetting, match="device 'gpu' is unknown"):
        ovdiff.Pipeline(preset="procedural", cache=tmp_path / "c", device="gpu")
    with pytest.raises(InvalidSetting, match="dtype 'fp8' is unknown"):
        RunConfig(dtype="fp8")
    assert not (tmp_path / "c").exists()


def test_a_parsed_class_list_is_checked_once_not_again_by_each_call(monkeypatch):
    """The CLI parses --classes into a checked list; the Pipeline's calls take it as it is."""
    from ovdiff_cli import names

    parsed = names.parse_class_list("kite, sky")
    calls = []
    monkeypatch.setattr(names, "validate", lambda name: calls.append(name) or name)
    assert names.class_list(parsed) is parsed and calls == []
    assert names.class_list(["kite", "sky"]) == parsed and calls == ["kite", "sky"]  # a plain list is checked
