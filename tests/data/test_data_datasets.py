"""Torch datasets: item layout, caching, scaling and reproducible augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pathseg.data.classes import ClassMap
from pathseg.data.datasets import SegmentationDataset, UnlabeledImageDataset
from pathseg.data.folders import Sample, discover_dataset
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.errors import DataError
from tests.data.helpers import write_pair

BINARY = ClassMap.binary(names=("background", "gland"))


@pytest.fixture
def split(tmp_path: Path) -> Path:
    write_pair(tmp_path, "a", size=(20, 28), image_ext=".webp", seed=1)
    write_pair(tmp_path, "b", size=(20, 28), seed=2)
    return tmp_path


def test_items_have_expected_layout(split: Path) -> None:
    ds = SegmentationDataset(discover_dataset(split), BINARY)
    assert len(ds) == 2
    item = ds[0]
    assert set(item) == {"image", "mask", "name"}
    assert item["name"] == "a"
    assert item["image"].shape == (3, 20, 28) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0
    assert item["mask"].shape == (20, 28) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {0, 1}


def test_scale_and_cache(split: Path) -> None:
    ds = SegmentationDataset(discover_dataset(split), BINARY, scale=0.5)
    image, mask = ds.load(1)
    assert image.shape == (10, 14, 3) and mask.shape == (10, 14)
    assert mask.dtype == np.uint8  # cached compactly, returned as int64
    assert ds.load(1)[0] is image
    assert ds[1]["mask"].dtype == torch.int64
    uncached = SegmentationDataset(discover_dataset(split), BINARY, cache=False)
    assert uncached.load(0)[0] is not uncached.load(0)[0]


def test_augmentation_reproducible_under_torch_seed(split: Path) -> None:
    transform = build_train_transform(AugmentConfig(crop_size=16, color_jitter=0.1), BINARY.ignore_index)
    ds = SegmentationDataset(discover_dataset(split), BINARY, transform=transform)

    def epoch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [ds[i]["image"] for i in range(len(ds)) for _ in range(2)]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    assert first[0].shape == (3, 16, 16)
    assert not torch.equal(first[0], first[1])  # a new draw per call


def test_dataloader_batches(split: Path) -> None:
    ds = SegmentationDataset(discover_dataset(split), BINARY)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 20, 28) and batch["mask"].shape == (2, 20, 28)
    assert batch["name"] == ["a", "b"]


def test_sample_without_mask_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x\.png: sample has no mask"):
        SegmentationDataset([Sample("x", tmp_path / "x.png")], BINARY)


def test_size_mismatch_on_load(tmp_path: Path) -> None:
    _, mask = write_pair(tmp_path, "a", size=(10, 12), mask_size=(10, 10))
    ds = SegmentationDataset(discover_dataset(tmp_path), BINARY)
    with pytest.raises(DataError) as exc:
        ds[0]
    assert str(exc.value) == f"{mask}: mask is 10x10 but image a.png is 12x10"


def test_unknown_mask_values_on_load(tmp_path: Path) -> None:
    _, mask = write_pair(tmp_path, "a", mask_values=(0, 3))
    with pytest.raises(DataError, match=f"{mask.name}: mask has values \\[3\\]"):
        SegmentationDataset(discover_dataset(tmp_path), BINARY)[0]


def test_unlabelled_dataset(split: Path) -> None:
    samples = discover_dataset(split)
    transform = build_train_transform(AugmentConfig(crop_size=8))
    ds = UnlabeledImageDataset([s.image for s in samples], transform=transform, scale=0.5)
    item = ds[0]
    assert set(item) == {"image", "name"} and item["name"] == "a"
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert UnlabeledImageDataset(samples)[1]["image"].shape == (3, 20, 28)


def test_worker_processes_reproduce_augmentation(split: Path) -> None:
    transform = build_train_transform(AugmentConfig(crop_size=12, stain_jitter=0.05))
    ds = SegmentationDataset(discover_dataset(split), BINARY, transform=transform)
    ds.preload()

    def run() -> torch.Tensor:
        torch.manual_seed(5)
        loader = DataLoader(ds, batch_size=2, num_workers=1, shuffle=True)
        return torch.cat([batch["image"] for batch in loader])

    assert torch.equal(run(), run())
    assert pickle.loads(pickle.dumps(transform)) == transform


def test_seeded_key_fixes_augmentation_regardless_of_torch_rng(split: Path) -> None:
    transform = build_train_transform(AugmentConfig(crop_size=16, color_jitter=0.1), BINARY.ignore_index)
    ds = SegmentationDataset(discover_dataset(split), BINARY, transform=transform)
    torch.manual_seed(0)
    first = ds[(1, 12345)]
    torch.manual_seed(99)
    again = ds[(1, 12345)]
    other = ds[(1, 54321)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert not torch.equal(first["image"], other["image"])
    assert first["name"] == "b"
