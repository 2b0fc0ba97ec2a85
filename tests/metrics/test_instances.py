"""AJI and panoptic quality: hand-worked cases and brute-force references with full masks."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pathseg.metrics import NucleusEvaluator, aji, binary_dice, panoptic_quality


def _put(inst: np.ndarray, r0: int, r1: int, c0: int, c1: int, value: int) -> None:
    inst[r0:r1, c0:c1] = value


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((30, 30), dtype=np.int64)
    pred = np.zeros_like(gt)
    _put(gt, 0, 4, 0, 4, 1)  # G1: 16 px
    _put(gt, 10, 12, 10, 12, 2)  # G2: 4 px, nothing predicted there
    _put(pred, 0, 4, 1, 5, 1)  # P1: 16 px, 12 shared with G1 -> IoU 12/20
    _put(pred, 20, 22, 20, 22, 2)  # P2: 4 px, spurious
    return pred, gt


def test_aji_hand_worked() -> None:
    pred, gt = _hand_case()
    # G1 <-> P1: inter 12, union 20. G2 unmatched adds 4, P2 never used adds 4.
    assert aji(pred, gt) == pytest.approx(12 / (20 + 4 + 4))


def test_aji_reuses_a_prediction_for_several_nuclei() -> None:
    gt = np.zeros((4, 8), dtype=np.int64)
    _put(gt, 0, 2, 0, 2, 1)
    _put(gt, 0, 2, 3, 5, 2)
    pred = np.zeros_like(gt)
    _put(pred, 0, 2, 0, 5, 5)  # one 10 px prediction over both
    # Both nuclei pick it: inter 4 + 4, union 10 + 10.
    assert aji(pred, gt) == pytest.approx(8 / 20)


def test_pq_hand_worked() -> None:
    pred, gt = _hand_case()
    pq = panoptic_quality(pred, gt)
    # One match (IoU 0.6), one FP (P2), one FN (G2): DQ = 1 / (1 + 0.5 + 0.5), SQ = 0.6.
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 1, 1)
    assert pq["dq"] == pytest.approx(0.5)
    assert pq["sq"] == pytest.approx(0.6)
    assert pq["pq"] == pytest.approx(0.3)


def test_pq_iou_exactly_half_is_not_a_match() -> None:
    gt = np.zeros((4, 4), dtype=np.int64)
    _put(gt, 0, 2, 0, 2, 1)  # 4 px
    pred = np.zeros_like(gt)
    _put(pred, 0, 1, 0, 2, 1)  # 2 px inside: IoU 0.5
    pq = panoptic_quality(pred, gt)
    assert pq["tp"] == 0
    assert pq["pq"] == pq["sq"] == 0.0


def test_pq_lower_threshold_uses_one_to_one_matching() -> None:
    gt = np.zeros((6, 10), dtype=np.int64)
    _put(gt, 0, 2, 0, 10, 1)  # 20 px
    pred = np.zeros_like(gt)
    _put(pred, 0, 2, 0, 4, 1)  # IoU 8/20 = 0.4
    _put(pred, 0, 2, 4, 7, 2)  # IoU 6/20 = 0.3
    pq = panoptic_quality(pred, gt, iou_threshold=0.25)
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 1, 0)
    assert pq["sq"] == pytest.approx(0.4)
    assert panoptic_quality(pred, gt)["tp"] == 0


def test_empty_conventions() -> None:
    empty = np.zeros((8, 8), dtype=np.int64)
    some = empty.copy()
    _put(some, 1, 3, 1, 3, 4)
    assert aji(empty, empty) == 1.0
    assert panoptic_quality(empty, empty) == {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    for pred, gt in ((some, empty), (empty, some)):
        assert aji(pred, gt) == 0.0
        pq = panoptic_quality(pred, gt)
        assert pq["pq"] == pq["dq"] == pq["sq"] == 0.0


# ---------------------------------------------------------------------------------------------
# References that loop over full-image masks, written straight from the definitions.


def _masks(inst: np.ndarray) -> dict[int, np.ndarray]:
    return {int(i): inst == i for i in np.unique(inst) if i != 0}


def _aji_reference(pred: np.ndarray, gt: np.ndarray) -> float:
    pm, gm = _masks(pred), _masks(gt)
    inter_sum = union_sum = 0
    used: set[int] = set()
    for g in gm.values():
        best_id, best_iou = None, 0.0
        for pid, p in pm.items():
            iou = np.sum(g & p) / np.sum(g | p)
            if iou > best_iou:
                best_id, best_iou = pid, iou
        if best_id is None:
            union_sum += g.sum()
        else:
            inter_sum += np.sum(g & pm[best_id])
            union_sum += np.sum(g | pm[best_id])
            used.add(best_id)
    union_sum += sum(p.sum() for pid, p in pm.items() if pid not in used)
    return inter_sum / union_sum


def _pq_reference(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pm, gm = _masks(pred), _masks(gt)
    ious = []
    for g in gm.values():
        for p in pm.values():
            iou = np.sum(g & p) / np.sum(g | p)
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    fp, fn = len(pm) - tp, len(gm) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(ious) / tp if tp else 0.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "tp": tp, "fp": fp, "fn": fn}


@pytest.mark.parametrize("seed", range(6))
def test_against_references_on_random_maps(seed: int, instance_map) -> None:
    gt = instance_map(seed, shape=(64, 64), sigma=1.5)
    if seed % 2:
        pred = np.roll(gt, shift=(1, 1), axis=(0, 1)) * 3  # mostly good, non-consecutive ids
        pred[:10] = 0
    else:
        pred = instance_map(seed + 50, shape=(64, 64), sigma=1.5)
    assert aji(pred, gt) == pytest.approx(_aji_reference(pred, gt), abs=1e-12)
    got, ref = panoptic_quality(pred, gt), _pq_reference(pred, gt)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_many_nuclei_are_fast() -> None:
    # 600+ nuclei on a 1000x1000 tile.
    rng = np.random.default_rng(0)
    gt = np.zeros((1000, 1000), dtype=np.int32)
    centres = rng.integers(5, 995, size=(700, 2))
    for i, (r, c) in enumerate(centres, start=1):
        gt[r - 4 : r + 4, c - 4 : c + 4] = i
    pred = np.roll(gt, 2, axis=1)
    start = time.perf_counter()
    aji(pred, gt)
    panoptic_quality(pred, gt)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------
# Dice and the evaluator: means over images and pooled terms.


def test_binary_dice_hand_worked() -> None:
    pred, gt = _hand_case()
    # Nucleus pixels: gt 16 + 4, pred 16 + 4, shared 12.
    assert binary_dice(pred, gt) == pytest.approx(2 * 12 / 40)
    empty = np.zeros_like(gt)
    assert binary_dice(empty, empty) == 1.0
    assert binary_dice(pred, empty) == 0.0


def test_evaluator_means_and_pooled_terms_hand_worked() -> None:
    pred, gt = _hand_case()
    perfect = np.zeros((10, 10), dtype=np.int64)
    _put(perfect, 2, 6, 2, 6, 1)  # 16 px, predicted exactly
    evaluator = NucleusEvaluator()
    first = evaluator.update(pred, gt, "a")
    evaluator.update(perfect, perfect, "b")
    assert first["aji"] == pytest.approx(12 / 28)
    summary = evaluator.summary()
    assert summary["num_images"] == 2
    assert summary["aji"] == pytest.approx((12 / 28 + 1.0) / 2)
    # Pooled AJI: (12 + 16) / (28 + 16); pooled PQ: TP 2, FP 1, FN 1, IoU sum 0.6 + 1.
    assert summary["pooled_aji"] == pytest.approx(28 / 44)
    assert summary["pooled_dq"] == pytest.approx(2 / 3)
    assert summary["pooled_sq"] == pytest.approx(0.8)
    assert summary["pooled_pq"] == pytest.approx(2 / 3 * 0.8)
    assert summary["pq"] == pytest.approx((0.3 + 1.0) / 2)
    assert summary["dice"] == pytest.approx((24 / 40 + 1.0) / 2)
    assert summary["pooled_dice"] == pytest.approx((24 + 32) / (40 + 32))
    assert [row["name"] for row in summary["per_image"]] == ["a", "b"]


@pytest.mark.parametrize("seed", range(3))
def test_evaluator_agrees_with_references(seed: int, instance_map) -> None:
    evaluator = NucleusEvaluator()
    pairs = []
    for k in range(3):
        gt = instance_map(seed * 10 + k, shape=(48, 48), sigma=1.5)
        pred = np.roll(gt, shift=(k, 1), axis=(0, 1)) * 2
        pairs.append((pred, gt))
        row = evaluator.update(pred, gt)
        assert row["aji"] == pytest.approx(_aji_reference(pred, gt), abs=1e-12)
        assert row["pq"] == pytest.approx(_pq_reference(pred, gt)["pq"], abs=1e-12)
    summary = evaluator.summary()
    refs = [_pq_reference(p, g) for p, g in pairs]
    tp, fp, fn = (sum(r[k] for r in refs) for k in ("tp", "fp", "fn"))
    iou_sum = sum(r["sq"] * r["tp"] for r in refs)
    assert summary["pooled_dq"] == pytest.approx(tp / (tp + 0.5 * fp + 0.5 * fn))
    assert summary["pooled_sq"] == pytest.approx(iou_sum / tp)
    assert summary["aji"] == pytest.approx(np.mean([_aji_reference(p, g) for p, g in pairs]))
