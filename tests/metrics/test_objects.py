"""GlaS object metrics: hand-worked glands and a brute-force reference from the definitions."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from pathseg.metrics import (
    glas_object_metrics,
    hausdorff_distance,
    label_objects,
    object_dice,
    object_f1,
    object_hausdorff,
)
from tests.metrics.shapes import rect as _rect

# ---------------------------------------------------------------------------------------------
# Brute-force reference, written directly from the definitions in the GlaS paper.


def _ids(x: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(x) if i != 0]


def _set_hd(a: np.ndarray, b: np.ndarray) -> float:
    d = cdist(np.argwhere(a), np.argwhere(b))
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def _partner(obj: np.ndarray, other: np.ndarray) -> int | None:
    labels = other[obj]
    labels = labels[labels > 0]
    if labels.size == 0:
        return None
    counts = np.bincount(labels)
    return int(np.argmax(counts))  # ties: smallest id


def _reference(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    s_ids, g_ids = _ids(pred), _ids(gt)
    tp = 0
    for s in s_ids:
        g = _partner(pred == s, gt)
        if g is not None and np.sum((pred == s) & (gt == g)) / np.sum(gt == g) > 0.5:
            tp += 1
    f1 = 2 * tp / (len(s_ids) + len(g_ids))

    def side(objs, this, other):
        total = np.sum(this > 0)
        dice = hd = 0.0
        for o in objs:
            m = this == o
            w = m.sum() / total
            p = _partner(m, other)
            if p is not None:
                q = other == p
                dice += w * 2 * np.sum(m & q) / (m.sum() + q.sum())
            else:
                dists = [_set_hd(m, other == k) for k in _ids(other)]
                p = _ids(other)[int(np.argmin(dists))]
            hd += w * _set_hd(m, other == p)
        return dice, hd

    d_s, h_s = side(s_ids, pred, gt)
    d_g, h_g = side(g_ids, gt, pred)
    return {"object_f1": f1, "object_dice": 0.5 * (d_s + d_g), "object_hausdorff": 0.5 * (h_s + h_g)}


# ---------------------------------------------------------------------------------------------
# Hand-worked cases.


def test_gland_split_into_two_predictions() -> None:
    shape = (30, 30)
    gt = _rect(shape, 10, 20, 10, 20)  # one 10x10 gland, 100 px
    pred = _rect(shape, 10, 20, 10, 16, value=1)  # left 10x6 = 60 px
    _rect(shape, 10, 20, 16, 20, value=2, out=pred)  # right 10x4 = 40 px
    f1 = object_f1(pred, gt)
    # S1 covers 60% of G: TP. S2 covers 40%: FP. P = 1/2, R = 1, F1 = 2/3.
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 1, 0)
    assert f1["object_precision"] == pytest.approx(0.5)
    assert f1["object_recall"] == pytest.approx(1.0)
    assert f1["object_f1"] == pytest.approx(2 / 3)
    # Dice: S side 0.6 * 2*60/160 + 0.4 * 2*40/140; G side: partner S1, 2*60/160.
    expected_dice = 0.5 * (0.6 * 0.75 + 0.4 * (4 / 7) + 0.75)
    assert object_dice(pred, gt) == pytest.approx(expected_dice)
    # Hausdorff (pixel sets): H(G, S1) = 4 (column 19 to column 15), H(G, S2) = 6 (10 to 16).
    # S side 0.6 * 4 + 0.4 * 6 = 4.8; G side 1.0 * H(G, S1) = 4.
    assert object_hausdorff(pred, gt) == pytest.approx(0.5 * (4.8 + 4.0))


def test_missed_gland() -> None:
    shape = (30, 30)
    gt = _rect(shape, 2, 12, 2, 12, value=1)  # 100 px
    _rect(shape, 20, 25, 20, 25, value=2, out=gt)  # 25 px, missed
    pred = _rect(shape, 2, 12, 2, 12)  # exactly G1
    f1 = object_f1(pred, gt)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 0, 1)
    assert f1["object_f1"] == pytest.approx(2 / 3)
    # S side: Dice 1. G side: 0.8 * 1 + 0.2 * 0.
    assert object_dice(pred, gt) == pytest.approx(0.5 * (1.0 + 0.8))
    # G2 has no overlapping prediction, so its partner is the nearest one: S1.
    # H(G2, S1): the far corner (2, 2) of S1 is 18*sqrt(2) from G2's corner (20, 20).
    assert object_hausdorff(pred, gt) == pytest.approx(0.5 * (0.0 + 0.2 * 18 * math.sqrt(2)))


def test_spurious_small_prediction() -> None:
    shape = (30, 30)
    gt = _rect(shape, 2, 12, 2, 12)  # 100 px
    pred = _rect(shape, 2, 12, 2, 12, value=1)
    _rect(shape, 20, 22, 20, 22, value=2, out=pred)  # 4 px speck
    f1 = object_f1(pred, gt)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 1, 0)
    assert f1["object_f1"] == pytest.approx(2 / 3)
    assert object_dice(pred, gt) == pytest.approx(0.5 * (100 / 104 + 1.0))
    # H(speck, G) = 18*sqrt(2): G's corner (2, 2) to the speck's corner (20, 20).
    assert object_hausdorff(pred, gt) == pytest.approx(0.5 * (4 / 104) * 18 * math.sqrt(2))


def test_f1_needs_more_than_half_of_the_gland() -> None:
    shape = (10, 10)
    gt = _rect(shape, 0, 4, 0, 4)  # 16 px
    half = _rect(shape, 0, 2, 0, 4)  # exactly 8 px = 50%: not enough
    assert object_f1(half, gt)["tp"] == 0
    more = _rect(shape, 0, 3, 0, 3)  # 9 px > 50%
    assert object_f1(more, gt)["tp"] == 1


def test_merged_prediction_counts_once() -> None:
    shape = (20, 30)
    gt = _rect(shape, 2, 10, 2, 10, value=1)
    _rect(shape, 2, 10, 12, 20, value=2, out=gt)
    pred = _rect(shape, 2, 10, 2, 20)  # one blob covering both glands
    f1 = object_f1(pred, gt)
    assert (f1["tp"], f1["fp"], f1["fn"]) == (1, 0, 1)


def test_object_hausdorff_uses_pixel_sets() -> None:
    # A gland with a 2x2 hole against the same gland filled: as pixel sets the hole is 1 px from
    # the gland, while the boundary Hausdorff sees the hole's rim far from the outer outline.
    gt = _rect((30, 30), 5, 25, 5, 25)
    gt[14:16, 14:16] = 0
    pred = _rect((30, 30), 5, 25, 5, 25)
    assert object_hausdorff(pred, gt) == pytest.approx(1.0)
    assert hausdorff_distance(pred > 0, gt > 0) == pytest.approx(8.0)  # rim row 13 to outline row 5


@pytest.mark.parametrize("bridge", [False, True])
def test_interior_maximum_inside_a_c_shape(bridge: bool) -> None:
    # A disc inside a C-shaped gland: the pixel of the disc farthest from the C is its centre,
    # not on its outline. The fast search must still find it, both for an object with no overlap
    # (nearest-object search) and, with a bridge into the C, for overlapping partners.
    yy, xx = np.mgrid[:61, :61]
    r = np.hypot(yy - 30, xx - 30)
    gt = ((r >= 20) & (r <= 26) & ~((xx > 40) & (np.abs(yy - 30) < 4))).astype(np.int64)
    pred = (r <= 12).astype(np.int64)
    if bridge:
        pred[29:32, 5:31] = 1
    assert object_hausdorff(pred, gt) == pytest.approx(_reference(pred, gt)["object_hausdorff"])


# ---------------------------------------------------------------------------------------------
# Random maps against the reference.


@pytest.mark.parametrize("seed", range(8))
def test_random_instance_maps_match_reference(seed: int, instance_map) -> None:
    gt = instance_map(seed, sigma=2.0 + seed % 3)
    pred = instance_map(seed + 100, sigma=1.5 + seed % 2)
    if seed % 2:
        pred = pred * 7  # non-consecutive ids
    ref = _reference(pred, gt)
    got = glas_object_metrics(pred, gt)
    for key in ("object_f1", "object_dice", "object_hausdorff"):
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(3))
def test_near_perfect_prediction_matches_reference(seed: int, instance_map) -> None:
    gt = instance_map(seed, shape=(60, 60), sigma=3.0)
    pred = np.roll(gt, shift=(1, 2), axis=(0, 1))
    got = glas_object_metrics(pred, gt)
    ref = _reference(pred, gt)
    for key in got:
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key


def test_empty_conventions() -> None:
    empty = np.zeros((30, 40), dtype=np.int64)
    some = _rect((30, 40), 1, 5, 1, 5)
    both = object_f1(empty, empty)
    assert both["object_f1"] == both["object_precision"] == both["object_recall"] == 1.0
    assert object_dice(empty, empty) == 1.0
    assert object_hausdorff(empty, empty) == 0.0
    for pred, gt in ((some, empty), (empty, some)):
        one = object_f1(pred, gt)
        assert one["object_f1"] == one["object_precision"] == one["object_recall"] == 0.0
        assert object_dice(pred, gt) == 0.0
        assert object_hausdorff(pred, gt) == pytest.approx(50.0)  # image diagonal
    assert object_hausdorff(some, empty, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(60, 40))


def test_label_objects_connectivity_and_min_size() -> None:
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    m[4:6, 4:6] = True  # 4 px
    eight = label_objects(m)
    assert eight.max() == 2
    assert eight[0, 0] == eight[1, 1]
    assert label_objects(m, connectivity=1).max() == 3
    big_only = label_objects(m, min_size=3)
    assert big_only.max() == 1
    assert big_only[5, 5] == 1
    assert big_only[0, 0] == 0
    assert eight.dtype == np.int32


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        object_f1(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative"):
        object_dice(np.full((4, 4), -1), np.zeros((4, 4), int))


def test_many_specks_stay_fast(blob_mask, instance_map) -> None:
    shape = (522, 775)
    gt = instance_map(3, shape=shape, sigma=14.0, fraction=0.35)
    rng = np.random.default_rng(0)
    pred_mask = np.roll(gt > 0, 5, axis=1)
    pred_mask[rng.integers(0, shape[0], 300), rng.integers(0, shape[1], 300)] = True
    pred = label_objects(pred_mask)
    start = time.perf_counter()
    glas_object_metrics(pred, gt)
    assert time.perf_counter() - start < 1.5
