"""Confusion-matrix metrics against hand-worked numbers, direct mask formulas and MONAI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou

from pathseg.metrics import confusion_matrix, dice_score, iou_score, scores_from_confusion

# A 4x4 case worked out by hand (rows: ground truth 0/1/2).
TARGET_4x4 = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [0, 2, 2, 2]])
PRED_4x4 = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [2, 2, 2, 2]])


def test_hand_worked_4x4() -> None:
    cm = confusion_matrix(PRED_4x4, TARGET_4x4, 3)
    # GT 0 (6 px): predicted 0,1,0,0,0,2 -> [4,1,1]; GT 1 (4 px): all 1; GT 2 (6 px): one 0, five 2.
    np.testing.assert_array_equal(cm, [[4, 1, 1], [0, 4, 0], [1, 0, 5]])
    s = scores_from_confusion(cm, ["bg", "a", "b"])
    # class bg: TP 4, FP 1, FN 2; class a: TP 4, FP 1, FN 0; class b: TP 5, FP 1, FN 1.
    expected = {
        "dice/bg": 8 / 11,
        "dice/a": 8 / 9,
        "dice/b": 10 / 12,
        "iou/bg": 4 / 7,
        "iou/a": 4 / 5,
        "iou/b": 5 / 7,
        "precision/bg": 4 / 5,
        "precision/a": 4 / 5,
        "precision/b": 5 / 6,
        "recall/bg": 4 / 6,
        "recall/a": 1.0,
        "recall/b": 5 / 6,
        "dice": (8 / 9 + 10 / 12) / 2,
        "iou": (4 / 5 + 5 / 7) / 2,
        "precision": (4 / 5 + 5 / 6) / 2,
        "recall": (1.0 + 5 / 6) / 2,
        "miou": (4 / 7 + 4 / 5 + 5 / 7) / 3,
        "fwiou": 6 / 16 * 4 / 7 + 4 / 16 * 4 / 5 + 6 / 16 * 5 / 7,
        "pixel_accuracy": 13 / 16,
        "mean_accuracy": (4 / 6 + 1.0 + 5 / 6) / 3,
    }
    assert set(s) == set(expected)
    for key, value in expected.items():
        assert s[key] == pytest.approx(value, abs=1e-12), key


def test_ignore_index_drops_target_pixels_only() -> None:
    target = TARGET_4x4.copy()
    target[0, :] = 255
    pred = PRED_4x4.copy()
    pred[0, 0] = 9  # garbage under an ignored pixel must not raise
    cm = confusion_matrix(pred, target, 3, ignore_index=255)
    np.testing.assert_array_equal(cm, confusion_matrix(PRED_4x4[1:], TARGET_4x4[1:], 3))
    assert cm.sum() == 12
    assert cm.dtype == np.int64


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), "shapes differ"),
        (np.full((4, 4), 3), np.zeros((4, 4), int), "pred has class values outside"),
        (np.zeros((4, 4), int), np.full((4, 4), -1), "target has class values outside"),
        (np.full((4, 4), 0.5), np.zeros((4, 4), int), "integer"),
    ],
)
def test_confusion_matrix_rejects_bad_input(pred: np.ndarray, target: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 3)


def test_ignored_value_in_pred_is_still_an_error_elsewhere() -> None:
    pred = np.full((2, 2), 255)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(pred, np.zeros((2, 2), int), 3, ignore_index=255)


def _direct_scores(pred: np.ndarray, target: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-class scores from boolean masks, without any confusion matrix."""
    out: dict[str, list[float]] = {"dice": [], "iou": [], "precision": [], "recall": []}
    for c in range(k):
        p, t = pred == c, target == c
        tp = np.sum(p & t)
        out["dice"].append(2 * tp / (p.sum() + t.sum()))
        out["iou"].append(tp / np.sum(p | t))
        out["precision"].append(tp / p.sum())
        out["recall"].append(tp / t.sum())
    return {key: np.array(v) for key, v in out.items()}


@pytest.mark.parametrize("seed", range(5))
def test_random_maps_match_direct_formulas(seed: int, class_map) -> None:
    k = 4
    target = class_map(seed, num_classes=k)
    pred = class_map(seed + 100, num_classes=k)
    names = [f"c{i}" for i in range(k)]
    s = scores_from_confusion(confusion_matrix(pred, target, k), names)
    ref = _direct_scores(pred, target, k)
    for metric, values in ref.items():
        for c in range(k):
            assert s[f"{metric}/c{c}"] == pytest.approx(values[c], abs=1e-12)
        assert s[metric] == pytest.approx(values[1:].mean(), abs=1e-12)
    assert s["miou"] == pytest.approx(ref["iou"].mean(), abs=1e-12)
    assert s["mean_accuracy"] == pytest.approx(ref["recall"].mean(), abs=1e-12)
    freq = np.array([(target == c).mean() for c in range(k)])
    assert s["fwiou"] == pytest.approx(np.sum(freq * ref["iou"]), abs=1e-12)
    assert s["pixel_accuracy"] == pytest.approx(np.mean(pred == target), abs=1e-12)


def _one_hot(x: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(x), k).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("seed", range(4))
def test_random_maps_match_monai(seed: int, class_map) -> None:
    k = 5
    target = class_map(seed, num_classes=k, sigma=2.0)
    pred = class_map(seed + 50, num_classes=k, sigma=2.0)
    if seed == 0:
        pred[pred == 4] = 3  # a class in the ground truth that is never predicted
    s = scores_from_confusion(confusion_matrix(pred, target, k))
    dice_m = compute_dice(_one_hot(pred, k), _one_hot(target, k), include_background=True)[0].numpy()
    iou_m = compute_iou(_one_hot(pred, k), _one_hot(target, k), include_background=True)[0].numpy()
    for c in range(k):
        assert s[f"dice/{c}"] == pytest.approx(float(dice_m[c]), abs=1e-6)
        assert s[f"iou/{c}"] == pytest.approx(float(iou_m[c]), abs=1e-6)
    assert s["miou"] == pytest.approx(float(np.nanmean(iou_m)), abs=1e-6)


def test_empty_class_conventions() -> None:
    # Class 2 appears nowhere; class 3 is only predicted; class 1 is only in the ground truth.
    target = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 0, 3]])
    s = scores_from_confusion(confusion_matrix(pred, target, 4), ["bg", "gt_only", "absent", "pred_only"])
    for metric in ("dice", "iou", "precision", "recall"):
        assert s[f"{metric}/absent"] == 1.0
        assert s[f"{metric}/gt_only"] == 0.0
        assert s[f"{metric}/pred_only"] == 0.0
    assert s["dice"] == pytest.approx(1 / 3)
    # miou leaves the absent class out but keeps the predicted-only class (IoU 0).
    iou_bg = 2 / 3  # TP 2, FP 1 (the gt_only pixel predicted as bg), FN 0
    assert s["miou"] == pytest.approx((iou_bg + 0 + 0) / 3)
    # mean_accuracy only over classes present in the ground truth.
    assert s["mean_accuracy"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["fwiou"] == pytest.approx(0.5 * iou_bg)


def test_foreground_start_zero_and_single_class() -> None:
    cm = confusion_matrix(PRED_4x4, TARGET_4x4, 3)
    s = scores_from_confusion(cm, foreground_start=0)
    assert s["dice"] == pytest.approx((8 / 11 + 8 / 9 + 10 / 12) / 3)
    single = scores_from_confusion(np.array([[7]]), ["only"])
    assert single["dice"] == single["dice/only"] == 1.0
    assert single["pixel_accuracy"] == 1.0


def test_all_ignored_gives_nan_summaries() -> None:
    s = scores_from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert s["dice"] == 1.0
    for key in ("miou", "mean_accuracy", "fwiou", "pixel_accuracy"):
        assert np.isnan(s[key])


def test_class_names_length_checked() -> None:
    with pytest.raises(ValueError, match="class names"):
        scores_from_confusion(np.eye(3), ["a", "b"])


def test_binary_helpers() -> None:
    a = np.zeros((5, 5), bool)
    b = np.zeros((5, 5), bool)
    assert dice_score(a, b) == 1.0
    assert iou_score(a, b) == 1.0
    a[0, :4] = True  # 4 px
    b[0, 2:] = True  # 3 px, 2 shared
    assert dice_score(a, b) == pytest.approx(2 * 2 / 7)
    assert iou_score(a, b) == pytest.approx(2 / 5)
    assert dice_score(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError):
        dice_score(a, b[:4])
