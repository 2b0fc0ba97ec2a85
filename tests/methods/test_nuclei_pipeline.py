"""`pathseg nuclei train` -> `pathseg nuclei predict` end to end through the real entry point, on
synthetic 64 px tiles with their nucleus instance maps and a tiny U-Net (seconds per run); and the
HoVer objective's pieces on hand-made inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pathseg.data.instances import InstanceSample
from pathseg.data.io import read_label_image
from pathseg.data.synthetic import SynthConfig, write_dataset
from pathseg.data.targets import hover_maps
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.methods.nuclei.config import HoverLossSection
from pathseg.methods.nuclei.data import IGNORE, NucleusDataset
from pathseg.methods.nuclei.loss import hover_loss, map_gradients
from tests.test_bad_input import pathseg

TINY = [
    "--set",
    "model.name=unet",
    "--set",
    "model.base_channels=8",
    "--set",
    "model.channel_mults=[1,2]",
    "--set",
    "model.num_res_blocks=1",
    "--set",
    "data.val_fraction=0.25",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.checkpoint_every=3",
    "--set",
    "train.warmup_steps=1",
    "--set",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def synthetic_nuclei(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nuclei")
    write_dataset(root / "train", 8, seed=0, config=SynthConfig(size=64))
    write_dataset(root / "test", 2, seed=1, config=SynthConfig(size=64))
    return root


def test_map_gradients_of_ramps_are_their_slopes() -> None:
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    hv = torch.stack([0.5 * xx, -2.0 * yy])[None]
    gradients = map_gradients(hv)[0, :, 3:-3, 3:-3]  # away from the replicated border
    torch.testing.assert_close(gradients[0], torch.full_like(gradients[0], 0.5))
    torch.testing.assert_close(gradients[1], torch.full_like(gradients[1], -2.0))


def test_hover_loss_is_zero_for_the_target_and_ignores_padding() -> None:
    instances = np.zeros((16, 16), np.int32)
    instances[2:8, 2:9] = 1
    instances[9:14, 5:12] = 2
    hv = torch.from_numpy(hover_maps(instances))[None]
    mask = torch.from_numpy((instances > 0).astype(np.int64))[None]
    perfect = torch.cat([torch.stack([(mask == 0).float(), (mask == 1).float()], 1) * 40, hv], dim=1)
    total, parts = hover_loss(perfect, mask, hv, HoverLossSection())
    assert parts["mse"] == pytest.approx(0) and parts["msge"] == pytest.approx(0)
    assert parts["ce"] < 1e-6 and total.item() < 0.05  # soft Dice of saturated logits ~ 0
    wrong = perfect.clone()
    wrong[:, 2:] = 0
    assert hover_loss(wrong, mask, hv, HoverLossSection())[1]["msge"] > 0.01
    # Pixels marked IGNORE take no part: garbage there changes nothing.
    padded_mask = mask.clone()
    padded_mask[:, :, :2] = IGNORE
    garbage = perfect.clone()
    garbage[:, :, :, :2] = 5.0
    assert hover_loss(garbage, padded_mask, hv, HoverLossSection())[1]["mse"] == pytest.approx(0)


def test_dataset_targets_follow_the_augmented_instances(synthetic_nuclei: Path) -> None:
    root = synthetic_nuclei / "train"
    sample = InstanceSample(
        "synth_00000",
        root / "images" / "synth_00000.png",
        root / "instances" / "synth_00000.png",
        "instances",
    )
    transform = build_train_transform(AugmentConfig(crop_size=80, flips=True, rotate90=True), ignore_index=-1)
    dataset = NucleusDataset([sample], transform, seed=3)
    item = dataset[(0, 7)]
    assert item["image"].shape == (3, 80, 80) and item["hv"].shape == (2, 80, 80)
    # 64 px tile in an 80 px crop: the padding is ignored, the rest labelled.
    assert (item["mask"] == IGNORE).sum() == 80 * 80 - 64 * 64
    again = dataset[(0, 7)]
    assert torch.equal(item["hv"], again["hv"]) and torch.equal(item["image"], again["image"])
    nucleus = item["mask"] == 1
    assert nucleus.any() and item["hv"][:, ~nucleus].abs().max() == 0
    assert item["hv"][:, nucleus].abs().max() == pytest.approx(1.0)


def test_train_then_predict_through_the_cli(synthetic_nuclei: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = pathseg(
        "nuclei",
        "train",
        "--train",
        synthetic_nuclei / "train",
        "--test",
        synthetic_nuclei / "test",
        "--crop-size",
        "32",
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--out",
        run,
        *TINY,
    )
    assert result.code == 0, result.stderr + result.stdout
    assert "test (2 images): aji" in result.stdout
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert 0 <= metrics["aji"] <= 1 and metrics["num_images"] == 2
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["val_images"]) == 2 and len(splits["train_images"]) == 6
    for suffix in ("_instances.png", "_nuclei.geojson", "_nuclei.csv", "_overlay.png"):
        assert (run / "test" / f"synth_00000{suffix}").exists(), suffix

    out = tmp_path / "predicted"
    result = pathseg("nuclei", "predict", run, synthetic_nuclei / "test" / "images", "--out", out)
    assert result.code == 0, result.stderr + result.stdout
    instances = read_label_image(out / "synth_00001_instances.png")
    assert instances.shape == (64, 64)
    with open(out / "synth_00001_nuclei.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(np.unique(instances[instances > 0]))
    collection = json.loads((out / "synth_00001_nuclei.geojson").read_text())
    assert len(collection["features"]) == len(rows)

    # A finished run resumes to more steps from its last checkpoint.
    resumed = pathseg("nuclei", "train", "--out", run, "--resume", "--steps", "8")
    assert resumed.code == 0, resumed.stderr + resumed.stdout
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 8


def test_bad_inputs_are_one_line(synthetic_nuclei: Path, tmp_path: Path) -> None:
    result = pathseg("nuclei", "train", "--out", tmp_path / "r", *TINY)
    assert result.code == 2 and "data.train is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = pathseg("nuclei", "predict", tmp_path / "nothing", synthetic_nuclei / "test" / "images")
    assert result.code == 2 and "run folder does not exist" in result.stderr
