"""SegmentationEvaluator: per-image keys, dataset-level keys, ignored pixels and conventions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pathseg.metrics import (
    SegmentationEvaluator,
    aji,
    confusion_matrix,
    glas_object_metrics,
    hausdorff_distance,
    hd95,
    label_objects,
    panoptic_quality,
    scores_from_confusion,
)
from tests.metrics.shapes import rect as _rect


def test_per_image_and_global_keys() -> None:
    # Image 1: a 10x10 gland found exactly. Image 2: a 2x2 gland missed entirely.
    t1 = _rect((20, 20), 5, 15, 5, 15)
    p1 = t1.copy()
    t2 = _rect((20, 20), 2, 4, 2, 4)
    p2 = np.zeros_like(t2)
    ev = SegmentationEvaluator(["background", "gland"])
    r1 = ev.update(p1, t1, name="a")
    r2 = ev.update(p2, t2, name="b")
    assert "name" not in r1
    assert [r["name"] for r in ev.per_image] == ["a", "b"]
    assert r1["dice"] == 1.0
    assert r2["dice"] == 0.0
    assert r1["hausdorff"] == 0.0
    assert r2["hausdorff"] == pytest.approx(np.hypot(20, 20))  # one side empty: image diagonal
    s = ev.summary()
    assert s["num_images"] == 2
    assert s["dice"] == pytest.approx(0.5)
    # Dataset level: TP 100, FN 4, FP 0 -> Dice 200 / 204.
    assert s["global_dice"] == pytest.approx(200 / 204)
    assert s["global_dice/gland"] == pytest.approx(200 / 204)
    global_ref = scores_from_confusion(
        confusion_matrix(p1, t1, 2) + confusion_matrix(p2, t2, 2), ["background", "gland"]
    )
    for key, value in global_ref.items():
        assert s[f"global_{key}"] == pytest.approx(value)
    for key in r1:
        assert s[key] == pytest.approx((r1[key] + r2[key]) / 2), key
    # Object counts summed over images: TP 1, FP 0, FN 1.
    assert s["global_object_f1"] == pytest.approx(2 / 3)
    assert s["object_f1"] == pytest.approx(0.5)


def test_per_image_matches_the_building_blocks(class_map) -> None:
    names = ["bg", "a", "b"]
    ev = SegmentationEvaluator(names)
    for seed in range(3):
        target = class_map(seed, num_classes=3)
        pred = class_map(seed + 10, num_classes=3)
        got = ev.update(pred, target)
        for key, value in scores_from_confusion(confusion_matrix(pred, target, 3), names).items():
            assert got[key] == pytest.approx(value)
        assert got["hausdorff"] == pytest.approx(hausdorff_distance(pred >= 1, target >= 1))
        assert got["hd95"] == pytest.approx(hd95(pred >= 1, target >= 1))
        assert got["hd95/a"] == pytest.approx(hd95(pred == 1, target == 1))
        assert got["hd95/b"] == pytest.approx(hd95(pred == 2, target == 2))
        objects = glas_object_metrics(label_objects(pred >= 1), label_objects(target >= 1))
        for key, value in objects.items():
            assert got[key] == pytest.approx(value)


def test_ignored_pixels_are_background_for_distances_and_objects() -> None:
    shape = (30, 30)
    target = _rect(shape, 5, 15, 5, 15)
    target[20:28, 20:28] = 255  # ignored region
    pred = target.copy()
    pred[20:28, 20:28] = 0
    pred[22:26, 22:26] = 1  # a predicted object inside the ignored region
    pred[20, 20] = 9  # garbage under the ignore label must not raise
    ev = SegmentationEvaluator(["bg", "gland"], ignore_index=255)
    got = ev.update(
        pred, target, gt_instances=label_objects(target == 1), pred_instances=label_objects(pred == 1)
    )
    cm = confusion_matrix(pred, target, 2, ignore_index=255)
    assert cm.sum() == 30 * 30 - 64
    for key, value in scores_from_confusion(cm, ["bg", "gland"]).items():
        assert got[key] == pytest.approx(value)
    # Everything else behaves as if the region were background in both maps: a perfect image.
    assert got["dice"] == 1.0
    assert got["hausdorff"] == 0.0
    assert got["object_f1"] == 1.0
    assert got["object_hausdorff"] == 0.0
    assert got["aji"] == 1.0
    assert got["pq"] == 1.0


def test_gt_instances_separate_touching_glands() -> None:
    shape = (20, 30)
    gt_inst = _rect(shape, 5, 15, 2, 10, value=1)
    _rect(shape, 5, 15, 10, 18, value=2, out=gt_inst)  # touches gland 1
    target = (gt_inst > 0).astype(np.int64)
    pred = np.zeros(shape, dtype=np.int64)
    pred[5:15, 2:9] = 1
    pred[5:15, 11:18] = 1  # two separate predicted glands
    ev = SegmentationEvaluator(["bg", "gland"])
    with_instances = ev.update(pred, target, gt_instances=gt_inst)
    merged = ev.update(pred, target)
    assert with_instances["object_f1"] == 1.0
    # Without instances the target is one merged 160 px gland and neither 70 px prediction covers
    # more than half of it: TP 0, FP 2, FN 1.
    assert merged["object_f1"] == 0.0
    ref = glas_object_metrics(label_objects(pred), label_objects(target))
    assert merged["object_f1"] == ref["object_f1"]


def test_instance_metrics_only_with_both_maps(instance_map) -> None:
    gt_inst = instance_map(0, shape=(40, 40))
    pred_inst = instance_map(1, shape=(40, 40))
    target = (gt_inst > 0).astype(np.int64)
    pred = (pred_inst > 0).astype(np.int64)
    ev = SegmentationEvaluator(["bg", "nucleus"])
    got = ev.update(pred, target, pred_instances=pred_inst, gt_instances=gt_inst)
    assert got["aji"] == pytest.approx(aji(pred_inst, gt_inst))
    pq = panoptic_quality(pred_inst, gt_inst)
    for key in ("pq", "dq", "sq"):
        assert got[key] == pytest.approx(pq[key])
    plain = ev.update(pred, target)
    assert "aji" not in plain
    # The mean of "aji" is taken over the images that have it.
    assert ev.summary()["aji"] == pytest.approx(got["aji"])


def test_empty_image_conventions() -> None:
    empty = np.zeros((10, 12), dtype=np.int64)
    got = SegmentationEvaluator(["bg", "gland"]).update(empty, empty)
    assert got["dice"] == got["iou"] == 1.0
    assert got["miou"] == 1.0  # only background counts; the absent gland class is left out
    assert got["hausdorff"] == got["hd95"] == 0.0
    assert got["object_f1"] == got["object_dice"] == 1.0
    assert got["object_hausdorff"] == 0.0


def test_summary_is_nan_aware() -> None:
    ev = SegmentationEvaluator(["bg", "gland"], ignore_index=255)
    t = _rect((10, 10), 2, 6, 2, 6)
    p = _rect((10, 10), 2, 6, 2, 5)
    first = ev.update(p, t)
    all_ignored = np.full((10, 10), 255)
    second = ev.update(np.zeros((10, 10), dtype=np.int64), all_ignored)
    assert np.isnan(second["miou"])
    s = ev.summary()
    assert s["miou"] == pytest.approx(first["miou"])
    assert s["global_miou"] == pytest.approx(first["miou"])


def test_switches_and_validation() -> None:
    ev = SegmentationEvaluator(["bg", "gland"], object_metrics=False, distance_metrics=False)
    got = ev.update(np.zeros((4, 4), int), np.zeros((4, 4), int))
    assert not {"hausdorff", "hd95", "object_f1"} & set(got)
    assert SegmentationEvaluator(["bg", "gland"]).summary() == {"num_images": 0}
    with pytest.raises(ValueError):
        ev.update(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError):
        ev.update(np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int))
    with pytest.raises(ValueError):
        SegmentationEvaluator([])
    # per_image hands out copies.
    ev.per_image[0]["dice"] = -1.0
    assert ev.per_image[0]["dice"] == 1.0


def test_spacing_reaches_distances() -> None:
    t = _rect((20, 20), 5, 10, 5, 10)
    p = _rect((20, 20), 5, 10, 7, 12)  # shifted 2 columns
    ev = SegmentationEvaluator(["bg", "gland"], spacing=(1.0, 0.5))
    got = ev.update(p, t)
    assert got["hausdorff"] == pytest.approx(1.0)
    assert got["object_hausdorff"] == pytest.approx(1.0)


def test_glas_sized_images_are_fast(instance_map) -> None:
    # 8 GlaS-sized images with all metrics; 60 such images must stay well under 10 s.
    ev = SegmentationEvaluator(["bg", "gland"])
    rng = np.random.default_rng(0)
    cases = []
    for seed in range(8):
        gt_inst = instance_map(seed, shape=(522, 775), sigma=15.0, fraction=0.4)
        pred = np.roll(gt_inst > 0, 3, axis=1)
        pred[rng.integers(0, 522, 40), rng.integers(0, 775, 40)] = True  # a few specks
        cases.append((pred.astype(np.int64), (gt_inst > 0).astype(np.int64), gt_inst))
    start = time.perf_counter()
    for pred, target, gt_inst in cases:
        ev.update(pred, target, gt_instances=gt_inst)
    per_image = (time.perf_counter() - start) / len(cases)
    assert per_image < 0.15
