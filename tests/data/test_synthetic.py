"""Tests for the synthetic H&E generator: determinism, label invariants, colour, files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from pathseg.data.synthetic import (
    GLAND_CLASSES,
    TILES_PER_PATIENT,
    TISSUE_CLASSES,
    SynthConfig,
    SyntheticTile,
    dataset_tile,
    generate_tile,
    tile_seed,
    write_dataset,
)
from pathseg.errors import ConfigError

TUMOUR, STROMA, NORMAL, BACKGROUND = (
    TISSUE_CLASSES.index(c) for c in ("tumour", "stroma", "normal", "background")
)
SMALL = SynthConfig(size=96)
FIELDS = ("image", "glands", "gland_instances", "nuclei", "tissue")


@pytest.fixture(scope="module")
def tiles() -> list[SyntheticTile]:
    """A handful of default-config tiles at a small size, shared by the invariant tests."""
    cfg = SynthConfig(size=128)
    return [generate_tile(seed, cfg) for seed in range(12)]


def test_class_orders_are_the_documented_ones() -> None:
    assert TISSUE_CLASSES == ("tumour", "stroma", "normal", "background")
    assert GLAND_CLASSES == ("background", "gland")


def test_same_seed_gives_identical_tile() -> None:
    a, b = generate_tile(7, SMALL), generate_tile(7, SMALL)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_different_seeds_give_different_tiles() -> None:
    a, b = generate_tile(1, SMALL), generate_tile(2, SMALL)
    assert not np.array_equal(a.image, b.image)


def test_shapes_and_dtypes() -> None:
    tile = generate_tile(3, SynthConfig(size=80))
    assert tile.image.shape == (80, 80, 3) and tile.image.dtype == np.uint8
    assert tile.glands.shape == (80, 80) and tile.glands.dtype == np.uint8
    assert tile.gland_instances.dtype == np.int32
    assert tile.nuclei.dtype == np.int32
    assert tile.tissue.dtype == np.uint8
    assert tile.gland_instances.shape == tile.nuclei.shape == tile.tissue.shape == (80, 80)


def test_label_maps_are_consistent(tiles: list[SyntheticTile]) -> None:
    for i, t in enumerate(tiles):
        assert set(np.unique(t.glands)) <= {0, 1}, i
        assert t.tissue.max() < len(TISSUE_CLASSES), i
        # The semantic gland mask is exactly the union of the gland instances.
        np.testing.assert_array_equal(t.glands == 1, t.gland_instances > 0)
        # Glands never lie on glass, and look like (hence are labelled) normal or tumour.
        assert set(np.unique(t.tissue[t.glands == 1])) <= {NORMAL, TUMOUR}, i
        # Both instance maps use contiguous ids 1..N, each with at least one pixel.
        for name in ("gland_instances", "nuclei"):
            ids = np.unique(getattr(t, name))
            ids = ids[ids > 0]
            np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1), err_msg=f"{name} tile {i}")
        # No nuclei on glass (they are kept a margin away from the tissue edge).
        assert not (t.nuclei[t.tissue == BACKGROUND] > 0).any(), i


def test_each_gland_has_a_single_tissue_class(tiles: list[SyntheticTile]) -> None:
    for t in tiles:
        for gid in range(1, int(t.gland_instances.max()) + 1):
            assert len(np.unique(t.tissue[t.gland_instances == gid])) == 1


def test_tiles_are_varied_enough_for_weak_supervision(tiles: list[SyntheticTile]) -> None:
    present = [frozenset(np.unique(t.tissue).tolist()) for t in tiles]
    # Every class shows up somewhere, and image-level label sets differ between tiles.
    assert set().union(*present) == set(range(len(TISSUE_CLASSES)))
    assert len(set(present)) > 2
    # Most tiles have glands, and nuclei everywhere there is tissue.
    assert sum(t.gland_instances.max() > 0 for t in tiles) >= len(tiles) // 2
    assert all(t.nuclei.max() > 0 for t in tiles)


def test_no_glands_when_asked_for_none() -> None:
    tile = generate_tile(0, SynthConfig(size=96, glands=(0, 0)))
    assert tile.glands.max() == 0 and tile.gland_instances.max() == 0


def test_colours_look_like_h_and_e(tiles: list[SyntheticTile]) -> None:
    stroma, nuclei, lumen, glass = [], [], [], []
    for t in tiles:
        img = t.image.astype(float)
        stroma.append(img[(t.tissue == STROMA) & (t.nuclei == 0) & (t.glands == 0)])
        nuclei.append(img[t.nuclei > 0])
        glass.append(img[t.tissue == BACKGROUND])
        # Lumen: the deepest part of each gland (the epithelium is its outer rim).
        for gid in range(1, int(t.gland_instances.max()) + 1):
            mask = t.gland_instances == gid
            depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
            lumen.append(img[mask & (depth >= 0.8 * depth.max())])
    stroma_rgb = np.concatenate(stroma).mean(0)
    nuclei_rgb = np.concatenate(nuclei).mean(0)
    lumen_rgb = np.concatenate(lumen).mean(0)
    glass_rgb = np.concatenate(glass).mean(0)
    # Eosin-pink stroma: red highest, green lowest.
    assert stroma_rgb[0] > stroma_rgb[2] > stroma_rgb[1]
    # Haematoxylin nuclei: much darker than stroma and bluer than red.
    assert nuclei_rgb.mean() < stroma_rgb.mean() - 40
    assert nuclei_rgb[2] > nuclei_rgb[0]
    # Lumens and glass are pale.
    assert lumen_rgb.mean() > stroma_rgb.mean() + 20
    assert glass_rgb.min() > 200


def test_config_validation() -> None:
    for bad in (
        {"size": 8},
        {"glands": (3, 1)},
        {"gland_radius": (0.0, 0.1)},
        {"regions": (0, 2)},
        {"tissue_weights": (0, 0, 0, 1)},
        {"stain_variation": -1.0},
        {"glands": 3},
    ):
        with pytest.raises(ConfigError):
            SynthConfig(**bad)
    with pytest.raises(ConfigError):
        generate_tile(-1, SMALL)
    # Lists (as read from YAML) are accepted and stored as tuples.
    assert SynthConfig(glands=[1, 2]).glands == (1, 2)


def test_tile_seed_depends_only_on_seed_and_index() -> None:
    assert tile_seed(0, 3) == tile_seed(0, 3)
    assert len({tile_seed(0, i) for i in range(50)} | {tile_seed(1, 0)}) == 51


def _read(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.array(im)


def test_write_dataset_files_read_back(tmp_path: Path) -> None:
    cfg = SynthConfig(size=64)
    calls: list[tuple[int, int]] = []
    out = write_dataset(tmp_path / "ds", 5, seed=11, config=cfg, progress=lambda d, n: calls.append((d, n)))
    assert out == tmp_path / "ds"
    assert calls == [(i, 5) for i in range(1, 6)]

    for i in range(5):
        name = f"synth_{i:05d}.png"
        tile = dataset_tile(11, i, cfg)
        mode, img = _read(out / "images" / name)
        assert mode == "RGB"
        np.testing.assert_array_equal(img, tile.image)
        mode, mask = _read(out / "masks" / name)
        assert mode == "P"
        np.testing.assert_array_equal(mask, tile.glands)
        mode, tissue = _read(out / "tissue" / name)
        assert mode == "P"
        np.testing.assert_array_equal(tissue, tile.tissue)
        for folder, labels in (("instances", tile.nuclei), ("gland_instances", tile.gland_instances)):
            mode, ids = _read(out / folder / name)
            assert mode.startswith("I")  # 16-bit ids
            np.testing.assert_array_equal(ids.astype(np.int64), labels)

    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["generator"] == "pathseg.synthetic"
    assert meta["seed"] == 11
    assert meta["config"]["size"] == 64
    assert SynthConfig(**meta["config"]) == cfg
    tasks = meta["tasks"]
    assert tasks["glands"]["masks"] == "masks"
    assert tasks["glands"]["classes"] == {"background": 0, "gland": 1}
    assert tasks["tissue"] == {
        "masks": "tissue",
        "classes": {"tumour": 0, "stroma": 1, "normal": 2, "background": 3},
    }
    assert tasks["nuclei"]["instances"] == "instances"

    with open(out / "groups.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"synth_{i:05d}" for i in range(5)]
    patients = [r["patient"] for r in rows]
    assert len(set(patients[:TILES_PER_PATIENT])) == 1
    assert patients[TILES_PER_PATIENT] != patients[0]


def test_tile_i_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    cfg = SynthConfig(size=48)
    small = write_dataset(tmp_path / "a", 2, seed=5, config=cfg)
    large = write_dataset(tmp_path / "b", 6, seed=5, config=cfg)
    for i in range(2):
        name = f"synth_{i:05d}.png"
        for folder in ("images", "masks", "instances"):
            np.testing.assert_array_equal(_read(small / folder / name)[1], _read(large / folder / name)[1])


def test_write_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_dataset(tmp_path, -1)
