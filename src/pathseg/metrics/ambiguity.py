"""Metrics for ambiguous segmentation: a set of sampled masks scored against several annotators.

A model such as CIMD draws ``N`` plausible binary masks ``S = (S_1 .. S_N)`` for one image; the
image has ``M`` annotator masks ``Y = (Y_1 .. Y_M)``. The functions here score one image; the
:class:`AmbiguityEvaluator` averages them over images.

Inputs and conventions
----------------------
* ``samples`` and ``annotators`` are stacks of shape ``(N, H, W)`` and ``(M, H, W)`` holding
  ``bool`` or the numbers 0/1 (ints or floats). Any other value (255, 0.5, NaN) raises
  ``ValueError``: binarise first, so a probability map is never silently thresholded here.
  Empty stacks and stacks of different image size raise ``ValueError`` naming the shapes.
* ``ignore`` (optional, ``(H, W)`` bool): pixels left out of *every* count, for every mask. An
  ignore mask that leaves no pixel raises ``ValueError`` (there is nothing to score).
* **Empty masks**: ``IoU(empty, empty) = 1`` and ``Dice(empty, empty) = 1`` (two annotators
  agreeing that there is nothing is perfect agreement); a non-empty mask against an empty one
  scores 0. The distance is ``d = 1 - IoU``, so ``d(empty, empty) = 0``.

Generalised energy distance (GED)
---------------------------------
``D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` (Kohl et al., Probabilistic U-Net, 2018), with
the expectations estimated by means over pairs. :func:`ged` returns this *squared* distance under
the key ``ged`` plus its three terms: ``cross`` = E[d(S, Y)] (mean over all ``N x M`` pairs; the
factor 2 is applied only in ``ged``), ``within_samples`` = E[d(S, S')] and ``within_annotators`` =
E[d(Y, Y')]. Some papers report ``sqrt(D^2)``; take the square root yourself when comparing.

* ``include_diagonal=True`` (default, the MoSE-AUSeg / CIMD practice): plain means over all
  ordered pairs, ``i = j`` included (those pairs have ``d = 0``). This is a V-statistic and is
  never negative, and ``D^2 = 0`` when ``S`` and ``Y`` hold the same masks.
* ``include_diagonal=False``: means over ``i != j`` (needs two masks on each side). This is an
  unbiased estimate and can be slightly negative: for ``S = Y = {a, b}`` with ``d(a, b) = 1`` it
  is ``2 * 0.5 - 1 - 1 = -1``.

Hungarian-matched IoU (HM-IoU)
------------------------------
Following MoSE-AUSeg: cost ``C_ij = 1 - IoU(S_i, Y_j)``; the samples are matched to the
annotators by the cheapest transport plan with uniform mass (``1/N`` per sample, ``1/M`` per
annotator), and HM-IoU is the mean IoU over the plan (each pair weighted by the mass it
carries). When ``M`` divides ``N`` this is exactly MoSE's recipe (annotator columns tiled
``N / M`` times, then ``scipy.optimize.linear_sum_assignment``); otherwise MoSE calls ``ot.emd``,
which this module replaces by an assignment on replicated rows and columns (see
:func:`_uniform_transport_plan`).

Collective Insight (CI), Rahman et al., CVPR 2023
-------------------------------------------------
* ``s_c`` combined sensitivity: ``TP / (TP + FN)`` between the union of the samples (prediction)
  and the union of the annotators (truth); 1 when the annotators' union is empty.
* ``d_max`` maximum Dice matching: ``(1/M) sum_j max_i Dice(Y_j, S_i)``.
* ``d_a`` diversity agreement: ``V^X_ij`` is the variance over pixels (population variance, ddof
  0) of the difference image ``X_i - X_j``, for the pairs ``i < j`` only.
  ``dV_max = |max V^S - max V^Y|``, ``dV_min = |min V^S - min V^Y|`` and
  ``d_a = 1 - (dV_max + dV_min) / 2``. Pairs ``i = j`` are excluded because their variance is 0,
  which would make both minima 0 and ``dV_min`` always 0. Every ``V`` is in ``[0, 1]``, so ``d_a``
  is too. Needs at least 2 samples and 2 annotators.
* ``ci``: ``formula="harmonic"`` (default) is the harmonic mean the paper describes,
  ``3 / (1/s_c + 1/d_max + 1/d_a)`` (0 when a part is 0). ``formula="third_party"`` reproduces a
  public third-party implementation, ``3 s_c d_max d_a / (s_c + d_max + d_a)``, which is *not* a
  mean: for ``s_c = 1, d_max = 0.8, d_a = 0.5`` the harmonic mean is ``3 / 4.25 = 0.7059`` and
  the third-party value ``1.2 / 2.3 = 0.5217``; with three equal parts ``x`` it gives ``x**2``.

Calibration and uncertainty
---------------------------
:func:`calibration_error` compares a predicted foreground probability ``p`` (the mean of the
samples, or a model's soft output) with the annotators' frequency ``f = mean_j Y_j`` per pixel:
``ece = sum_b (n_b / n) |mean(p in b) - mean(f in b)|`` over equal-width bins of ``p`` (bin ``b``
holds ``b/B <= p < (b+1)/B``; the last bin also holds ``p = 1``), and ``mae = mean |p - f|``.
:func:`uncertainty_maps` gives the per-pixel variance of the samples and the binary entropy, in
bits, of their mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment, linprog

__all__ = [
    "CI_FORMULAS",
    "AmbiguityEvaluator",
    "calibration_error",
    "ci_score",
    "combined_sensitivity",
    "diversity_agreement",
    "ged",
    "hm_iou",
    "iou",
    "max_dice_matching",
    "pairwise_distances",
    "uncertainty_maps",
]

CI_FORMULAS = ("harmonic", "third_party")

# Largest lcm(N, M) solved as an assignment problem; linear_sum_assignment is cubic in it, and
# beyond this the transport LP (N * M variables) is the cheaper exact route.
_MAX_ASSIGNMENT_SIZE = 2048

# Pixel counts below 2**24 are exact in float32 (every partial sum of 0/1 products is an integer
# float32 holds), which halves the memory of the matrix products on large images.
_FLOAT32_EXACT = 1 << 24


# ---------------------------------------------------------------------------------------------
# Input checks and pixel counts


def _as_binary(x: Any, what: str) -> np.ndarray:
    """``x`` as a bool array; bool or the numbers 0/1 only."""
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} must be a binary mask (bool or 0/1), got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = np.unique(arr[~ok])[:5].tolist()
        raise ValueError(f"{what} must be binary (bool or 0/1), found values such as {bad}")
    return arr == 1


def _as_stack(x: Any, what: str) -> np.ndarray:
    """A ``(K, H, W)`` bool stack with ``K >= 1``."""
    arr = np.asarray(x)
    if arr.ndim != 3:
        raise ValueError(f"{what} must be a stack of masks of shape (K, H, W), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what} is an empty stack (shape {arr.shape}); need at least one mask")
    return _as_binary(arr, what)


def _kept_pixels(ignore: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Flat bool vector of the pixels that count (all of them without an ignore mask)."""
    if ignore is None:
        keep = np.ones(math.prod(shape), dtype=bool)
    else:
        ig = np.asarray(ignore)
        if ig.shape != shape:
            raise ValueError(f"ignore mask shape {ig.shape} differs from the masks' {shape}")
        keep = ~_as_binary(ig, "ignore").ravel()
    if not keep.any():
        why = "" if ignore is None else " and the ignore mask covers them all"
        raise ValueError(f"no pixels to score: the masks are {shape}{why}")
    return keep


def _flatten(stack: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` -> ``(K, P)`` over the kept pixels."""
    flat = stack.reshape(len(stack), -1)
    return flat if keep.all() else flat[:, keep]


def _prepare(
    samples: Any, annotators: Any, ignore: Any, names: tuple[str, str] = ("samples", "annotators")
) -> tuple[np.ndarray, np.ndarray]:
    """Check both stacks and return them flattened to ``(N, P)`` and ``(M, P)`` over kept pixels."""
    s = _as_stack(samples, names[0])
    y = _as_stack(annotators, names[1])
    if s.shape[1:] != y.shape[1:]:
        raise ValueError(f"{names[0]} {s.shape} and {names[1]} {y.shape} differ in image size")
    keep = _kept_pixels(ignore, s.shape[1:])
    return _flatten(s, keep), _flatten(y, keep)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` pixel counts of ``a_i & b_j``: one matrix product of the 0/1 rows."""
    dtype = np.float32 if a.shape[1] < _FLOAT32_EXACT else np.float64
    return np.rint(a.astype(dtype) @ b.astype(dtype).T).astype(np.int64)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of flattened masks; 1 for two empty masks."""
    inter = _intersections(a, b)
    union = a.sum(axis=1)[:, None] + b.sum(axis=1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _need_two(stack: np.ndarray, what: str, metric: str) -> None:
    if len(stack) < 2:
        raise ValueError(f"{metric} needs at least 2 {what}, got {len(stack)}")


# ---------------------------------------------------------------------------------------------
# IoU, distances, GED, HM-IoU


def iou(a: Any, b: Any, ignore: Any = None) -> float:
    """IoU of two binary masks of the same shape; 1 when both are empty (outside ``ignore``)."""
    ma = _as_binary(a, "a")
    mb = _as_binary(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"a and b shapes differ: {ma.shape} vs {mb.shape}")
    keep = _kept_pixels(ignore, ma.shape)
    ma, mb = ma.ravel()[keep], mb.ravel()[keep]
    union = np.count_nonzero(ma | mb)
    return 1.0 if union == 0 else float(np.count_nonzero(ma & mb) / union)


def pairwise_distances(a: Any, b: Any, ignore: Any = None) -> np.ndarray:
    """``(len(a), len(b))`` matrix of ``d = 1 - IoU`` between two stacks of masks (``(K, H, W)``)."""
    fa, fb = _prepare(a, b, ignore, names=("a", "b"))
    return 1.0 - _iou_matrix(fa, fb)


def _mean_over_pairs(d: np.ndarray, include_diagonal: bool) -> float:
    """Mean of a square distance matrix over ordered pairs, with or without ``i = j``."""
    n = len(d)
    if include_diagonal:
        return float(d.mean())
    return float((d.sum() - np.trace(d)) / (n * (n - 1)))


def ged(samples: Any, annotators: Any, include_diagonal: bool = True, ignore: Any = None) -> dict[str, float]:
    """Squared generalised energy distance ``D^2`` and its terms (module docstring).

    Returns ``{"ged": D^2, "cross": E[d(S,Y)], "within_samples": E[d(S,S')],
    "within_annotators": E[d(Y,Y')]}`` with ``ged = 2 cross - within_samples - within_annotators``.
    """
    s, y = _prepare(samples, annotators, ignore)
    if not include_diagonal:
        _need_two(s, "samples", "ged without the diagonal")
        _need_two(y, "annotators", "ged without the diagonal")
    cross = float((1.0 - _iou_matrix(s, y)).mean())
    within_s = _mean_over_pairs(1.0 - _iou_matrix(s, s), include_diagonal)
    within_y = _mean_over_pairs(1.0 - _iou_matrix(y, y), include_diagonal)
    return {
        "ged": 2.0 * cross - within_s - within_y,
        "cross": cross,
        "within_samples": within_s,
        "within_annotators": within_y,
    }


def _uniform_transport_plan(cost: np.ndarray) -> np.ndarray:
    """Cheapest ``(N, M)`` transport plan moving mass ``1/N`` per row to ``1/M`` per column.

    Why an assignment works: with ``L = lcm(N, M)`` and all masses scaled by ``L``, every row
    supplies the integer ``L/N`` and every column demands ``L/M``. The transport polytope with
    integer supplies and demands has integral vertices, so some optimal plan moves whole units;
    copying row ``i`` ``L/N`` times and column ``j`` ``L/M`` times turns such a plan into a
    one-to-one matching of an ``L x L`` cost matrix, which ``linear_sum_assignment`` solves
    exactly. When ``M`` divides ``N`` the rows are not copied and the columns are tiled ``N/M``
    times: MoSE-AUSeg's recipe. For a large ``L`` the LP is solved directly instead.
    """
    n, m = cost.shape
    size = math.lcm(n, m)
    if size > _MAX_ASSIGNMENT_SIZE:
        return _transport_lp(cost)
    rows = np.repeat(np.arange(n), size // n)
    cols = np.tile(np.arange(m), size // m)
    r, c = linear_sum_assignment(cost[np.ix_(rows, cols)])
    plan = np.zeros((n, m))
    np.add.at(plan, (rows[r], cols[c]), 1.0 / size)
    return plan


def _transport_lp(cost: np.ndarray) -> np.ndarray:
    """The same plan as :func:`_uniform_transport_plan` from ``scipy.optimize.linprog`` (HiGHS)."""
    n, m = cost.shape
    # Variable k = i * m + j is the mass moved from row i to column j.
    row_sums = sparse.kron(sparse.eye(n), np.ones((1, m)))
    col_sums = sparse.kron(np.ones((1, n)), sparse.eye(m))
    result = linprog(
        cost.ravel(),
        A_eq=sparse.vstack([row_sums, col_sums]).tocsr(),
        b_eq=np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)]),
        bounds=(0, None),
        method="highs",
    )
    if not result.success:  # the problem is always feasible; this is a solver failure
        raise RuntimeError(f"transport LP for HM-IoU failed: {result.message}")
    return result.x.reshape(n, m)


def hm_iou(samples: Any, annotators: Any, ignore: Any = None) -> float:
    """Hungarian-matched IoU: mean IoU over the cheapest uniform matching of samples to annotators."""
    s, y = _prepare(samples, annotators, ignore)
    ious = _iou_matrix(s, y)
    plan = _uniform_transport_plan(1.0 - ious)
    return float((plan * ious).sum())


# ---------------------------------------------------------------------------------------------
# Collective Insight


def combined_sensitivity(samples: Any, annotators: Any, ignore: Any = None) -> float:
    """``S_c = TP / (TP + FN)`` of the samples' union against the annotators' union (1 if that is empty)."""
    s, y = _prepare(samples, annotators, ignore)
    predicted = s.any(axis=0)
    truth = y.any(axis=0)
    tp = np.count_nonzero(predicted & truth)
    fn = np.count_nonzero(truth & ~predicted)
    return 1.0 if tp + fn == 0 else float(tp / (tp + fn))


def max_dice_matching(samples: Any, annotators: Any, ignore: Any = None) -> float:
    """``D_max = (1/M) sum_j max_i Dice(Y_j, S_i)``, with ``Dice(empty, empty) = 1``."""
    s, y = _prepare(samples, annotators, ignore)
    inter = _intersections(y, s)
    sizes = y.sum(axis=1)[:, None] + s.sum(axis=1)[None, :]
    dice = np.where(sizes > 0, 2.0 * inter / np.maximum(sizes, 1), 1.0)
    return float(dice.max(axis=1).mean())


def _pair_variances(x: np.ndarray) -> np.ndarray:
    """Pixel variance of ``x_i - x_j`` for every pair ``i < j`` of flattened masks.

    ``x_i - x_j`` is +1 on ``x_i \\ x_j``, -1 on ``x_j \\ x_i`` and 0 elsewhere, so its mean is
    ``(|x_i| - |x_j|) / P`` and the mean of its square is ``|x_i xor x_j| / P``.
    """
    pixels = x.shape[1]
    inter = _intersections(x, x)
    size = np.diag(inter)
    i, j = np.triu_indices(len(x), k=1)
    xor = size[i] + size[j] - 2 * inter[i, j]
    return xor / pixels - ((size[i] - size[j]) / pixels) ** 2


def diversity_agreement(samples: Any, annotators: Any, ignore: Any = None) -> float:
    """``D_a = 1 - (dV_max + dV_min) / 2`` over the pairs ``i < j`` (module docstring)."""
    s, y = _prepare(samples, annotators, ignore)
    _need_two(s, "samples", "diversity_agreement")
    _need_two(y, "annotators", "diversity_agreement")
    v_s = _pair_variances(s)
    v_y = _pair_variances(y)
    dv_max = abs(v_s.max() - v_y.max())
    dv_min = abs(v_s.min() - v_y.min())
    return float(1.0 - (dv_max + dv_min) / 2.0)


def _check_formula(formula: str) -> None:
    if formula not in CI_FORMULAS:
        raise ValueError(f"CI formula must be one of {CI_FORMULAS}, got {formula!r}")


def _combine_ci(s_c: float, d_max: float, d_a: float, formula: str) -> float:
    parts = (s_c, d_max, d_a)
    if formula == "harmonic":
        # A zero part sends 1/x to infinity, so the harmonic mean's limit is 0.
        return 0.0 if min(parts) <= 0 else float(3.0 / sum(1.0 / p for p in parts))
    total = sum(parts)
    return 0.0 if total == 0 else float(3.0 * s_c * d_max * d_a / total)


def ci_score(
    samples: Any, annotators: Any, formula: str = "harmonic", ignore: Any = None
) -> dict[str, float]:
    """Collective Insight and its parts: ``{"ci", "s_c", "d_max", "d_a"}``.

    ``formula="harmonic"`` (default): ``3 / (1/s_c + 1/d_max + 1/d_a)``, the paper's harmonic
    mean. ``formula="third_party"``: ``3 s_c d_max d_a / (s_c + d_max + d_a)``, what a public
    implementation computes. Example: ``s_c = 1, d_max = 0.8, d_a = 0.5`` gives 0.7059 and 0.5217.
    Needs at least 2 samples and 2 annotators (for ``d_a``).
    """
    _check_formula(formula)
    s_c = combined_sensitivity(samples, annotators, ignore)
    d_max = max_dice_matching(samples, annotators, ignore)
    d_a = diversity_agreement(samples, annotators, ignore)
    return {"ci": _combine_ci(s_c, d_max, d_a, formula), "s_c": s_c, "d_max": d_max, "d_a": d_a}


# ---------------------------------------------------------------------------------------------
# Calibration and uncertainty


def calibration_error(soft_mean: Any, annotators: Any, bins: int = 10, ignore: Any = None) -> dict[str, Any]:
    """Pixel calibration of a foreground probability map against the annotators' frequency.

    ``soft_mean``: ``(H, W)`` probabilities in ``[0, 1]``; ``annotators``: ``(M, H, W)`` masks.
    Returns ``ece`` and ``mae`` (floats) and, for a reliability plot, ``bin_edges`` (``bins + 1``),
    ``bin_counts`` (pixels per bin), ``bin_predicted`` and ``bin_observed`` (mean ``p`` and mean
    ``f`` per bin, NaN for an empty bin).
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    y = _as_stack(annotators, "annotators")
    p = np.asarray(soft_mean, dtype=np.float64)
    if p.shape != y.shape[1:]:
        raise ValueError(f"soft_mean {p.shape} and annotators {y.shape} differ in image size")
    keep = _kept_pixels(ignore, p.shape)
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("soft_mean must hold probabilities in [0, 1] (finite)")
    p = p.ravel()[keep]
    f = _flatten(y, keep).mean(axis=0)

    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_f = np.bincount(which, weights=f, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = sum_p / counts
        mean_f = sum_f / counts
    # (n_b / n) * |sum_p / n_b - sum_f / n_b| = |sum_p - sum_f| / n, and empty bins add 0.
    ece = float(np.abs(sum_p - sum_f).sum() / p.size)
    return {
        "ece": ece,
        "mae": float(np.abs(p - f).mean()),
        "bin_edges": np.linspace(0.0, 1.0, bins + 1),
        "bin_counts": counts,
        "bin_predicted": mean_p,
        "bin_observed": mean_f,
    }


def uncertainty_maps(samples: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``(variance, entropy)`` of ``N`` binary samples ``(N, H, W)``, both ``(H, W)`` float64.

    With ``p`` the fraction of samples marking a pixel, the population variance of the 0/1 values
    is ``p (1 - p)`` and the entropy is ``-p log2 p - (1 - p) log2 (1 - p)`` bits (0 at p = 0 or 1).
    """
    p = _as_stack(samples, "samples").mean(axis=0, dtype=np.float64)
    variance = p * (1.0 - p)
    entropy = np.zeros_like(p)
    mixed = (p > 0) & (p < 1)
    q = p[mixed]
    entropy[mixed] = -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))
    return variance, entropy


# ---------------------------------------------------------------------------------------------
# Accumulating over images

_SUMMARY_KEYS = (
    "ged",
    "ged_cross",
    "ged_within_samples",
    "ged_within_annotators",
    "hm_iou",
    "ci",
    "s_c",
    "d_max",
    "d_a",
    "ece",
    "mae",
)


class AmbiguityEvaluator:
    """Scores sample sets image by image and averages over images.

    Per image (``update``): ``ged`` (the squared distance ``D^2``) and its terms ``ged_cross``,
    ``ged_within_samples``, ``ged_within_annotators``; ``hm_iou``; ``ci``, ``s_c``, ``d_max``,
    ``d_a``; ``ece`` and ``mae`` of ``soft`` (default: the mean of the samples) against the
    annotators' frequency. Conventions are those of the module docstring. ``summary()`` returns
    the plain mean of every key over images, ``num_images`` and the ``per_image`` rows.
    """

    def __init__(self, include_diagonal: bool = True, ci_formula: str = "harmonic", bins: int = 10) -> None:
        _check_formula(ci_formula)
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        self.include_diagonal = include_diagonal
        self.ci_formula = ci_formula
        self.bins = int(bins)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._records: list[dict[str, Any]] = []

    def update(
        self,
        samples: Any,
        annotators: Any,
        name: str | None = None,
        soft: Any = None,
        ignore: Any = None,
    ) -> dict[str, float]:
        """Score one image: ``samples`` ``(N, H, W)``, ``annotators`` ``(M, H, W)``, both binary.

        ``soft``: an ``(H, W)`` foreground probability for the calibration keys; without it the
        mean of the samples is used. Returns this image's metrics and stores them.
        """
        if soft is None:
            soft = _as_stack(samples, "samples").mean(axis=0, dtype=np.float64)
        energy = ged(samples, annotators, self.include_diagonal, ignore)
        ci = ci_score(samples, annotators, self.ci_formula, ignore)
        calibration = calibration_error(soft, annotators, self.bins, ignore)
        metrics = {
            "ged": energy["ged"],
            "ged_cross": energy["cross"],
            "ged_within_samples": energy["within_samples"],
            "ged_within_annotators": energy["within_annotators"],
            "hm_iou": hm_iou(samples, annotators, ignore),
            **ci,
            "ece": calibration["ece"],
            "mae": calibration["mae"],
        }
        self._records.append({"name": "" if name is None else name, **metrics})
        return dict(metrics)

    @property
    def per_image(self) -> list[dict[str, Any]]:
        """One dict per ``update`` call: ``"name"`` plus that image's metrics (copies)."""
        return [dict(r) for r in self._records]

    def summary(self) -> dict[str, Any]:
        """Mean of every metric over images (NaN before any image), ``num_images`` and ``per_image``."""
        out: dict[str, Any] = {}
        for key in _SUMMARY_KEYS:
            values = [rec[key] for rec in self._records]
            out[key] = float(np.mean(values)) if values else float("nan")
        out["num_images"] = len(self._records)
        out["per_image"] = self.per_image
        return out
