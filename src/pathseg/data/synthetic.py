"""Procedural H&E-like tissue tiles with exact labels, deterministic by seed.

This is the project's demo data and the data most tests run on, so it is built to be
cheap (tens of milliseconds for a 256 px tile, a few hundred for 512 px, on one core:
everything is vectorised numpy/scipy) and to be *learnable*: every label is backed by
something visible in the image.

What a tile contains
--------------------
The tile is first split into a few large tissue regions (a Voronoi partition whose
borders are wobbled by smooth noise). Each region gets one of :data:`TISSUE_CLASSES`:

* **stroma** - pink eosinophilic collagen: wavy bundles with pale clefts between them,
  sparse spindle fibroblast nuclei lying along the fibres, a few round lymphocytes.
* **tumour** - sheets of crowded, large, pleomorphic nuclei (some vesicular with
  nucleoli) in purplish cytoplasm, broken into nests by thin stromal strands.
* **normal** - alveolar lung parenchyma: large pale air spaces closed by thin pink
  septa carrying a few flat nuclei and the odd red cell.
* **background** - glass: near-white, no nuclei.

Glands are then placed (without overlap, never touching glass) in stroma or tumour
regions. A gland is an irregular closed outline (a radius perturbed by low-frequency
harmonics) around a pale lumen, with an epithelial ring lined by elongated nuclei that
stand perpendicular to the basement membrane, and a thin retraction cleft outside.
Glands in stroma look benign (smooth oval, one basal row of uniform nuclei, goblet
cells, brush border); glands in tumour look malignant (angular outline, thick
stratified epithelium with large crowded nuclei, necrotic debris in the lumen, a
collar of desmoplastic stroma separating them from the solid tumour).

How the label maps relate
-------------------------
* ``glands`` is 1 exactly where ``gland_instances > 0`` (epithelium + lumen); gland
  ids are contiguous ``1..G``.
* Every gland pixel has a non-background tissue class: pixels of benign glands are
  labelled ``normal`` and pixels of malignant glands ``tumour``, whatever region they
  were drawn over, so the tissue label always matches what the gland looks like.
  Elsewhere ``tissue`` is the region layout.
* ``nuclei`` holds every nucleus (stromal, tumour, alveolar and epithelial) with ids
  ``1..N``, no overlaps, each id with at least one pixel; none lies on glass.

Scale: nuclear sizes and densities are in pixels (a fixed magnification, roughly
1 um per pixel), while gland radii and the region layout scale with ``size``.

Colour is synthesised in optical-density space: haematoxylin and eosin concentration
maps are mixed with H&E stain vectors via Beer-Lambert, then blurred slightly and given
sensor noise. Stain vectors, stain strengths and illumination vary per tile (and, in
:func:`write_dataset`, per pseudo-patient) by ``stain_variation``.

Determinism: a seed gives the same arrays on every run with the same numpy/scipy
build; floating-point kernels may differ in the last bit between CPUs or versions,
which can move an occasional label pixel, so tests compare within one machine.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from pathseg.errors import ConfigError, DataError

__all__ = [
    "ANNOTATOR_KINDS",
    "GLAND_CLASSES",
    "GLAND_PALETTE",
    "TILES_PER_PATIENT",
    "TISSUE_CLASSES",
    "TISSUE_PALETTE",
    "AnnotatorStyle",
    "SynthConfig",
    "SyntheticTile",
    "apply_annotator_style",
    "dataset_tile",
    "default_annotators",
    "generate_tile",
    "patient_of",
    "tile_seed",
    "write_dataset",
    "write_multi_annotator_dataset",
]

# WSSS4LUAD order, so weak-supervision code can be tested against these tiles unchanged.
TISSUE_CLASSES = ("tumour", "stroma", "normal", "background")
GLAND_CLASSES = ("background", "gland")
TUMOUR, STROMA, NORMAL, BACKGROUND = range(4)

# write_dataset groups consecutive tiles into pseudo-patients that share a stain, so
# that group-wise splits are testable and actually matter (a patient's colour cast
# cannot leak from train to validation).
TILES_PER_PATIENT = 4

# Palettes used for the palette PNGs (only cosmetic: the pixel values are the classes).
GLAND_PALETTE = ((0, 0, 0), (0, 200, 0))
TISSUE_PALETTE = ((0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255))

# Reference H&E optical-density stain vectors (RGB, natural-log OD, unit length), the
# commonly used Macenko reference; eosin absorbs mostly green, haematoxylin red+green.
_H_REF = np.array([0.5626, 0.7201, 0.4062])
_E_REF = np.array([0.2159, 0.8012, 0.5581])


@dataclass
class SyntheticTile:
    """One generated tile and its label maps (all ``H x W``)."""

    image: np.ndarray
    """uint8 ``H x W x 3`` RGB."""
    glands: np.ndarray
    """uint8 semantic gland mask: 0 background, 1 gland (epithelium + lumen)."""
    gland_instances: np.ndarray
    """int32 gland ids, 0 outside glands, 1..G (for object-level gland metrics)."""
    nuclei: np.ndarray
    """int32 nucleus instance ids, 0 = none, 1..N."""
    tissue: np.ndarray
    """uint8 tissue class per pixel, indices into :data:`TISSUE_CLASSES`."""


@dataclass
class SynthConfig:
    """Knobs of the generator. Defaults give varied, H&E-looking 256 px tiles."""

    size: int = 256
    """Tile side in pixels."""
    glands: tuple[int, int] = (2, 5)
    """Inclusive range of how many glands to try to place. Fewer may fit, and tiles
    without stroma or tumour get none."""
    gland_radius: tuple[float, float] = (0.08, 0.2)
    """Gland mean radius range as a fraction of ``size``."""
    nuclei_density: float = 10.0
    """Stromal nuclei per 10,000 pixels of stroma."""
    tumour_density: float = 45.0
    """Target tumour nuclei per 10,000 pixels of tumour sheet (packing caps it)."""
    stain_variation: float = 0.05
    """Size of per-tile colour jitter (stain vectors, stain strength, brightness) so
    models see slide-to-slide variation; 0 gives identical staining everywhere."""
    regions: tuple[int, int] = (1, 4)
    """Inclusive range of tissue regions per tile (neighbours may share a class)."""
    tissue_weights: tuple[float, float, float, float] = (0.3, 0.4, 0.18, 0.12)
    """Relative chance of each region class, in :data:`TISSUE_CLASSES` order."""
    nucleus_scale: float = 1.0
    """Multiplier on all nuclear sizes (a crude magnification knob)."""
    noise: float = 2.5
    """Standard deviation of additive sensor noise, in 8-bit intensity units."""
    blur: float = 0.6
    """Gaussian optical blur sigma in pixels; 0 disables."""

    def __post_init__(self) -> None:
        # Coerce lists (e.g. from YAML) to tuples so configs compare and hash alike.
        for name in ("glands", "gland_radius", "regions", "tissue_weights"):
            value = getattr(self, name)
            if not isinstance(value, tuple | list):
                raise ConfigError(f"synthetic config: {name} must be a list of numbers (got {value!r})")
            setattr(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"synthetic config: {name} {why} (got {getattr(self, name)!r})")

        if not isinstance(self.size, int | np.integer) or self.size < 32:
            raise bad("size", "must be an integer >= 32")
        for name in ("glands", "regions", "gland_radius"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise bad(name, "must be a (low, high) pair with low <= high")
        if self.glands[0] < 0:
            raise bad("glands", "must not be negative")
        if self.regions[0] < 1:
            raise bad("regions", "must be at least 1")
        if not 0 < self.gland_radius[0] <= self.gland_radius[1] <= 0.5:
            raise bad("gland_radius", "must lie in (0, 0.5]")
        if len(self.tissue_weights) != len(TISSUE_CLASSES) or min(self.tissue_weights) < 0:
            raise bad("tissue_weights", f"must be {len(TISSUE_CLASSES)} non-negative weights")
        if sum(self.tissue_weights[:3]) <= 0:
            raise bad("tissue_weights", "must give some weight to a non-background class")
        for name in ("nuclei_density", "tumour_density", "stain_variation", "noise", "blur"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        if not 0.25 <= self.nucleus_scale <= 4:
            raise bad("nucleus_scale", "must lie in [0.25, 4]")

    def to_dict(self) -> dict[str, object]:
        """Plain-python form (lists, not tuples) that YAML/JSON can store."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- seeds


def tile_seed(seed: int, index: int) -> int:
    """Seed of tile ``index`` of a dataset generated with ``seed``.

    Derived through :class:`numpy.random.SeedSequence` so that tile ``i`` depends only
    on ``(seed, i)``: it is the same whether 10 or 10,000 tiles are written.
    """
    _check_seed(seed)
    _check_seed(index, "index")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def patient_of(index: int) -> int:
    """Pseudo-patient number of tile ``index`` in :func:`write_dataset`."""
    return index // TILES_PER_PATIENT


def _stain_seed(seed: int, patient: int) -> int:
    # A distinct stream from tile seeds (the trailing 1 keeps it apart from [seed, i]).
    return int(np.random.SeedSequence([seed, patient, 1]).generate_state(1, np.uint32)[0])


def _check_seed(seed: int, what: str = "seed") -> None:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"synthetic {what} must be a non-negative integer (got {seed!r})")


# --------------------------------------------------------------------------- noise


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Stationary zero-mean unit-variance noise with blobs about ``scale`` px across.

    A random grid of amplitudes with spacing ``scale`` is summed under Gaussian bumps.
    The sum is separable, so it is two small matrix products instead of a large
    filter or a spline zoom. ``einsum`` rather than ``@``: for these thin matrices
    numpy's own loop beats a multi-threaded BLAS, which mostly spins on a busy machine.
    """
    mats = []
    for n in shape:
        nodes = np.arange(-2 * scale, n + 2 * scale, scale)
        wgt = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / (0.75 * scale)) ** 2)
        # Unit row norm makes every pixel exactly unit variance (no fall-off at edges).
        mats.append((wgt / np.linalg.norm(wgt, axis=1, keepdims=True)).astype(np.float32))
    grid = rng.standard_normal((mats[0].shape[1], mats[1].shape[1]), dtype=np.float32)
    # Both products in "ij,jk" form with contiguous operands: einsum's inner loop is then
    # a unit-stride multiply-add, several times faster than the transposed form.
    left = np.einsum("ij,jk->ik", mats[0], grid)
    return np.einsum("ij,jk->ik", left, np.ascontiguousarray(mats[1].T))


def _fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance noise with grain of ``sigma`` px (chromatin, cytoplasm mottle)."""
    out = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return out / max(float(out.std()), 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# --------------------------------------------------------------------------- stain


@dataclass
class _Stain:
    h: np.ndarray  # haematoxylin OD vector (RGB), scaled by its strength
    e: np.ndarray  # eosin OD vector, scaled by its strength
    i0: float  # illumination (brightness of bare glass)

    @classmethod
    def draw(cls, rng: np.random.Generator, var: float) -> _Stain:
        def vec(ref: np.ndarray) -> np.ndarray:
            v = np.abs(ref + rng.normal(0.0, var, 3))
            return v / np.linalg.norm(v)

        h = vec(_H_REF) * math.exp(rng.normal(0.0, 2 * var))
        e = vec(_E_REF) * math.exp(rng.normal(0.0, 2 * var))
        return cls(h, e, float(np.clip(242.0 + rng.normal(0.0, 60 * var), 215.0, 255.0)))

    def jitter(self, rng: np.random.Generator, var: float) -> _Stain:
        """A nearby stain: tiles of one slide differ a little, slides differ more."""
        return _Stain(
            self.h * np.exp(rng.normal(0.0, var, 3)),
            self.e * np.exp(rng.normal(0.0, var, 3)),
            float(np.clip(self.i0 + rng.normal(0.0, 30 * var), 215.0, 255.0)),
        )


# --------------------------------------------------------------------------- blobs


@dataclass
class _Blobs:
    """Elliptical objects (nuclei, goblet cells, red cells) as parallel arrays.

    ``angle`` is the direction of the major semi-axis ``a`` in image coordinates
    (x right, y down). ``irr`` holds amplitude/phase of a 2nd and a 3rd harmonic
    wobble of the outline; ``h``/``e`` are the object's stain concentrations,
    ``vesicular`` how much paler its centre is, ``nucleolus`` the strength of a
    central dark dot, ``priority`` who wins when two candidates clash.
    """

    y: np.ndarray
    x: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    h: np.ndarray
    e: np.ndarray
    vesicular: np.ndarray
    nucleolus: np.ndarray
    irr: np.ndarray  # (n, 4): amp2, phase2, amp3, phase3
    priority: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def make(cls, rng: np.random.Generator, y: np.ndarray, x: np.ndarray, **kw: object) -> _Blobs:
        """Build from centres: scalars/arrays in ``kw`` broadcast, ``(lo, hi)`` tuples are drawn."""
        n = len(y)
        spec: dict[str, object] = {
            "angle": (0.0, math.pi),
            "e": 0.25,
            "vesicular": 0.0,
            "nucleolus": 0.0,
            "irr_amp": 0.05,
            "priority": (0.0, 1.0),
            **kw,
        }
        fields: dict[str, np.ndarray] = {}
        for name, val in spec.items():
            if isinstance(val, tuple):
                fields[name] = rng.uniform(val[0], val[1], n)
            else:
                fields[name] = np.broadcast_to(np.asarray(val, dtype=float), (n,)).copy()
        amp = fields.pop("irr_amp")
        irr = np.stack(
            [
                amp * rng.uniform(0.3, 1, n),
                rng.uniform(0, 2 * math.pi, n),
                amp * rng.uniform(0, 0.7, n),
                rng.uniform(0, 2 * math.pi, n),
            ],
            axis=1,
        )
        return cls(y=np.asarray(y, float), x=np.asarray(x, float), irr=irr, **fields)

    @classmethod
    def concat(cls, parts: list[_Blobs]) -> _Blobs:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})

    def subset(self, keep: np.ndarray) -> _Blobs:
        return _Blobs(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})

    def wobble_max(self) -> np.ndarray:
        return 1 + self.irr[:, 0] + self.irr[:, 2]


def _radius_along(a: np.ndarray, b: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Radius of an ellipse in direction ``rel`` measured from its major axis."""
    return a * b / np.sqrt((b * np.cos(rel)) ** 2 + (a * np.sin(rel)) ** 2)


def _hard_core(blobs: _Blobs, gap: float) -> _Blobs:
    """Drop blobs that would overlap, keeping higher-priority ones (greedy).

    Two ellipses clash when their centres are closer than the sum of their radii
    along the line joining them (plus ``gap``). Candidates without any clash are kept
    in bulk; only the clashing ones are visited one by one, in priority order. This
    sequential rule (random sequential adsorption) packs far denser than one-shot
    Matern thinning, which the crowded tumour sheets need.
    """
    n = len(blobs)
    if n < 2:
        return blobs
    pts = np.stack([blobs.y, blobs.x], axis=1)
    reach = 2 * float((blobs.a * blobs.wobble_max()).max()) + gap
    pairs = cKDTree(pts).query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        return blobs
    i, j = pairs[:, 0], pairs[:, 1]
    dy, dx = blobs.y[j] - blobs.y[i], blobs.x[j] - blobs.x[i]
    phi = np.arctan2(dy, dx)
    ri = _radius_along(blobs.a[i], blobs.b[i], phi - blobs.angle[i]) * (1 + blobs.irr[i, 0])
    rj = _radius_along(blobs.a[j], blobs.b[j], phi - blobs.angle[j]) * (1 + blobs.irr[j, 0])
    clash = np.hypot(dy, dx) < ri + rj + gap
    i, j = i[clash], j[clash]
    src, dst = np.concatenate([i, j]), np.concatenate([j, i])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))
    involved = np.flatnonzero(start[1:] > start[:-1])
    keep = np.ones(n, bool)
    keep[involved] = False
    # A per-object loop (never per pixel): at most a few thousand short iterations.
    for k in involved[np.argsort(-blobs.priority[involved], kind="stable")]:
        if not keep[dst[start[k] : start[k + 1]]].any():
            keep[k] = True
    return blobs.subset(keep)


def _ellipse_radius(
    blobs: _Blobs, owner: np.ndarray, py: np.ndarray, px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius (< 1 inside the wobbly outline) of pixels w.r.t. their blob.

    Also returns the pixel distance to the blob centre (for nucleoli).
    """
    dx, dy = px - blobs.x[owner], py - blobs.y[owner]
    cos, sin = np.cos(blobs.angle[owner]), np.sin(blobs.angle[owner])
    u = (dx * cos + dy * sin) / blobs.a[owner]
    v = (-dx * sin + dy * cos) / blobs.b[owner]
    rho = np.hypot(u, v)
    # Outline wobble 1 + A2 cos(2phi + p2) + A3 cos(3phi + p3), with phi the polar angle
    # of (u, v), expanded in cos/sin of phi so no arctan2/cos per pixel is needed.
    c1 = np.divide(u, rho, out=np.ones_like(u), where=rho > 0)
    s1 = np.divide(v, rho, out=np.zeros_like(v), where=rho > 0)
    c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
    c3, s3 = c1 * c2 - s1 * s2, s1 * c2 + c1 * s2
    irr = blobs.irr[owner]
    wobble = (
        1
        + irr[:, 0] * (c2 * np.cos(irr[:, 1]) - s2 * np.sin(irr[:, 1]))
        + irr[:, 2] * (c3 * np.cos(irr[:, 3]) - s3 * np.sin(irr[:, 3]))
    )
    return rho / wobble, np.hypot(dx, dy)


def _rasterise(blobs: _Blobs, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel owner and normalised radius for a set of non-overlapping blobs.

    Every pixel belongs to its nearest blob centre (one Euclidean distance transform
    with indices) and is then tested against that blob's ellipse. Nearest-centre
    ownership makes overlapping labels impossible by construction, so ids stay clean
    even where two nuclei touch. Returns, for the pixels close enough to matter:
    flat pixel index, owning blob index, normalised radius (< 1 inside the outline)
    and distance to the blob centre in pixels.
    """
    markers = np.zeros((size, size), np.int32)
    cy = np.clip(np.rint(blobs.y).astype(np.intp), 0, size - 1)
    cx = np.clip(np.rint(blobs.x).astype(np.intp), 0, size - 1)
    markers[cy, cx] = np.arange(1, len(blobs) + 1)
    dist, (ny, nx) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    reach = blobs.a * blobs.wobble_max() + 1.5
    pix = np.flatnonzero(dist.ravel() <= reach.max())
    owner = markers[ny.ravel()[pix], nx.ravel()[pix]] - 1
    # Only pixels within reach of their own blob need the exact test.
    near = dist.ravel()[pix] <= reach[owner]
    pix, owner = pix[near], owner[near]
    py, px = np.divmod(pix, size)
    r, dc = _ellipse_radius(blobs, owner, py, px)
    return pix, owner, r, dc


def _stamp(blobs: _Blobs, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels under each blob by stamping a small window per blob (no ownership).

    For unlabelled decorations (goblet cells, red cells): they are few and may
    overlap harmlessly, so a window per blob is cheaper than a distance transform.
    Returns flat pixel index, blob index and normalised radius; pixels may repeat.
    """
    half = math.ceil(float((blobs.a * blobs.wobble_max()).max())) + 1
    off = np.arange(-half, half + 1)
    oy, ox = (o.ravel() for o in np.meshgrid(off, off, indexing="ij"))
    py = np.rint(blobs.y).astype(np.intp)[:, None] + oy[None, :]
    px = np.rint(blobs.x).astype(np.intp)[:, None] + ox[None, :]
    owner = np.broadcast_to(np.arange(len(blobs))[:, None], py.shape)
    ok = (py >= 0) & (py < size) & (px >= 0) & (px < size)
    py, px, owner = py[ok], px[ok], owner[ok]
    r, _ = _ellipse_radius(blobs, owner, py, px)
    return py * size + px, owner, r


def _sample_points(rng: np.random.Generator, density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poisson-like candidate points: pixel p is picked with probability density[p]."""
    ys, xs = np.nonzero(rng.random(density.shape, dtype=np.float32) < density)
    jitter = rng.uniform(-0.5, 0.5, (2, len(ys)))
    return ys + jitter[0], xs + jitter[1]


def _paint(
    c_h: np.ndarray,
    c_e: np.ndarray,
    pix: np.ndarray,
    alpha: np.ndarray,
    h: np.ndarray | float,
    e: np.ndarray | float,
) -> None:
    """Alpha-blend stain concentrations into the flat pixels ``pix`` (in place)."""
    fh, fe = c_h.reshape(-1), c_e.reshape(-1)
    fh[pix] += alpha * (h - fh[pix])
    fe[pix] += alpha * (e - fe[pix])


# --------------------------------------------------------------------------- layout


def _tissue_layout(rng: np.random.Generator, cfg: SynthConfig, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Partition the tile into a few smooth regions and give each a tissue class."""
    size = cfg.size
    k = int(rng.integers(cfg.regions[0], cfg.regions[1] + 1))
    weights = np.asarray(cfg.tissue_weights, float)
    classes = rng.choice(len(TISSUE_CLASSES), size=k, p=weights / weights.sum())
    if np.all(classes == BACKGROUND):
        # A tile of pure glass teaches nothing; keep at least one tissue region.
        classes[0] = rng.choice(3, p=weights[:3] / weights[:3].sum())
    if k == 1:
        return np.full((size, size), classes[0], np.uint8)
    seeds = (rng.random((k, 2)) * size).astype(np.float32)
    # Two octaves of warp: broad bends plus a finer ripple, so borders look organic.
    warp = [
        0.12 * size * _smooth_noise(rng, (size, size), size / 3)
        + 0.025 * size * _smooth_noise(rng, (size, size), size / 14)
        for _ in range(2)
    ]
    wy, wx = yy + warp[0], xx + warp[1]
    d2 = (wy[..., None] - seeds[:, 0]) ** 2 + (wx[..., None] - seeds[:, 1]) ** 2
    return classes[d2.argmin(axis=-1)].astype(np.uint8)


_LUT_N = 1024


def _lut_index(theta: np.ndarray) -> np.ndarray:
    """Index into a 0..2pi lookup table of ``_LUT_N`` + 1 entries for angles in [-pi, pi]."""
    return np.rint((theta + math.pi) * (_LUT_N / (2 * math.pi))).astype(np.intp)


@dataclass
class _Gland:
    """A gland outline in polar form around its centre, with its epithelial thickness.

    Both radius and thickness are tabulated over the angle once, so testing a
    candidate's pixels costs a table lookup instead of a sum of cosines per pixel.
    """

    cy: float
    cx: float
    outer: np.ndarray  # outer radius at _LUT_N + 1 angles from -pi to pi
    thick: np.ndarray  # epithelial thickness at the same angles
    malignant: bool

    def ring(self, frac: float, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points ``frac`` of the epithelial thickness in from the outer edge."""
        idx = _lut_index(theta)
        rad = self.outer[idx] - frac * self.thick[idx]
        return self.cy + rad * np.sin(theta), self.cx + rad * np.cos(theta)


def _draw_gland(rng: np.random.Generator, cfg: SynthConfig, cy: float, cx: float, malignant: bool) -> _Gland:
    ns = cfg.nucleus_scale
    r0 = rng.uniform(*cfg.gland_radius) * cfg.size
    theta = np.linspace(-math.pi, math.pi, _LUT_N + 1)
    orders = np.arange(2, 8)
    if malignant:
        # Angular, budding outlines: strong higher harmonics.
        amps = rng.uniform(0.0, 0.24, len(orders)) / np.sqrt(orders - 1)
        thick0 = float(np.clip(0.45 * r0, 12 * ns, 22 * ns))
        t_amp = 0.25
    else:
        # Smooth oval crypts: mostly elongation, a little wobble.
        amps = np.concatenate([[rng.uniform(0.05, 0.25)], rng.uniform(0.0, 0.05, len(orders) - 1)])
        thick0 = float(np.clip(0.35 * r0, 9 * ns, 20 * ns))
        t_amp = 0.1
    shape = np.ones_like(theta)
    for order, amp, phase in zip(orders, amps, rng.uniform(0, 2 * math.pi, len(orders)), strict=True):
        shape += amp * np.cos(order * theta + phase)
    outer = r0 * np.maximum(shape, 0.4)
    t_shape = np.ones_like(theta)
    for order in (1, 2, 3):
        t_shape += rng.uniform(0, t_amp) * np.cos(order * theta + rng.uniform(0, 2 * math.pi))
    # Leave a lumen: the epithelium never takes more than 70 % of the local radius.
    thick = np.minimum(thick0 * t_shape, 0.7 * outer)
    return _Gland(cy, cx, outer, thick, malignant)


@dataclass
class _GlandLayout:
    glands: list[_Gland]
    inst: np.ndarray  # int32 gland ids
    depth: np.ndarray  # inside glands: depth in units of epithelial thickness (>= 1: lumen)
    gap: np.ndarray  # outside glands: radial distance to the nearest gland (px)
    gap_malignant: np.ndarray  # the same, counting malignant glands only


def _place_glands(
    rng: np.random.Generator, cfg: SynthConfig, tissue: np.ndarray, to_glass: np.ndarray | None
) -> _GlandLayout:
    """Place non-overlapping glands in stroma or tumour, never touching glass.

    Candidates are drawn (centre, size, outline) and rejected if they come within a
    margin of an earlier gland or of glass. Besides the instance map this tracks,
    per pixel, how far into the epithelium a pixel lies (``depth``) and how far
    outside the nearest gland it lies (``gap``, measured along the gland's radius,
    which is close to the true distance for these star-shaped outlines and avoids
    distance transforms); painting uses these for lumens, clefts and collars.
    """
    size = cfg.size
    inst = np.zeros((size, size), np.int32)
    depth = np.full((size, size), np.inf, np.float32)
    gap = np.full((size, size), np.inf, np.float32)
    gap_mal = np.full((size, size), np.inf, np.float32)
    glands: list[_Gland] = []
    target = int(rng.integers(cfg.glands[0], cfg.glands[1] + 1))
    hosts = np.flatnonzero(((tissue == STROMA) | (tissue == TUMOUR)).ravel())
    if target == 0 or len(hosts) == 0:
        return _GlandLayout(glands, inst, depth, gap, gap_mal)
    background = tissue == BACKGROUND
    margin = max(3.0, 0.02 * size)
    track = max(margin, _collar(size)) + 2  # how far outside a gland ``gap`` is kept
    for _ in range(target * 12):
        if len(glands) == target:
            break
        cy, cx = np.divmod(int(hosts[rng.integers(len(hosts))]), size)
        g = _draw_gland(
            rng, cfg, cy + rng.uniform(-0.5, 0.5), cx + rng.uniform(-0.5, 0.5), tissue[cy, cx] == TUMOUR
        )
        r_min, r_max = float(g.outer.min()), float(g.outer.max())
        # Cheap certain rejections before touching any pixels.
        if to_glass is not None and to_glass[cy, cx] < r_min + margin:
            continue
        if any(math.hypot(g.cy - o.cy, g.cx - o.cx) < r_min + float(o.outer.min()) for o in glands):
            continue
        reach = r_max + track + 1
        y0, y1 = max(0, int(g.cy - reach)), min(size, int(g.cy + reach) + 1)
        x0, x1 = max(0, int(g.cx - reach)), min(size, int(g.cx + reach) + 1)
        ly, lx = np.ogrid[y0:y1, x0:x1]
        dy, dx = (ly - g.cy).astype(np.float32), (lx - g.cx).astype(np.float32)
        rho = np.hypot(dy, dx)
        idx = _lut_index(np.arctan2(dy, dx))
        excess = rho - g.outer[idx]  # < 0 inside the gland
        halo = excess < margin
        # Reject overlaps (keeping a margin of stroma between glands) and contact with glass.
        if (inst[y0:y1, x0:x1][halo] > 0).any() or background[y0:y1, x0:x1][halo].any():
            continue
        inside = excess < 0
        glands.append(g)
        inst[y0:y1, x0:x1][inside] = len(glands)
        depth[y0:y1, x0:x1][inside] = (-excess / g.thick[idx])[inside]
        np.minimum(gap[y0:y1, x0:x1], excess, out=gap[y0:y1, x0:x1])
        if g.malignant:
            np.minimum(gap_mal[y0:y1, x0:x1], excess, out=gap_mal[y0:y1, x0:x1])
    return _GlandLayout(glands, inst, depth, gap, gap_mal)


def _collar(size: int) -> float:
    """Width of the desmoplastic stroma around malignant glands (px)."""
    return 0.035 * size + 4


# --------------------------------------------------------------------------- painting


@dataclass
class _Stroma:
    fibrils: np.ndarray  # fine streaks along the fibres, unit variance
    bundles: np.ndarray  # 0 in clefts between collagen bundles, 1 inside them
    across: np.ndarray  # the across-fibre coordinate (fibres run along its level lines)

    def direction(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Local fibre direction (radians) at points, from the gradient of ``across``."""
        n = self.across.shape[0]
        iy = np.clip(np.rint(y).astype(np.intp), 1, n - 2)
        ix = np.clip(np.rint(x).astype(np.intp), 1, n - 2)
        gx = self.across[iy, ix + 1] - self.across[iy, ix - 1]
        gy = self.across[iy + 1, ix] - self.across[iy - 1, ix]
        return np.arctan2(-gx, gy)


def _stroma_texture(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> _Stroma:
    """Wavy collagen: bundles separated by pale clefts, with fine fibrils inside.

    The texture lives in a rotated frame whose across-fibre coordinate is bent by a
    smooth warp (a broad bend plus a tighter wave). Fibrils are periodic white noise
    smeared along the fibre axis, sampled through that frame; bundles are 1-D noise
    across the fibres (so clefts run parallel to them), broken up along the fibres
    by a little 2-D noise so they do not run forever.
    """
    rot = rng.uniform(0, math.pi)
    cos, sin = math.cos(rot), math.sin(rot)
    c = size / 2
    along = (xx - c) * cos - (yy - c) * sin + 3 * _smooth_noise(rng, (size, size), size / 6)
    across = (
        (xx - c) * sin
        + (yy - c) * cos
        + 0.1 * size * _smooth_noise(rng, (size, size), size / 2.5)
        + 3.5 * _smooth_noise(rng, (size, size), 28)
    )
    # A fixed 256 px periodic canvas: the warp hides the repeat, and the cost does not
    # grow with the tile.
    streaks = ndimage.gaussian_filter(
        rng.standard_normal((256, 256), dtype=np.float32), (0.7, 5.0), mode="wrap"
    )
    fibrils = _bilinear_wrap(streaks / streaks.std(), across, along)
    lo = float(across.min()) - 2
    profile = ndimage.gaussian_filter1d(rng.standard_normal(int(across.max() - lo) + 4), 2.5)
    profile /= profile.std()
    band = np.interp(across, lo + np.arange(len(profile)), profile) + 0.5 * _smooth_noise(
        rng, (size, size), 18
    )
    bundles = _sigmoid(2.5 * (band / 1.12 + 0.85))
    return _Stroma(fibrils, bundles, across)


def _bilinear_wrap(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear sample of a periodic image at real coordinates (a light map_coordinates)."""
    h, w = img.shape
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    y0, x0 = y0.astype(np.intp) % h, x0.astype(np.intp) % w
    y1, x1 = (y0 + 1) % h, (x0 + 1) % w
    top = img[y0, x0] + fx * (img[y0, x1] - img[y0, x0])
    bottom = img[y1, x0] + fx * (img[y1, x1] - img[y1, x0])
    return top + fy * (bottom - top)


def _alveoli(
    rng: np.random.Generator, cfg: SynthConfig, yy: np.ndarray, xx: np.ndarray, region: np.ndarray
) -> np.ndarray:
    """Thin-walled air spaces: a map that is 1 on the septa and 0 in the spaces.

    Cells are the Voronoi cells of a jittered grid (nearest seed via one distance
    transform on a padded canvas), looked up through warped coordinates so septa
    curve; a septum is the set of pixels near a cell boundary, of varying width.
    The border of the ``region`` mask counts as a boundary too, so air spaces are
    closed by a wall instead of opening straight into the neighbouring tissue.
    """
    size = cfg.size
    spacing = 46.0 * cfg.nucleus_scale
    pad = int(spacing) + 8
    canvas = size + 2 * pad
    n = int(canvas / spacing) + 2
    gy, gx = np.mgrid[0:n, 0:n].astype(float) * spacing
    gy += rng.uniform(-0.35, 0.35, gy.shape) * spacing + spacing / 2
    gx += rng.uniform(-0.35, 0.35, gx.shape) * spacing + spacing / 2
    ok = (gy < canvas) & (gx < canvas)
    markers = np.zeros((canvas, canvas), np.int32)
    markers[gy[ok].astype(np.intp), gx[ok].astype(np.intp)] = np.arange(1, int(ok.sum()) + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    cells = markers[iy, ix]
    wy = np.clip(np.rint(yy + pad + 5 * _smooth_noise(rng, (size, size), spacing / 2)), 0, canvas - 1)
    wx = np.clip(np.rint(xx + pad + 5 * _smooth_noise(rng, (size, size), spacing / 2)), 0, canvas - 1)
    cell = cells[wy.astype(np.intp), wx.astype(np.intp)]
    edge = np.zeros((size, size), bool)
    edge[:, 1:] |= cell[:, 1:] != cell[:, :-1]
    edge[1:, :] |= cell[1:, :] != cell[:-1, :]
    edge[:, 1:] |= region[:, 1:] != region[:, :-1]
    edge[1:, :] |= region[1:, :] != region[:-1, :]
    dist = ndimage.distance_transform_edt(~edge)
    half_width = (1.5 + 0.8 * _smooth_noise(rng, (size, size), 20)) * cfg.nucleus_scale
    return np.clip(half_width - dist + 0.5, 0, 1).astype(np.float32)


def _along_ring(
    rng: np.random.Generator, g: _Gland, frac: float, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evenly spaced points (by arc length) on a ring inside the epithelium.

    Returns y, x and the direction normal to the outline at each point, which is how
    epithelial nuclei orient: perpendicular to the basement membrane.
    """
    theta = np.linspace(-math.pi, math.pi, 721)
    py, px = g.ring(frac, theta)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(py), np.diff(px)))])
    s = np.arange(rng.uniform(0, spacing), arc[-1] - 0.5 * spacing, spacing)
    tang = np.arctan2(np.interp(s, arc[1:], np.diff(py)), np.interp(s, arc[1:], np.diff(px)))
    return np.interp(s, arc, py), np.interp(s, arc, px), tang + math.pi / 2


def _epithelial_nuclei(rng: np.random.Generator, glands: list[_Gland], ns: float) -> list[_Blobs]:
    """Nuclei lining each gland: one basal row if benign, stratified rows if malignant."""
    parts = []
    for g in glands:
        if g.malignant:
            for frac in rng.uniform(0.2, 0.75, int(rng.integers(2, 4))):
                y, x, normal = _along_ring(rng, g, frac, 2.8 * ns)
                k = len(y)
                parts.append(
                    _Blobs.make(
                        rng,
                        y + rng.normal(0, 0.8, k),
                        x + rng.normal(0, 0.8, k),
                        a=(3.6 * ns, 5.8 * ns),
                        b=(2.1 * ns, 3.1 * ns),
                        angle=normal + rng.normal(0, 0.4, k),
                        h=(1.2, 1.9),
                        e=0.3,
                        vesicular=(0.0, 0.45),
                        nucleolus=rng.uniform(0, 0.8, k) * (rng.random(k) < 0.3),
                        irr_amp=0.12,
                        priority=(2.0, 3.0),
                    )
                )
        else:
            y, x, normal = _along_ring(rng, g, rng.uniform(0.25, 0.32), 3.7 * ns)
            k = len(y)
            # Slight jitter in height and tilt keeps the palisade from looking drawn.
            shift = rng.normal(0, 0.5, k)
            parts.append(
                _Blobs.make(
                    rng,
                    y + shift * np.sin(normal),
                    x + shift * np.cos(normal),
                    a=(3.2 * ns, 4.3 * ns),
                    b=(1.45 * ns, 1.85 * ns),
                    angle=normal + rng.normal(0, 0.1, k),
                    h=(1.05, 1.4),
                    irr_amp=0.05,
                    priority=(2.0, 3.0),
                )
            )
    return parts


def _goblets(rng: np.random.Generator, glands: list[_Gland], ns: float) -> list[_Blobs]:
    """Pale mucin vacuoles (goblet cells) in the apical epithelium of benign glands."""
    parts = []
    for g in glands:
        if not g.malignant:
            y, x, normal = _along_ring(rng, g, 0.7, 8.0 * ns)
            keep = rng.random(len(y)) < 0.7
            parts.append(
                _Blobs.make(
                    rng,
                    y[keep],
                    x[keep],
                    a=(2.4 * ns, 3.3 * ns),
                    b=(2.0 * ns, 2.7 * ns),
                    angle=normal[keep],
                    h=0.08,
                    e=0.05,
                    irr_amp=0.05,
                )
            )
    return parts


# --------------------------------------------------------------------------- tile


def generate_tile(
    seed: int, config: SynthConfig | None = None, *, stain_seed: int | None = None
) -> SyntheticTile:
    """Generate one synthetic H&E tile with its label maps.

    The result depends only on ``seed``, ``config`` and ``stain_seed``. ``stain_seed``
    (optional) fixes the slide-level stain so several tiles can share one "slide";
    each tile still gets a small jitter of its own. :func:`dataset_tile` gives
    exactly tile ``i`` of :func:`write_dataset`.
    """
    cfg = config if config is not None else SynthConfig()
    cfg.validate()
    _check_seed(seed)
    layout_ss, stain_ss = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_ss)
    if stain_seed is not None:
        _check_seed(stain_seed, "stain_seed")
        slide_rng = np.random.default_rng(stain_seed)
    else:
        slide_rng = np.random.default_rng(stain_ss)
    stain = _Stain.draw(slide_rng, cfg.stain_variation).jitter(rng, cfg.stain_variation / 4)

    size, ns = cfg.size, cfg.nucleus_scale
    shape = (size, size)
    yy, xx = np.indices(shape, dtype=np.float32)

    region = _tissue_layout(rng, cfg, yy, xx)
    is_tum, is_nor, is_bg = region == TUMOUR, region == NORMAL, region == BACKGROUND
    to_glass = ndimage.distance_transform_edt(~is_bg) if is_bg.any() else None
    layout = _place_glands(rng, cfg, region, to_glass)
    in_gland = layout.inst > 0
    malignant_px = layout.gap_malignant < 0  # inside a malignant gland
    tissue = region.copy()
    # Gland pixels carry the class the gland looks like, not the region under it.
    tissue[in_gland] = np.where(malignant_px, TUMOUR, NORMAL)[in_gland]

    # ---- region backgrounds as haematoxylin / eosin concentration maps ------------
    c_h = np.zeros(shape, np.float32)
    c_e = np.zeros(shape, np.float32)
    mottle = _smooth_noise(rng, shape, 12.0)
    fine = _fine_noise(rng, shape, 0.8)
    # Thin stromal strands break the tumour into nests, as in real carcinoma, and
    # malignant glands sit in a collar of desmoplastic stroma rather than inside a
    # solid sheet (where their outline would be lost).
    strands = np.zeros(shape, bool)
    if is_tum.any():
        strands = is_tum & (
            (_smooth_noise(rng, shape, 0.1 * size) > 1.15) | (layout.gap_malignant <= _collar(size))
        )
    sheet = is_tum & ~strands
    stroma_like = (region == STROMA) | strands
    stroma = None
    if stroma_like.any():
        stroma = _stroma_texture(rng, size, yy, xx)
        e0 = 0.6 * (1 + 0.1 * mottle) * (0.12 + 0.88 * stroma.bundles) * (1 + 0.16 * stroma.fibrils)
        c_e[stroma_like] = e0[stroma_like]
        c_h[stroma_like] = (0.03 + 0.04 * stroma.bundles)[stroma_like]
    c_e[sheet] = (0.42 * (1 + 0.15 * mottle + 0.12 * fine))[sheet]
    c_h[sheet] = (0.22 * (1 + 0.2 * mottle))[sheet]
    septa = None
    if is_nor.any():
        septa = _alveoli(rng, cfg, yy, xx, is_nor) * is_nor
        c_e[is_nor] = (0.035 + 0.72 * septa * (1 + 0.15 * fine))[is_nor]
        c_h[is_nor] = (0.015 + 0.12 * septa)[is_nor]
    c_e[is_bg] = (0.025 + 0.008 * mottle)[is_bg]
    c_h[is_bg] = 0.01

    # ---- glands -------------------------------------------------------------------
    nuclei_parts: list[_Blobs] = []
    extras: list[_Blobs] = []  # unlabelled objects: goblet cells, red cells
    if layout.glands:
        depth = layout.depth
        lumen = in_gland & (depth >= 1)
        epi = in_gland & ~lumen
        ben_epi, mal_epi = epi & ~malignant_px, epi & malignant_px
        c_e[ben_epi] = (0.4 * (1 + 0.1 * fine))[ben_epi]
        c_h[ben_epi] = 0.13
        c_e[mal_epi] = (0.36 * (1 + 0.12 * fine))[mal_epi]
        c_h[mal_epi] = (0.3 * (1 + 0.15 * mottle))[mal_epi]
        # Bright eosinophilic apical border (brush border) just inside the lumen edge.
        c_e[in_gland & (depth >= 0.88) & (depth < 1.0)] += 0.22
        # Lumen: pale mucin; malignant lumens hold pink "dirty" necrotic debris.
        debris = np.clip(mottle + 0.4 * fine - 0.5, 0, None)
        c_e[lumen] = np.where(malignant_px, 0.05 + 0.3 * debris, 0.035)[lumen]
        c_h[lumen] = np.where(malignant_px, 0.03 + 0.14 * debris, 0.025)[lumen]
        # Retraction artefact: a thin white cleft where a gland pulled away from stroma.
        cleft = (layout.gap >= 0) & (layout.gap <= 1.5) & ~is_bg & (mottle > -0.3)
        c_e[cleft] *= 0.15
        c_h[cleft] *= 0.3
        nuclei_parts += _epithelial_nuclei(rng, layout.glands, ns)
        extras += _goblets(rng, layout.glands, ns)

    # ---- stromal, tumour and alveolar nuclei -----------------------------------------
    # Keep nuclei out of glands (their epithelium brings its own) and off glass, with
    # a margin so none pokes over the tissue edge.
    free = layout.gap > 2
    if to_glass is not None:
        free &= to_glass > 3 * ns
    per_px = 1e-4 / ns**2  # "per 10,000 px" at nucleus_scale 1, fewer if nuclei are larger
    if stroma is not None and (stroma_like & free).any():
        y, x = _sample_points(rng, (stroma_like & free) * (cfg.nuclei_density * per_px))
        lymph = rng.random(len(y)) < 0.25
        fy, fx = y[~lymph], x[~lymph]
        nuclei_parts.append(  # fibroblasts: spindles lying along the fibres
            _Blobs.make(
                rng,
                fy,
                fx,
                a=(4.0 * ns, 6.5 * ns),
                b=(1.2 * ns, 1.7 * ns),
                angle=stroma.direction(fy, fx) + rng.normal(0, 0.15, len(fy)),
                h=(1.0, 1.4),
                irr_amp=0.06,
            )
        )
        nuclei_parts.append(  # lymphocytes: small, round, very dark
            _Blobs.make(
                rng,
                y[lymph],
                x[lymph],
                a=(2.2 * ns, 2.8 * ns),
                b=(2.0 * ns, 2.5 * ns),
                h=(1.7, 2.1),
                e=0.15,
                irr_amp=0.03,
            )
        )
    if (sheet & free).any():
        # Oversample, then let the hard-core packing decide the final density.
        y, x = _sample_points(rng, (sheet & free) * (3 * cfg.tumour_density * per_px))
        k = len(y)
        a = rng.uniform(4.0 * ns, 7.0 * ns, k)
        nuclei_parts.append(
            _Blobs.make(
                rng,
                y,
                x,
                a=a,
                b=a * rng.uniform(0.65, 0.95, k),
                h=(0.95, 1.85),
                e=0.3,
                vesicular=(0.0, 0.55),
                nucleolus=rng.uniform(0, 1, k) * (rng.random(k) < 0.4),
                irr_amp=0.13,
            )
        )
    if septa is not None:
        on_septa = (septa > 0.5) & free
        y, x = _sample_points(rng, on_septa * (0.012 / ns))
        nuclei_parts.append(
            _Blobs.make(rng, y, x, a=(3.0 * ns, 4.2 * ns), b=(1.3 * ns, 1.8 * ns), h=(1.0, 1.35))
        )
        # Red cells in septal capillaries: small bright orange-red discs, unlabelled.
        y, x = _sample_points(rng, on_septa * (0.006 / ns))
        extras.append(_Blobs.make(rng, y, x, a=(1.8 * ns, 2.2 * ns), b=(1.6 * ns, 2.0 * ns), h=0.05, e=1.1))

    extras = [p for p in extras if len(p)]
    if extras:
        blobs = _Blobs.concat(extras)
        pix, own, r = _stamp(blobs, size)
        _paint(c_h, c_e, pix, np.clip((1.1 - r) / 0.3, 0, 1), blobs.h[own], blobs.e[own])

    nuclei = np.zeros(shape, np.int32)
    nuclei_parts = [p for p in nuclei_parts if len(p)]
    blobs = _Blobs.concat(nuclei_parts) if nuclei_parts else None
    if blobs is not None and to_glass is not None:
        # No nucleus may poke over the tissue edge onto glass.
        iy = np.clip(np.rint(blobs.y).astype(np.intp), 0, size - 1)
        ix = np.clip(np.rint(blobs.x).astype(np.intp), 0, size - 1)
        blobs = blobs.subset(to_glass[iy, ix] > blobs.a * blobs.wobble_max() + 1)
    if blobs is not None and len(blobs):
        # A small negative gap lets nuclei touch, as they do in crowded epithelium.
        blobs = _hard_core(blobs, gap=-0.4)
        pix, own, r, dc = _rasterise(blobs, size)
        # Soft edge for the picture (half intensity at r = 1), hard r < 1 for the label.
        alpha = np.clip((1.08 - r) / 0.16, 0, 1)
        chromatin = 1 + 0.22 * fine.reshape(-1)[pix]
        profile = 1 - blobs.vesicular[own] * np.clip(1 - r * r, 0, 1)
        nucleolus = blobs.nucleolus[own] * np.exp(-0.5 * (dc / (0.9 * ns)) ** 2)
        _paint(
            c_h,
            c_e,
            pix,
            alpha,
            blobs.h[own] * profile * chromatin + 0.9 * nucleolus,
            blobs.e[own] + 0.3 * nucleolus,
        )
        inside = r < 1
        nuclei.reshape(-1)[pix[inside]] = own[inside] + 1
        # Contiguous ids 1..N even if some blob lost all its pixels.
        present = np.unique(nuclei)
        lut = np.zeros(len(blobs) + 1, np.int32)
        lut[present] = np.arange(len(present), dtype=np.int32)
        nuclei = lut[nuclei]

    # Uneven staining across the section: a gentle multiplicative field per stain.
    c_h *= 1 + 0.08 * _smooth_noise(rng, shape, size / 2)
    c_e *= 1 + 0.08 * _smooth_noise(rng, shape, size / 2)
    return SyntheticTile(
        image=_compose(rng, cfg, stain, c_h, c_e),
        glands=in_gland.astype(np.uint8),
        gland_instances=layout.inst,
        nuclei=nuclei,
        tissue=tissue,
    )


def _compose(
    rng: np.random.Generator, cfg: SynthConfig, stain: _Stain, c_h: np.ndarray, c_e: np.ndarray
) -> np.ndarray:
    """Beer-Lambert: transmitted light = illumination * exp(-sum of stain ODs).

    The optical blur is applied to the two concentration maps rather than to the
    three RGB channels: cheaper, and at sub-2 px sigmas visually the same.
    """
    if cfg.blur > 0:
        c_h = ndimage.gaussian_filter(c_h, cfg.blur)
        c_e = ndimage.gaussian_filter(c_e, cfg.blur)
    od = c_h[..., None] * stain.h.astype(np.float32) + c_e[..., None] * stain.e.astype(np.float32)
    rgb = stain.i0 * np.exp(-od)
    if cfg.noise > 0:
        rgb += cfg.noise * rng.standard_normal(rgb.shape, dtype=np.float32)
    # +0.5 then truncation rounds (values are non-negative after the clip).
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def dataset_tile(seed: int, index: int, config: SynthConfig | None = None) -> SyntheticTile:
    """Exactly tile ``index`` of ``write_dataset(..., seed=seed, config=config)``."""
    return generate_tile(tile_seed(seed, index), config, stain_seed=_stain_seed(seed, patient_of(index)))


# --------------------------------------------------------------------------- files


def _save_png(path: Path, array: np.ndarray, palette: tuple[tuple[int, int, int], ...] | None = None) -> None:
    """Lossless PNG: RGB, palette ("P", values = class ids) or 16-bit ("I;16") ids."""
    if array.ndim == 3:
        img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    elif palette is not None:
        img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
        img.putpalette([c for rgb in palette for c in rgb])  # turns the "L" image into "P"
    else:
        if array.max(initial=0) > np.iinfo(np.uint16).max:
            raise DataError(path, "more than 65535 instances do not fit a 16-bit PNG")
        img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
    try:
        img.save(path, format="PNG")
    except OSError as exc:
        raise DataError(path, f"cannot write PNG ({exc})") from exc


def write_dataset(
    out_dir: Path,
    num_images: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``num_images`` synthetic tiles plus ``dataset.yaml`` and ``groups.csv``.

    Layout (``NNNNN`` = tile index)::

        images/synth_NNNNN.png           RGB
        masks/synth_NNNNN.png            gland semantic mask, palette PNG, 0/1
        gland_instances/synth_NNNNN.png  16-bit gland ids
        instances/synth_NNNNN.png        16-bit nucleus ids
        tissue/synth_NNNNN.png           palette PNG, TISSUE_CLASSES indices
        groups.csv                       name,patient (TILES_PER_PATIENT tiles each)
        dataset.yaml                     generator, seed, config, folders, classes

    Tile ``i`` is :func:`dataset_tile` ``(seed, i, config)``: independent of
    ``num_images``. ``dataset.yaml`` is written last, so its presence means the set
    is complete. ``progress(done, total)`` is called after each tile. Returns
    ``out_dir``.
    """
    cfg = config if config is not None else SynthConfig()
    cfg.validate()
    _check_seed(seed)
    if not isinstance(num_images, int | np.integer) or num_images < 0:
        raise ConfigError(f"num_images must be a non-negative integer (got {num_images!r})")
    out = Path(out_dir)
    folders = ("images", "masks", "gland_instances", "instances", "tissue")
    for name in folders:
        try:
            (out / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(out / name, f"cannot create folder ({exc})") from exc

    rows: list[tuple[str, str]] = []
    for i in range(num_images):
        tile = dataset_tile(seed, i, cfg)
        name = f"synth_{i:05d}"
        file = f"{name}.png"
        _save_png(out / "images" / file, tile.image)
        _save_png(out / "masks" / file, tile.glands, GLAND_PALETTE)
        _save_png(out / "gland_instances" / file, tile.gland_instances)
        _save_png(out / "instances" / file, tile.nuclei)
        _save_png(out / "tissue" / file, tile.tissue, TISSUE_PALETTE)
        rows.append((name, f"patient_{patient_of(i):04d}"))
        if progress is not None:
            progress(i + 1, num_images)

    meta = {
        "generator": "pathseg.synthetic",
        "seed": int(seed),
        "num_images": int(num_images),
        "config": cfg.to_dict(),
        "images": "images",
        "groups": "groups.csv",
        "tiles_per_patient": TILES_PER_PATIENT,
        "tasks": {
            "glands": {
                "masks": "masks",
                "instances": "gland_instances",
                "classes": {name: i for i, name in enumerate(GLAND_CLASSES)},
            },
            "tissue": {"masks": "tissue", "classes": {name: i for i, name in enumerate(TISSUE_CLASSES)}},
            "nuclei": {"instances": "instances"},
        },
    }
    try:
        with open(out / "groups.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "patient"])
            writer.writerows(rows)
        with open(out / "dataset.yaml", "w", encoding="utf-8") as fh:
            yaml.safe_dump(meta, fh, sort_keys=False)
    except OSError as exc:
        raise DataError(out, f"cannot write dataset metadata ({exc})") from exc
    return out


# --------------------------------------------------------------------------- annotators

ANNOTATOR_KINDS = ("exact", "dilate", "erode", "drop_small", "merge")


@dataclass(frozen=True)
class AnnotatorStyle:
    """How one synthetic annotator departs from the true gland mask.

    ``kind`` and ``amount`` give the systematic style (all lengths in pixels):

    * ``"exact"``: the true mask (``amount`` unused);
    * ``"dilate"`` / ``"erode"``: outlines drawn ``amount`` px outside / inside the true ones;
    * ``"drop_small"``: glands smaller than ``amount`` pixels (area) are not drawn;
    * ``"merge"``: glands closer than about ``amount`` px are drawn as one, by a closing with a
      disk of radius ``amount / 2`` (which also rounds off concave bays).

    ``jitter`` adds noise that differs per image and annotator: the styled mask is opened or
    closed (each with probability 1/2) with a disk of radius drawn from ``1..jitter`` px;
    ``0`` disables it. Opening by ``r`` cannot undo a dilation by ``amount >= r`` and closing
    cannot undo such an erosion, so a ``"dilate"`` mask always contains the truth and an
    ``"erode"`` mask always lies inside it when ``jitter <= amount``.
    """

    name: str
    kind: str
    amount: float = 0.0
    jitter: int = 1

    def __post_init__(self) -> None:
        name = self.name
        if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
            raise ConfigError(f"annotator name {name!r} must be a plain folder name")
        if self.kind not in ANNOTATOR_KINDS:
            raise ConfigError(
                f"annotator {name!r}: unknown kind {self.kind!r}; use one of {', '.join(ANNOTATOR_KINDS)}"
            )
        amount = self.amount
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float | np.number)
            or not 0 <= amount < math.inf
        ):
            raise ConfigError(f"annotator {name!r}: amount must be a non-negative number (got {amount!r})")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | np.integer) or self.jitter < 0:
            raise ConfigError(
                f"annotator {name!r}: jitter must be a non-negative integer (got {self.jitter!r})"
            )


def default_annotators(size: int = 256) -> tuple[AnnotatorStyle, ...]:
    """Four annotators with distinct styles, scaled to the tile ``size`` (glands scale with it).

    At 256 px: ``dilate`` by 3 px, ``erode`` by 3 px, ``drop_small`` under the area of a disk
    of radius 0.1 * size (measured: about 40 % of the glands, many of them cut by the tile edge,
    but only ~15 % of the gland area), ``merge`` across gaps of 21 px (joins neighbours in about
    a third of the tiles with several glands). All four jitter by 1 px.
    """
    pen = max(1, round(size / 96))
    return (
        AnnotatorStyle("dilate", "dilate", pen),
        AnnotatorStyle("erode", "erode", pen),
        AnnotatorStyle("drop_small", "drop_small", round(math.pi * (0.1 * size) ** 2)),
        AnnotatorStyle("merge", "merge", max(2, round(size / 12))),
    )


def _grow(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation by a Euclidean disk: pixels within ``radius`` of the mask."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius


def _shrink(mask: np.ndarray, radius: float) -> np.ndarray:
    """Erosion by a Euclidean disk. Beyond the tile edge the mask counts as continuing (a
    gland cut by the edge is not eaten from that side)."""
    if radius <= 0 or mask.all():
        return mask.copy()
    return ndimage.distance_transform_edt(mask) > radius


def apply_annotator_style(
    instances: np.ndarray, style: AnnotatorStyle, rng: np.random.Generator
) -> np.ndarray:
    """The ``uint8`` 0/1 gland mask ``style``'s annotator draws for a true instance map.

    ``instances`` holds gland ids (0 = background), as ``SyntheticTile.gland_instances``;
    ``rng`` drives the per-image jitter only.
    """
    truth = instances > 0
    if style.kind == "dilate":
        mask = _grow(truth, style.amount)
    elif style.kind == "erode":
        mask = _shrink(truth, style.amount)
    elif style.kind == "drop_small":
        keep = np.bincount(instances.ravel()) >= style.amount
        keep[0] = False
        mask = keep[instances]
    elif style.kind == "merge":
        mask = _shrink(_grow(truth, style.amount / 2), style.amount / 2)
    else:
        mask = truth.copy()
    if style.jitter > 0:
        radius = int(rng.integers(1, style.jitter + 1))
        if rng.random() < 0.5:
            mask = _grow(_shrink(mask, radius), radius)  # opening: corners and thin parts go
        else:
            mask = _shrink(_grow(mask, radius), radius)  # closing: bays and narrow gaps fill
    return mask.astype(np.uint8)


def _annotator_seed(seed: int, index: int, name: str) -> np.random.SeedSequence:
    # Keyed by the name (crc32 is stable across runs, unlike hash()), so adding or reordering
    # annotators leaves the others' masks unchanged; the trailing 2 separates the stream from
    # tile seeds [seed, i] and stain seeds [seed, patient, 1].
    return np.random.SeedSequence([seed, index, zlib.crc32(name.encode("utf-8")), 2])


def write_multi_annotator_dataset(
    out: Path,
    n: int,
    *,
    seed: int = 0,
    config: SynthConfig | None = None,
    annotators: tuple[AnnotatorStyle, ...] | None = None,
    truth: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n`` synthetic tiles, each with one gland mask per annotator style.

    Layout (the ``pathseg`` layout of :func:`pathseg.data.annotators.discover_multi_annotator`)::

        images/synth_NNNNN.png              RGB, the tiles of write_dataset(out, n, seed, config)
        masks/<annotator>/synth_NNNNN.png   palette PNG, 0 background / 1 gland
        truth/synth_NNNNN.png               the true gland mask (with truth=True); not an annotator
        groups.csv                          name,patient (TILES_PER_PATIENT tiles each)
        dataset.yaml                        generator, seed, config, annotator styles; written last

    ``annotators`` defaults to :func:`default_annotators` for the tile size; names must be
    unique and at least two are needed. Each annotator's mask is :func:`apply_annotator_style`
    of the tile's gland instances, with jitter seeded by ``(seed, tile, annotator name)``.
    ``progress(done, total)`` is called after each tile. Returns ``out``.
    """
    cfg = config if config is not None else SynthConfig()
    cfg.validate()
    _check_seed(seed)
    if not isinstance(n, int | np.integer) or n < 0:
        raise ConfigError(f"number of images must be a non-negative integer (got {n!r})")
    styles = tuple(annotators) if annotators is not None else default_annotators(cfg.size)
    names = [s.name for s in styles]
    if len(styles) < 2:
        raise ConfigError(f"a multi-annotator dataset needs at least 2 annotators (got {len(styles)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"annotator names must be unique (got {names})")
    out = Path(out)
    folders = ["images", *(f"masks/{name}" for name in names), *(["truth"] if truth else [])]
    for name in folders:
        try:
            (out / name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(out / name, f"cannot create folder ({exc})") from exc

    rows: list[tuple[str, str]] = []
    for i in range(n):
        tile = dataset_tile(seed, i, cfg)
        file = f"synth_{i:05d}.png"
        _save_png(out / "images" / file, tile.image)
        if truth:
            _save_png(out / "truth" / file, tile.glands, GLAND_PALETTE)
        for style in styles:
            rng = np.random.default_rng(_annotator_seed(seed, i, style.name))
            mask = apply_annotator_style(tile.gland_instances, style, rng)
            _save_png(out / "masks" / style.name / file, mask, GLAND_PALETTE)
        rows.append((file[:-4], f"patient_{patient_of(i):04d}"))
        if progress is not None:
            progress(i + 1, n)

    meta = {
        "generator": "pathseg.synthetic.write_multi_annotator_dataset",
        "seed": int(seed),
        "num_images": int(n),
        "config": cfg.to_dict(),
        "layout": "pathseg",
        "images": "images",
        "masks": "masks",
        "truth": "truth" if truth else None,
        "groups": "groups.csv",
        "annotators": [dataclasses.asdict(s) | {"amount": float(s.amount)} for s in styles],
        "classes": {name: i for i, name in enumerate(GLAND_CLASSES)},
    }
    try:
        with open(out / "groups.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "patient"])
            writer.writerows(rows)
        with open(out / "dataset.yaml", "w", encoding="utf-8") as fh:
            yaml.safe_dump(meta, fh, sort_keys=False)
    except OSError as exc:
        raise DataError(out, f"cannot write dataset metadata ({exc})") from exc
    return out
