"""GenSelfDiff from the command line: pretrain a denoiser, resume it, fine-tune it as a segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pathseg.config import SupervisedConfig, resolve_config
from pathseg.methods import supervised
from pathseg.models import read_config
from tests.test_cli import _run_main


def pretrain_args(images: Path, out: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "pretrain",
        "--images",
        str(images),
        "--crop-size",
        "32",
        "--steps",
        str(steps),
        "-b",
        "2",
        "--out",
        str(out),
        "--set",
        "model.base_channels=8",
        "--set",
        "model.channel_mults=[1,2]",
        "--set",
        "samples.count=2",
        "--set",
        "samples.sampler.steps=3",
        "--set",
        "train.eval_every=4",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.log_every=2",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.schedule=constant",
        "--set",
        "data.val_fraction=0.25",
        *extra,
    ]


def weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / last["dir"] / name))


@pytest.fixture(scope="module")
def pretrained(synth_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    result = _run_main(pretrain_args(synth_root / "train", out, steps=8))
    assert result.exit_code == 0, result.output
    return out


def test_pretrain_writes_a_denoiser_samples_and_a_report(pretrained: Path) -> None:
    config = read_config(pretrained / "model.safetensors")
    assert config["time_embedding"] is True and config["num_classes"] == 3
    assert sorted(p.name for p in (pretrained / "samples").glob("*.png")) == [
        "step_0000004.png",
        "step_0000008.png",
    ]
    assert (pretrained / "samples.png").exists() and (pretrained / "real.png").exists()
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [4, 8] and all(r["val_loss"] > 0 for r in val)
    splits = json.loads((pretrained / "splits.json").read_text())
    assert len(splits["train_images"]) == 6 and len(splits["val_images"]) == 2
    assert not set(splits["train_images"]) & set(splits["val_images"])
    assert "DDIM samples" in (pretrained / "report.html").read_text()


def test_pretrain_resume_continues_exactly(synth_root: Path, tmp_path: Path) -> None:
    """4 steps, stop, resume to 8 == 8 steps straight (optimizer, EMA, diffusion noise RNG restored)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _run_main(pretrain_args(synth_root / "train", straight, steps=8)).exit_code == 0
    assert _run_main(pretrain_args(synth_root / "train", split, steps=4)).exit_code == 0
    resumed = _run_main(["pretrain", "--resume", "--out", str(split), "--steps", "8"])
    assert resumed.exit_code == 0, resumed.output
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = weights(straight, name), weights(split, name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    changed = _run_main(
        ["pretrain", "--resume", "--out", str(split), "--steps", "9", "--set", "diffusion.schedule=cosine"]
    )
    assert changed.exit_code == 2 and "diffusion.schedule" in changed.output


def test_finetune_from_pretrained_keeps_its_weights(
    pretrained: Path, synth_root: Path, tmp_path: Path
) -> None:
    """`train --init <pretrain run>`: every weight but the head comes from the denoiser, t is fixed at 0."""
    config = resolve_config(
        SupervisedConfig,
        None,
        [
            f"init={pretrained}",
            f"data.train={synth_root / 'train'}",
            'data.classes={"background": 0, "gland": 1}',
        ],
    )
    model = supervised.build_model(config, num_classes=2)
    source = load_file(str(pretrained / "model.safetensors"))
    state = model.state_dict()
    assert state["head.weight"].shape[0] == 2 and source["head.weight"].shape[0] == 3
    kept = [k for k in source if not k.startswith("head.") and k != "fixed_timestep"]
    assert kept and all(torch.equal(state[k], source[k]) for k in kept)
    assert int(model.fixed_timestep) == 0
    assert config.model.name == "unet_small" and config.model.kwargs()["time_embedding"] is True


def test_train_init_runs_and_resumes_from_its_config(
    pretrained: Path, synth_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "finetune"
    args = [
        "train",
        "--train",
        str(synth_root / "train"),
        "--test",
        str(synth_root / "test"),
        "--classes",
        "background=0,gland=1",
        "--init",
        str(pretrained),
        "--loss",
        "ss+focal",
        "--crop-size",
        "32",
        "--steps",
        "3",
        "-b",
        "2",
        "--out",
        str(out),
        "--set",
        "train.eval_every=3",
    ]
    result = _run_main(args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0
    saved = read_config(out / "model.safetensors")
    assert saved["time_embedding"] is True and saved["num_classes"] == 2 and saved["fixed_timestep"] == 0
    # The saved config names the converted network, so --resume rebuilds it without the init file.
    resumed = _run_main(["train", "--resume", "--out", str(out), "--steps", "4"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "checkpoints" / "last.json").read_text())["step"] == 4


def test_pretrain_errors_are_one_line(tmp_path: Path, synth_root: Path) -> None:
    no_images = _run_main(["pretrain", "--out", str(tmp_path / "a")])
    assert no_images.exit_code == 2 and "--images" in no_images.output
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = _run_main(["pretrain", "--images", str(empty), "--out", str(tmp_path / "b")])
    assert missing.exit_code == 2 and str(empty) in missing.output
    too_big = _run_main(
        [
            "pretrain",
            "--images",
            str(synth_root / "train"),
            "--crop-size",
            "128",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    assert too_big.exit_code == 2 and "smaller than data.crop_size=128" in too_big.output
    not_unet = _run_main(
        [
            "pretrain",
            "--images",
            str(synth_root / "train"),
            "--model",
            "resunet",
            "--crop-size",
            "32",
            "--out",
            str(tmp_path / "d"),
        ]
    )
    assert not_unet.exit_code == 2 and "time embedding" in not_unet.output
