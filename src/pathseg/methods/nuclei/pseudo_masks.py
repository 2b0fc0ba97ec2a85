"""Synthetic nucleus instance maps whose statistics are fitted to labelled maps.

UNITPathSSL-style pretraining translates synthetic nucleus instance maps into H&E; this module
makes them. :func:`fit_statistics` measures labelled maps (0 = background, each positive id one
nucleus), :func:`generate_instances` draws maps with the same statistics and
:class:`PseudoMaskSource` is an endless, seedable stream of them.

Measured (:func:`nucleus_shapes`; nuclei touching the border or under 8 px are skipped):
area in px; elongation = major / minor axis of the second-moment ellipse; irregularity = std / mean
of ``q`` over boundary points (crack midpoints between a nucleus pixel and any other pixel), ``q``
being a point's radius over the moment ellipse's radius in that direction, so 0 is a perfect
ellipse up to pixelation and the ellipse's scale does not matter. Layout: nucleus counts per
``window`` x ``window`` tile (tiles centred on each map) and the Clark-Evans ratio of the centroids
(all nuclei of >= 8 px, border ones included).

Drawn (:func:`generate_instances`): the count from the per-window count distribution scaled to the
map's area (gamma-Poisson negative binomial when overdispersed, else Poisson). A share
``cluster_fraction`` of nuclei are Thomas-process children, N(parent, sigma²) around uniform
parents (about five each), the rest uniform; positions are mirrored back into the map. An outline
is an ellipse of log-normal area and elongation and uniform orientation, its radius times
``1 + sum_k a_k cos(k θ + φ_k)`` (k = 2..6, random phases, RMS ``irregularity_amplitude`` times a
log-normal spread per nucleus), rasterised as a polygon.

Overlap rule: nuclei are painted one after another and a nucleus only takes background pixels.
Each gets up to eight positions (redrawn from its own placement component with the outline kept,
so crowding does not favour small nuclei): it is painted at the first where >= 95 % of its
in-image pixels are free, else at the freest if >= 60 % are free, else dropped. Labels are
consecutive in painting order; nuclei may be cut by the map border.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from skimage.draw import polygon

from pathseg.errors import ConfigError, DataError

__all__ = ["NucleusStatistics", "PseudoMaskSource", "fit_statistics", "generate_instances", "nucleus_shapes"]

MIN_AREA = 8
_HARMONICS = np.arange(2, 7)
_VERTICES = 32  # enough for 6 lobes; skimage's polygon cost grows with the vertex count
_AMPLITUDE_SPREAD = 0.25  # sd of log(per-nucleus amplitude / irregularity_amplitude)
_CHILDREN_PER_PARENT = 5
_ATTEMPTS, _GOOD_VISIBLE, _MIN_VISIBLE = 8, 0.95, 0.6
_AMPLITUDE_GRID = np.linspace(0.0, 0.35, 8)
_REFINE_STEPS = np.linspace(-0.06, 0.02, 5)  # clipping in maps only ever adds irregularity
_CALIBRATION_NUCLEI = 240
_FRACTION_GRID = (1 / 3, 2 / 3, 1.0)
_SIGMA_GRID = (1.0, 2.0, 4.0)  # in typical nucleus diameters
_CALIBRATION_POINTS = 1000  # centroids per simulated statistic: Clark-Evans standard error ~0.017
_SIGNED = ("log_area_mean", "log_elongation_mean")


@dataclass
class NucleusStatistics:
    """Fitted shape and layout statistics (definitions in the module docstring)."""

    log_area_mean: float  # area in px is log-normal
    log_area_std: float
    log_elongation_mean: float  # elongation (major / minor moment axis) is log-normal
    log_elongation_std: float
    irregularity_mean: float  # mean measured irregularity
    irregularity_amplitude: float  # generator amplitude reproducing irregularity_mean
    density_mean: float  # nuclei per window x window tile
    density_var: float
    window: int
    nn_ratio: float  # Clark-Evans ratio (< 1 clustered)
    cluster_fraction: float  # share of Thomas-process children reproducing nn_ratio
    cluster_sigma: float  # their scatter around the parent, px
    num_nuclei: int
    num_images: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            number = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            if not number or not math.isfinite(v) or (f.type == "int" and v != int(v)):
                raise ConfigError(f"nucleus statistics: {f.name} must be a finite {f.type} (got {v!r})")
            setattr(self, f.name, int(v) if f.type == "int" else float(v))
        negative = [k for k, v in self.to_dict().items() if v < 0 and k not in _SIGNED]
        if negative:
            raise ConfigError(f"nucleus statistics: {negative[0]} must not be negative")
        if self.window < 1 or self.cluster_fraction > 1 or (self.cluster_fraction > 0 >= self.cluster_sigma):
            raise ConfigError(
                "nucleus statistics: need window >= 1, cluster_fraction <= 1 and a positive cluster_sigma"
                " when cluster_fraction > 0"
            )

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NucleusStatistics:
        names = {f.name for f in dataclasses.fields(cls)}
        got = set(d) if isinstance(d, dict) else set()
        if got != names:
            raise ConfigError(
                f"nucleus statistics: missing keys {sorted(names - got)}, unknown keys {sorted(got - names)}"
            )
        return cls(**d)

    def save(self, path: Path) -> None:
        """Write JSON atomically (temporary file + rename), so a reader never sees half a file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> NucleusStatistics:
        """Read :meth:`save`'s JSON. Raises :class:`DataError` if unreadable or incomplete."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except OSError as e:
            raise DataError(path, f"cannot read nucleus statistics ({e.strerror})") from e
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON ({e.msg} at line {e.lineno})") from e
        except ConfigError as e:
            raise DataError(path, str(e)) from e


# --------------------------------------------------------------------------- measuring


def _check_map(instances: object, index: int | None = None) -> np.ndarray:
    name = "instance map" if index is None else f"instance map {index}"
    if not isinstance(instances, np.ndarray) or instances.ndim != 2 or instances.dtype.kind not in "iu":
        what = type(instances).__name__
        if isinstance(instances, np.ndarray):
            what = f"{instances.dtype} array of shape {instances.shape}"
        raise ConfigError(f"{name} must be a 2-D integer array (got a {what})")
    if instances.size and instances.min() < 0:
        raise ConfigError(f"{name} has negative labels; use 0 for background and 1..N for nuclei")
    return instances


def _measure(instances: np.ndarray, shapes: bool = True) -> dict[str, np.ndarray]:
    """Every label's area and centroid and, with ``shapes``, its elongation, irregularity and
    border contact; vectorised over labels because maps hold hundreds of nuclei."""
    h, w = instances.shape
    flat = instances.ravel()
    fg = np.flatnonzero(flat)
    ids, labels = np.unique(flat[fg], return_inverse=True)
    n = ids.size
    y, x = (fg // w).astype(float), (fg % w).astype(float)
    area = np.bincount(labels, minlength=n).astype(float)
    cy, cx = np.bincount(labels, y, n) / np.maximum(area, 1), np.bincount(labels, x, n) / np.maximum(area, 1)
    if not shapes:
        return {"area": area, "centroid": np.stack([cy, cx], axis=1)}
    dy, dx = y - cy[labels], x - cx[labels]
    # A pixel is a unit square, not a point: its own variance (1/12) keeps thin nuclei finite.
    vyy = np.bincount(labels, dy * dy, n) / np.maximum(area, 1) + 1 / 12
    vxx = np.bincount(labels, dx * dx, n) / np.maximum(area, 1) + 1 / 12
    vxy = np.bincount(labels, dx * dy, n) / np.maximum(area, 1)
    half, root = (vxx + vyy) / 2, np.hypot((vxx - vyy) / 2, vxy)
    major, minor = half + root, np.maximum(half - root, 1e-6)
    cos, sin = np.cos(0.5 * np.arctan2(2 * vxy, vxx - vyy)), np.sin(0.5 * np.arctan2(2 * vxy, vxx - vyy))
    edge = np.concatenate([instances[0], instances[-1], instances[:, 0], instances[:, -1]])
    pad = np.pad(instances, 1)
    inner = pad[1:-1, 1:-1]
    s1, s2, count = np.zeros(n), np.zeros(n), np.zeros(n)
    for oy, ox in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        by, bx = np.nonzero((inner > 0) & (inner != pad[1 + oy : h + 1 + oy, 1 + ox : w + 1 + ox]))
        k = np.searchsorted(ids, inner[by, bx])
        py, px = by + oy / 2 - cy[k], bx + ox / 2 - cx[k]  # crack midpoint, relative to the centroid
        u, v = px * cos[k] + py * sin[k], py * cos[k] - px * sin[k]
        q = np.sqrt(u * u / major[k] + v * v / minor[k])
        s1 += np.bincount(k, q, n)
        s2 += np.bincount(k, q * q, n)
        count += np.bincount(k, None, n)
    mean_q = s1 / np.maximum(count, 1)
    spread = np.sqrt(np.maximum(s2 / np.maximum(count, 1) - mean_q**2, 0))
    return {
        "label": ids, "area": area, "elongation": np.sqrt(major / minor),
        "irregularity": spread / np.maximum(mean_q, 1e-9), "centroid": np.stack([cy, cx], axis=1),
        "border": np.isin(ids, edge),
    }  # fmt: skip


def _kept(m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = ~m["border"] & (m["area"] >= MIN_AREA)
    return {k: v[keep] for k, v in m.items() if k != "border"}


def nucleus_shapes(instances: np.ndarray) -> dict[str, np.ndarray]:
    """Per nucleus: ``label``, ``area``, ``elongation``, ``irregularity``, ``centroid`` ``(y, x)``.

    Nuclei touching the image border (shape unknown) or under 8 px (all pixelation) are skipped.
    """
    return _kept(_measure(_check_map(instances)))


def _layout(m: dict[str, np.ndarray], shape: tuple[int, int], window: int) -> tuple[np.ndarray, float, float]:
    """Counts per centred window tile, and the summed (observed, expected) Clark-Evans distances."""
    pts = m["centroid"][m["area"] >= MIN_AREA]
    (h, w), ny, nx = shape, shape[0] // window, shape[1] // window
    iy = np.floor((pts[:, 0] + 0.5 - (h - ny * window) / 2) / window).astype(int)
    ix = np.floor((pts[:, 1] + 0.5 - (w - nx * window) / 2) / window).astype(int)
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    counts = np.bincount(iy[inside] * nx + ix[inside], minlength=ny * nx)
    if len(pts) < 2:
        return counts, 0.0, 0.0
    nearest = cKDTree(pts).query(pts, k=2)[0][:, 1]
    return counts, float(nearest.sum()), len(pts) * 0.5 / math.sqrt(len(pts) / (h * w))


# --------------------------------------------------------------------------- generating


def _outlines(
    stats: NucleusStatistics, n: int, amplitude: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Vertex offsets ``(dy, dx)``, each ``(n, vertices)``, of ``n`` random nucleus outlines."""
    theta = np.linspace(0, 2 * np.pi, _VERTICES, endpoint=False)
    z = np.clip(rng.standard_normal((3, n)), -4, 4)  # no giant outliers from the log-normal tails
    area = np.exp(stats.log_area_mean + stats.log_area_std * z[0])
    # Folded, because a ratio below 1 is the same shape turned by 90 degrees.
    elong = np.exp(np.abs(stats.log_elongation_mean + stats.log_elongation_std * z[1]))
    amp = amplitude * np.exp(_AMPLITUDE_SPREAD * z[2])
    weight = rng.rayleigh(size=(n, _HARMONICS.size))
    coef = weight * (amp * np.sqrt(2) / np.linalg.norm(weight, axis=1))[:, None]  # RMS of the sum = amp
    phase = rng.uniform(0, 2 * np.pi, (n, _HARMONICS.size))
    wobble = 1 + np.einsum("nk,nkv->nv", coef, np.cos(_HARMONICS[None, :, None] * theta + phase[..., None]))
    # The wobble's mean square is 1 + amp², which would inflate the area by that much.
    a = np.sqrt(area * elong / np.pi / (1 + amp**2))[:, None]
    b = a / elong[:, None]
    r = a * b / np.hypot(b * np.cos(theta), a * np.sin(theta)) * np.maximum(wobble, 0.2)
    turn = theta + rng.uniform(0, 2 * np.pi, n)[:, None]
    return r * np.sin(turn), r * np.cos(turn)


def _mirror(v: np.ndarray, size: int) -> np.ndarray:
    """Fold coordinates back into ``[-0.5, size - 0.5)``; unlike clipping this keeps density uniform."""
    t = np.mod(v + 0.5, 2 * size)
    return np.where(t >= size, 2 * size - t, t) - 0.5


def _count(stats: NucleusStatistics, area: float, rng: np.random.Generator) -> int:
    mean, var = stats.density_mean * area / stats.window**2, stats.density_var * area / stats.window**2
    if mean > 0 and var > mean * (1 + 1e-9):
        shape = mean**2 / (var - mean)
        mean = rng.gamma(shape, mean / shape)
    return int(rng.poisson(mean))


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int | np.integer) and s >= 8 for s in hw):
        raise ConfigError(
            f"pseudo-mask size must be an int >= 8 or a (height, width) pair of them ({size!r})"
        )
    return int(hw[0]), int(hw[1])


def generate_instances(
    stats: NucleusStatistics, size: int | tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """One synthetic instance map (``int32``, 0 = background, ``1..N`` consecutive).

    Count, placement, outlines and the overlap rule are described in the module docstring.
    """
    h, w = _size(size)
    n = _count(stats, h * w, rng)
    dy, dx = _outlines(stats, n, stats.irregularity_amplitude, rng)
    child = rng.random(n) < stats.cluster_fraction
    parents = rng.uniform(-0.5, [h - 0.5, w - 0.5], (max(1, round(child.sum() / _CHILDREN_PER_PARENT)), 2))
    scatter = rng.normal(0, 1, (n, _ATTEMPTS, 2)) * stats.cluster_sigma
    near = parents[rng.integers(len(parents), size=n), None] + scatter
    spots = np.where(child[:, None, None], near, rng.uniform(-0.5, [h - 0.5, w - 0.5], (n, _ATTEMPTS, 2)))
    spots = np.stack([_mirror(spots[..., 0], h), _mirror(spots[..., 1], w)], axis=-1)
    canvas = np.zeros((h, w), np.int32)
    label = 0
    for i in range(n):
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        for cy, cx in spots[i]:
            rr, cc = polygon(cy + dy[i], cx + dx[i], (h, w))
            if rr.size == 0:
                continue
            free = canvas[rr, cc] == 0
            if best is None or free.mean() > best[0]:
                best = (free.mean(), rr[free], cc[free])
            if best[0] >= _GOOD_VISIBLE:
                break
        if best is not None and best[0] >= _MIN_VISIBLE:
            label += 1
            canvas[best[1], best[2]] = label
    return canvas


class PseudoMaskSource:
    """An endless stream of pseudo masks: item ``index`` depends only on ``(seed, index)``.
    Maps smaller than the fitted window are crops of window-sized maps."""

    def __init__(self, stats: NucleusStatistics, size: int, seed: int) -> None:
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"pseudo-mask seed must be a non-negative integer (got {seed!r})")
        self.stats, self.size, self.seed = stats, _size(size), int(seed)

    def __call__(self, index: int) -> np.ndarray:
        if index < 0:
            raise IndexError(f"pseudo-mask index must be non-negative (got {index})")
        rng = np.random.default_rng([self.seed, int(index)])
        height, width = self.size
        window = self.stats.window
        if height >= window and width >= window:
            return generate_instances(self.stats, self.size, rng)
        # Counts were fitted per window: a smaller map is cut from a window-sized one, so its count
        # varies as a part of a real window does (scaling the variance down to a small area would
        # leave many crops empty when windows are overdispersed).
        full = generate_instances(self.stats, (max(height, window), max(width, window)), rng)
        top = int(rng.integers(full.shape[0] - height + 1))
        left = int(rng.integers(full.shape[1] - width + 1))
        crop = full[top : top + height, left : left + width]
        ids, compact = np.unique(crop, return_inverse=True)
        compact = compact.reshape(crop.shape).astype(np.int32)
        return compact if ids[0] == 0 else compact + 1


# --------------------------------------------------------------------------- fitting


def _isolated(stats: NucleusStatistics, seed: int) -> np.ndarray:
    """One canvas of separate nuclei on a grid, each at a random sub-pixel offset."""
    rng = np.random.default_rng([seed, 1])
    dy, dx = _outlines(stats, _CALIBRATION_NUCLEI, stats.irregularity_amplitude, rng)
    side = math.ceil(math.sqrt(_CALIBRATION_NUCLEI))
    cell = math.ceil(2 * max(abs(dy).max(), abs(dx).max())) + 4
    canvas = np.zeros((side * cell, side * cell), np.int32)
    centres = (np.indices((side, side)).reshape(2, -1).T[: len(dy)] + 0.5) * cell
    for i, (cy, cx) in enumerate(centres + rng.uniform(-0.5, 0.5, centres.shape)):
        canvas[polygon(cy + dy[i], cx + dx[i], canvas.shape)] = i + 1
    return canvas


def _calibrate_amplitude(
    stats: NucleusStatistics, grid: np.ndarray, seed: int, shape: tuple[int, int] | None = None, maps: int = 0
) -> float:
    """The amplitude on ``grid`` (interpolated, clipped to its ends) whose nuclei measure
    ``stats.irregularity_mean``: isolated nuclei without ``shape``, else ``maps`` generated maps.

    Pixelation alone reads as irregularity and nuclei cut by neighbours in a map add more, so the
    measurement is simulated with the same random draws at every amplitude and made monotone.
    """
    measured = []
    for amplitude in grid:
        trial = dataclasses.replace(stats, irregularity_amplitude=float(amplitude))
        canvases = [_isolated(trial, seed)] if shape is None else []
        canvases += [
            generate_instances(trial, shape, np.random.default_rng([seed, 3, i])) for i in range(maps)
        ]
        measured.append(np.concatenate([nucleus_shapes(c)["irregularity"] for c in canvases]).mean())
    curve = np.maximum.accumulate(measured) + 1e-9 * np.arange(len(measured))
    return float(np.interp(stats.irregularity_mean, curve, grid))


def _simulated_ratio(stats: NucleusStatistics, shape: tuple[int, int], maps: int, seed: int) -> float:
    observed = expected = 0.0
    for i in range(maps):
        generated = generate_instances(stats, shape, np.random.default_rng([seed, 2, i]))
        _, o, e = _layout(_measure(generated, shapes=False), shape, stats.window)
        observed, expected = observed + o, expected + e
    return observed / expected if expected else 1.0


def _calibrate_clusters(
    stats: NucleusStatistics, shape: tuple[int, int], maps: int, seed: int
) -> tuple[float, float]:
    """``(cluster_fraction, cluster_sigma)`` reproducing the real Clark-Evans ratio, all simulations
    sharing the same random draws. Sigmas are tried from loose to tight and the first that reaches
    the ratio at some fraction on the grid is kept (looser clusters crowd and cut fewer nuclei);
    the fraction is interpolated along it. If none reaches it, the most clustering cell is used."""
    params = lambda f, s: dataclasses.replace(stats, cluster_fraction=f, cluster_sigma=s)  # noqa: E731
    uniform = _simulated_ratio(params(0.0, 0.0), shape, maps, seed)
    if stats.nn_ratio >= uniform:  # hard-core packing alone already spaces nuclei this evenly
        return 0.0, 0.0
    diameter = 2 * math.sqrt(math.exp(stats.log_area_mean) / math.pi)
    curves: dict[float, list[float]] = {}
    for sigma in sorted((k * diameter for k in _SIGMA_GRID), reverse=True):
        curves[sigma] = [uniform] + [
            _simulated_ratio(params(f, sigma), shape, maps, seed) for f in _FRACTION_GRID
        ]
        if min(curves[sigma]) <= stats.nn_ratio:
            break
    else:
        sigma = min(curves, key=lambda k: min(curves[k]))
    fractions, ratios = [0.0, *_FRACTION_GRID], curves[sigma]
    guess = _crossing(stats.nn_ratio, fractions, ratios)
    if guess not in fractions:  # the ratio is far from linear in the fraction: one simulated secant step
        at = int(np.searchsorted(fractions, guess))
        fractions.insert(at, guess)
        ratios.insert(at, _simulated_ratio(params(guess, sigma), shape, maps, seed))
        guess = _crossing(stats.nn_ratio, fractions, ratios)
    return guess, sigma


def _crossing(target: float, fractions: list[float], ratios: list[float]) -> float:
    """Where the (made monotone) falling ratio curve meets ``target``, clipped to its ends."""
    falling = np.minimum.accumulate(ratios) - 1e-9 * np.arange(len(ratios))
    return float(np.interp(target, falling[::-1], fractions[::-1]))  # np.interp needs rising x


def fit_statistics(
    instance_maps: Sequence[np.ndarray], window: int = 256, seed: int = 0
) -> NucleusStatistics:
    """Fit :class:`NucleusStatistics` to labelled instance maps.

    Shapes come from :func:`nucleus_shapes`, counts from ``window`` tiles centred on each map.
    Calibration uses short simulations with fixed seeds, so the fit is deterministic: the amplitude
    first on isolated nuclei over a 0-0.35 grid, then the cluster parameters on maps of the median
    input size, then the amplitude again on such maps over a narrow grid below the first value
    (nuclei cut by neighbours read as irregular). Amplitudes outside a grid are clipped to it.

    Raises:
        ConfigError: a map that is not a 2-D integer array (naming its index), no nuclei to fit,
            or a window larger than every map.
    """
    if not isinstance(window, int | np.integer) or window < 1:
        raise ConfigError(f"window must be a positive integer (got {window!r})")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer (got {seed!r})")
    maps = [_check_map(m, i) for i, m in enumerate(instance_maps)]
    measured = [_measure(m) for m in maps]
    shapes = [_kept(m) for m in measured]
    if not sum(len(s["area"]) for s in shapes):
        raise ConfigError("no nuclei to fit: the maps are empty or all nuclei touch the border or are < 8 px")
    layouts = [_layout(m, im.shape, window) for m, im in zip(measured, maps, strict=True)]
    counts = np.concatenate([c for c, _, _ in layouts])
    if counts.size == 0:
        raise ConfigError(f"window {window} is larger than every instance map; choose a smaller window")
    log_area, log_elong, irregularity = (
        np.concatenate([f(s[k]) for s in shapes])
        for k, f in (("area", np.log), ("elongation", np.log), ("irregularity", np.asarray))
    )
    expected = sum(e for _, _, e in layouts)
    stats = NucleusStatistics(
        log_area_mean=float(log_area.mean()), log_area_std=float(log_area.std()),
        log_elongation_mean=float(log_elong.mean()), log_elongation_std=float(log_elong.std()),
        irregularity_mean=float(irregularity.mean()), irregularity_amplitude=0.0,
        density_mean=float(counts.mean()), density_var=float(counts.var()), window=int(window),
        nn_ratio=sum(o for _, o, _ in layouts) / expected if expected else 1.0,
        cluster_fraction=0.0, cluster_sigma=0.0, num_nuclei=log_area.size, num_images=len(maps),
    )  # fmt: skip
    stats.irregularity_amplitude = _calibrate_amplitude(stats, _AMPLITUDE_GRID, seed)
    shape = (int(np.median([m.shape[0] for m in maps])), int(np.median([m.shape[1] for m in maps])))
    per_map = stats.density_mean * shape[0] * shape[1] / window**2
    sims = int(np.clip(math.ceil(_CALIBRATION_POINTS / max(per_map, 1)), 1, 12))
    if expected:  # without two nuclei in any map there is no spacing to reproduce
        stats.cluster_fraction, stats.cluster_sigma = _calibrate_clusters(stats, shape, sims, seed)
    near = np.unique(np.clip(stats.irregularity_amplitude + _REFINE_STEPS, 0, None))
    stats.irregularity_amplitude = _calibrate_amplitude(stats, near, seed, shape, sims)
    return stats
