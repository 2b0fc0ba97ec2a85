"""Multi-annotator data: the three folder layouts, checks, the dataset, synthetic annotators."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage
from torch.utils.data import DataLoader

from pathseg.data.annotators import (
    MultiAnnotatorDataset,
    bubil_class_map,
    check_multi_samples,
    discover_multi_annotator,
)
from pathseg.data.classes import ClassMap
from pathseg.data.io import read_image, read_label_image, write_image, write_mask
from pathseg.data.synthetic import (
    AnnotatorStyle,
    SynthConfig,
    apply_annotator_style,
    dataset_tile,
    default_annotators,
    write_multi_annotator_dataset,
)
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.errors import ConfigError, DataError
from tests.conftest import shared_data_or_skip
from tests.data.helpers import blocks_mask, rgb

BINARY = ClassMap.binary()  # 0 background, 255 (or 1) foreground
SIZE = (8, 10)  # (height, width) of the tiny test images


def _mask(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    return blocks_mask(*size, block=2, seed=seed)


def pathseg_set(root: Path, stems=("a", "b"), annotators=("ann1", "ann2", "ann3")) -> Path:
    """root/images/<stem>.png + root/masks/<annotator>/<stem>.png, every mask different."""
    for i, stem in enumerate(stems):
        write_image(root / "images" / f"{stem}.png", rgb(*SIZE, seed=i))
        for j, name in enumerate(annotators):
            write_mask(root / "masks" / name / f"{stem}.png", _mask(10 * i + j))
    return root


def cimd_set(root: Path) -> Path:
    """Cases 0, 1, 2, 10 with annotators label0, label2, label10 (natural order matters)."""
    for i, case in enumerate(("10", "2", "0", "1")):
        write_image(root / case / f"image_{case}.png", rgb(*SIZE, seed=i))
        write_mask(root / case / "label0_.png", _mask(i))
        write_mask(root / case / "Label2_x.PNG", _mask(i + 20))  # key matching ignores case
        write_mask(root / case / "label10_.png", _mask(i + 40))
    return root


def bubil_set(root: Path) -> Path:
    """BU-BIL in miniature: two images, two experts (one writes Seg_), one crowd worker."""
    for i, stem in enumerate(("B01", "B02")):
        write_image(root / "RawImages" / f"{stem}.png", rgb(*SIZE, seed=i))
        write_mask(root / "ExpertsAnnotations" / "Person1_Amira" / f"seg_{stem}.png", _mask(i))
        write_mask(root / "ExpertsAnnotations" / "Person2_ImageJ" / f"Seg_{stem}.png", _mask(i + 5))
        write_mask(root / "CrowdsourcedAnnotations" / "mturk_1" / f"seg_{stem}.png", _mask(i + 9))
    return root


# ----------------------------------------------------------------------------- discovery


def test_pathseg_layout(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path)
    samples = discover_multi_annotator(root)
    assert [s.stem for s in samples] == ["a", "b"]
    assert samples[1].image == root / "images" / "b.png"
    assert list(samples[1].masks) == ["ann1", "ann2", "ann3"]
    assert samples[1].masks["ann2"] == root / "masks" / "ann2" / "b.png"
    assert samples[0].group is None


def test_cimd_layout_natural_order_and_keys(tmp_path: Path) -> None:
    root = cimd_set(tmp_path)
    samples = discover_multi_annotator(root)
    assert [s.stem for s in samples] == ["0", "1", "2", "10"]
    assert list(samples[0].masks) == ["label0", "label2", "label10"]
    assert samples[3].image == root / "10" / "image_10.png"
    assert samples[3].masks["label2"] == root / "10" / "Label2_x.PNG"


def test_bubil_layout_pools(tmp_path: Path) -> None:
    root = bubil_set(tmp_path)
    experts = discover_multi_annotator(root)
    assert [s.stem for s in experts] == ["B01", "B02"]
    assert list(experts[0].masks) == ["Person1_Amira", "Person2_ImageJ"]
    assert experts[0].masks["Person2_ImageJ"].name == "Seg_B01.png"
    both = discover_multi_annotator(root, pool="both")
    assert list(both[0].masks) == ["mturk_1", "Person1_Amira", "Person2_ImageJ"]
    # one crowd worker alone is not enough for ambiguity
    with pytest.raises(DataError, match=r"found 1 annotator\(s\) \(mturk_1\); .* at least 2"):
        discover_multi_annotator(root, pool="crowd")


def test_forced_layout_beats_detection(tmp_path: Path) -> None:
    # A folder that holds both a BU-BIL set and a pathseg set: detection prefers BU-BIL.
    bubil_set(tmp_path)
    pathseg_set(tmp_path, stems=("x",))
    assert [s.stem for s in discover_multi_annotator(tmp_path)] == ["B01", "B02"]
    forced = discover_multi_annotator(tmp_path, layout="pathseg")
    assert [s.stem for s in forced] == ["x"] and list(forced[0].masks) == ["ann1", "ann2", "ann3"]
    with pytest.raises(DataError, match=r"no case folders|image_"):
        discover_multi_annotator(tmp_path / "RawImages", layout="cimd")


def test_argument_errors(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path)
    with pytest.raises(ConfigError, match="unknown multi-annotator layout 'lidc'"):
        discover_multi_annotator(root, layout="lidc")
    with pytest.raises(ConfigError, match="unknown BU-BIL pool 'all'"):
        discover_multi_annotator(root, pool="all")
    with pytest.raises(ConfigError, match="applies to the BU-BIL layout only"):
        discover_multi_annotator(root, pool="crowd")
    with pytest.raises(DataError, match=r"no annotator 'ann9' here \(found: ann1, ann2, ann3\)"):
        discover_multi_annotator(root, annotators=["ann9"])
    with pytest.raises(DataError, match="folder does not exist"):
        discover_multi_annotator(tmp_path / "nowhere")


def test_unknown_layout_points_to_nested_dataset(tmp_path: Path) -> None:
    bubil_set(tmp_path / "Dataset1")
    with pytest.raises(DataError, match="found datasets in Dataset1: point to one of them") as err:
        discover_multi_annotator(tmp_path)
    assert err.value.path == tmp_path


def test_annotator_subset(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path)
    samples = discover_multi_annotator(root, annotators=["ann3", "ann1"])
    assert list(samples[0].masks) == ["ann1", "ann3"]


def test_missing_annotator_error_or_allowed(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path)
    (root / "masks" / "ann2" / "b.png").unlink()
    with pytest.raises(DataError, match=r"no mask from annotator\(s\) ann2 \(allow_missing=True") as err:
        discover_multi_annotator(root)
    assert err.value.path == root / "images" / "b.png"
    samples = discover_multi_annotator(root, allow_missing=True)
    assert list(samples[0].masks) == ["ann1", "ann2", "ann3"]
    assert list(samples[1].masks) == ["ann1", "ann3"]
    # an image with no mask at all stays an error
    for name in ("ann1", "ann3"):
        (root / "masks" / name / "b.png").unlink()
    with pytest.raises(DataError, match="no annotator's mask for this image") as err:
        discover_multi_annotator(root, allow_missing=True)
    assert err.value.path == root / "images" / "b.png"


def test_mask_without_image(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path)
    write_mask(root / "masks" / "ann3" / "zzz.png", _mask(0))
    with pytest.raises(DataError, match="mask has no matching image") as err:
        discover_multi_annotator(root)
    assert err.value.path == root / "masks" / "ann3" / "zzz.png"
    (root / "masks" / "ann3" / "zzz.png").unlink()
    # BU-BIL: a mask without the seg_ prefix cannot be matched to an image
    bubil = bubil_set(tmp_path / "bubil")
    write_mask(bubil / "ExpertsAnnotations" / "Person1_Amira" / "B03.png", _mask(0))
    with pytest.raises(DataError, match="must be seg_<image stem>"):
        discover_multi_annotator(bubil)


def test_case_folder_without_image(tmp_path: Path) -> None:
    root = cimd_set(tmp_path)
    (root / "2" / "image_2.png").unlink()
    with pytest.raises(
        DataError, match=r"case folder has no image_\* file \(found label0, label2, label10\)"
    ) as err:
        discover_multi_annotator(root)
    assert err.value.path == root / "2"


def test_cimd_stray_file_and_duplicate_key(tmp_path: Path) -> None:
    root = cimd_set(tmp_path)
    write_mask(root / "1" / "mask_1.png", _mask(0))
    with pytest.raises(DataError, match="must be named image_\\* or label<k>_\\*") as err:
        discover_multi_annotator(root)
    assert err.value.path == root / "1" / "mask_1.png"
    (root / "1" / "mask_1.png").unlink()
    write_mask(root / "1" / "label0_again.png", _mask(0))
    with pytest.raises(DataError, match="are both 'label0'"):
        discover_multi_annotator(root)


def test_fewer_than_two_annotators(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path, annotators=("only",))
    with pytest.raises(
        DataError, match=r"found 1 annotator\(s\) \(only\); ambiguity needs masks from at least 2"
    ):
        discover_multi_annotator(root)
    two = pathseg_set(tmp_path / "two")
    with pytest.raises(DataError, match="found 1 annotator"):
        discover_multi_annotator(two, annotators=["ann2"])
    # the single-annotator layout (masks/<stem>.png) is named as such
    flat = tmp_path / "flat"
    write_image(flat / "images" / "a.png", rgb(*SIZE))
    write_mask(flat / "masks" / "a.png", _mask(0))
    with pytest.raises(DataError, match="holds mask files directly"):
        discover_multi_annotator(flat)


# ----------------------------------------------------------------------------- checks


def test_check_multi_samples(tmp_path: Path) -> None:
    root = pathseg_set(tmp_path)
    check_multi_samples(discover_multi_annotator(root), BINARY)  # a clean set passes

    write_mask(root / "masks" / "ann2" / "b.png", _mask(0, size=(8, 12)))
    with pytest.raises(DataError, match=r"mask is 12x8 but image b\.png is 10x8") as err:
        check_multi_samples(discover_multi_annotator(root), BINARY)
    assert err.value.path == root / "masks" / "ann2" / "b.png"

    bad = _mask(1)
    bad[0, 0] = 7
    write_mask(root / "masks" / "ann2" / "b.png", bad)
    with pytest.raises(DataError, match=r"values \[7\] that are not in the class map") as err:
        check_multi_samples(discover_multi_annotator(root), BINARY)
    assert err.value.path == root / "masks" / "ann2" / "b.png"


# ----------------------------------------------------------------------------- dataset


@pytest.fixture
def three(tmp_path: Path) -> Path:
    return pathseg_set(tmp_path)


def _expected_masks(root: Path, stem: str) -> torch.Tensor:
    """Masks read independently: stored 0/255 -> class 0/1."""
    planes = [read_label_image(root / "masks" / a / f"{stem}.png") // 255 for a in ("ann1", "ann2", "ann3")]
    return torch.from_numpy(np.stack(planes).astype(np.int64))


def test_dataset_items(three: Path) -> None:
    ds = MultiAnnotatorDataset(discover_multi_annotator(three), BINARY)
    assert ds.annotators == ["ann1", "ann2", "ann3"] and len(ds) == 2
    item = ds[(1, 5)]
    assert set(item) == {"image", "mask", "annotator", "masks", "name"}
    assert item["name"] == "b"
    assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= -1 and float(item["image"].max()) <= 1
    assert item["masks"].dtype == torch.int64
    torch.testing.assert_close(item["masks"], _expected_masks(three, "b"))
    torch.testing.assert_close(item["mask"], item["masks"][item["annotator"]])
    assert ds.load(1)[1].dtype == np.uint8  # cached compactly
    assert ds.load(1)[0] is ds.load(1)[0]

    every = MultiAnnotatorDataset(discover_multi_annotator(three), BINARY, annotator="all")[(0, 5)]
    assert set(every) == {"image", "masks", "name"}
    torch.testing.assert_close(every["masks"], _expected_masks(three, "a"))

    half = MultiAnnotatorDataset(discover_multi_annotator(three), BINARY, scale=0.5)[0]
    assert half["image"].shape == (3, 4, 5) and half["masks"].shape == (3, 4, 5)


def test_drawn_annotator_reproducible_and_uniform(three: Path) -> None:
    samples = discover_multi_annotator(three)
    ds = MultiAnnotatorDataset(samples, BINARY, seed=3)
    again = MultiAnnotatorDataset(samples, BINARY, seed=3)
    draws = [ds[(0, s)]["annotator"] for s in range(600)]
    assert draws == [again[(0, s)]["annotator"] for s in range(600)]
    # 600 uniform draws over 3: 200 each, sd = sqrt(600 * 1/3 * 2/3) = 11.5; allow 4 sd
    counts = np.bincount(draws, minlength=3)
    assert counts.sum() == 600 and all(154 <= c <= 246 for c in counts), counts
    # the draw comes from the run seed too
    other = MultiAnnotatorDataset(samples, BINARY, seed=4)
    assert [other[(0, s)]["annotator"] for s in range(600)] != draws
    # plain integer keys draw from torch's RNG: reproducible under torch.manual_seed
    torch.manual_seed(0)
    first = [ds[0]["annotator"] for _ in range(30)]
    torch.manual_seed(0)
    assert [ds[0]["annotator"] for _ in range(30)] == first and len(set(first)) == 3


def test_missing_annotator_is_ignored_and_never_drawn(three: Path) -> None:
    (three / "masks" / "ann2" / "b.png").unlink()
    ds = MultiAnnotatorDataset(discover_multi_annotator(three, allow_missing=True), BINARY)
    item = ds[(1, 0)]
    assert bool((item["masks"][1] == BINARY.ignore_index).all())
    expected = torch.from_numpy(read_label_image(three / "masks" / "ann3" / "b.png") // 255).long()
    torch.testing.assert_close(item["masks"][2], expected)
    draws = {ds[(1, s)]["annotator"] for s in range(200)}
    assert draws == {0, 2}


def _dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    return np.rot90(array[:, ::-1] if flip else array, k, axes=(0, 1))


def test_flips_and_rotations_move_all_masks_alike(three: Path) -> None:
    samples = discover_multi_annotator(three)
    transform = build_train_transform(AugmentConfig(flips=True, rotate90=True))
    ds = MultiAnnotatorDataset(samples, BINARY, transform=transform)
    image = read_image(samples[0].image)  # random pixels: the geometry is recoverable from it
    masks = _expected_masks(three, "a").numpy()
    seen = set()
    for seed in range(24):
        item = ds[(0, seed)]
        out = torch.round((item["image"] + 1) * 127.5).to(torch.uint8).permute(1, 2, 0).numpy()
        ops = [
            (k, f)
            for k, f in itertools.product(range(4), (False, True))
            if _dihedral(image, k, f).shape == out.shape and np.array_equal(_dihedral(image, k, f), out)
        ]
        assert len(ops) == 1
        k, flip = ops[0]
        seen.add(ops[0])
        for j in range(3):  # every annotator's mask went the same way as the image
            np.testing.assert_array_equal(item["masks"][j].numpy(), _dihedral(masks[j], k, flip))
    assert len(seen) >= 5  # the augmentation really varied


def test_zoomed_crops_keep_masks_aligned(tmp_path: Path) -> None:
    # ann2 is the complement of ann1, ann3 equals ann1: resampling must keep both relations,
    # and padding (crop larger than the image) must be ignored in all masks at the same pixels.
    base = _mask(7)
    write_image(tmp_path / "images" / "a.png", rgb(*SIZE))
    write_mask(tmp_path / "masks" / "ann1" / "a.png", base)
    write_mask(tmp_path / "masks" / "ann2" / "a.png", 255 - base)
    write_mask(tmp_path / "masks" / "ann3" / "a.png", base)
    transform = build_train_transform(AugmentConfig(crop_size=12, scale_range=(0.8, 1.6)))
    ds = MultiAnnotatorDataset(discover_multi_annotator(tmp_path), BINARY, transform=transform)
    padded = 0
    for seed in range(10):
        m = ds[(0, seed)]["masks"]
        assert m.shape == (3, 12, 12)
        ignored = m[0] == 255
        padded += int(ignored.sum())
        assert torch.equal(m[1] == 255, ignored) and torch.equal(m[2], m[0])
        assert torch.equal(m[1][~ignored], 1 - m[0][~ignored])
    assert padded > 0


def test_dataloader_batches(three: Path) -> None:
    ds = MultiAnnotatorDataset(discover_multi_annotator(three), BINARY)
    batch = next(iter(DataLoader(ds, batch_size=2, sampler=[(0, 1), (1, 2)])))
    assert batch["masks"].shape == (2, 3, *SIZE) and batch["mask"].shape == (2, *SIZE)
    assert batch["annotator"].shape == (2,) and batch["name"] == ["a", "b"]


def test_dataset_errors(three: Path) -> None:
    samples = discover_multi_annotator(three)
    with pytest.raises(ValueError, match="'random' or 'all'"):
        MultiAnnotatorDataset(samples, BINARY, annotator="ann1")
    with pytest.raises(ValueError, match="at least one sample"):
        MultiAnnotatorDataset([], BINARY)
    write_mask(three / "masks" / "ann3" / "a.png", _mask(0, size=(6, 10)))
    with pytest.raises(DataError, match=r"mask is 10x6 but image a\.png is 10x8"):
        MultiAnnotatorDataset(samples, BINARY)[0]


# ----------------------------------------------------------------------------- synthetic annotators


def _squares() -> np.ndarray:
    """A 5x5 gland (id 1) and a 2x2 gland (id 2), far apart and off the edges."""
    inst = np.zeros((20, 20), np.int32)
    inst[3:8, 3:8] = 1
    inst[14:16, 14:16] = 2
    return inst


def _style(kind: str, amount: float, jitter: int = 0) -> AnnotatorStyle:
    return AnnotatorStyle(kind, kind, amount, jitter)


def test_styles_hand_worked() -> None:
    inst, rng = _squares(), np.random.default_rng(0)
    # dilation by 1 px adds one row/column per side, not the corners (diagonal is sqrt 2 away):
    # 5x5 -> 25 + 4*5 = 45, 2x2 -> 4 + 4*2 = 12
    assert int(apply_annotator_style(inst, _style("dilate", 1), rng).sum()) == 45 + 12
    # erosion by 1 px: 5x5 -> 3x3; every pixel of the 2x2 touches background, so it vanishes
    eroded = apply_annotator_style(inst, _style("erode", 1), rng)
    assert int(eroded.sum()) == 9 and bool(eroded[4:7, 4:7].all())
    # drop_small at 5 px: the 2x2 gland (area 4) is not drawn, the 5x5 one is drawn exactly
    np.testing.assert_array_equal(apply_annotator_style(inst, _style("drop_small", 5), rng), inst == 1)
    np.testing.assert_array_equal(apply_annotator_style(inst, _style("exact", 0), rng), inst > 0)


def test_merge_joins_close_glands_only() -> None:
    inst = np.zeros((12, 24), np.int32)
    inst[4:8, 2:6] = 1
    inst[4:8, 8:12] = 2  # 2 px gap (columns 6, 7)
    inst[4:8, 20:24] = 3  # 8 px gap to gland 2
    merged = apply_annotator_style(inst, _style("merge", 4), np.random.default_rng(0))
    labels, count = ndimage.label(merged)
    # closing with radius 2 bridges the 2 px gap (each side grows 2 px) but not the 8 px one
    assert count == 2 and labels[5, 3] == labels[5, 10] != labels[5, 21]
    # The bridge is the middle two rows: (4, 6) is eroded again because (2, 6), 2 px above it,
    # is sqrt(2^2 + 1^2) = 2.24 px from the nearest gland pixel (4, 5), so was never grown into.
    assert bool(merged[5:7, 6:8].all()) and not merged[4, 6:8].any() and not merged[7, 6:8].any()
    assert not merged[:, 13:20].any()
    assert bool(merged[inst > 0].all())  # closing never removes pixels


def test_jitter_is_a_random_opening_or_closing() -> None:
    truth = np.zeros((16, 16), bool)
    truth[4:11, 4:11] = True
    truth[7, 11] = True  # a 1 px spur: opening removes it
    truth[4, 7] = False  # a 1 px notch: closing fills it
    cross = ndimage.generate_binary_structure(2, 1)  # the disk of radius 1
    opened = ndimage.binary_opening(truth, cross)
    closed = ndimage.binary_closing(truth, cross)
    assert not np.array_equal(opened, closed)
    results = set()
    for seed in range(12):
        out = apply_annotator_style(
            truth.astype(np.int32), _style("exact", 0, jitter=1), np.random.default_rng(seed)
        )
        assert np.array_equal(out, opened) or np.array_equal(out, closed)
        results.add(np.array_equal(out, opened))
    assert results == {True, False}


def test_style_validation() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'blur'"):
        AnnotatorStyle("a", "blur")
    with pytest.raises(ConfigError, match="plain folder name"):
        AnnotatorStyle("../up", "dilate", 1)
    with pytest.raises(ConfigError, match="amount must be a non-negative number"):
        AnnotatorStyle("a", "dilate", -1)
    with pytest.raises(ConfigError, match="jitter must be a non-negative integer"):
        AnnotatorStyle("a", "dilate", 1, jitter=0.5)  # type: ignore[arg-type]


def test_writer_rejects_bad_annotator_sets(tmp_path: Path) -> None:
    cfg = SynthConfig(size=32)
    with pytest.raises(ConfigError, match="at least 2 annotators"):
        write_multi_annotator_dataset(tmp_path, 1, config=cfg, annotators=(_style("dilate", 1),))
    with pytest.raises(ConfigError, match="must be unique"):
        write_multi_annotator_dataset(tmp_path, 1, config=cfg, annotators=(_style("dilate", 1),) * 2)


def test_default_annotators_scale_with_tile() -> None:
    styles = {s.name: s for s in default_annotators(256)}
    assert [s.kind for s in default_annotators(256)] == ["dilate", "erode", "drop_small", "merge"]
    assert styles["dilate"].amount == 3 and styles["merge"].amount == 21  # 256 / 96, 256 / 12
    assert styles["drop_small"].amount == round(np.pi * 25.6**2)  # disk of radius 0.1 * 256
    assert default_annotators(96)[0].amount == 1


@pytest.fixture(scope="module")
def synth_multi(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multi")
    return write_multi_annotator_dataset(out, 6, seed=0, config=SynthConfig(size=96))


def _read_all(root: Path, folder: str) -> np.ndarray:
    return np.stack([read_label_image(p) for p in sorted((root / folder).glob("*.png"))]) > 0


def test_synthetic_set_is_a_discoverable_multi_annotator_set(synth_multi: Path) -> None:
    samples = discover_multi_annotator(synth_multi)
    assert len(samples) == 6 and list(samples[0].masks) == ["dilate", "drop_small", "erode", "merge"]
    check_multi_samples(samples, ClassMap.binary((1,)))
    np.testing.assert_array_equal(
        read_image(samples[5].image), dataset_tile(0, 5, SynthConfig(size=96)).image
    )
    np.testing.assert_array_equal(
        read_label_image(synth_multi / "truth" / "synth_00005.png"),
        dataset_tile(0, 5, SynthConfig(size=96)).glands,
    )
    meta = yaml.safe_load((synth_multi / "dataset.yaml").read_text())
    assert [a["name"] for a in meta["annotators"]] == ["dilate", "erode", "drop_small", "merge"]
    assert (synth_multi / "groups.csv").read_text().splitlines()[1] == "synth_00000,patient_0000"
    assert not (synth_multi / "masks" / "truth").exists()


def test_synthetic_annotator_styles_hold(synth_multi: Path) -> None:
    truth = _read_all(synth_multi, "truth")
    masks = {
        name: _read_all(synth_multi, f"masks/{name}") for name in ("dilate", "erode", "drop_small", "merge")
    }
    assert truth.any()
    assert bool(masks["dilate"][truth].all())  # dilate contains the truth
    assert not masks["erode"][~truth].any()  # erode lies inside it
    counts = [[ndimage.label(tile)[1] for tile in stack] for stack in (truth, masks["drop_small"])]
    assert all(d <= t for t, d in zip(*counts, strict=True)) and sum(counts[1]) < sum(counts[0])
    for a, b in itertools.combinations(masks, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert 0.5 < iou < 1, (a, b, iou)


def test_annotator_noise_depends_on_its_name_only(tmp_path: Path) -> None:
    cfg = SynthConfig(size=64)
    jittery = AnnotatorStyle("b", "exact", 0, jitter=2)
    first = write_multi_annotator_dataset(
        tmp_path / "1", 2, config=cfg, annotators=(_style("dilate", 1), jittery)
    )
    second = write_multi_annotator_dataset(
        tmp_path / "2", 2, config=cfg, annotators=(jittery, _style("erode", 1)), truth=False
    )
    np.testing.assert_array_equal(_read_all(first, "masks/b"), _read_all(second, "masks/b"))
    assert not (second / "truth").exists()


# ----------------------------------------------------------------------------- BU-BIL (shared data)


@pytest.mark.shared_data
def test_bubil_dataset1_discovered() -> None:
    root = shared_data_or_skip("bubil", "Dataset1")
    experts = discover_multi_annotator(root)
    assert len(experts) == 35 and experts[0].stem == "B01" and experts[-1].stem == "B35"
    assert all(len(s.masks) == 10 for s in experts)
    assert experts[17].masks["Person3_Amira"].name == "Seg_B18.png"  # the capitalised files count
    crowd = discover_multi_annotator(root, pool="crowd")
    assert len(crowd) == 35 and all(len(s.masks) == 7 for s in crowd)
    assert len(discover_multi_annotator(root, pool="both")[0].masks) == 17


@pytest.mark.shared_data
def test_bubil_dataset1_checks() -> None:
    root = shared_data_or_skip("bubil", "Dataset1")
    by_stem = {s.stem: s for s in discover_multi_annotator(root)}
    cells = bubil_class_map()
    check_multi_samples([by_stem["B01"]], cells)
    # cells are drawn black on white: the cell class is a small minority of the pixels
    labels = cells.encode(read_label_image(by_stem["B01"].masks["Person1_Amira"]), "x")
    assert 0 < labels.mean() < 0.1
    # one expert mask holds a stray pixel of value 24
    with pytest.raises(DataError, match=r"values \[24\]") as err:
        check_multi_samples([by_stem["B04"]], cells)
    assert err.value.path.parts[-2:] == ("Person5_Amira", "seg_B04.png")
    check_multi_samples([by_stem["B04"]], bubil_class_map(ignore_values=[24]))
    # crowd masks of B01 are crops of the image
    crowd = discover_multi_annotator(root, pool="crowd")[0]
    with pytest.raises(DataError, match=r"mask is 900x321 but image B01\.png is 1024x811"):
        check_multi_samples([crowd], cells)
