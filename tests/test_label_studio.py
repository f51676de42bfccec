"""`ovdiff label-studio` against a real Label Studio: Label Studio (its own venv, .venv-ls, made by
.ci/label-studio-venv.sh) on 127.0.0.1 with a temporary data folder and a user made on the command line; the
ovdiff backend on 127.0.0.1 (procedural preset); a project with a BrushLabels config, a few procedural images
uploaded, the backend connected through Label Studio's API, predictions asked for as the Data Manager's
"Retrieve predictions" action, read back through the API, decoded with Label Studio's own RLE decoder and
compared pixel for pixel with `ovdiff segment`'s masks. Skipped where the Label Studio venv is absent."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import ovdiff
from ovdiff_cli.cli.app import app

REPO = Path(__file__).resolve().parents[1]
LS_VENV = Path(os.environ.get("OVDIFF_LABEL_STUDIO_VENV", REPO / ".venv-ls"))
LS = LS_VENV / "bin" / "label-studio"
TOKEN = uuid.uuid4().hex[:40]
START_S = 600  # from a migrated database ~40 s; without one its migrations take minutes on 2 busy cores
LABELS = ("sky", "grass", "kite", "ball")
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    + "".join(f'<Label value="{name}"/>' for name in LABELS)
    + "</BrushLabels></View>"
)

pytestmark = [
    pytest.mark.labelstudio,
    pytest.mark.skipif(
        not LS.exists(), reason=f"no Label Studio at {LS}: make label-studio (.ci/label-studio-venv.sh) installs it"
    ),
]
brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="needs label-studio-sdk: make install")
pytest.importorskip("uvicorn", reason="ovdiff label-studio needs the ui extra: pip install 'ovdiff[ui]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | bytes | None = None, content_type: str = "application/json"):
    """Label Studio's REST API with the user's token → (status, JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Authorization": f"Token {TOKEN}", **({"Content-Type": content_type} if data is not None else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, data, headers), timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:500]
    except (urllib.error.URLError, ConnectionError) as e:  # not listening yet
        return 0, str(e)


def reader(proc: subprocess.Popen) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return lines


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(Label Studio's URL, the backend's URL, the cache, seconds Label Studio took to start), both running."""
    root = tmp_path_factory.mktemp("labelstudio")
    port = free_port()
    ls_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
        "LATEST_VERSION_CHECK": "false",  # no call to PyPI at start
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",  # no error reports to Sentry from a test (an empty DSN turns Label Studio's off)
        "ML_TIMEOUT_PREDICT": "600",  # the default 100 s is short for 3 images on a busy CI machine
        "ML_BLOCK_LOCAL_IP": "false",  # the backend and its /webhook are on 127.0.0.1, which Label Studio
        "SSRF_PROTECTION_ENABLED": "false",  # refuses by default (docs/label-studio.md says so)
    }
    for key in ("VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(key, None)
    user = ["--username", "ovdiff@example.com", "--password", uuid.uuid4().hex, "--user-token", TOKEN]
    ls_cmd = [str(LS), "start", "--data-dir", str(root / "data"), "--internal-host", "127.0.0.1", "-p", str(port)]
    ls_cmd += ["--host", ls_url, "--no-browser", *user, "--enable-legacy-api-token"]
    migrated = LS_VENV / "ovdiff-migrated" / "label_studio.sqlite3"  # made by the venv script: no migrations here
    if migrated.exists():
        (root / "data").mkdir()
        shutil.copyfile(migrated, root / "data" / "label_studio.sqlite3")
    started = time.monotonic()
    ls = subprocess.Popen(
        ls_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    ls_lines = reader(ls)
    cache = root / "cache"
    be_env = {**os.environ, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN}
    be_cmd = [sys.executable, "-m", "ovdiff_cli", "label-studio", "--preset", "procedural", "--cache", str(cache)]
    be = subprocess.Popen(
        [*be_cmd, "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=be_env,
    )
    be_lines = reader(be)
    try:
        # the classes built while Label Studio starts, as docs/label-studio.md advises (protos add first)
        ovdiff.Pipeline(preset="procedural", cache=cache, device="cpu").vocabulary(LABELS)
        line = be_lines.get(timeout=120)
        assert line.startswith("ovdiff label-studio: http://127.0.0.1:"), line
        while api(ls_url, "/api/projects")[0] != 200:
            assert ls.poll() is None, "Label Studio exited:\n" + "".join(ls_lines.queue)[-3000:]
            assert time.monotonic() - started < START_S, (
                "Label Studio did not answer in time:\n" + "".join(ls_lines.queue)[-3000:]
            )
            time.sleep(1)
        yield ls_url, line.split()[2], cache, time.monotonic() - started
    finally:
        be.send_signal(signal.SIGINT)
        os.killpg(ls.pid, signal.SIGTERM)
        for proc in (be, ls):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def upload(ls_url: str, project: int, paths: list[Path]) -> dict:
    """Images imported as Label Studio's import dialog does (multipart upload)."""
    boundary = uuid.uuid4().hex
    body = b""
    for path in paths:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{path.name}"; filename="{path.name}"\r\n'
        body += (head + "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    status, out = api(ls_url, f"/api/projects/{project}/import", body, f"multipart/form-data; boundary={boundary}")
    assert status == 201, out
    return out


def test_label_studio_stores_ovdiff_masks_equal_to_ovdiff_segment(servers, tmp_path):
    ls_url, backend, cache, start_s = servers
    print(f"Label Studio answered its API {start_s:.1f} s after start")
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for seed in (3, 5, 8):
        paths.append(images / f"scene{seed}.png")
        Image.fromarray(ovdiff.procedural_scene(seed)).save(paths[-1])

    status, project = api(ls_url, "/api/projects", {"title": "ovdiff test", "label_config": CONFIG})
    assert status == 201, project
    pid = project["id"]
    assert upload(ls_url, pid, paths)["task_count"] == 3
    status, ml = api(ls_url, "/api/ml", {"url": backend, "project": pid, "title": "ovdiff"})
    assert status == 201, ml
    assert ml["state"] == "CO", ml  # connected: Label Studio called /health and /setup
    status, done = api(
        ls_url,
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
        {"selectedItems": {"all": True, "excluded": []}},
    )
    assert status == 200, done

    cli = CliRunner().invoke(
        app,
        ["segment", str(images), "--classes", ",".join(LABELS), "--out", str(tmp_path / "masks"), "--cache", str(cache)]
        + ["--preset", "procedural", "--device", "cpu"],
    )
    assert cli.exit_code == 0, cli.output
    status, tasks = api(ls_url, f"/api/tasks?project={pid}&fields=all")
    assert status == 200, tasks
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    assert len(tasks) == 3
    seen = set()
    for task in tasks:
        status, preds = api(ls_url, f"/api/predictions?task={task['id']}")
        assert status == 200 and len(preds) == 1, preds
        pred = preds[0]
        assert pred["model_version"].startswith("ovdiff-procedural-") and pred["score"] is not None
        name = task["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]  # Label Studio prefixes a random id
        with Image.open(tmp_path / "masks" / name) as m:
            want = np.asarray(m)
        regions = {r["value"]["brushlabels"][0]: r for r in pred["result"]}
        assert set(regions) == {LABELS[k - 1] for k in np.unique(want) if k > 0}
        for label, region in regions.items():
            h, w = region["original_height"], region["original_width"]
            assert (h, w) == want.shape
            got = brush.decode_rle(region["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0
            assert np.array_equal(got, want == LABELS.index(label) + 1), (name, label)
            assert region["score"] is not None
        seen.add(name)
    assert seen == {p.name for p in paths}
