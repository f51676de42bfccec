"""`ovdiff models download` and `ovdiff doctor`, with a stand-in downloader: no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ovdiff_cli.cli.app import app
from ovdiff_cli.models import weights
from ovdiff_cli.models.checkpoints import CUTLER_URL
from ovdiff_cli.models.cutler import random_cutler, save_checkpoint

runner = CliRunner()


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An empty HF cache and a snapshot_download that writes the asked files in the hub cache layout
    (or into local_dir), recording each call; CutLER's checkpoint (a plain URL, into $TORCH_HOME) comes
    as the tiny detector in its layout, its URL recorded the same way."""
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[dict] = []

    def download_url_to_file(url, dst):
        calls.append({"repo": url, "files": [Path(dst).name], "local_dir": str(Path(dst).parent), "cache_dir": None})
        save_checkpoint(random_cutler("tiny", 0), Path(dst))

    monkeypatch.setattr("torch.hub.download_url_to_file", download_url_to_file)

    def snapshot_download(repo_id, allow_patterns, local_dir=None, cache_dir=None):
        calls.append({"repo": repo_id, "files": allow_patterns, "local_dir": local_dir, "cache_dir": cache_dir})
        if local_dir is not None:
            root = Path(local_dir)
        else:
            repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / "main").write_text("abc123")
            root = repo / "snapshots" / "abc123"
        for f in allow_patterns:
            path = root / f.replace("*", "vocab.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        return str(root)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    return cache, calls


def test_download_fetches_every_weight_of_the_preset_into_the_hf_cache(fake_hub, tmp_path):
    cache, calls = fake_hub
    before = json.loads(
        runner.invoke(app, ["doctor", "--preset", "sd15", "--json", "--cache", str(tmp_path / "c")]).stdout
    )
    assert [w["present"] for w in before["weights"]] == [False, False, False, False]
    assert before["weights"][-1] == {
        "role": "cutler",
        "spec": "cutler_cascade_final",
        "source": "url",
        "repo": CUTLER_URL,
        "present": False,
        "licence": "CC BY-NC 4.0",
        "gated": False,
    }
    res = runner.invoke(app, ["models", "download", "--preset", "sd15", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert [c["repo"] for c in calls] == [
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "timm/vit_base_patch16_clip_224.openai",
        "timm/vit_base_patch8_224.dino",
        CUTLER_URL,
    ]
    assert calls[-1]["local_dir"] == str(tmp_path / "torch" / "hub" / "checkpoints")  # where the loader looks
    calls.pop()
    assert all(c["cache_dir"] == str(cache) and c["local_dir"] is None for c in calls)
    assert "unet/diffusion_pytorch_model.safetensors" in calls[0]["files"]
    assert "open_clip_model.safetensors" in calls[1]["files"] and "model.safetensors" in calls[2]["files"]
    doctor = runner.invoke(app, ["doctor", "--preset", "sd15", "--json", "--cache", str(tmp_path / "c")])
    facts = json.loads(doctor.stdout)
    assert [w["present"] for w in facts["weights"]] == [True, True, True, True]
    assert facts["hf_cache"] == str(cache) and facts["libraries"]["torch"] and facts["dtype"] in ("float32", "float16")
    # a second run finds everything and downloads nothing
    calls.clear()
    assert runner.invoke(app, ["models", "download", "--preset", "sd15", "--cache", str(tmp_path / "c")]).exit_code == 0
    assert calls == []


def test_download_to_a_local_dir_and_the_extras_the_options_ask_for(fake_hub, tmp_path):
    _, calls = fake_hub
    res = runner.invoke(
        app,
        [
            "models",
            "download",
            "--preset",
            "sd15",
            "--local-dir",
            str(tmp_path / "w"),
            "--extractor",
            "sd+dino+clip+mae",
            "--mask-proposer",
            "sam",
            "--cache",
            str(tmp_path / "c"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert [c["repo"] for c in calls][-2:] == ["timm/vit_large_patch16_224.mae", "facebook/sam-vit-base"]
    assert all(c["local_dir"] == str(tmp_path / "w" / Path(c["local_dir"]).name) for c in calls)
    assert (
        f"--sd-model {tmp_path / 'w' / 'sd'}" in res.stdout and f"--dino-model {tmp_path / 'w' / 'dino'}" in res.stdout
    )
    assert weights.in_folder(
        weights.weights_for("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5"), tmp_path / "w" / "sd"
    )


def test_offline_presets_need_no_download(fake_hub, tmp_path):
    _, calls = fake_hub
    res = runner.invoke(app, ["models", "download", "--preset", "tiny", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0 and calls == [] and "0 model(s)" in res.stdout
    text = runner.invoke(app, ["doctor", "--preset", "procedural", "--cache", str(tmp_path / "c")])
    assert text.exit_code == 0 and "built-in" in text.stdout and "all weights present" in text.stdout


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    def offline(**kw):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    res = runner.invoke(app, ["models", "download", "--preset", "sd15", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 2 and "cannot download sd weights stable-diffusion-v1-5/stable-diffusion-v1-5" in res.output


def test_extractor_families_are_downloaded_and_checked_under_their_part_with_part_model(fake_hub, tmp_path):
    _, calls = fake_hub
    args = [
        "--preset",
        "sd15",
        "--extractor",
        "sd+dinov3+siglip2",
        "--part-model",
        "dinov3=vit_small_patch16_dinov3.lvd1689m",
        "--cache",
        str(tmp_path / "c"),
    ]
    res = runner.invoke(app, ["models", "download", "--local-dir", str(tmp_path / "w"), *args])
    assert res.exit_code == 0, res.output
    assert [c["repo"] for c in calls][-3:] == [
        "timm/vit_small_patch16_dinov3.lvd1689m",
        "timm/vit_base_patch16_siglip_224.v2_webli",
        CUTLER_URL,  # the paper preset's mask proposer
    ]
    assert f"--mask-model {tmp_path / 'w' / 'cutler'}" in res.stdout
    assert f"--part-model dinov3={tmp_path / 'w' / 'dinov3'}" in res.stdout
    calls.clear()
    assert runner.invoke(app, ["models", "download", *args]).exit_code == 0
    facts = json.loads(runner.invoke(app, ["doctor", "--json", *args]).stdout)
    roles = {w["role"]: w for w in facts["weights"]}
    assert roles["dinov3"]["repo"] == "timm/vit_small_patch16_dinov3.lvd1689m" and roles["siglip2"]["present"] is True
    bad = runner.invoke(app, ["doctor", "--preset", "sd15", "--part-model", "dino=x", "--cache", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "PART=SPEC" in bad.output and "dinov2" in bad.output


def test_a_downloaded_cutler_file_that_is_not_the_detector_is_deleted(tmp_path, monkeypatch):
    """CutLER publishes no checksum: what is checked is that the file loads as the detector (keys, shapes)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def junk(url, dst):
        Path(dst).write_bytes(b"<html>not found</html>")

    monkeypatch.setattr("torch.hub.download_url_to_file", junk)
    w = weights.weights_for("cutler", "cutler_cascade_final")
    with pytest.raises(Exception, match="is not CutLER's Cascade Mask R-CNN checkpoint"):
        weights.download(w)
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "cutler_cascade_final.pth").exists()
    assert weights.present(w) is False
    assert weights.weights_for("cutler", "tiny").source == "built-in"
    assert weights.weights_for("cutler", str(tmp_path / "mine.pth")).source == "local"
