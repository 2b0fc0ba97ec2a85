"""Ambiguous-segmentation metrics: hand-worked cases, brute-force references and the evaluator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import linprog

from pathseg.metrics import ambiguity
from pathseg.metrics.ambiguity import (
    AmbiguityEvaluator,
    calibration_error,
    ci_score,
    combined_sensitivity,
    diversity_agreement,
    ged,
    hm_iou,
    iou,
    max_dice_matching,
    pairwise_distances,
    uncertainty_maps,
)
from tests.conftest import shared_data_or_skip


def masks_2x2(*pixel_sets: set[int]) -> np.ndarray:
    """A stack of 2x2 masks; pixel k is (k // 2, k % 2), so 0 1 / 2 3 in row-major order."""
    out = np.zeros((len(pixel_sets), 2, 2), dtype=bool)
    for n, pixels in enumerate(pixel_sets):
        for k in pixels:
            out[n, k // 2, k % 2] = True
    return out


def random_stack(rng: np.random.Generator, k: int, shape=(9, 11)) -> np.ndarray:
    """``k`` random masks of varied density, the last one empty (to exercise the conventions)."""
    stack = rng.random((k, *shape)) < rng.uniform(0.1, 0.7, size=(k, 1, 1))
    stack[-1] = False
    return stack


def plain_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def plain_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * np.logical_and(a, b).sum() / total


# ---------------------------------------------------------------------------------------------
# IoU and distances


def test_iou_conventions_on_a_3x3_case() -> None:
    a = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    b = np.array([[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    empty = np.zeros((3, 3), dtype=bool)
    assert iou(a, b) == pytest.approx(1 / 3)  # one shared pixel, three in the union
    assert iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert iou(a, empty) == 0.0
    # Ignoring column 0 leaves a = {(0, 1)} and b = {(0, 1), (0, 2)}: IoU 1/2.
    ignore = np.zeros((3, 3), dtype=bool)
    ignore[:, 0] = True
    assert iou(a, b, ignore=ignore) == pytest.approx(0.5)
    # Bool, int and float 0/1 masks are the same masks.
    assert iou(a.astype(bool), b.astype(np.float32)) == pytest.approx(1 / 3)


def test_pairwise_distances_match_a_loop_over_pairs() -> None:
    rng = np.random.default_rng(0)
    a = random_stack(rng, 5)
    b = random_stack(rng, 3)
    ignore = rng.random(a.shape[1:]) < 0.2
    for ign in (None, ignore):
        keep = np.ones(a.shape[1:], dtype=bool) if ign is None else ~ign
        expected = np.array([[1 - plain_iou(x[keep], y[keep]) for y in b] for x in a])
        np.testing.assert_allclose(pairwise_distances(a, b, ignore=ign), expected, atol=1e-12)
    assert pairwise_distances(a, a).diagonal().tolist() == [0.0] * 5  # the empty mask too


# ---------------------------------------------------------------------------------------------
# GED


def test_ged_hand_worked_with_and_without_diagonal() -> None:
    # S1 = {0, 1}, S2 = {0};  Y1 = {0, 1}, Y2 = {2}.
    s = masks_2x2({0, 1}, {0})
    y = masks_2x2({0, 1}, {2})
    # Cross distances: d(S1,Y1) = 0, d(S1,Y2) = 1, d(S2,Y1) = 1 - 1/2, d(S2,Y2) = 1
    #   -> E[d(S,Y)] = (0 + 1 + 0.5 + 1) / 4 = 0.625.
    # d(S1,S2) = 0.5: with the diagonal (0 + 0.5 + 0.5 + 0) / 4 = 0.25, without 0.5.
    # d(Y1,Y2) = 1:   with the diagonal (0 + 1 + 1 + 0) / 4 = 0.5,    without 1.
    with_diag = ged(s, y)
    assert with_diag["cross"] == pytest.approx(0.625)
    assert with_diag["within_samples"] == pytest.approx(0.25)
    assert with_diag["within_annotators"] == pytest.approx(0.5)
    assert with_diag["ged"] == pytest.approx(2 * 0.625 - 0.25 - 0.5)  # 0.5
    no_diag = ged(s, y, include_diagonal=False)
    assert no_diag["cross"] == pytest.approx(0.625)
    assert no_diag["within_samples"] == pytest.approx(0.5)
    assert no_diag["within_annotators"] == pytest.approx(1.0)
    assert no_diag["ged"] == pytest.approx(-0.25)  # the unbiased estimate can go negative


def test_ged_zero_for_the_same_masks_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    s = random_stack(rng, 4)
    y = s[[2, 0, 3, 1]]
    assert ged(s, y)["ged"] == pytest.approx(0.0, abs=1e-12)
    other = random_stack(rng, 3)
    for include_diagonal in (True, False):
        forward = ged(s, other, include_diagonal)
        backward = ged(other, s, include_diagonal)
        assert forward["ged"] == pytest.approx(backward["ged"])
        assert forward["within_samples"] == pytest.approx(backward["within_annotators"])
    assert ged(s, other)["ged"] > 0


def test_ged_matches_a_brute_force_loop() -> None:
    rng = np.random.default_rng(2)
    s = random_stack(rng, 5)
    y = random_stack(rng, 4)
    ignore = rng.random(s.shape[1:]) < 0.3
    keep = ~ignore

    def d(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - plain_iou(a[keep], b[keep])

    for include_diagonal in (True, False):
        cross = np.mean([d(a, b) for a in s for b in y])
        pairs_s = [(i, j) for i in range(5) for j in range(5) if include_diagonal or i != j]
        pairs_y = [(i, j) for i in range(4) for j in range(4) if include_diagonal or i != j]
        within_s = np.mean([d(s[i], s[j]) for i, j in pairs_s])
        within_y = np.mean([d(y[i], y[j]) for i, j in pairs_y])
        got = ged(s, y, include_diagonal, ignore=ignore)
        assert got["ged"] == pytest.approx(2 * cross - within_s - within_y, abs=1e-12)
        assert got["cross"] == pytest.approx(cross, abs=1e-12)


def test_ged_without_diagonal_needs_two_on_each_side() -> None:
    two = masks_2x2({0}, {1})
    with pytest.raises(ValueError, match="at least 2 annotators"):
        ged(two, two[:1], include_diagonal=False)
    with pytest.raises(ValueError, match="at least 2 samples"):
        ged(two[:1], two, include_diagonal=False)
    assert ged(two[:1], two[:1])["ged"] == 0.0  # with the diagonal one mask each is fine


# ---------------------------------------------------------------------------------------------
# HM-IoU


def brute_force_matched_iou(ious: np.ndarray) -> float:
    """Best mean IoU over all one-to-one matchings of the samples to the tiled annotator columns."""
    n, m = ious.shape
    tiled = ious[:, np.arange(n) % m]
    return max(np.mean(tiled[np.arange(n), perm]) for perm in itertools.permutations(range(n)))


def lp_matched_iou(ious: np.ndarray) -> float:
    """Transport LP solved directly: mass 1/N per sample, 1/M per annotator, maximise IoU."""
    n, m = ious.shape
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1  # what sample i sends
    for j in range(m):
        a_eq[n + j, j::m] = 1  # what annotator j receives
    b_eq = np.r_[np.full(n, 1 / n), np.full(m, 1 / m)]
    result = linprog(-ious.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert result.success
    return -result.fun


def iou_table(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([[plain_iou(a, b) for b in y] for a in s])


def test_hm_iou_hand_worked() -> None:
    y = masks_2x2({0, 1}, {3})
    assert hm_iou(y[::-1], y) == pytest.approx(1.0)  # the same masks, matched across the order
    # N = 2, M = 1: both samples go to the one annotator, IoU 1 and 0 -> 0.5.
    assert hm_iou(masks_2x2({0, 1}, {3}), y[:1]) == pytest.approx(0.5)
    # N = 3, M = 2 (transport): S1 = Y1, S2 = Y2, S3 = Y1, with Y1 and Y2 disjoint. Y1 takes 1/2:
    # all of S1 (1/3) and 1/6 of S3; Y2 takes S2 (1/3) and the other 1/6 of S3, at IoU 0.
    # HM-IoU = 1/3 + 1/3 + 1/6 = 5/6.
    s = masks_2x2({0, 1}, {3}, {0, 1})
    assert hm_iou(s, y) == pytest.approx(5 / 6)


@pytest.mark.parametrize(("n", "m"), [(4, 4), (4, 2), (6, 3)])
def test_hm_iou_matches_brute_force_over_permutations(n: int, m: int) -> None:
    rng = np.random.default_rng(10 * n + m)
    for _ in range(3):
        s = random_stack(rng, n)
        y = random_stack(rng, m)
        assert hm_iou(s, y) == pytest.approx(brute_force_matched_iou(iou_table(s, y)), abs=1e-12)


@pytest.mark.parametrize(("n", "m"), [(3, 2), (2, 3), (5, 3)])
def test_hm_iou_transport_case_matches_linprog(n: int, m: int, monkeypatch) -> None:
    rng = np.random.default_rng(100 + n * m)
    for _ in range(3):
        s = random_stack(rng, n)
        y = random_stack(rng, m)
        expected = lp_matched_iou(iou_table(s, y))
        assert hm_iou(s, y) == pytest.approx(expected, abs=1e-9)
        # The same value from the module's own LP route (used when lcm(N, M) is large).
        monkeypatch.setattr(ambiguity, "_MAX_ASSIGNMENT_SIZE", 1)
        assert hm_iou(s, y) == pytest.approx(expected, abs=1e-9)
        monkeypatch.undo()


# ---------------------------------------------------------------------------------------------
# Collective Insight


def test_ci_parts_hand_worked_and_the_two_formulas() -> None:
    # S1 = {0}, S2 = {0, 1};  Y1 = {0, 1}, Y2 = {2}.
    s = masks_2x2({0}, {0, 1})
    y = masks_2x2({0, 1}, {2})
    # S_c: union S = {0, 1}, union Y = {0, 1, 2}: TP 2, FN 1 -> 2/3.
    assert combined_sensitivity(s, y) == pytest.approx(2 / 3)
    # D_max: Y1 best matches S2 (Dice 1; S1 gives 2*1/3); Y2 overlaps neither (0) -> (1 + 0) / 2.
    assert max_dice_matching(s, y) == pytest.approx(0.5)
    # D_a: S1 - S2 = (0, -1, 0, 0): mean -1/4, mean square 1/4, variance 1/4 - 1/16 = 3/16.
    # Y1 - Y2 = (1, 1, -1, 0): mean 1/4, mean square 3/4, variance 3/4 - 1/16 = 11/16.
    # One pair per side: dV_max = dV_min = 1/2 -> D_a = 1 - (1/2 + 1/2) / 2 = 1/2.
    assert diversity_agreement(s, y) == pytest.approx(0.5)
    # Harmonic: 3 / (3/2 + 2 + 2) = 6/11. Third-party: 3 (2/3)(1/2)(1/2) / (2/3 + 1 + 0) = 0.5 / (5/3) = 0.3.
    harmonic = ci_score(s, y)
    assert harmonic == pytest.approx({"ci": 6 / 11, "s_c": 2 / 3, "d_max": 0.5, "d_a": 0.5})
    assert ci_score(s, y, formula="third_party")["ci"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="CI formula"):
        ci_score(s, y, formula="mean")


def test_the_docstring_example_of_the_two_ci_formulas() -> None:
    # s_c = 1, d_max = 0.8, d_a = 0.5: 3 / (1 + 1.25 + 2) = 0.70588; 3 * 0.4 / 2.3 = 0.52174.
    assert ambiguity._combine_ci(1.0, 0.8, 0.5, "harmonic") == pytest.approx(3 / 4.25)
    assert ambiguity._combine_ci(1.0, 0.8, 0.5, "third_party") == pytest.approx(1.2 / 2.3)
    assert ambiguity._combine_ci(0.9, 0.9, 0.9, "third_party") == pytest.approx(0.81)
    assert ambiguity._combine_ci(0.0, 0.8, 0.5, "harmonic") == 0.0


def test_ci_parts_match_brute_force_and_conventions() -> None:
    rng = np.random.default_rng(3)
    s = random_stack(rng, 3)
    y = random_stack(rng, 4)
    union_s, union_y = s.any(0), y.any(0)
    sens = (union_s & union_y).sum() / union_y.sum()
    assert combined_sensitivity(s, y) == pytest.approx(sens)
    d_max = np.mean([max(plain_dice(b, a) for a in s) for b in y])
    assert max_dice_matching(s, y) == pytest.approx(d_max)
    v_s = [np.var(s[i].astype(float) - s[j]) for i, j in itertools.combinations(range(3), 2)]
    v_y = [np.var(y[i].astype(float) - y[j]) for i, j in itertools.combinations(range(4), 2)]
    d_a = 1 - (abs(max(v_s) - max(v_y)) + abs(min(v_s) - min(v_y))) / 2
    assert diversity_agreement(s, y) == pytest.approx(d_a)
    # Identical sets of masks agree perfectly in diversity; empty masks everywhere score 1.
    assert diversity_agreement(y, y[::-1]) == pytest.approx(1.0)
    empty = np.zeros((2, 4, 4), dtype=bool)
    assert ci_score(empty, empty) == {"ci": 1.0, "s_c": 1.0, "d_max": 1.0, "d_a": 1.0}


def test_diversity_agreement_needs_two_of_each() -> None:
    two = masks_2x2({0}, {1})
    with pytest.raises(ValueError, match="needs at least 2 annotators"):
        ci_score(two, two[:1])
    with pytest.raises(ValueError, match="needs at least 2 samples"):
        diversity_agreement(two[:1], two)


# ---------------------------------------------------------------------------------------------
# Calibration and uncertainty


def test_calibration_is_zero_when_probabilities_equal_frequencies() -> None:
    rng = np.random.default_rng(4)
    y = random_stack(rng, 4)
    out = calibration_error(y.mean(axis=0), y, bins=10)
    assert out["ece"] == pytest.approx(0.0, abs=1e-12)
    assert out["mae"] == pytest.approx(0.0, abs=1e-12)
    assert out["bin_counts"].sum() == y[0].size


def test_calibration_two_bins_hand_worked() -> None:
    # 1x4 image: p = (0.1, 0.3, 0.6, 0.9); annotators (0,1,1,0) and (0,1,0,1) -> f = (0, 1, 0.5, 0.5).
    p = np.array([[0.1, 0.3, 0.6, 0.9]])
    y = np.array([[[0, 1, 1, 0]], [[0, 1, 0, 1]]])
    out = calibration_error(p, y, bins=2)
    # Bin [0, 0.5): mean p 0.2, mean f 0.5, 2 of 4 pixels -> 0.5 * 0.3 = 0.15.
    # Bin [0.5, 1]: mean p 0.75, mean f 0.5, 2 of 4 pixels -> 0.5 * 0.25 = 0.125.  ECE 0.275.
    assert out["ece"] == pytest.approx(0.275)
    assert out["mae"] == pytest.approx((0.1 + 0.7 + 0.1 + 0.4) / 4)
    np.testing.assert_array_equal(out["bin_counts"], [2, 2])
    np.testing.assert_allclose(out["bin_predicted"], [0.2, 0.75])
    np.testing.assert_allclose(out["bin_observed"], [0.5, 0.5])
    np.testing.assert_allclose(out["bin_edges"], [0.0, 0.5, 1.0])
    # Ignoring pixel 1 leaves bin 0 = {p 0.1, f 0}: (1/3) * 0.1; bin 1 as before: (2/3) * 0.25.
    ignore = np.array([[False, True, False, False]])
    assert calibration_error(p, y, bins=2, ignore=ignore)["ece"] == pytest.approx(0.1 / 3 + 0.5 / 3)
    # 0.5 opens the upper bin and 1.0 stays in the last one; an empty bin has NaN means.
    edge = calibration_error(np.array([[0.5, 1.0]]), np.ones((1, 1, 2)), bins=2)
    np.testing.assert_array_equal(edge["bin_counts"], [0, 2])
    assert np.isnan(edge["bin_predicted"][0])
    assert edge["ece"] == pytest.approx(0.25)  # all pixels in bin 1: |0.75 - 1|


def test_calibration_rejects_bad_probabilities_and_bins() -> None:
    y = np.zeros((2, 2, 2), dtype=bool)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_error(np.full((2, 2), 1.5), y)
    with pytest.raises(ValueError, match="differ in image size"):
        calibration_error(np.zeros((3, 2)), y)
    with pytest.raises(ValueError, match="bins"):
        calibration_error(np.zeros((2, 2)), y, bins=0)


def test_uncertainty_maps() -> None:
    # Pixel (0,0): 2 of 4 samples -> variance 1/4, entropy 1 bit. Pixel (0,1): 1 of 4 -> 3/16 and
    # -(1/4 log2 1/4 + 3/4 log2 3/4) = 0.8113 bits. Pixel (0,2): none -> 0 and 0.
    samples = np.zeros((4, 1, 3), dtype=bool)
    samples[:2, 0, 0] = True
    samples[0, 0, 1] = True
    variance, entropy = uncertainty_maps(samples)
    np.testing.assert_allclose(variance, [[0.25, 3 / 16, 0.0]])
    np.testing.assert_allclose(entropy, [[1.0, -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75)), 0.0]])
    rng = np.random.default_rng(5)
    stack = random_stack(rng, 6)
    np.testing.assert_allclose(uncertainty_maps(stack)[0], np.var(stack.astype(float), axis=0))


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_clear_errors() -> None:
    s = np.zeros((3, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\) and annotators \(2, 4, 5\)"):
        ged(s, np.zeros((2, 4, 5), dtype=bool))
    with pytest.raises(ValueError, match="empty stack"):
        hm_iou(np.zeros((0, 4, 4)), s)
    with pytest.raises(ValueError, match="stack of masks"):
        ged(np.zeros((4, 4)), s)
    with pytest.raises(ValueError, match=r"binary.*255"):
        ged(np.full((2, 4, 4), 255, dtype=np.uint8), s)
    with pytest.raises(ValueError, match="ignore mask shape"):
        ged(s, s, ignore=np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="no pixels to score"):
        ged(s, s, ignore=np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="a and b shapes differ"):
        iou(np.zeros((2, 2)), np.zeros((3, 3)))


# ---------------------------------------------------------------------------------------------
# Evaluator


def test_evaluator_means_are_means_of_the_per_image_values() -> None:
    rng = np.random.default_rng(6)
    images = [(random_stack(rng, 4), random_stack(rng, 3)) for _ in range(2)]
    soft = rng.random(images[1][0].shape[1:])
    ev = AmbiguityEvaluator(ci_formula="third_party", bins=5)
    r1 = ev.update(*images[0], name="a")
    r2 = ev.update(*images[1], name="b", soft=soft)
    # Each row is the standalone functions' values.
    s, y = images[0]
    assert r1["ged"] == pytest.approx(ged(s, y)["ged"])
    assert r1["hm_iou"] == pytest.approx(hm_iou(s, y))
    assert r1["ci"] == pytest.approx(ci_score(s, y, "third_party")["ci"])
    assert r1["ece"] == pytest.approx(calibration_error(s.mean(axis=0), y, bins=5)["ece"])
    assert r2["mae"] == pytest.approx(calibration_error(soft, images[1][1])["mae"])
    summary = ev.summary()
    assert summary["num_images"] == 2
    assert [row["name"] for row in summary["per_image"]] == ["a", "b"]
    for key in ("ged", "ged_cross", "hm_iou", "ci", "s_c", "d_max", "d_a", "ece", "mae"):
        assert summary[key] == pytest.approx((r1[key] + r2[key]) / 2), key
    ev.reset()
    assert ev.summary()["num_images"] == 0
    assert math.isnan(ev.summary()["ged"])


def test_evaluator_options() -> None:
    s = masks_2x2({0, 1}, {0})
    y = masks_2x2({0, 1}, {2})
    ev = AmbiguityEvaluator(include_diagonal=False)
    assert ev.update(s, y)["ged"] == pytest.approx(-0.25)  # the hand-worked GED above
    assert ev.per_image[0]["name"] == ""
    with pytest.raises(ValueError, match="CI formula"):
        AmbiguityEvaluator(ci_formula="arithmetic")


# ---------------------------------------------------------------------------------------------
# Real annotations


@pytest.mark.shared_data
def test_bubil_expert_masks_vectorised_equals_loops() -> None:
    """Five ImageJ expert masks as 'samples', five Amira masks as 'annotators' of image B01."""
    from pathseg.data.io import read_label_image

    root = shared_data_or_skip("bubil", "Dataset1", "ExpertsAnnotations")

    def read(tool: str) -> np.ndarray:
        masks = [read_label_image(root / f"Person{k}_{tool}" / "seg_B01.png") for k in range(1, 6)]
        return np.stack([m > 0 for m in masks])

    s, y = read("ImageJ"), read("Amira")
    distances = pairwise_distances(s, y)
    np.testing.assert_allclose(distances, [[1 - plain_iou(a, b) for b in y] for a in s], atol=1e-12)
    out = ged(s, y)
    assert out["ged"] >= 0
    assert 0 < hm_iou(s, y) <= 1
    ci = ci_score(s, y)
    assert all(0 <= ci[k] <= 1 for k in ci)


def test_evaluator_returns_plain_floats() -> None:
    rng = np.random.default_rng(7)
    row = AmbiguityEvaluator().update(random_stack(rng, 3), random_stack(rng, 2))
    assert all(type(value) is float for value in row.values()), row
