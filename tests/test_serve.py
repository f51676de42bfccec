"""`ovdiff serve`: the real command on a free port, driven over HTTP and in headless Chromium.

One server (procedural preset, offline, small limits so the refusals are cheap to reach) serves the
module. The browser tests need Chromium and its driver from the system packages (CI's .ci/run installs
them); without them they skip with the reason, and the HTTP tests still run.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import queue
import shutil
import signal
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
from ovdiff_cli.io.palette import name_colour
from ovdiff_cli.ui.session import DemoSession

pytest.importorskip("uvicorn", reason="ovdiff serve needs the ui extra: pip install 'ovdiff[ui]'")

CLASSES = "kite, ball, sky, grass"
MAX_PIXELS = 30_000  # the test scene is 192x128 = 24,576 pixels
SKY, GRASS = (10, 5), (100, 100)  # (x, y) of scene 3: sky above the horizon, grass below it


def scene_png(seed: int = 3, size: tuple[int, int] = (128, 192)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(ovdiff.procedural_scene(seed, size)).save(buf, format="PNG")
    return buf.getvalue()


# The real command, with the procedural world's drawing slowed to a real generator's pace (half a second a batch),
# so a class build outlasts the page's 300 ms progress polls as it does with real weights.
SLOW_DRAWING = """
import sys, time
from ovdiff_cli import procedural
from ovdiff_cli.cli.app import main

draw = procedural.ProceduralGenerator.generate
procedural.ProceduralGenerator.generate = lambda self, *a, **k: (time.sleep(0.5), draw(self, *a, **k))[1]
sys.argv[0] = "ovdiff"
main()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of a running `ovdiff serve --preset procedural --port 0`, and the line it printed."""
    cache = tmp_path_factory.mktemp("serve") / "cache"
    cmd = [
        sys.executable,
        "-c",
        SLOW_DRAWING,
        "serve",
        "--preset",
        "procedural",
        "--cache",
        str(cache),
        "--port",
        "0",
        "--max-pixels",
        str(MAX_PIXELS),
        "--max-classes",
        "8",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as at a terminal, whoever runs pytest
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        line = lines.get(timeout=120)
        assert line.startswith("ovdiff serve: http://"), line
        yield line.split()[2], line
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a normal stop, not the batch commands' "interrupted" exit 130
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=60)  # the pipe's end: every line the server printed is in the queue
        rest = list(lines.queue)
        assert rest and "ovdiff serve: stopped" in rest[-1], rest
    finally:
        proc.kill()
        proc.wait(timeout=30)


def post_segment(url: str, image: bytes | None, classes: str | None, job: str | None = None) -> tuple[int, dict]:
    """POST /api/segment as a browser's form does (multipart), → (status, JSON answer)."""
    boundary = uuid.uuid4().hex
    body = b""
    if image is not None:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="scene.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + image
            + b"\r\n"
        )
    if classes is not None:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="classes"\r\n\r\n{classes}\r\n'.encode()
    if job is not None:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="job"\r\n\r\n{job}\r\n'.encode()
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url + "api/segment", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return answer(req)


def answer(req) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_listens_on_this_machine_only_by_default(server):
    url, line = server
    assert url.startswith("http://127.0.0.1:") and "preset procedural" in line
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200 and b'id="overlay"' in r.read()


def test_segment_answers_the_overlay_and_legend_and_a_pixel_its_winning_prototype(server):
    url, _ = server
    status, seg = post_segment(url, scene_png(), CLASSES)
    assert status == 200, seg
    assert (seg["width"], seg["height"]) == (192, 128)
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(seg["overlay"].split(",", 1)[1]))))
    assert overlay.shape == (128, 192, 3)
    legend = {e["name"]: e for e in seg["legend"]}
    assert {"sky", "grass"} <= set(legend) and "kite" not in legend  # the scene has no kite
    assert abs(sum(e["share"] for e in seg["legend"]) - 1) < 1e-3
    assert legend["sky"]["color"] == list(name_colour("sky"))  # the name's own colour, wherever it stands
    assert seg["notes"] == []  # every large class here is in the picture
    for (x, y), name in ((SKY, "sky"), (GRASS, "grass")):
        status, why = answer(f"{url}api/explain?id={seg['id']}&x={x}&y={y}")
        assert status == 200, why
        proto = why["prototype"]
        assert (
            why["name"] == name
            and proto["class"] == name
            and proto["label"] == why["label"] == CLASSES.split(", ").index(name) + 1
        )
        assert proto["group"] == "fg" and proto["pixels"] > 0 and isinstance(proto["support_image"], int)
        x0, y0, x1, y1 = proto["bbox_xyxy"]
        assert x0 <= x < x1 and y0 <= y < y1  # the clicked pixel is among those the prototype won
        assert why["won"].startswith("data:image/png;base64,") and why["support"].startswith("data:image/png;base64,")


@pytest.mark.parametrize(
    ("image", "classes", "says"),
    [
        (
            "big",
            CLASSES,
            "200x200 = 40,000 pixels, above this server's limit of 30,000",
        ),  # 200x200 > --max-pixels 30000
        ("text", CLASSES, "not a picture"),
        ("scene", ",".join(f"c{i}" for i in range(9)), "9 classes, above this server's limit of 8"),
        ("scene", "cat, cat", "given twice"),
        ("scene", None, "no classes"),
        (None, CLASSES, "no image"),
    ],
)
def test_bad_requests_get_one_clear_line_and_a_400(server, image, classes, says):
    data = {"big": scene_png(3, (200, 200)), "text": b"hello", "scene": scene_png(), None: None}[image]
    status, body = post_segment(server[0], data, classes)
    assert status == 400 and says in body["error"] and "\n" not in body["error"], body


def test_explain_refuses_unknown_results_and_pixels_outside_the_picture(server):
    url, _ = server
    _, seg = post_segment(url, scene_png(), CLASSES)
    for query, says in (
        ("id=nope&x=1&y=1", "no longer kept"),
        (f"id={seg['id']}&x=192&y=0", "outside the 192x128"),
        (f"id={seg['id']}&x=-1&y=0", "whole numbers"),
    ):
        status, body = answer(f"{url}api/explain?{query}")
        assert status == 400 and says in body["error"], body


@contextlib.contextmanager
def in_process(session: DemoSession):
    """The app as `ovdiff serve` assembles it (the CLI's phrasing of errors), served from this process: its URL."""
    import uvicorn

    from ovdiff_cli.cli.common import phrase
    from ovdiff_cli.ui.app import listen, make_app

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(make_app(session, phrase), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_no_build_refuses_missing_classes_naming_the_command_that_builds_them(tmp_path):
    session = DemoSession(ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache"), build=False)
    with in_process(session) as url:
        status, body = post_segment(url, scene_png(), "kite, sky")
    assert status == 400 and "build them with: ovdiff protos add kite sky" in body["error"], body


def test_an_upload_over_the_byte_limit_is_refused_before_it_is_read(tmp_path):
    session = DemoSession(ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache"))
    session.max_bytes = 1000  # the scene's PNG is some 34 kB
    with in_process(session) as url:
        status, body = post_segment(url, scene_png(), "kite, sky")
    assert status == 413 and "bytes, above this server's limit of 1,000" in body["error"], body
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_a_class_keeps_its_colour_wherever_it_stands_in_the_list(server):
    url, _ = server
    colours = []
    for classes in (CLASSES, ", ".join(reversed(CLASSES.split(", ")))):
        status, seg = post_segment(url, scene_png(), classes)
        assert status == 200, seg
        colours.append({e["name"]: e["color"] for e in seg["legend"]})
    assert colours[0] == colours[1] and len(colours[0]) >= 2
    assert all(colour == list(name_colour(name)) for name, colour in colours[0].items())


def test_a_class_that_covers_the_picture_with_a_low_score_gets_a_note(server):
    url, _ = server
    status, seg = post_segment(url, scene_png(), "sky")  # scene 3 is grass below a sky: sky alone takes it all
    assert status == 200, seg
    (entry,) = seg["legend"]
    assert entry["name"] == "sky" and entry["share"] == 1 and entry["score"] < 0.9
    (note,) = seg["notes"]
    assert note.startswith("sky covers 100% of the picture with a low mean score") and "holds no sky" in note


def test_the_mask_and_the_results_download_as_the_page_shows_them(server):
    url, _ = server
    _, seg = post_segment(url, scene_png(), CLASSES)
    with urllib.request.urlopen(f"{url}api/mask?id={seg['id']}", timeout=60) as r:
        assert r.headers["Content-Type"] == "image/png" and "attachment" in r.headers["Content-Disposition"]
        mask = Image.open(io.BytesIO(r.read()))
    assert mask.mode == "P" and mask.size == (192, 128)
    labels, palette = np.asarray(mask), np.asarray(mask.getpalette()[:15], np.uint8).reshape(5, 3)
    status, results = answer(f"{url}api/results?id={seg['id']}&format=json")
    assert status == 200 and results["classes"] == CLASSES.split(", ")
    for e in results["labels"]:  # the file's pixels, colours and counts are the legend's
        assert (labels == e["label"]).sum() == e["pixels"] and palette[e["label"]].tolist() == e["color"]
        assert next(x for x in seg["legend"] if x["label"] == e["label"]).items() <= e.items()
    status, coco = answer(f"{url}api/results?id={seg['id']}&format=coco")
    assert status == 200 and {r["category_id"] for r in coco} == {e["label"] for e in results["labels"]} - {0}
    from pycocotools import mask as cocomask

    for record in coco:
        assert (cocomask.decode(record["segmentation"]) == (labels == record["category_id"])).all()
    status, body = answer(f"{url}api/results?id={seg['id']}&format=xml")
    assert status == 400 and "ask for json or coco" in body["error"]


def test_examples_are_listed_and_drawn_by_the_server(server):
    url, _ = server
    status, examples = answer(f"{url}api/examples")
    assert status == 200 and len(examples) >= 3
    with urllib.request.urlopen(url + examples[0]["url"].lstrip("/"), timeout=60) as r:
        picture = np.asarray(Image.open(io.BytesIO(r.read())))
    assert picture.shape == (128, 192, 3) and (picture == ovdiff.procedural_scene(examples[0]["seed"])).all()
    assert examples[0]["classes"] == "kite, ball, boat, car, sky, grass"
    status, body = answer(f"{url}api/examples/999.png")
    assert status == 404 and "no example 999" in body["error"]


def test_progress_is_reported_while_a_class_is_built(tmp_path):
    session = DemoSession(ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache"))
    job = uuid.uuid4().hex
    seen: list[dict] = []
    with in_process(session) as url:
        done = []
        worker = threading.Thread(target=lambda: done.append(post_segment(url, scene_png(), "sky, tree", job)))
        worker.start()
        while worker.is_alive():
            status, now = answer(f"{url}api/progress?job={job}")
            if status == 200 and (not seen or now != seen[-1]):
                seen.append(now)
            time.sleep(0.05)
        worker.join()
        assert done[0][0] == 200, done
        assert answer(f"{url}api/progress?job={job}")[1] == {"stage": "unknown"}  # forgotten once answered
    building = [e for e in seen if e.get("name")]
    assert {(e["name"], e["class_index"], e["classes"]) for e in building} == {("sky", 1, 2), ("tree", 2, 2)}
    samples = [e for e in building if e["stage"] == "sample"]
    assert samples and all(0 <= e["done"] <= e["total"] > 0 for e in samples)
    assert seen[-1]["stage"] in ("segment", "unknown")  # ("prototypes" passes too quickly to be seen every time)


def chunked_upload(url: str, total: int) -> tuple[int, int, bytes]:
    """POST a multipart picture of `total` bytes with chunked transfer (no Content-Length), 64 KiB at a time,
    watching for an early answer after each chunk → (bytes sent when the answer came, its status, its body)."""
    import select
    import socket

    host, port = url.removeprefix("http://").strip("/").split(":")
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    sock = socket.create_connection((host, int(port)), timeout=60)
    with sock:
        sock.sendall(
            f"POST /api/segment HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + chunk(head)
        )
        sent, block = len(head), b"\0" * 65536
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk(block))
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: read its answer
            sent += len(block)
        else:
            if sent >= total:
                sock.sendall(chunk(f"\r\n--{boundary}--\r\n".encode()) + b"0\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < int(
            reply.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
        ):
            more = sock.recv(65536)
            if not more:
                break
            reply += more
    status = int(reply.split(b" ", 2)[1])
    return sent, status, reply.split(b"\r\n\r\n", 1)[1]


def test_a_chunked_upload_is_counted_as_it_arrives_and_stopped_at_the_limit(tmp_path):
    session = DemoSession(ovdiff.Pipeline(preset="procedural", cache=tmp_path / "cache"))
    session.max_bytes = 100_000
    with in_process(session) as url:
        sent, status, body = chunked_upload(url, 64 * 2**20)
    # answered while the body was still arriving: within the limit plus what the sockets buffer, not 64 MiB
    assert status == 413 and sent < 16 * 2**20, (sent, status, body)
    assert "above this server's limit of 100,000" in json.loads(body)["error"]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("stop", "sigint_at_start"),
    [
        (signal.SIGTERM, signal.SIG_DFL),  # `kill`: stops as Ctrl-C does
        (signal.SIGINT, signal.SIG_IGN),  # `ovdiff serve &` in a script starts with SIGINT ignored: uvicorn still
        # stops on it, then returns instead of raising, and the command must still say it stopped
    ],
)
def test_sigterm_and_an_ignored_sigint_stop_serve_as_ctrl_c_does(tmp_path, stop, sigint_at_start):
    cmd = [sys.executable, "-m", "ovdiff_cli", "serve", "--preset", "procedural", "--cache", str(tmp_path / "c")]
    proc = subprocess.Popen(
        [*cmd, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint_at_start),
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("ovdiff serve: http://"), first
        urllib.request.urlopen(first.split()[2], timeout=60).close()  # serving: uvicorn's signal handlers are set
        proc.send_signal(stop)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and rest.strip().splitlines()[-1] == "ovdiff serve: stopped", (proc.returncode, rest)


def test_serve_without_the_ui_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    r = CliRunner().invoke(app, ["serve", "--preset", "procedural"])
    assert r.exit_code == 2 and "pip install 'ovdiff[ui]'" in r.output, r.output


# -- in a real browser


def chromium():
    """Headless Chromium through the system's chromedriver, or the test skipped saying what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium with chromedriver installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is in the dev extra: pip install -e '.[dev]'"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 300):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def submit(driver, url: str, picture: Path, classes: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    driver.find_element(By.ID, "image").send_keys(str(picture))
    field = driver.find_element(By.ID, "classes")
    field.clear()
    field.send_keys(classes)
    driver.find_element(By.ID, "go").click()


def click_pixel(driver, x: int, y: int) -> str:
    """Click pixel (x, y) of the shown overlay (192x128) and return the explanation's text."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    overlay = driver.find_element(By.ID, "overlay")
    # wholly in view: the offset below counts from the centre of the element's visible part
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", overlay)
    before = driver.find_element(By.ID, "why").text
    w, h = overlay.size["width"], overlay.size["height"]
    ActionChains(driver).move_to_element_with_offset(
        overlay, int((x + 0.5) * w / 192 - w / 2), int((y + 0.5) * h / 128 - h / 2)
    ).click().perform()
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "explanation").is_displayed() and d.find_element(By.ID, "why").text != before,
    )
    return driver.find_element(By.ID, "why").text


def test_in_chromium_a_chosen_picture_is_segmented_and_a_click_explained(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "scene.png"
    picture.write_bytes(scene_png())
    submit(browser, server[0], picture, CLASSES)
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    overlay = browser.find_element(By.ID, "overlay")
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay) == [
        192,
        128,
    ]
    legend = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#legend li")]
    assert any(t.startswith("sky ") for t in legend) and any(t.startswith("grass ") for t in legend), legend
    assert "click a pixel" in browser.find_element(By.ID, "status").text

    for (x, y), name in ((SKY, "sky"), (GRASS, "grass")):
        text = click_pixel(browser, x, y)
        assert text.startswith(f"Pixel ({x}, {y}) is {name}: won by prototype #") and f'of "{name}"' in text, text
        assert "support image" in text
        support = browser.find_element(By.ID, "support")
        assert support.is_displayed() and support.size["width"] >= 300  # the support image large enough to see
        caption = browser.find_element(By.ID, "support-caption")
        assert f'of "{name}"' in caption.text and "tinted" in caption.text
        assert float(caption.value_of_css_property("font-size").removesuffix("px")) >= 15  # page text, not image text


def test_in_chromium_a_refused_request_shows_its_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "scene.png"
    picture.write_bytes(scene_png())
    submit(browser, server[0], picture, ",".join(f"c{i}" for i in range(9)))
    status = wait_for(browser, lambda d: (s := d.find_element(By.ID, "status")).get_attribute("class") == "error" and s)
    assert "9 classes, above this server's limit of 8" in status.text
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_in_chromium_an_example_is_one_click_from_a_result(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server[0])
    first = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))[0]
    width = "return arguments[0].querySelector('img').naturalWidth"
    assert wait_for(browser, lambda d: d.execute_script(width, first)) == 192  # drawn by the server, loaded
    first.click()
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    assert browser.find_element(By.ID, "classes").get_attribute("value") == "kite, ball, boat, car, sky, grass"
    preview = browser.find_element(By.ID, "preview")
    assert preview.is_displayed() and browser.execute_script("return arguments[0].naturalWidth", preview) == 192
    assert "click a pixel" in browser.find_element(By.ID, "status").text


def test_in_chromium_a_chosen_picture_is_previewed_and_its_results_download(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "scene.png"
    picture.write_bytes(scene_png())
    browser.get(server[0])
    browser.find_element(By.ID, "image").send_keys(str(picture))
    preview = browser.find_element(By.ID, "preview")
    wait_for(
        browser, lambda d: preview.is_displayed() and d.execute_script("return arguments[0].naturalWidth", preview)
    )
    assert browser.execute_script("return arguments[0].naturalWidth", preview) == 192
    browser.find_element(By.ID, "classes").send_keys(CLASSES)
    browser.find_element(By.ID, "go").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    fetch = "return fetch(arguments[0].href).then(async r => [r.status, r.headers.get('content-type'), (await r.arrayBuffer()).byteLength])"
    for link, kind in (("get-mask", "image/png"), ("get-json", "application/json"), ("get-coco", "application/json")):
        a = browser.find_element(By.ID, link)
        assert a.is_displayed() and a.get_attribute("download") is not None
        status, content_type, size = browser.execute_script(fetch, a)
        assert status == 200 and content_type == kind and size > 50, (link, status, content_type, size)


def test_in_chromium_the_page_shows_progress_while_a_class_is_built(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "scene.png"
    picture.write_bytes(scene_png())
    submit(browser, server[0], picture, "sky, grass, bird")  # bird is not cached: it is built now
    status = wait_for(
        browser, lambda d: 'building class 3 of 3, "bird"' in (t := d.find_element(By.ID, "status").text) and t
    )
    assert browser.find_element(By.ID, "bar").is_displayed(), status
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    assert not browser.find_element(By.ID, "bar").is_displayed()


def test_in_chromium_a_low_score_class_shows_its_note(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "scene.png"
    picture.write_bytes(scene_png())
    submit(browser, server[0], picture, "sky")
    wait_for(browser, lambda d: d.find_element(By.ID, "result").is_displayed())
    notes = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#notes li")]
    assert len(notes) == 1 and notes[0].startswith("sky covers 100% of the picture with a low mean score"), notes
