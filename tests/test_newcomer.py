"""What a newcomer trips on first: an unreachable model hub, the command after `make demo`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
from PIL import Image

import ovdiff
from ovdiff_cli.models import weights


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_fails_in_seconds_in_one_line_and_leaves_no_out_folder(tmp_path):
    picture = tmp_path / "scene.png"
    Image.fromarray(ovdiff.procedural_scene(3, (64, 64))).save(picture)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=endpoint)  # an empty HF cache, a hub that refuses
    cmd = [sys.executable, "-m", "ovdiff_cli", "segment", str(picture), "--classes", "cat, dog", "--device", "cpu"]
    cmd += ["--mask-proposer", "ncut"]  # the default preset's models, less CutLER's checkpoint (not on the hub)
    start = time.monotonic()
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,  # the libraries' own retries take minutes
    )
    took = time.monotonic() - start
    errors = [line for line in r.stderr.splitlines() if line.lower().startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr
    assert f"the model hub {endpoint} cannot be reached" in errors[0] and "ovdiff models download" in errors[0]
    assert "Retrying" not in r.stderr and took < 90, took
    assert not (tmp_path / "out").exists()  # the run failed before writing anything


def test_the_hub_is_not_asked_when_hf_hub_offline_says_so(monkeypatch, tmp_path):
    def asked(endpoint: str) -> str:
        raise AssertionError(f"asked {endpoint}")

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(weights, "hub_unreachable", asked)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights.check_hub("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")  # offline: the loader fails at once itself
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    try:
        weights.check_hub("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    except AssertionError as e:
        assert "asked https://huggingface.co" in str(e)
    else:
        raise AssertionError("online with an empty HF cache, the hub must be checked")


def test_an_empty_out_folder_of_a_failed_job_is_removed_but_not_one_that_was_there(tmp_path):
    from ovdiff_cli.io.outdir import job_out_dir

    for existed in (False, True):
        out = tmp_path / f"out{existed}"
        if existed:
            out.mkdir()
        try:
            with job_out_dir(out) as folder:
                assert folder.is_dir()
                raise RuntimeError("failed before writing")
        except RuntimeError:
            pass
        assert out.exists() == existed
    with job_out_dir(tmp_path / "kept") as folder:
        (folder / "mask.png").write_bytes(np.zeros(1, np.uint8).tobytes())
    assert (tmp_path / "kept" / "mask.png").exists()


def test_the_next_command_is_one_that_runs_here(monkeypatch, tmp_path):
    from ovdiff_cli.cli.output import ovdiff_command

    script = tmp_path / ".venv" / "bin" / "ovdiff"  # `make demo` runs .venv/bin/ovdiff, not on PATH
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    assert ovdiff_command() == ".venv/bin/ovdiff"
    monkeypatch.setattr(sys, "argv", ["/elsewhere/ovdiff_cli/__main__.py", "demo"])  # python -m ovdiff_cli
    assert ovdiff_command() == f"{sys.executable} -m ovdiff_cli"
    monkeypatch.setenv("PATH", str(script.parent))  # an activated environment
    assert ovdiff_command() == "ovdiff"
