"""The command line as a user meets it: one-line errors, a killed run resumed, evaluate and predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from pathseg.cli import app
from pathseg.cli.common import parse_classes, parse_loss
from pathseg.errors import ConfigError

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny_train_args(root: Path, out: Path, steps: int = 16) -> list[str]:
    return [
        "train",
        "--train",
        str(root / "train"),
        "--test",
        str(root / "test"),
        "--classes",
        "background=0,gland=1",
        "--model",
        "unet_small",
        "--crop-size",
        "64",
        "--steps",
        str(steps),
        "-b",
        "2",
        "--out",
        str(out),
        "--set",
        "model.base_channels=8",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.eval_every=8",
        "--set",
        "train.log_every=2",
        "--set",
        "train.ema_decay=0.9",
        "--set",
        "train.warmup_steps=2",
        "--set",
        "data.val_fraction=0.25",
        "--set",
        "train.threads=1",
    ]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pathseg.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def last_weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    return load_file(str(run_dir / "checkpoints" / last["dir"] / name))


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(synth_root: Path, tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_cli(tiny_train_args(synth_root, straight))
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(
        [sys.executable, "-m", "pathseg.cli", *tiny_train_args(synth_root, killed)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = killed / "checkpoints" / "last.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make the run longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert 6 <= killed_at < 16
    # Every checkpoint left on disk is complete and loadable.
    for folder in (killed / "checkpoints").glob("step_*"):
        load_file(str(folder / "model.safetensors"))
        torch.load(folder / "training_state.pt", weights_only=False)

    resumed = run_cli(["train", "--resume", "--out", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(pointer.read_text())["step"] == 16
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = last_weights(straight, name), last_weights(killed, name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    steps = [
        json.loads(line)["step"]
        for line in (killed / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert steps == list(range(2, 17, 2))  # no duplicated or missing log lines after the resume

    # The finished run evaluates and predicts from the CLI.
    evaluated = run_cli(
        ["evaluate", str(killed), "--data", str(synth_root / "test"), "--out", str(tmp_path / "ev")]
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= metrics["dice"] <= 1.0 and metrics["num_images"] == 4
    assert len(list((tmp_path / "ev" / "overlays").glob("*.png"))) == 4
    predicted = run_cli(
        ["predict", str(killed), str(synth_root / "test" / "images"), "--out", str(tmp_path / "pr")]
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len(list((tmp_path / "pr" / "masks").glob("*.png"))) == 4
    assert (killed / "report.html").exists() and (killed / "environment.json").exists()


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _run_main(args: list[str]):
    """Run the real entry point (with its error handling) in-process and capture what a user sees."""
    import contextlib
    import io

    from pathseg import cli
    from pathseg.cli.common import err_console

    stderr, stdout = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["pathseg", *args]
    code = 0
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            err_console.file = stderr
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code or 0
    finally:
        sys.argv = old
        err_console.file = None  # back to following sys.stderr

    class Result:
        exit_code = code
        output = stderr.getvalue()

    return Result()


def test_unknown_config_key_is_one_line(tmp_path: Path, synth_root: Path) -> None:
    line = one_line_error(
        _run_main(
            [
                "train",
                "--train",
                str(synth_root / "train"),
                "--set",
                "train.stepz=3",
                "--out",
                str(tmp_path / "r"),
            ]
        )
    )
    assert "unknown config key 'train.stepz'" in line and "did you mean 'steps'" in line


def test_bad_yaml_config_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  train: [unclosed\n")
    line = one_line_error(_run_main(["train", "-c", str(config)]))
    assert str(config) in line


def test_missing_training_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    line = one_line_error(_run_main(["train", "--train", str(missing), "--out", str(tmp_path / "r")]))
    assert str(missing) in line


def test_mask_with_unknown_values_names_the_mask(tmp_path: Path, synth_root: Path) -> None:
    # The synthetic masks hold 0/1; declaring only 0 and 255 makes value 1 unknown.
    line = one_line_error(_run_main(["data", "check", str(synth_root / "train"), "--classes", "bg=0,fg=255"]))
    assert "synth_0000" in line and "not in the class map" in line


def test_existing_run_is_not_overwritten(tmp_path: Path, synth_root: Path) -> None:
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.json").write_text('{"step": 1, "dir": "step_0000001"}')
    line = one_line_error(_run_main(["train", "--train", str(synth_root / "train"), "--out", str(run)]))
    assert "--resume" in line


def test_data_check_defaults_accept_the_synthetic_data(synth_root: Path) -> None:
    # `pathseg data synth d && pathseg data check d` must work out of the box (0/1 masks), as must
    # 0/255 masks (GlaS): the default class map accepts either value for the gland class.
    result = runner.invoke(app, ["data", "check", str(synth_root / "train")])
    assert result.exit_code == 0, result.output
    assert "8 image/mask pairs" in result.output


def test_parse_helpers() -> None:
    assert parse_classes("background=0,gland=255") == {"background": 0, "gland": 255}
    assert parse_classes("tumour, stroma") == ["tumour", "stroma"]
    assert parse_classes("background=0,gland=1|255") == {"background": 0, "gland": [1, 255]}
    assert parse_loss("ce+dice") == {"ce": 1.0, "dice": 1.0}
    assert parse_loss("focal:2,dice:0.5") == {"focal": 2.0, "dice": 0.5}
    with pytest.raises(ConfigError):
        parse_classes("a=x")
    with pytest.raises(ConfigError):
        parse_classes("a=1|x")


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["predict", "--help"],
        ["demo", "--help"],
        ["data", "synth", "--help"],
        ["data", "check", "--help"],
        ["models", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, args


def test_resume_refuses_a_changed_config(tmp_path: Path, synth_root: Path) -> None:
    from pathseg.config import SupervisedConfig, resolve_config, to_plain
    from pathseg.engine import write_run_info

    run = tmp_path / "r"
    saved = resolve_config(SupervisedConfig, None, [f"data.train={synth_root / 'train'}", f"output={run}"])
    write_run_info(run, to_plain(saved))
    line = one_line_error(_run_main(["train", "--resume", "--out", str(run), "--set", "train.lr=0.5"]))
    assert (
        "config.yaml" in line
        and "train.lr" in line
        and "only train.steps and train.budget_minutes may change" in line
    )


# --------------------------------------------------------------------------------------- weak


@pytest.fixture(scope="module")
def tissue_patches(tmp_path_factory) -> tuple[Path, Path, object]:
    """Synthetic tissue tiles cut by `pathseg data patch-labels`, plus two whole tiles as a test set
    whose masks sit in tissue/ (read with --mask-folder)."""
    import shutil

    from pathseg.data.synthetic import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("tissue")
    full = write_dataset(root / "synth", 10, seed=1, config=SynthConfig(size=64))
    for name in ("synth_00008", "synth_00009"):
        for sub, source in (("images", "images"), ("tissue", "tissue")):  # as `data synth` names them
            (root / "test" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(full / source / f"{name}.png", root / "test" / sub / f"{name}.png")
    args = ["data", "patch-labels", str(full), str(root / "patches"), "--masks", "tissue", "--ignore", "3"]
    result = runner.invoke(app, [*args, "--patch-size", "32", "--style", "space"])
    return root / "patches", root / "test", result


def test_data_patch_labels_writes_labelled_patches(tissue_patches) -> None:
    import numpy as np

    from pathseg.data.io import read_label_image
    from pathseg.data.patch_labels import discover_patch_labels

    patches, _, result = tissue_patches
    assert result.exit_code == 0, result.output
    found = discover_patch_labels(patches, ["tumour", "stroma", "normal"])
    assert "from 10 images" in result.output and f"wrote {len(found)} patches" in result.output
    assert 10 <= len(found) <= 40  # at most 4 patches of 32 px per 64 px tile; glass-only ones skipped
    assert all(
        s.image.name.endswith("].png") and "-[" in s.image.name and "," not in s.image.name for s in found
    )
    with open(patches / "labels.csv") as handle:
        assert len(handle.read().strip().splitlines()) == len(found) + 1
    for sample in found:
        mask = read_label_image(patches / "masks" / sample.image.name)
        assert mask.shape == (32, 32)
        values = set(np.unique(mask).tolist())
        assert values <= {0, 1, 2, 255}  # background (3) became the ignore index
        labelled = mask[mask != 255]
        shares = np.bincount(labelled, minlength=3) / labelled.size
        assert sample.labels == tuple(int(share > 0.05) for share in shares)  # the default min_fraction


def weak_run_args(patches: Path, test: Path, out: Path) -> list[str]:
    from tests.methods.test_weak import TINY

    args = ["weak", "run", "--patches", str(patches), "--test", str(test), "--mask-folder", "tissue"]
    args += ["--ignore", "3", "--out", str(out)]
    for pair in TINY:
        args += ["--set", pair]
    return args


def test_weak_run_end_to_end_refuses_to_overwrite_and_resumes(tissue_patches, tmp_path: Path) -> None:
    patches, test, _ = tissue_patches
    out = tmp_path / "weak"
    first = _run_main(weak_run_args(patches, test, out))
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"test", "test_ungated", "test_cams"} <= set(summary)
    assert (out / "figures" / "cams.png").exists() and (out / "cam_quality.json").exists()
    from tests.report.test_report_paths import references, resolve

    report = out / "report.html"
    text = report.read_text()
    assert "Segmenter on the test images" in text and "Class activation maps" in text
    images = references(report).images
    assert len(images) >= 3  # CAM figure, two learning curves, prediction panels
    assert all(resolve(report, src).is_file() for src in images)
    line = one_line_error(_run_main(weak_run_args(patches, test, out)))
    assert str(out) in line and "already exists" in line and "--resume" in line
    weights = out / "segmenter" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = _run_main(["weak", "run", "--resume", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert weights.stat().st_mtime_ns == stamp  # finished stages are skipped
    saved = (out / "config.yaml").read_text()
    line = one_line_error(
        _run_main(["weak", "run", "--resume", "--out", str(out), "--set", "cam.batch_size=3"])
    )
    assert "cam.batch_size" in line and "--resume continues the saved config" in line
    assert (out / "config.yaml").read_text() == saved  # a refused resume rewrites nothing


def test_weak_ignore_that_is_not_a_number_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(_run_main(["weak", "run", "--ignore", "a", "--out", str(tmp_path / "r")]))
    assert "--ignore" in line and "'a'" in line


def test_weak_cam_without_a_run_folder_is_clear(tmp_path: Path) -> None:
    line = one_line_error(_run_main(["weak", "cam", "--out", str(tmp_path / "nowhere")]))
    assert str(tmp_path / "nowhere") in line and "no config.yaml" in line
    line = one_line_error(_run_main(["weak", "cam"]))
    assert "--out" in line
    line = one_line_error(_run_main(["weak", "train", "--out", str(tmp_path)]))
    assert "no config.yaml" in line


def test_weak_bad_patch_name_is_one_line_naming_the_file(tmp_path: Path) -> None:
    import numpy as np

    from pathseg.data.io import write_image

    for name in ("bad.png", "ok-[1, 0, 0].png"):
        write_image(tmp_path / "patches" / "images" / name, np.zeros((32, 32, 3), np.uint8))
    line = one_line_error(
        _run_main(["weak", "classify", "--patches", str(tmp_path / "patches"), "--out", str(tmp_path / "r")])
    )
    assert str(tmp_path / "patches" / "images" / "bad.png") in line and "carries no patch label" in line
    wrong = tmp_path / "patches" / "images" / "ok-[1, 0, 0].png"
    (tmp_path / "patches" / "images" / "bad.png").unlink()
    line = one_line_error(
        _run_main(
            [
                "weak",
                "classify",
                "--patches",
                str(tmp_path / "patches"),
                "--classes",
                "a,b",
                "--out",
                str(tmp_path / "r2"),
            ]
        )
    )
    assert str(wrong) in line and "3 values but 2 classes" in line


def test_weak_commands_have_help() -> None:
    for args in (
        ["weak", "--help"],
        ["weak", "classify", "--help"],
        ["weak", "cam", "--help"],
        ["weak", "train", "--help"],
        ["weak", "run", "--help"],
        ["data", "patch-labels", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, args
