"""`ovdiff bench --quick`: every section and figure is written, with finite numbers (speed is never asserted)."""

from __future__ import annotations

import json
import math
import typing

import pytest
from typer.testing import CliRunner

from ovdiff_cli.bench.settings import SECTIONS as SECTION_NAMES
from ovdiff_cli.bench.settings import bench_settings, markdown_table, parse_sections
from ovdiff_cli.bench.stats import figure, in_child, interleaved_pairs, ratios
from ovdiff_cli.cli.app import app
from ovdiff_cli.cli.bench import bench as bench_command
from ovdiff_cli.errors import OvdiffError

SECTIONS = {
    "sampling": {"capture", "stock", "ratio"},
    "prototypes": {"features", "masks", "kmeans", "kmeans_only", "kmeans_share", "other", "total"},
    "segment": {
        "total",
        "features",
        "filter",
        "filter_clip",
        "matching",
        "upsample_io",
        "overhead_share",
        "overhead_share_filter",
    },
    "filter": {"cold", "warm", "speedup", "prompts"},
    "vocabulary": {"add", "alone", "ratio_wall", "ratio", "load", "first_run_calls", "second_run_calls"},
    "memory": {"small", "large", "growth"},
    "class_build": {"small", "large", "growth", "beyond_small", "beyond_models"},
    "large_vocab": {
        "fill",
        "load_small",
        "load",
        "load_per_class",
        "load_mib",
        "load_peak",
        "load_held",
        "load_file",
        "segment_few",
        "segment_many",
        "segment_ratio",
        "matching_ratio",
        "filter_cold",
        "filter_warm",
        "filter_share",
        "rss_base",
        "rss_beyond",
        "rss_beyond_few",
        "rss_ratio",
        "rss_vocab",
        "rss_file",
        "add",
        "alone",
        "add_wall_ratio",
        "add_ratio",
    },
    "beyond": {"plain_miou", "pamr", "pamr_miou", "vote", "vote_miou", "photos_build", "photos_miou"},
}
TARGETS = {
    ("sampling", "ratio"),
    ("segment", "overhead_share"),
    ("vocabulary", "ratio"),
    ("vocabulary", "second_run_calls"),
    ("memory", "growth"),
    ("prototypes", "kmeans_share"),
    ("class_build", "growth"),
    ("large_vocab", "load_per_class"),
    ("large_vocab", "segment_ratio"),
    ("large_vocab", "rss_beyond"),
    ("large_vocab", "rss_ratio"),
    ("large_vocab", "add_ratio"),
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "r.json"
    # seed 1: the bench's own segment run must find the classes it built (it looked them up with seed 0)
    res = CliRunner().invoke(
        app, ["bench", "--quick", "--out", str(out), "--device", "auto", "--dtype", "fp32", "--seed", "1"]
    )
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), res.output


def test_quick_bench_writes_every_section_with_finite_figures(quick_results):
    results, _ = quick_results
    assert set(results["sections"]) == set(SECTIONS)
    for name, keys in SECTIONS.items():
        figures = results["sections"][name]["figures"]
        assert set(figures) == keys, name
        for key, f in figures.items():
            values = [f["median"], f["min"], f["max"], *f["runs"]]
            assert all(math.isfinite(v) for v in values), (name, key)
            assert f["min"] <= f["median"] <= f["max"]
            assert ("target_at_most" in f) == ((name, key) in TARGETS), (name, key)


def test_results_record_machine_settings_and_exact_counts(quick_results):
    results, output = quick_results
    assert {"platform", "cpu_count", "torch", "device_name"} <= set(results["machine"])
    assert results["settings"]["preset"] == "tiny" and results["settings"]["repeats"] == 1
    assert results["settings"]["seed"] == 1
    vocab = results["sections"]["vocabulary"]["figures"]
    assert vocab["second_run_calls"]["median"] == 0 and vocab["second_run_calls"]["pass"]
    assert vocab["first_run_calls"]["median"] > 0
    assert len(vocab["add"]["runs"]) == len(vocab["load"]["runs"]) == results["settings"]["pairs"]
    assert "new process" in results["sections"]["vocabulary"]["notes"][0]
    assert results["sections"]["filter"]["figures"]["prompts"]["median"] > 0
    assert "SYNTHESISED" in results["sections"]["segment"]["notes"][0]
    assert "overhead" in output and "results:" in output
    large = results["sections"]["large_vocab"]["figures"]
    n = results["settings"]["large_classes"]
    assert set(results["settings"]["sections"]) == set(SECTIONS)  # --quick: every section but ray
    assert large["segment_many"]["label"].startswith(f"segment, {n} classes")
    assert large["load_mib"]["median"] > 0 and large["rss_beyond_few"]["label"].endswith(f"with {min(100, n)} classes")
    assert len(large["add"]["runs"]) == len(large["segment_many"]["runs"]) == results["settings"]["large_pairs"]
    assert len(large["add_ratio"]["runs"]) == results["settings"]["large_pairs"]
    for ratio in (large["add_ratio"], results["sections"]["vocabulary"]["figures"]["ratio"]):  # --device auto: CPU
        assert ratio["label"].endswith("CPU time of the process"), ratio["label"]
    build = results["sections"]["prototypes"]["figures"]  # K-means timed in the build, not left over from it
    assert 0 < build["kmeans_only"]["median"] < build["kmeans"]["median"]


def test_the_build_clock_times_kmeans_inside_the_build_and_lets_go_after(tiny_stages, tmp_path, monkeypatch):
    from ovdiff_cli.bench.build import build_once, synthetic_samples
    from ovdiff_cli.method.stage2_prototypes import aggregation

    add, real = aggregation.RegionAccumulator.add, aggregation.RegionAccumulator.finish

    def slow_finish(self):  # K-means made 0.3 s slower: the clock must put it under "kmeans", not "other"
        import time

        time.sleep(0.3)
        return real(self)

    samples = synthetic_samples(2, 64, 0)
    build_once(tiny_stages, samples, 64, 4, 0, tmp_path)  # warm-up: the models are loaded (under "other")
    monkeypatch.setattr(aggregation.RegionAccumulator, "finish", slow_finish)
    seconds, built = build_once(tiny_stages, samples, 64, 4, 0, tmp_path)
    groups = 2 * len(built)  # fg and bg in every part
    assert seconds["kmeans"] >= 0.3 * groups and seconds["other"] < 0.3 and seconds["aggregation"] > 0
    assert aggregation.RegionAccumulator.finish is slow_finish and aggregation.RegionAccumulator.add is add


def test_markdown_table_has_a_row_per_figure(quick_results):
    results, _ = quick_results
    rows = markdown_table(results).splitlines()
    assert len(rows) == 2 + sum(len(k) for k in SECTIONS.values())


def test_sections_option_picks_sections_in_run_order_and_names_the_choices():
    assert parse_sections(None, "cpu") == SECTION_NAMES
    assert "ray" not in parse_sections(None, "cpu", quick=True)
    cuda = parse_sections(None, "cuda")  # a CUDA run ends in minutes: no multi-process or CPU-side sections
    assert {"class_build", "large_vocab", "ray"}.isdisjoint(cuda) and {"sampling", "segment", "vocabulary"} <= set(cuda)
    assert parse_sections("large_vocab, segment", "cpu") == ("segment", "large_vocab")
    with pytest.raises(OvdiffError, match="sections has 'segmant', not a section; choose from: class_build"):
        parse_sections("segmant", "cpu")
    with pytest.raises(OvdiffError, match="sections is empty"):
        parse_sections(" , ", "cpu")


def test_large_vocabulary_names_are_distinct_and_real_first():
    from ovdiff_cli.bench.large import vocabulary_names

    names = vocabulary_names(10_000)
    assert len(set(names)) == 10_000 and names[:3] == ["aeroplane", "bicycle", "bird"]
    assert "cat 2" in names


def test_large_section_checks_free_disk_before_any_work(tmp_path):
    from dataclasses import replace

    from ovdiff_cli.bench.large import check_disk

    s = bench_settings("cpu")
    dim = {"sd": 7680, "dino": 768, "clip": 768}
    half, full = (
        check_disk(replace(s, large_classes=10, large_proto_dtype=d), dim, tmp_path) for d in ("fp16", "fp32")
    )
    assert 1.99 < full / half < 2.01  # fp16 storage halves the cache
    assert 22 < half / 2**20 < 27  # 10 classes of 2×65 rows at D=9216 in fp16: 22.9 MiB, a tenth more on disk
    with pytest.raises(OvdiffError, match=r"needs .* GiB free at .* and .* GiB is free"):
        check_disk(replace(s, large_classes=10**9), dim, tmp_path)


def test_settings_reduced_on_cpu_and_paper_on_cuda():
    cpu, gpu = bench_settings("cpu"), bench_settings("cuda")
    assert cpu.large_classes == gpu.large_classes == 10_000  # issue 38: ten thousand classes, fp16 storage
    assert cpu.large_proto_dtype == gpu.large_proto_dtype == "fp16"
    assert cpu.preset == gpu.preset == "sd15-random"
    assert (gpu.windows, gpu.stride, gpu.short_side, gpu.steps, gpu.size) == ((448, 336), 224, 448, 30, 512)
    assert cpu.size < gpu.size and cpu.steps < gpu.steps
    assert (
        cpu.pairs == cpu.large_pairs == 12
    )  # fewer let two runs on a shared 2-core VM disagree by more than 5% (docs/performance.md)
    assert bench_settings("cpu", repeats=5).repeats == 5
    with pytest.raises(OvdiffError, match="repeats must be in 1"):
        bench_settings("cpu", repeats=0)


def test_bench_help_states_the_default_counts():
    hints = typing.get_type_hints(bench_command, include_extras=True)
    for name in ("repeats", "pairs"):
        cpu, gpu, quick = (getattr(bench_settings(*a), name) for a in (("cpu",), ("cuda",), ("cpu", True)))
        assert f"[default: {cpu} on CPU, {gpu} on CUDA; {quick} with --quick]" in hints[name].__metadata__[0].help


def test_figure_median_and_target():
    f = figure("x", "×", [1.2, 1.0, 1.1], at_most=1.15)
    assert (f["median"], f["min"], f["max"], f["pass"]) == (1.1, 1.0, 1.2, True)
    assert "target_at_most" not in figure("y", "s", [1.0])


def test_pairs_interleave_a_b_then_b_a_and_report_the_median_pair_ratio_with_its_spread():
    import torch

    order = []
    ta, tb = interleaved_pairs(lambda: order.append("a"), lambda: order.append("b"), 3, torch.device("cpu"))
    assert order == ["a", "b", "b", "a", "a", "b"] and len(ta) == len(tb) == 3
    f = figure("r", "×", ratios([2.0, 3.0, 4.0], [2.0, 2.0, 2.0]))
    assert (f["median"], f["min"], f["max"]) == (1.5, 1.0, 2.0)
    assert f["spread_pct"] == 100 * 0.5 / 1.5  # median absolute deviation, % of the median


def test_in_child_returns_the_json_result_and_names_a_failure(tmp_path):
    assert in_child("posixpath:join", ["a", "b"], tmp_path, "ok") == "a/b"
    with pytest.raises(OvdiffError, match="bench run bad exited with 1: .*math domain error"):
        in_child("math:sqrt", [-1], tmp_path, "bad")


def test_the_cpu_clock_counts_this_process_work_not_waiting():
    """A ratio's target on a CPU is checked on the process's CPU time: time spent waiting (as while another
    process has the core) is not in it, work is."""
    import time

    from ovdiff_cli.bench.stats import clock_of, with_cpu_time

    cpu: list[float] = []
    with_cpu_time(lambda: time.sleep(0.3), cpu)()
    with_cpu_time(lambda: sum(i * i for i in range(3_000_000)), cpu)()
    assert cpu[0] < 0.05 < cpu[1]
    assert clock_of("cpu", [1.0], cpu) == (cpu, "CPU time of the process")
    assert clock_of("cuda", [1.0], cpu) == ([1.0], "wall time")
