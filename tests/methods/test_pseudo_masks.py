"""Pseudo nucleus masks: shape measurement on hand-made nuclei, fit/generate round trips, the
overlap rule, clustering, determinism and the statistics file."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label as connected_components

from pathseg.data.synthetic import SynthConfig, generate_tile
from pathseg.errors import ConfigError, DataError
from pathseg.methods.nuclei.pseudo_masks import (
    NucleusStatistics,
    PseudoMaskSource,
    fit_statistics,
    generate_instances,
    nucleus_shapes,
)

KNOWN = NucleusStatistics(
    log_area_mean=math.log(300), log_area_std=0.3,
    log_elongation_mean=math.log(1.4), log_elongation_std=0.15,
    irregularity_mean=0.0, irregularity_amplitude=0.08,  # irregularity_mean is not used to generate
    density_mean=6.0, density_var=9.0, window=128,
    nn_ratio=0.0, cluster_fraction=0.7, cluster_sigma=15.0,  # nn_ratio is not used either
    num_nuclei=0, num_images=0,
)  # fmt: skip


def _maps(stats: NucleusStatistics, count: int, size: int, seed: int) -> list[np.ndarray]:
    return [generate_instances(stats, size, np.random.default_rng([seed, i])) for i in range(count)]


def _observed(maps: list[np.ndarray], window: int) -> dict[str, float]:
    """The statistics as the fit defines them, but with independent code for density and the
    Clark-Evans ratio (whole-map counts, ndimage centroids) so the tests do not grade the module
    with itself."""
    shapes = [nucleus_shapes(m) for m in maps]
    observed = expected = 0.0
    per_px = []
    for m in maps:
        ids = np.unique(m[m > 0])
        ids = ids[ndimage.sum_labels(np.ones_like(m), m, ids) >= 8]
        per_px.append(len(ids) / m.size)
        pts = np.array(ndimage.center_of_mass(np.ones_like(m), m, ids))
        observed += cKDTree(pts).query(pts, k=2)[0][:, 1].sum()
        expected += len(pts) * 0.5 / math.sqrt(len(pts) / m.size)
    every = {k: np.concatenate([s[k] for s in shapes]) for k in ("area", "elongation", "irregularity")}
    return {
        "log_area_mean": float(np.log(every["area"]).mean()),
        "log_elongation_mean": float(np.log(every["elongation"]).mean()),
        "irregularity_mean": float(every["irregularity"].mean()),
        "density_mean": float(np.mean(per_px)) * window**2,
        "nn_ratio": observed / expected,
    }


def _close(observed: dict[str, float], stats: NucleusStatistics, skip: tuple[str, ...] = ()) -> None:
    tolerances = {
        "log_area_mean": 0.1,
        "log_elongation_mean": 0.07,
        "irregularity_mean": 0.03,
        "nn_ratio": 0.08,
    }
    for key, tol in tolerances.items():
        if key not in skip:
            assert observed[key] == pytest.approx(getattr(stats, key), abs=tol), key
    assert observed["density_mean"] == pytest.approx(stats.density_mean, rel=0.15)


# --------------------------------------------------------------------------- measuring


def test_nucleus_shapes_of_hand_made_nuclei() -> None:
    yy, xx = np.mgrid[:96, :96]
    inst = np.zeros((96, 96), np.int32)
    inst[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1  # disk, radius 10
    inst[((yy - 50) / 8) ** 2 + ((xx - 60) / 16) ** 2 <= 1] = 2  # ellipse, semi-axes 16 x 8
    inst[70:91, 20:41] = 3  # square, 21 px
    inst[0:6, 60:70] = 4  # touches the top border
    inst[40:42, 5:8] = 5  # 6 px: too small
    shapes = nucleus_shapes(inst)
    assert shapes["label"].tolist() == [1, 2, 3]
    disk, ellipse, square = range(3)
    assert shapes["area"][disk] == pytest.approx(math.pi * 100, rel=0.03)
    assert shapes["elongation"][disk] == pytest.approx(1.0, abs=0.05)
    assert shapes["irregularity"][disk] < 0.05
    assert shapes["elongation"][ellipse] == pytest.approx(2.0, abs=0.1)
    assert shapes["irregularity"][ellipse] < 0.05
    assert shapes["irregularity"][square] > 2 * shapes["irregularity"][disk]
    np.testing.assert_allclose(shapes["centroid"][disk], (20, 20), atol=1e-9)
    np.testing.assert_allclose(shapes["centroid"][square], (80, 30), atol=1e-9)
    # Ids need not be consecutive, and a thin line gets a finite elongation.
    line = np.zeros((20, 40), np.int64)
    line[10, 5:35] = 7000
    assert np.isfinite(nucleus_shapes(line)["elongation"]).all()


# --------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def known_fit() -> tuple[NucleusStatistics, list[np.ndarray]]:
    real = _maps(KNOWN, 12, 512, seed=1)
    return fit_statistics(real, window=128, seed=0), real


def test_fit_recovers_known_parameters(known_fit) -> None:
    fitted, real = known_fit
    assert fitted.num_images == 12 and fitted.num_nuclei > 800
    assert fitted.log_area_mean == pytest.approx(KNOWN.log_area_mean, abs=0.1)
    assert fitted.log_elongation_mean == pytest.approx(KNOWN.log_elongation_mean, abs=0.07)
    assert fitted.density_mean == pytest.approx(KNOWN.density_mean, rel=0.15)
    assert fitted.irregularity_amplitude == pytest.approx(KNOWN.irregularity_amplitude, abs=0.03)
    # The true Clark-Evans ratio of the process, from fresh maps and independent code.
    assert fitted.nn_ratio == pytest.approx(
        _observed(_maps(KNOWN, 12, 512, seed=9), 128)["nn_ratio"], abs=0.08
    )
    assert fitted.cluster_fraction > 0.2  # clustered input is recognised as clustered
    _close(_observed(real, 128), fitted)  # and the fit describes what it measured


def test_generated_maps_reproduce_the_fit(known_fit) -> None:
    fitted, _ = known_fit
    _close(_observed(_maps(fitted, 12, 512, seed=2), 128), fitted)


def test_fit_on_procedural_tiles_reproduces_area_and_density() -> None:
    tiles = [generate_tile(i, SynthConfig(size=256)).nuclei for i in range(8)]
    fitted = fit_statistics(tiles, window=128)
    assert fitted.num_nuclei > 500
    # Procedural tiles mix tissue types (and empty glass), so shape and layout are only roughly
    # a single log-normal / Thomas process; area and count are what must carry over.
    _close(_observed(_maps(fitted, 8, 256, seed=3), 128), fitted, skip=("log_elongation_mean", "nn_ratio"))


# --------------------------------------------------------------------------- generator


def test_overlap_rule_and_labels() -> None:
    source = PseudoMaskSource(KNOWN, 384, seed=4)
    splits = total = 0
    for index in range(3):
        inst = source(index)
        assert inst.dtype == np.int32 and inst.shape == (384, 384)
        n = int(inst.max())
        assert n > 30
        assert np.array_equal(np.unique(inst[inst > 0]), np.arange(1, n + 1))  # consecutive, none lost
        # One component per label: the count of 8-connected same-valued regions exceeds n only by splits.
        splits += connected_components(inst, background=0, connectivity=2).max() - n
        total += n
    assert splits <= 0.05 * total
    assert PseudoMaskSource(KNOWN, (200, 300), seed=0)(0).shape == (200, 300)


def test_source_is_deterministic_in_seed_and_index() -> None:
    a, b = PseudoMaskSource(KNOWN, 128, seed=5), PseudoMaskSource(KNOWN, 128, seed=5)
    assert np.array_equal(a(3), b(3))
    assert np.array_equal(a(3), a(3))
    assert not np.array_equal(a(3), a(4))
    assert not np.array_equal(a(3), PseudoMaskSource(KNOWN, 128, seed=6)(3))
    with pytest.raises(ConfigError, match="seed"):
        PseudoMaskSource(KNOWN, 128, seed=-1)


def test_clustering_lowers_the_clark_evans_ratio() -> None:
    sparse = dataclasses.replace(KNOWN, density_mean=3.0, density_var=3.0, log_area_mean=math.log(150))
    clustered = dataclasses.replace(sparse, cluster_fraction=0.8, cluster_sigma=10.0)
    uniform = dataclasses.replace(sparse, cluster_fraction=0.0, cluster_sigma=0.0)
    r_clustered = _observed(_maps(clustered, 4, 512, seed=6), 128)["nn_ratio"]
    r_uniform = _observed(_maps(uniform, 4, 512, seed=6), 128)["nn_ratio"]
    assert r_uniform > 0.95  # nuclei cannot overlap, so a uniform layout is if anything regular
    assert r_clustered < r_uniform - 0.2


# --------------------------------------------------------------------------- file and errors


def test_save_load_round_trip(tmp_path) -> None:
    path = tmp_path / "stats.json"
    KNOWN.save(path)
    assert NucleusStatistics.load(path) == KNOWN
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    path.write_text(path.read_text()[:60])
    with pytest.raises(DataError, match="not valid JSON"):
        NucleusStatistics.load(path)
    incomplete = KNOWN.to_dict()
    del incomplete["window"]
    path.write_text(str(incomplete).replace("'", '"'))
    with pytest.raises(DataError, match="missing keys \\['window'\\]"):
        NucleusStatistics.load(path)
    with pytest.raises(DataError, match="cannot read"):
        NucleusStatistics.load(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="cluster_sigma"):
        dataclasses.replace(KNOWN, cluster_sigma=0.0)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="no nuclei to fit"):
        fit_statistics([])
    with pytest.raises(ConfigError, match="no nuclei to fit"):
        fit_statistics([np.zeros((64, 64), np.int32)])
    border_only = np.zeros((64, 64), np.int32)
    border_only[:10, :10] = 1
    with pytest.raises(ConfigError, match="no nuclei to fit"):
        fit_statistics([border_only])
    good = generate_instances(KNOWN, 256, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="instance map 1 "):
        fit_statistics([good, good.astype(np.float32)])
    with pytest.raises(ConfigError, match="instance map 2 "):
        fit_statistics([good, good, good[None]])
    with pytest.raises(ConfigError, match="larger than every"):
        fit_statistics([good], window=512)
