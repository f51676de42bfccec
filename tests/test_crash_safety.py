"""Reliability: kill -9 at chosen and random moments, concurrent writers, a reader beside a
writer, map growth, a full disk, and `cache verify` finding and repairing every kind of broken entry.

The subprocess scenarios drive the real CLI (`python -m ovdiff_cli …`) on the `procedural` preset, whose
code paths are the same as the real models'. A small launcher (LAUNCHER) can slow the generator down,
hold it at a gate, or make the process SIGKILL itself inside a class's write transaction, so kill points
land where the test says; the test process watches progress through a read-only look at the cache
(LMDB readers never block). Timing is never asserted.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PROC, mounted_tmpfs
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.store import cache as cache_mod
from ovdiff_cli.store.cache import Cache

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with optional test hooks (env): OVDIFF_TEST_GEN_DELAY seconds slept before each generator
# call; OVDIFF_TEST_GATE a file: from the second generator call on, wait while it exists;
# OVDIFF_TEST_DIE_IN_COMMIT=1: SIGKILL ourselves inside the write transaction of the first class commit,
# after every key was put and before the commit (the LMDB writer lock is held when we die).
LAUNCHER = r"""
import os, signal, sys, time
from ovdiff_cli import procedural
from ovdiff_cli.store import cache

delay = float(os.environ.get("OVDIFF_TEST_GEN_DELAY", "0"))
gate = os.environ.get("OVDIFF_TEST_GATE")
calls = [0]
generate = procedural.ProceduralGenerator.generate

def slow_generate(self, *args, **kwargs):
    calls[0] += 1
    if gate and calls[0] > 1:
        end = time.monotonic() + 120
        while os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.02)
    time.sleep(delay)
    return generate(self, *args, **kwargs)

procedural.ProceduralGenerator.generate = slow_generate

if os.environ.get("OVDIFF_TEST_DIE_IN_COMMIT"):
    write = cache.Cache.write

    def dying_write(self, items):
        if any(k.startswith(b"p/") and k.count(b"/") == 1 for k in items):
            def fn(txn):
                for k, v in items.items():
                    if v is None:
                        txn.delete(k)
                    else:
                        txn.put(k, v)
                os.kill(os.getpid(), signal.SIGKILL)
            self.transact(fn)
        return write(self, items)

    cache.Cache.write = dying_write

from ovdiff_cli.cli.app import main
sys.argv[0] = "ovdiff"
main()
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVDIFF_")}
    # one thread each: the machines are small and shared, and oversubscribed torch threads crawl
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def start(args: list[str], tmp: Path, **hooks: str) -> subprocess.Popen:
    """`ovdiff ARGS` through the launcher, stdout/stderr to files (read with `outputs`)."""
    n = len(list(tmp.glob("run*.out")))
    out, err = open(tmp / f"run{n}.out", "w+"), open(tmp / f"run{n}.err", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], stdout=out, stderr=err, env=_env(**hooks), cwd=tmp)
    proc.files = (out, err)  # type: ignore[attr-defined]
    return proc


def outputs(proc: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for f in proc.files:  # type: ignore[attr-defined]
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts[0], texts[1]


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        out, err = outputs(proc)
        pytest.fail(f"ovdiff did not finish in {timeout} s (a writer lock left behind?)\n{out}\n{err}")
    out, err = outputs(proc)
    return rc, out, err


def state(cache_dir: Path) -> tuple[dict[str, int], dict[str, str]]:
    """A read-only look: {class: support images committed}, {class: pid} of the visible classes."""
    if not (cache_dir / cache_mod.ENV_DIRNAME / "data.mdb").exists():
        return {}, {}
    c = Cache(cache_dir, create=False)
    support = {}
    for k, v in c.scan(b"s/"):
        if k.count(b"/") == 1:
            meta = json.loads(v)
            support[meta["norm"]] = meta["n_images"]
    return support, {rec["norm"]: pid for pid, rec in c.classes()}


def wait_for(proc: subprocess.Popen, cache_dir: Path, cond, what: str, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond(*state(cache_dir)):
            return
        if proc.poll() is not None:
            out, err = outputs(proc)
            pytest.fail(f"ovdiff exited ({proc.returncode}) before {what}\n{out}\n{err}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def snapshot(cache_dir: Path) -> dict[bytes, bytes]:
    return dict(Cache(cache_dir, create=False).scan(b"")) if state(cache_dir) != ({}, {}) else {}


def assert_sound(cache_dir: Path) -> None:
    """`ovdiff cache verify` says sound (exit 0), and every visible class loads whole."""
    from ovdiff_cli.engines.vocab import load_class

    res = CliRunner().invoke(app, ["cache", "verify", "--cache", str(cache_dir)])
    assert res.exit_code == 0 and "cache is sound" in res.output, res.output
    c = Cache(cache_dir)
    for pid, rec in c.classes():
        arrays = c.class_arrays(pid)
        assert set(arrays) == set(rec["arrays"]), rec["name"]
        assert load_class(c, pid).fg["class"].shape[0] == 1
        meta = c.support_meta(rec["support_id"])
        assert meta["n_images"] >= rec["n_images"]


def assert_kept(before: dict[bytes, bytes], cache_dir: Path) -> None:
    """Nothing committed before is lost or rewritten: images, maps and classes byte for byte."""
    after = snapshot(cache_dir)
    for k, v in before.items():
        parts = k.split(b"/")
        if k.startswith(b"p/") or (k.startswith(b"s/") and len(parts) == 4):
            assert after.get(k) == v, f"{k!r} changed or vanished"
        elif k.startswith(b"s/"):
            assert json.loads(after[k])["n_images"] >= json.loads(v)["n_images"], k


def counts(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) images generated, (\d+) featurised", out)
    assert m, out
    return int(m[1]), int(m[2])


def forget(cache_dir: Path) -> None:
    """Close this process's LMDB environment of `cache_dir` (to unmount its filesystem)."""
    cache_mod.close_cache(cache_dir)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """In-process steps too: the machines are small and shared, and oversubscribed torch threads crawl."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- crash safety


CLASSES = ["kite", "boat", "grass"]  # 8 support images each (procedural preset), batches of 4


def test_kill_9_at_many_points_leaves_a_sound_cache_and_the_rerun_only_adds_what_is_missing(tmp_path):
    cache_dir = tmp_path / "cache"
    add = ["protos", "add", *CLASSES, "--cache", str(cache_dir), *PROC]
    slow = {"OVDIFF_TEST_GEN_DELAY": "0.5"}

    def locked(support, classes):  # a class lock is held, nothing committed yet
        return (cache_dir / "locks").is_dir() and any((cache_dir / "locks").iterdir())

    kill_points = [
        ("before any commit", locked, lambda s, c: s == {} and c == {}),
        (
            "after the first support batch",
            lambda s, c: s.get("kite", 0) >= 4,
            lambda s, c: s.get("kite") == 4 and not c,
        ),
        ("after the first class", lambda s, c: "kite" in c, lambda s, c: "kite" in c and "boat" not in c),
        ("mid second class", lambda s, c: s.get("boat", 0) >= 4, lambda s, c: set(c) == {"kite"} and s["boat"] == 4),
    ]
    before: dict[bytes, bytes] = {}
    for what, when, then in kill_points:
        proc = start(add, tmp_path, **slow)
        wait_for(proc, cache_dir, when, what)
        kill9(proc)
        assert then(*state(cache_dir)), (what, state(cache_dir))
        assert_sound(cache_dir)
        assert_kept(before, cache_dir)
        before = snapshot(cache_dir)

    # Killed inside the commit of class 2 (boat), holding LMDB's writer lock: the class stays invisible,
    # and the next writer is not blocked by the dead one.
    proc = start(add, tmp_path, OVDIFF_TEST_DIE_IN_COMMIT="1")
    rc, out, err = finish(proc)
    assert rc == -signal.SIGKILL, (rc, out, err)
    support, classes = state(cache_dir)
    assert set(classes) == {"kite"} and support["boat"] == 8
    assert_sound(cache_dir)
    assert_kept(before, cache_dir)
    before = snapshot(cache_dir)

    # A kill at a random moment (fixed seed), possibly mid-commit or after the run ended.
    delay = random.Random(6).uniform(2.5, 5.0)
    proc = start(add, tmp_path, **slow)
    time.sleep(delay)
    kill9(proc)
    assert_sound(cache_dir)
    assert_kept(before, cache_dir)
    before = snapshot(cache_dir)

    support, classes = state(cache_dir)
    proc = start(add, tmp_path)
    rc, out, err = finish(proc)
    assert rc == 0, out + err
    missing_images = 8 * len(CLASSES) - sum(support.values())
    assert counts(out) == (missing_images, 8 * (len(CLASSES) - len(classes)))
    assert set(state(cache_dir)[1]) == set(CLASSES)
    assert_sound(cache_dir)
    assert_kept(before, cache_dir)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- concurrency


def blocked_on_lock(pids: set[int]) -> bool:
    """Whether one of `pids` waits for a flock (a "->" line of /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK" and int(fields[5]) in pids:
            return True
    return False


def test_two_writers_with_overlapping_classes_build_each_class_once(tmp_path):
    cache_dir = tmp_path / "cache"
    gate = tmp_path / "gate"
    gate.touch()
    # A 64 KiB initial map: both processes grow it while the other writes (MDB_MAP_RESIZED across processes).
    hooks = {"OVDIFF_TEST_GEN_DELAY": "0.05", "OVDIFF_TEST_GATE": str(gate), "OVDIFF_CACHE_MAP_SIZE": "65536"}
    first = ["kite", "boat", "car", "grass"]
    second = ["kite", "grass", "sky", "car"]
    a = start(["protos", "add", *first, "--cache", str(cache_dir), *PROC], tmp_path, **hooks)
    b = start(["protos", "add", *second, "--cache", str(cache_dir), *PROC], tmp_path, **hooks)
    # One builds kite (first batch committed, held at the gate) while the other waits for kite's lock.
    wait_for(
        a,
        cache_dir,
        lambda s, c: s.get("kite", 0) >= 4 and blocked_on_lock({a.pid, b.pid}),
        "one writer waiting for the other",
    )
    assert a.poll() is None and b.poll() is None
    gate.unlink()
    (rc_a, out_a, err_a), (rc_b, out_b, err_b) = finish(a), finish(b)
    assert rc_a == 0 and rc_b == 0, out_a + err_a + out_b + err_b

    c = Cache(cache_dir, create=False)
    names = collections.Counter(rec["norm"] for _, rec in c.classes())
    assert names == collections.Counter(set(first) | set(second))  # every class exactly once
    records = [json.loads(v) for k, v in c.scan(b"s/") if k.count(b"/") == 1]
    assert sorted(m["norm"] for m in records) == sorted(names) and all(m["n_images"] == 8 for m in records)
    images = collections.Counter(k.split(b"/")[1] for k, _ in c.scan(b"s/", values=False) if b"/img/" in k)
    assert sorted(images.values()) == [8] * len(names)
    # every support image was generated, and every class featurised, by exactly one of the two
    (gen_a, feat_a), (gen_b, feat_b) = counts(out_a), counts(out_b)
    assert gen_a + gen_b == 8 * len(names) and feat_a + feat_b == 8 * len(names)
    assert (cache_dir / cache_mod.ENV_DIRNAME / "data.mdb").stat().st_size > 4 * 65536  # the map grew
    assert_sound(cache_dir)


def test_segment_reads_while_protos_add_writes(tmp_path):
    from PIL import Image

    from ovdiff_cli.cli.common import make_run
    from ovdiff_cli.engines.vocab import ensure_classes
    from ovdiff_cli.procedural import render_scene

    cache_dir = tmp_path / "cache"
    run = make_run(cache_dir, "procedural", "cpu", "fp32")
    pipe = run.pipe
    ensure_classes(pipe.cache, pipe.stages, ["kite", "sky"], 0, pipe.sample_config, pipe.proto_config)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(render_scene(rng)[0]).save(images / f"scene{i}.png")

    gate = tmp_path / "gate"
    gate.touch()
    writer = start(
        ["protos", "add", "boat", "car", "--cache", str(cache_dir), *PROC], tmp_path, OVDIFF_TEST_GATE=str(gate)
    )
    wait_for(writer, cache_dir, lambda s, c: s.get("boat", 0) >= 4, "the writer's first batch")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ovdiff_cli",
            "segment",
            str(images),
            "--classes",
            "kite,sky",
            "--no-build",
            "--out",
            str(tmp_path / "masks"),
            "--cache",
            str(cache_dir),
            *PROC,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    writer_was_running = writer.poll() is None
    gate.unlink()
    rc, out, err = finish(writer)
    assert res.returncode == 0, res.stdout + res.stderr
    assert writer_was_running  # the reader ran while the writer held its class locks mid-class
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == ["scene0.png", "scene1.png"]
    assert rc == 0, out + err
    assert set(state(cache_dir)[1]) == {"kite", "sky", "boat", "car"}
    assert_sound(cache_dir)


# --------------------------------------------------------------------------- disk and map


def test_map_grows_through_a_long_run_from_a_tiny_map(tmp_path):
    cache_dir = tmp_path / "cache"
    names = [f"thing {i}" for i in range(12)]
    res = subprocess.run(
        [sys.executable, "-m", "ovdiff_cli", "protos", "add", *names, "--cache", str(cache_dir), *PROC, "-q"],
        capture_output=True,
        text=True,
        env=_env(OVDIFF_CACHE_MAP_SIZE="65536"),
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (cache_dir / cache_mod.ENV_DIRNAME / "data.mdb").stat().st_size > 8 * 65536  # grown many times
    assert sorted(state(cache_dir)[1]) == sorted(names)
    assert_sound(cache_dir)


def test_map_size_setting_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("OVDIFF_CACHE_MAP_SIZE", "lots")
    res = CliRunner().invoke(app, ["cache", "info", "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 2 and "OVDIFF_CACHE_MAP_SIZE" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "disk", "size=1m") as mnt:
        try:
            yield mnt
        finally:
            forget(mnt / "cache")


def test_full_disk_is_one_clear_error_and_keeps_earlier_classes(tiny_disk, tmp_path):
    cache_dir = tiny_disk / "cache"
    names = ["kite", "boat", "car", "grass", "sky", "ball", "tree", "road"]
    cmd = [sys.executable, "-m", "ovdiff_cli", "protos", "add", *names, "--cache", str(cache_dir), *PROC]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk is full" in errors[0] and "intact" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    support, classes = state(cache_dir)
    assert 1 <= len(classes) < len(names)
    assert_sound(cache_dir)
    before = snapshot(cache_dir)
    forget(cache_dir)

    # More room: the same command finishes and generates only what was not committed.
    r = subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_disk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert counts(res.stdout) == (8 * len(names) - sum(support.values()), 8 * (len(names) - len(classes)))
    assert sorted(state(cache_dir)[1]) == sorted(names)
    assert_kept(before, cache_dir)
    assert_sound(cache_dir)


# --------------------------------------------------------------------------- cache verify


def _flip(blob: bytes, at: int) -> bytes:
    b = bytearray(blob)
    b[at] ^= 0x5A
    return bytes(b)


def test_verify_reports_every_kind_of_broken_entry_and_repair_lets_protos_add_rebuild(tmp_path):
    from PIL import Image

    from ovdiff_cli.cli.common import make_run
    from ovdiff_cli.procedural import render_scene
    from ovdiff_cli.store.cache import attribution_key, class_array_key, class_key, encode_png, image_key

    cache_dir = tmp_path / "cache"
    common = ["--cache", str(cache_dir), *PROC]
    names = ["kite", "boat", "sky", "grass", "car"]
    runner = CliRunner()
    res = runner.invoke(app, ["protos", "add", *names, *common, "-q"])
    assert res.exit_code == 0, res.output
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    Image.fromarray(render_scene(np.random.default_rng(1))[0]).save(img_dir / "a.png")
    res = runner.invoke(
        app, ["segment", str(img_dir), "--classes", ",".join(names), "--out", str(tmp_path / "m"), *common]
    )
    assert res.exit_code == 0, res.output

    c = Cache(cache_dir)
    run = make_run(cache_dir, "procedural", "cpu", "fp32")
    pid = {rec["norm"]: p for p, rec in c.classes()}
    sid = {rec["norm"]: rec["support_id"] for _, rec in c.classes()}
    original = dict(c.scan(b""))
    texts = [k for k in original if k.startswith(b"t/")]
    assert texts, "segment with the filter caches text embeddings"
    (matrix,) = [k for k in original if k.endswith(b"/class_text")]  # and the vocabulary's class-prompt matrix
    size = run.pipe.sample_config.size
    broken = {
        image_key(sid["kite"], 5): _flip(original[image_key(sid["kite"], 5)], 400),  # PNG data, caught by chunk CRC
        attribution_key(sid["boat"], 2): _flip(original[attribution_key(sid["boat"], 2)], -7),  # array checksum
        class_array_key(pid["sky"], "fg/class"): _flip(original[class_array_key(pid["sky"], "fg/class")], -3),
        class_key(pid["grass"]): b'{"name": "grass", "arr',  # class record JSON
        image_key(sid["car"], 3): encode_png(np.zeros((size // 2, size, 3), np.uint8)),  # decodes, wrong shape
        texts[0]: original[texts[0]][:-5],  # text embedding, truncated
        matrix: _flip(original[matrix], -11),  # the filter's class-prompt matrix, array checksum
    }
    c.write(broken)

    # Read without repair, a broken entry is one clear line naming the way out, not a traceback.
    res = runner.invoke(
        app, ["segment", str(img_dir), "--classes", "sky", "--no-build", "--out", str(tmp_path / "m2"), *common]
    )
    assert res.exit_code == 2 and "corrupt" in res.output and "cache verify --repair" in res.output, res.output
    assert res.output.strip().count("\n") == 0 and "Traceback" not in res.output
    res = runner.invoke(app, ["protos", "list", "--cache", str(cache_dir)])
    assert res.exit_code == 2 and "cache verify --repair" in res.output and "Traceback" not in res.output, res.output

    res = runner.invoke(app, ["cache", "verify", "--cache", str(cache_dir)])
    assert res.exit_code == 1, res.output
    for key in broken:
        assert key.decode() in res.output, (key, res.output)
    assert "image is" in res.output and "checksum" in res.output
    assert "was built from support image" not in res.output  # a class part does not need its support images

    res = runner.invoke(app, ["cache", "verify", "--repair", "--cache", str(cache_dir)])
    assert res.exit_code == 0 and "removed" in res.output, res.output
    res = runner.invoke(app, ["cache", "verify", "--cache", str(cache_dir)])
    assert res.exit_code == 0 and "cache is sound" in res.output, res.output
    support, classes = state(cache_dir)
    assert support == {"kite": 5, "boat": 2, "sky": 8, "grass": 8, "car": 3}
    assert set(classes) == {"kite", "boat", "car"}  # sky lost an array, grass its record; the others stay whole

    # protos add rebuilds exactly what repair removed, bit for bit; sample draws the lost images again
    res = runner.invoke(app, ["protos", "add", *names, *common])
    assert res.exit_code == 0, res.output
    assert counts(res.output) == (0, 8 * 2)
    res = runner.invoke(app, ["sample", "kite", "boat", "car", *common])
    assert res.exit_code == 0, res.output
    assert state(cache_dir)[0] == dict.fromkeys(names, 8)
    repaired = dict(Cache(cache_dir).scan(b""))
    for key in broken:
        if key.startswith(b"s/"):
            assert repaired[key] == original[key]
    np.testing.assert_array_equal(
        cache_mod.decode_array(repaired[class_array_key(pid["sky"], "fg/class")]),
        cache_mod.decode_array(original[class_array_key(pid["sky"], "fg/class")]),
    )
    res = runner.invoke(
        app, ["segment", str(img_dir), "--classes", ",".join(names), "--out", str(tmp_path / "m3"), *common]
    )
    assert res.exit_code == 0, res.output
    again = dict(Cache(cache_dir).scan(b""))
    assert texts[0] in again and matrix in again  # the text embedding is encoded again, the matrix kept again
    assert_sound(cache_dir)
