"""Reproducible label-fraction subsets and train/validation splits.

Both functions work on whole images, or on whole groups (patients) when groups are known, and
run *before* any cropping. Crops of one image can therefore never end up on both sides of a
split, and with groups no patient straddles labelled/held-out or train/validation.

Group of a sample: ``groups[stem]`` when a table is given, else ``sample.group``, else the
image's own stem (each image is its own group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pathseg.data.folders import Sample
from pathseg.errors import ConfigError, DataError

__all__ = ["group_of", "label_fraction_subset", "train_val_split"]

# Separate random streams, so that taking a label subset and a validation split with the same
# seed does not pick correlated groups.
_STREAM_SUBSET = 0
_STREAM_VAL = 1


def group_of(sample: Sample, groups: dict[str, str] | None) -> str:
    """The group key used for splitting (see module docstring)."""
    if groups is not None:
        if sample.stem not in groups:
            raise DataError(sample.image, f"image {sample.stem!r} has no group (patient) in the groups table")
        return groups[sample.stem]
    return sample.group if sample.group is not None else f"image:{sample.stem}"


def _grouped(samples: Sequence[Sample], groups: dict[str, str] | None) -> tuple[list[str], dict[str, int]]:
    """Group keys in a fixed (sorted) order, and the image count per group."""
    counts: dict[str, int] = {}
    for sample in samples:
        key = group_of(sample, groups)
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts), counts


def _permuted(keys: list[str], seed: int, stream: int) -> list[str]:
    rng = np.random.default_rng([int(seed), stream])
    return [keys[i] for i in rng.permutation(len(keys))]


def _prefix_length(sizes: list[int], target: float) -> int:
    """Smallest-error prefix: number k >= 1 of groups whose total is nearest ``target``.

    Ties go to the longer prefix. The choice is monotone in ``target``, which is what makes
    subsets for growing fractions nested.
    """
    cumulative = np.cumsum(sizes)
    errors = np.abs(cumulative - target)
    best = float(errors.min())
    # last index reaching the minimum -> ties resolved toward more images
    return int(np.flatnonzero(np.isclose(errors, best))[-1]) + 1


def _check_fraction(name: str, value: float, *, allow_zero: bool, allow_one: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    high_ok = value <= 1 if allow_one else value < 1
    if not (low_ok and high_ok):
        interval = ("[0" if allow_zero else "(0") + ", " + ("1]" if allow_one else "1)")
        raise ConfigError(f"{name} must be in {interval}, got {value}")
    return float(value)


def label_fraction_subset(
    samples: Sequence[Sample],
    fraction: float,
    seed: int,
    groups: dict[str, str] | None = None,
) -> list[Sample]:
    """The labelled subset for a label-efficiency experiment.

    The groups are put in one seeded random order and the shortest prefix whose image count is
    nearest to ``fraction * len(samples)`` is taken (at least one group). Because every
    fraction uses a prefix of the *same* permutation, subsets are nested for one seed:
    10% ⊂ 25% ⊂ 100%. Whole groups are taken, so a patient is never split between the
    labelled and the held-out images; the image count can therefore differ from the exact
    target. Samples come back in their input order.

    Raises:
        ConfigError: ``fraction`` outside (0, 1] or no samples.
        DataError: a sample has no entry in ``groups``.
    """
    fraction = _check_fraction("label fraction", fraction, allow_zero=False, allow_one=True)
    if not samples:
        raise ConfigError("cannot take a label fraction of an empty sample list")
    keys, counts = _grouped(samples, groups)
    order = _permuted(keys, seed, _STREAM_SUBSET)
    k = _prefix_length([counts[g] for g in order], fraction * len(samples))
    chosen = set(order[:k])
    return [s for s in samples if group_of(s, groups) in chosen]


def train_val_split(
    samples: Sequence[Sample],
    val_fraction: float,
    seed: int,
    groups: dict[str, str] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, validation) by whole groups (or whole images without groups).

    The split happens at image/group level before any cropping, so crops of one image can
    never be on both sides. Validation gets the seeded-permutation prefix of groups nearest
    to ``val_fraction`` of the images, at least one group, and leaves at least one group for
    training. ``val_fraction == 0`` gives an empty validation set.

    Raises:
        ConfigError: ``val_fraction`` outside [0, 1), no samples, or only one group to split.
        DataError: a sample has no entry in ``groups``.
    """
    val_fraction = _check_fraction("validation fraction", val_fraction, allow_zero=True, allow_one=False)
    if not samples:
        raise ConfigError("cannot split an empty sample list")
    if val_fraction == 0:
        return list(samples), []
    keys, counts = _grouped(samples, groups)
    if len(keys) < 2:
        raise ConfigError(
            f"cannot split into train and validation: all {len(samples)} samples are in one group"
        )
    order = _permuted(keys, seed, _STREAM_VAL)
    k = min(_prefix_length([counts[g] for g in order], val_fraction * len(samples)), len(keys) - 1)
    val_groups = set(order[:k])
    train = [s for s in samples if group_of(s, groups) not in val_groups]
    val = [s for s in samples if group_of(s, groups) in val_groups]
    return train, val
