"""Label-fraction subsets and train/validation splits: seeded, nested, group-respecting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pathseg.data.folders import Sample, discover_dataset, read_groups_csv
from pathseg.data.splits import label_fraction_subset, train_val_split
from pathseg.errors import ConfigError, DataError
from tests.data.helpers import SHARED_DATA, needs_shared_data


def make_samples(n: int = 60, per_group: int | None = 3) -> tuple[list[Sample], dict[str, str] | None]:
    samples = [Sample(f"img_{i:03d}", Path(f"img_{i:03d}.png"), Path(f"m_{i:03d}.png")) for i in range(n)]
    if per_group is None:
        return samples, None
    # uneven group sizes (1, 2, ..., 2 * per_group - 1, repeating) make the greedy choice non-trivial;
    # images of one group are interleaved, not adjacent
    labels: list[str] = []
    size, group = 1, 0
    while len(labels) < n:
        labels += [f"p{group:02d}"] * size
        size, group = size % (2 * per_group - 1) + 1, group + 1
    order = [(i * 7) % n for i in range(n)] if math.gcd(7, n) == 1 else list(range(n))
    groups = {samples[j].stem: labels[i] for i, j in enumerate(order)}
    return samples, groups


def stems(samples: list[Sample]) -> set[str]:
    return {s.stem for s in samples}


@pytest.mark.parametrize("per_group", [None, 3])
def test_subset_is_reproducible_and_seed_dependent(per_group: int | None) -> None:
    samples, groups = make_samples(per_group=per_group)
    a = label_fraction_subset(samples, 0.25, seed=1, groups=groups)
    b = label_fraction_subset(samples, 0.25, seed=1, groups=groups)
    c = label_fraction_subset(samples, 0.25, seed=2, groups=groups)
    assert a == b
    assert stems(a) != stems(c)


def test_subset_size_without_groups() -> None:
    samples, _ = make_samples(85, per_group=None)
    assert len(label_fraction_subset(samples, 0.1, seed=0)) == 9  # 8.5 -> ties go up
    assert len(label_fraction_subset(samples, 0.25, seed=0)) == 21
    assert len(label_fraction_subset(samples, 0.001, seed=0)) == 1  # at least one image
    assert label_fraction_subset(samples, 1.0, seed=0) == samples


@pytest.mark.parametrize("seed", range(5))
def test_subsets_are_nested(seed: int) -> None:
    samples, groups = make_samples()
    previous: set[str] = set()
    for fraction in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        current = stems(label_fraction_subset(samples, fraction, seed, groups))
        assert previous <= current
        previous = current
    assert previous == stems(samples)


def test_subset_takes_whole_groups() -> None:
    samples, groups = make_samples()
    assert groups is not None
    chosen = label_fraction_subset(samples, 0.3, seed=3, groups=groups)
    chosen_groups = {groups[s.stem] for s in chosen}
    rest_groups = {groups[s.stem] for s in samples if s not in chosen}
    assert chosen and not chosen_groups & rest_groups


def test_subset_uses_sample_group_field() -> None:
    samples = [Sample(f"s{i}", Path(f"s{i}.png"), group=f"g{i // 4}") for i in range(20)]
    chosen = label_fraction_subset(samples, 0.2, seed=0)
    assert len(chosen) == 4 and len({s.group for s in chosen}) == 1


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan, "0.5", True])
def test_fraction_validation(fraction: object) -> None:
    samples, _ = make_samples(per_group=None)
    with pytest.raises(ConfigError, match="label fraction"):
        label_fraction_subset(samples, fraction, seed=0)  # type: ignore[arg-type]


def test_missing_group_is_reported() -> None:
    samples, groups = make_samples()
    assert groups is not None
    del groups["img_005"]
    with pytest.raises(DataError, match=r"img_005\.png: image 'img_005' has no group"):
        label_fraction_subset(samples, 0.5, seed=0, groups=groups)


@pytest.mark.parametrize("per_group", [None, 3])
def test_train_val_split_partitions_by_group(per_group: int | None) -> None:
    samples, groups = make_samples(per_group=per_group)
    train, val = train_val_split(samples, 0.2, seed=0, groups=groups)
    assert stems(train) | stems(val) == stems(samples) and not stems(train) & stems(val)
    assert 0 < len(val) < len(samples)
    if groups is not None:
        assert not {groups[s.stem] for s in train} & {groups[s.stem] for s in val}
    assert (train, val) == train_val_split(samples, 0.2, seed=0, groups=groups)
    assert stems(val) != stems(train_val_split(samples, 0.2, seed=1, groups=groups)[1])


def test_train_val_split_edge_cases() -> None:
    samples, _ = make_samples(10, per_group=None)
    assert train_val_split(samples, 0.0, seed=0) == (samples, [])
    train, val = train_val_split(samples, 0.99, seed=0)
    assert len(train) == 1 and len(val) == 9
    with pytest.raises(ConfigError, match="validation fraction"):
        train_val_split(samples, 1.0, seed=0)
    with pytest.raises(ConfigError, match="one group"):
        train_val_split(samples, 0.5, seed=0, groups={s.stem: "same" for s in samples})


@pytest.mark.shared_data
@needs_shared_data
def test_glas_fractions_by_patient() -> None:
    samples = discover_dataset(SHARED_DATA / "glas" / "train")
    groups = read_groups_csv(SHARED_DATA / "glas" / "grade.csv")
    previous: set[str] = set()
    for fraction in (0.1, 0.25, 1.0):
        chosen = label_fraction_subset(samples, fraction, seed=0, groups=groups)
        patients = {groups[s.stem] for s in chosen}
        rest = {groups[s.stem] for s in samples if s not in chosen}
        assert chosen and not patients & rest
        assert previous <= stems(chosen)
        previous = stems(chosen)
        # whole patients, so only roughly the target count
        assert abs(len(chosen) - fraction * len(samples)) <= 16
    assert previous == stems(samples)
