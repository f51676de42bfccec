"""`ovdiff label-studio` without Label Studio: the labeling config read as a vocabulary, results in
Label Studio's format (decoded with its own RLE decoder), the image-fetch policy, and the real command served
over HTTP against a stand-in Label Studio that serves one uploaded image and checks the API key.
tests/test_label_studio.py runs the same backend against a real Label Studio."""

from __future__ import annotations

import http.server
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

import ovdiff
from ovdiff_cli.errors import OvdiffError
from ovdiff_cli.results import SegmentationResult
from ovdiff_cli.ui.labelstudio import image_url, model_version, parse_config, polygons, task_prediction

brush = pytest.importorskip(
    "label_studio_sdk.converter.brush", reason="needs label-studio-sdk: pip install 'ovdiff[labelstudio]'"
)

CONFIG = """<View>
  <Image name="img" value="$image"/>
  <BrushLabels name="masks" toName="img">
    <Label value="Sky" hint="sky"/><Label value="grass"/><Label value="kite"/>
  </BrushLabels>
  <PolygonLabels name="outlines" toName="img"><Label value="ground" hint="grass"/></PolygonLabels>
</View>"""
TOKEN = "0123456789abcdef0123456789abcdef01234567"


def decode(region: dict) -> np.ndarray:
    """A brush region's mask, as Label Studio's own decoder reads it (RGBA; alpha > 0 is inside)."""
    h, w = region["original_height"], region["original_width"]
    return brush.decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0


def test_config_labels_are_the_vocabulary_and_a_hint_is_the_prompt():
    config = parse_config(CONFIG)
    assert [(c.name, c.to_name, c.kind, c.data_key) for c in config.controls] == [
        ("masks", "img", "brush", "image"),
        ("outlines", "img", "polygon", "image"),
    ]
    assert config.controls[0].labels == ("Sky", "grass", "kite") and config.controls[0].prompts == (
        "sky",
        "grass",
        "kite",
    )
    assert config.prompts == ["sky", "grass", "kite"]  # "ground" segments "grass": one class, asked once
    assert config.data_keys == ["image"]
    lower = parse_config(
        '<View><Image name="i" value="$pic"/><brushlabels name="b" toName="i"><Label value="x"/></brushlabels></View>'
    )
    assert lower.controls[0].data_key == "pic" and lower.prompts == ["x"]
    decomposed = parse_config(CONFIG.replace('hint="sky"', 'hint=" cafe\u0301 "'))
    assert decomposed.prompts[0] == "caf\u00e9"  # the prompt as the vocabulary normalises it (NFC, trimmed)


@pytest.mark.parametrize(
    ("xml", "says"),
    [
        ("<View><Image", "not XML"),
        (
            '<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/></RectangleLabels></View>',
            "no <BrushLabels> or <PolygonLabels>",
        ),
        (
            '<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"></BrushLabels></View>',
            "has no <Label",
        ),
        (
            '<View><Image name="i" value="$image"/><BrushLabels name="b" toName="j"><Label value="a"/></BrushLabels></View>',
            "labels 'j'",
        ),
        ("", "no labeling config"),
    ],
)
def test_configs_ovdiff_cannot_predict_for_are_refused_in_one_line(xml, says):
    with pytest.raises(OvdiffError) as e:
        parse_config(xml)
    assert says in str(e.value) and "\n" not in str(e.value)


def result_of(labels: np.ndarray, names: list[str], stats: dict) -> SegmentationResult:
    h, w = labels.shape
    return SegmentationResult(labels, names, True, names, None, {}, np.zeros((h, w, 3), np.uint8), stats)


def test_results_are_label_studio_brush_rle_and_percent_polygons_with_scores():
    labels = np.zeros((40, 60), np.int32)
    labels[:10] = 1  # sky: rows 0-9
    labels[25:35, 10:30] = 2  # grass: a 20x10 rectangle
    labels[30:32, 50:52] = 2  # and a second grass region
    res = result_of(labels, ["sky", "grass", "kite"], {1: (600, 0.5), 2: (204, 0.25)})
    pred = task_prediction(parse_config(CONFIG), {"image": res}, "ovdiff-x-1")
    regions = pred["result"]
    assert pred["model_version"] == "ovdiff-x-1" and len({r["id"] for r in regions}) == len(regions)
    brushes = [r for r in regions if r["type"] == "brushlabels"]
    assert [r["value"]["brushlabels"] for r in brushes] == [["Sky"], ["grass"]]  # no kite: none present
    assert all(r["from_name"] == "masks" and r["to_name"] == "img" and r["value"]["format"] == "rle" for r in brushes)
    assert all((r["original_width"], r["original_height"]) == (60, 40) for r in regions)
    assert np.array_equal(decode(brushes[0]), labels == 1) and np.array_equal(decode(brushes[1]), labels == 2)
    assert [r["score"] for r in brushes] == [0.5, 0.25]
    polys = [r for r in regions if r["type"] == "polygonlabels"]
    assert len(polys) == 2 and all(r["value"]["polygonlabels"] == ["ground"] and r["score"] == 0.25 for r in polys)
    big = min(polys, key=lambda r: r["value"]["points"][0][0])["value"]["points"]  # the rectangle at x 10-29
    want = [(100 * x / 60, 100 * y / 40) for x, y in ((10, 25), (10, 34), (29, 25), (29, 34))]  # pixel corners
    assert np.allclose(sorted(map(tuple, big)), want, atol=1e-4)
    assert pred["score"] == pytest.approx((0.5 + 0.25 + 0.25 + 0.25) / 4, abs=1e-6)
    empty = task_prediction(
        parse_config(CONFIG), {"image": result_of(np.zeros((4, 4), np.int32), ["sky", "grass", "kite"], {})}, "v"
    )
    assert empty == {"result": [], "model_version": "v"}


def test_polygons_skip_slivers_and_keep_outer_contours_only():
    mask = np.zeros((20, 20), bool)
    mask[2:18, 2:18] = True
    mask[8:12, 8:12] = False  # a hole: a polygon has none
    mask[0, 19] = True  # one pixel: fewer than 3 corners
    assert len(polygons(mask)) == 1


def test_model_version_names_the_preset_and_changes_with_the_vocabulary():
    v = model_version("procedural", 0, "procedural", ["sky", "grass"])
    assert v.startswith("ovdiff-procedural-") and v == model_version("procedural", 0, "procedural", ["sky", "grass"])
    assert (
        len(
            {
                v,
                model_version("procedural", 1, "procedural", ["sky", "grass"]),
                model_version("procedural", 0, "procedural", ["grass", "sky"]),
            }
        )
        == 3
    )


def test_images_are_fetched_from_label_studio_only():
    ls = "http://127.0.0.1:8080"
    assert image_url("/data/upload/1/a.png", ls) == ls + "/data/upload/1/a.png"
    assert image_url("/data/local-files/?d=x/a.png", ls + "/") == ls + "/data/local-files/?d=x/a.png"
    assert image_url("http://127.0.0.1:8080/data/upload/1/a.png", ls) == "http://127.0.0.1:8080/data/upload/1/a.png"
    for ref in (
        "http://example.com/a.png",
        "http://127.0.0.1:8081/data/upload/a.png",
        "//example.com/a.png",
        "s3://b/a.png",
        "file:///etc/passwd",
    ):
        with pytest.raises(OvdiffError, match="refused to fetch .* reads images from http://127.0.0.1:8080 only"):
            image_url(ref, ls)
    with pytest.raises(OvdiffError, match="set LABEL_STUDIO_URL"):
        image_url("/data/upload/1/a.png", None)


class StandIn(http.server.BaseHTTPRequestHandler):
    """A stand-in for Label Studio's file serving: one uploaded PNG, for requests that carry the API key."""

    png = b""
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.headers.get("Authorization", ""))
        if self.path == "/data/upload/1/moved.png":  # a redirect off the server: not followed
            self.send_response(302)
            self.send_header("Location", "http://example.com/a.png")
            self.end_headers()
            return
        if self.path != "/data/upload/1/scene.png" or self.headers.get("Authorization") != f"Token {TOKEN}":
            self.send_error(404 if self.path != "/data/upload/1/scene.png" else 401)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """(backend URL, stand-in Label Studio URL, the scene): `ovdiff label-studio --preset procedural --port 0`."""
    pytest.importorskip("uvicorn", reason="ovdiff label-studio needs the ui extra: pip install 'ovdiff[ui]'")
    scene = ovdiff.procedural_scene(3)
    buf = io.BytesIO()
    Image.fromarray(scene).save(buf, format="PNG")
    StandIn.png = buf.getvalue()
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    ls_url = f"http://127.0.0.1:{files.server_address[1]}"
    cache = tmp_path_factory.mktemp("ls") / "cache"
    env = {**os.environ, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN}
    cmd = [
        sys.executable,
        "-m",
        "ovdiff_cli",
        "label-studio",
        "--preset",
        "procedural",
        "--cache",
        str(cache),
        "--port",
        "0",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        line = lines.get(timeout=120)
        assert line.startswith("ovdiff label-studio: http://127.0.0.1:"), line
        assert f"images from {ls_url}" in line
        yield line.split()[2], ls_url, scene, cache, lines
        proc.send_signal(signal.SIGTERM)  # a service manager's stop: as Ctrl-C, a normal exit
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait(timeout=30)
        files.shutdown()


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_backend_speaks_label_studios_protocol_and_predicts_what_segment_does(backend):
    url, ls_url, scene, cache, _ = backend
    assert call(url + "/health") == (200, {"status": "UP", "model_class": "ovdiff", "preset": "procedural"})
    status, setup = call(
        url + "/setup", {"project": "1.0", "schema": CONFIG, "hostname": "http://example.com", "access_token": "x"}
    )
    assert status == 200 and setup["model_version"].startswith("ovdiff-procedural-")
    tasks = [
        {"id": 7, "data": {"image": "/data/upload/1/scene.png"}},
        {"id": 8, "data": {"image": f"{ls_url}/data/upload/1/scene.png"}},
    ]
    status, out = call(url + "/predict", {"tasks": tasks, "label_config": CONFIG, "project": "1.0"})
    assert status == 200, out
    assert out["model_version"] == setup["model_version"] and len(out["results"]) == 2
    assert call(url + "/versions") == (200, {"versions": [setup["model_version"]]})
    want = ovdiff.Pipeline(preset="procedural", cache=cache, device="cpu").segment(scene, ["sky", "grass", "kite"])
    for pred in out["results"]:
        brushes = {r["value"]["brushlabels"][0]: r for r in pred["result"] if r["type"] == "brushlabels"}
        shown = {"sky": "Sky", "grass": "grass", "kite": "kite"}
        assert set(brushes) == {shown[n] for n in want.present()} and {"Sky", "grass"} <= set(brushes)
        for name in want.present():
            assert np.array_equal(decode(brushes[shown[name]]), want.mask(name)), name
        assert brushes["Sky"]["score"] == pytest.approx(want.stats[1][1], abs=1e-6)
        assert pred["model_version"] == setup["model_version"]
    assert set(StandIn.seen) == {f"Token {TOKEN}"}  # the env's key, not the one /setup sent; never example.com
    status, webhook = call(url + "/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1}})
    assert status == 201 and webhook["action"] == "ANNOTATION_CREATED"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"tasks": [{"id": 1, "data": {"image": "http://example.com/a.png"}}], "label_config": CONFIG},
            "refused to fetch 'http://example.com/a.png'",
        ),
        (
            {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/missing.png"}}], "label_config": CONFIG},
            "answered 404",
        ),
        (
            {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/moved.png"}}], "label_config": CONFIG},
            "to 'http://example.com/a.png': ovdiff reads from Label Studio only",
        ),
        ({"tasks": [{"id": 1, "data": {"picture": "/x.png"}}], "label_config": CONFIG}, "task 1 has no 'image'"),
        ({"tasks": "all", "label_config": CONFIG}, "no tasks"),
        ({"tasks": [], "label_config": "<View/>"}, "no <BrushLabels>"),
    ],
)
def test_predictions_that_cannot_be_made_are_refused_in_one_line(backend, body, says):
    url, *_, lines = backend
    status, out = call(url + "/predict", body)
    assert status == 400 and says in out["error"] and "\n" not in out["error"], out


def test_the_server_label_studio_names_at_setup_is_used_only_where_none_was_set(monkeypatch, tmp_path):
    from ovdiff_cli.ui.labelstudio_app import LabelStudioBackend

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    pipe = ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache", device="cpu")
    told = {"schema": CONFIG, "hostname": "http://127.0.0.1:8080", "access_token": "from-setup"}
    free = LabelStudioBackend(pipe)
    with pytest.raises(OvdiffError, match="set LABEL_STUDIO_URL"):
        free.fetch("/data/upload/1/a.png")  # no server known yet: nothing is fetched
    version = free.setup(told)["model_version"]
    assert (free.server, free.token) == ("http://127.0.0.1:8080", "from-setup") and free.versions == [version]
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env")
    fixed = LabelStudioBackend(pipe)
    fixed.setup(told)
    assert (fixed.server, fixed.token) == ("http://127.0.0.1:9999", "from-env")
