"""The Ray engine against the local path, on one local Ray instance with 2 CPUs for the whole module.

Each test also kills one worker process mid-run: Ray restarts it and retries its work, and the
outputs must still equal a local run's, bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import ovdiff

ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install 'ovdiff[ray]'")

from conftest import PROC  # noqa: E402

from ovdiff_cli.cli.app import app  # noqa: E402
from ovdiff_cli.config import RunConfig  # noqa: E402
from ovdiff_cli.engines.raycluster import build_classes  # noqa: E402
from ovdiff_cli.engines.vocab import ensure_classes  # noqa: E402
from ovdiff_cli.errors import InvalidSetting  # noqa: E402
from ovdiff_cli.models.presets import get_preset  # noqa: E402
from ovdiff_cli.procedural import write_voc  # noqa: E402
from ovdiff_cli.store.cache import Cache  # noqa: E402
from ovdiff_cli.store.sharing import export_bytes, import_bytes  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local instance (start-up costs seconds): the engine joins it instead of starting its own.

    Ray's memory monitor is off: on this shared machine it would kill our workers for others' memory.
    """
    saved = os.environ.get("RAY_memory_monitor_refresh_ms")  # noqa: SIM112
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # noqa: SIM112
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_memory_monitor_refresh_ms")
    else:
        os.environ["RAY_memory_monitor_refresh_ms"] = saved  # noqa: SIM112


def worker_pids(actor: str) -> set[int]:
    """Processes of Ray actors whose class is `actor` (Ray titles them 'ray::<class>…')."""
    pids = set()
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes() if d.name.isdigit() else b""
        except OSError:
            continue
        if cmd.startswith(b"ray::") and actor.encode() in cmd:
            pids.add(int(d.name))
    return pids


def kill_one(actor: str, timeout: float = 60) -> int:
    """SIGKILL one process of `actor` (waiting for one to exist, e.g. to start a task); its pid."""
    deadline = time.monotonic() + timeout
    while not (pids := worker_pids(actor)) and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = min(pids)
    os.kill(pid, signal.SIGKILL)
    return pid


def same_classes(a: Cache, b: Cache) -> None:
    """Every class of `a` is in `b` bit for bit: arrays (bytes and dtype) and records (but the creation time)."""
    got = dict(b.classes())
    for pid, rec in a.classes():
        assert {k: v for k, v in got.pop(pid).items() if k != "created_at"} == {
            k: v for k, v in rec.items() if k != "created_at"
        }
        x, y = a.class_arrays(pid), b.class_arrays(pid)
        assert x.keys() == y.keys()
        assert all(x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x), pid
    assert not got


def test_classes_built_on_ray_equal_a_local_build_though_a_worker_dies(tmp_path, procedural_stages):
    names = ["kite", "ball", "boat", "car"]
    preset = get_preset("procedural")
    sample, protos = preset.sample, preset.protos
    local = Cache(tmp_path / "local")
    ensure_classes(local, procedural_stages, names, 0, sample, protos)
    ray_cache = Cache(tmp_path / "ray")
    car = next(pid for pid, rec in local.classes() if rec["name"] == "car")
    import_bytes(ray_cache, export_bytes(local, [car]))  # already cached: must not be sent

    arrived, killed, live = [], [], []

    def on_class(name: str, done: int, total: int) -> None:
        arrived.append((name, done, total))
        if not killed:  # the worker that returned has taken the third class: kill a worker mid-build
            killed.append(kill_one("ClassBuilder.build"))
        live.append(worker_pids("ClassBuilder"))

    run_cfg = RunConfig(preset="procedural", device="cpu", dtype="fp32")
    built = build_classes(ray_cache, run_cfg, names, 0, sample, protos, workers=2, on_class=on_class)
    assert sorted(built) == ["ball", "boat", "kite"]
    assert [(d, t) for _, d, t in arrived] == [(1, 3), (2, 3), (3, 3)]
    assert killed[0] not in live[-1] and len(live[-1]) == 2  # the dead worker was replaced, and finished its class
    same_classes(local, ray_cache)
    assert build_classes(ray_cache, run_cfg, names, 0, sample, protos) == []


def test_protos_add_on_ray_equals_a_local_build_with_neural_models(tmp_path):
    """The tiny preset's real model code: CPU workers run torch on the driver's thread count, so bit-exact."""
    args = [
        "protos",
        "add",
        "cat",
        "sky",
        "--preset",
        "tiny",
        "--n-images",
        "2",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "-q",
    ]
    assert runner.invoke(app, [*args, "--cache", str(tmp_path / "local")]).exit_code == 0
    res = runner.invoke(app, [*args, "--cache", str(tmp_path / "ray"), "--engine", "ray", "--workers", "1"])
    assert res.exit_code == 0, res.output
    same_classes(Cache(tmp_path / "local"), Cache(tmp_path / "ray"))


def test_a_class_from_photos_built_on_ray_equals_a_local_build(tmp_path):
    """`protos add NAME --images DIR --engine ray`: the driver reads the photos, a worker builds, the driver imports
    the class and writes the note that NAME stands for the photos."""
    from PIL import Image

    from ovdiff_cli.engines.photos import photo_class
    from ovdiff_cli.models.presets import ModelSpecs

    rng = np.random.default_rng(0)
    (photos := tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    args = [
        "protos",
        "add",
        "my mug",
        "--images",
        str(photos),
        "--n-images",
        "1",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
    ]
    res = runner.invoke(app, [*args, "--cache", str(tmp_path / "local")])
    assert res.exit_code == 0 and "1 images generated" in res.output, res.output
    res = runner.invoke(app, [*args, "--cache", str(tmp_path / "ray"), "--engine", "ray", "--workers", "1"])
    assert res.exit_code == 0 and "0 images generated, 0 featurised" in res.output, res.output  # the worker built it
    same_classes(Cache(tmp_path / "local"), Cache(tmp_path / "ray"))
    pipe = ovdiff.Pipeline("tiny", cache=tmp_path / "api", device="cpu", dtype="fp32")
    vocab = pipe.photo_class("my mug", photos, n_images=1, engine="ray", workers=1)  # the same, from Python
    assert vocab.names == ["my mug"] and pipe.stages.calls.get("extract", 0) == 0
    same_classes(Cache(tmp_path / "local"), Cache(tmp_path / "api"))
    records = [r for _, r in Cache(tmp_path / "ray").classes()]  # one per extractor part
    assert records and all(r["name"] == "my mug" and r["n_photos"] == 2 and r["n_images"] == 3 for r in records)
    notes = [photo_class(Cache(tmp_path / c), "my mug", 0, ModelSpecs.of("tiny")) for c in ("local", "ray")]
    assert notes[1] is not None and {k: v for k, v in notes[1].items() if k != "created_at"} == {
        k: v for k, v in notes[0].items() if k != "created_at"
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six held-out scenes in VOC layout, and a cache with the world's classes built locally."""
    root = tmp_path_factory.mktemp("world")
    write_voc(root / "data", 6, seed=11)
    res = runner.invoke(
        app,
        [
            "protos",
            "add",
            "--classes-file",
            str(root / "data/classes.txt"),
            "--cache",
            str(root / "cache"),
            "-q",
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output
    return root


def test_segment_on_ray_writes_the_local_masks_though_a_worker_dies(world, tmp_path):
    images = world / "data/VOC2012/JPEGImages"
    args = [
        str(images),
        "--classes-file",
        str(world / "data/classes.txt"),
        "--cache",
        str(world / "cache"),
        "--batch-size",
        "1",
        "--overlay",
        "-q",
        *PROC,
    ]
    res = runner.invoke(app, ["segment", *args, "--out", str(tmp_path / "local")])
    assert res.exit_code == 0, res.output

    out = tmp_path / "ray"
    killed: list[int] = []

    def killer() -> None:  # once the first mask is written, the other images are in flight: kill a worker
        deadline = time.monotonic() + 120
        while not list(out.glob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.05)
        if worker_pids("SegmentWorker"):
            killed.append(kill_one("SegmentWorker"))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    res = runner.invoke(app, ["segment", *args, "--out", str(out), "--engine", "ray", "--workers", "2"])
    thread.join()
    assert res.exit_code == 0, res.output
    assert killed, "no worker was killed: the test did not exercise a restart"

    def outputs(folder):  # what a run writes; its lock file (.ovdiff-segment.lock) is no output
        return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))

    local = outputs(tmp_path / "local")
    assert local == outputs(out)
    assert len(local) == 13  # 6 masks, 6 overlays (drawn by the driver from the masks Ray sent), classes.json
    for name in local:
        assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_segment_folder_and_vocabulary_on_ray_from_python_write_the_cli_s_local_outputs(world, tmp_path):
    """`Pipeline.segment_folder(engine="ray")` and `Pipeline.vocabulary(engine="ray")`: the library calls the
    CLI makes, from Python; the masks equal the local CLI run's, byte for byte, and the vocabulary a local build."""
    images, classes = world / "data/VOC2012/JPEGImages", (world / "data/classes.txt").read_text().split()
    res = runner.invoke(
        app,
        [
            "segment",
            str(images),
            "--classes-file",
            str(world / "data/classes.txt"),
            "--cache",
            str(world / "cache"),
            "--format",
            "npz",
            "--out",
            str(tmp_path / "cli"),
            "-q",
            *PROC,
        ],
    )
    assert res.exit_code == 0, res.output

    pipe = ovdiff.Pipeline(preset="procedural", cache=world / "cache", device="cpu", dtype="fp32")
    seen: list[str] = []
    done = pipe.segment_folder(
        images,
        tmp_path / "ray",
        classes,
        fmt="npz",
        engine="ray",
        workers=1,
        on_image=lambda item, seg, error: seen.append(item.name),
    )
    assert done.summary.written == len(done.items) == len(seen) == 6 and not done.summary.failures
    assert done.report()["written"] == 6
    for mask in sorted((tmp_path / "cli").glob("*.npz")):
        assert (tmp_path / "ray" / mask.name).read_bytes() == mask.read_bytes(), mask.name

    fresh = ovdiff.Pipeline(preset="procedural", cache=tmp_path / "built", device="cpu", dtype="fp32")
    vocab = fresh.vocabulary(classes[:2], engine="ray", workers=1)
    assert vocab.ids == pipe.vocabulary(classes[:2], build=False).ids  # the same keys as the local build
    built, local = Cache(tmp_path / "built"), Cache(world / "cache")
    for pid in (pid for ids in vocab.ids for pid in ids.values()):
        x, y = built.class_arrays(pid), local.class_arrays(pid)
        assert x.keys() == y.keys() and all(x[k].tobytes() == y[k].tobytes() for k in x), pid
    with pytest.raises(InvalidSetting, match="ray engine only"):
        fresh.vocabulary(classes[:2], workers=2)


def test_segment_json_and_coco_on_ray_carry_the_local_segments_and_scores(world, tmp_path, capfd):
    images = world / "data/VOC2012/JPEGImages"
    args = [
        str(images),
        "--classes-file",
        str(world / "data/classes.txt"),
        "--cache",
        str(world / "cache"),
        "--json",
        "--format",
        "coco-rle",
        *PROC,
    ]
    reports = {}
    for engine in ("local", "ray"):
        res = runner.invoke(app, ["segment", *args, "--out", str(tmp_path / engine), "--engine", engine])
        assert res.exit_code == 0, res.output
        reports[engine] = {Path(r["input"]).name: r["segments"] for r in json.loads(res.stdout)["per_image"]}
    assert reports["local"].keys() == reports["ray"].keys()
    for name, local in reports["local"].items():
        remote = reports["ray"][name]
        assert [(s["index"], s["area"]) for s in remote] == [(s["index"], s["area"]) for s in local]
        assert [s["score"] for s in remote] == pytest.approx([s["score"] for s in local], abs=1e-5)
    records = json.loads((tmp_path / "ray" / "coco_results.json").read_text())
    assert records and all(r["score"] != 1.0 for r in records)  # the segment's score, not a placeholder
    assert "core_worker" not in capfd.readouterr().err  # a successful run prints no Ray error line (ray#57733)


def test_the_stderr_pump_drops_only_the_marked_lines(capfd):
    from ovdiff_cli.engines.raysegment import stderr_without

    with stderr_without(b"ALARM"):
        os.write(2, b"kept 1\n[E core_worker.cc] ALARM here\nkept 2\n")
        os.write(2, b"partial")
    os.write(2, b" line\n")
    assert capfd.readouterr().err == "kept 1\nkept 2\npartial line\n"


def test_eval_on_ray_scores_what_the_local_engine_scores(world, tmp_path):
    args = ["eval", "voc", "--root", str(world / "data"), "--cache", str(world / "cache"), "-q", *PROC]
    for engine in ("local", "ray"):
        res = runner.invoke(app, [*args, "--out", str(tmp_path / engine), "--engine", engine])
        assert res.exit_code == 0, res.output
    local, remote = (json.loads((tmp_path / e / "metrics.json").read_text()) for e in ("local", "ray"))
    assert local["n_images"] == remote["n_images"] == 6
    assert remote["per_image_miou"] == local["per_image_miou"]
    assert remote["per_class_iou"] == local["per_class_iou"] and np.isfinite(remote["miou"])


def test_bench_section_reports_ray_against_local_and_the_start_up(tmp_path):
    from ovdiff_cli.bench.engines import bench_ray

    section = bench_ray(ovdiff.Pipeline, tmp_path, "cpu", "fp32", repeats=1, images=3, workers=(2,))
    figures = section["figures"]
    assert set(figures) == {"local", "ray2", "ratio2", "steady_local", "steady_ray2", "steady_ratio2", "startup"}
    assert all(np.isfinite(f["median"]) and f["median"] > 0 for f in figures.values())
    assert figures["ratio2"]["median"] == pytest.approx(figures["ray2"]["median"] / figures["local"]["median"])
    assert len(list((tmp_path / "ray-out-ray2-0").glob("*.png"))) == 3


@pytest.mark.parametrize("refine", ["pamr", "sam2"])
def test_segment_with_refine_on_ray_writes_the_local_masks(world, tmp_path, tiny_sam2_dir, refine):
    images = world / "data/VOC2012/JPEGImages"
    args = [str(images), "--classes-file", str(world / "data/classes.txt"), "--cache", str(world / "cache"), *PROC]
    sam2 = ["--sam2-model", str(tiny_sam2_dir)] if refine == "sam2" else []  # SAM 2 loads on each worker
    refined = ["--refine", refine, *sam2, "--json"]
    for engine in ("local", "ray"):
        res = runner.invoke(app, ["segment", *args, *refined, "--out", str(tmp_path / engine), "--engine", engine])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["stage_seconds_per_image"]["refine"] > 0, engine
    plain = tmp_path / "plain"
    assert runner.invoke(app, ["segment", *args, "-q", "--out", str(plain)]).exit_code == 0
    masks = sorted(p.name for p in (tmp_path / "local").glob("*.png"))
    assert len(masks) == 6
    assert all((tmp_path / "ray" / m).read_bytes() == (tmp_path / "local" / m).read_bytes() for m in masks)
    if refine == "pamr":  # (the tiny SAM 2's random masks pass none of SAM's quality filters: no region, no change)
        assert any(
            (plain / m).read_bytes() != (tmp_path / "local" / m).read_bytes() for m in masks
        )  # refined on Ray too


def test_workers_on_one_machine_get_heads_and_the_cache_and_on_a_cluster_the_arrays(tmp_path, procedural_stages):
    """One machine: the object store holds heads (no prototype) and each worker opens the cache and reads each
    image's kept classes, as a local run; several machines: every class's arrays, since no worker can open it."""
    from types import SimpleNamespace

    from ovdiff_cli.engines.raysegment import shipped
    from ovdiff_cli.store.protos import load_parts

    P = get_preset("procedural")
    cache = Cache(tmp_path / "c")
    names = ["kite", "sky"]
    heads = ensure_classes(cache, procedural_stages, names, 0, P.sample, P.protos, arrays=False)
    assert all(not p.fg and p.rows for c in heads for p in c.parts.values())
    classes, root = shipped(ray, heads, cache)  # the module's local instance: one node
    assert classes is heads and root == str(cache.root)
    two = SimpleNamespace(nodes=lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    classes, root = shipped(two, heads, cache)
    assert root is None
    for got, head in zip(classes, heads, strict=True):
        want = load_parts(cache, {p: head.parts[p].pid for p in head.parts})
        for part, protos in got.parts.items():
            assert protos.fg and all(np.array_equal(a, want.parts[part].fg[k]) for k, a in protos.fg.items())
