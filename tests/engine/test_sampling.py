import itertools

from pathseg.engine.sampling import StepSampler


def take(sampler: StepSampler, count: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), count))


def test_same_seed_same_stream_and_every_epoch_is_a_permutation():
    a = take(StepSampler(10, batch_size=4, seed=3), 40)
    b = take(StepSampler(10, batch_size=4, seed=3), 40)
    assert a == b
    for epoch in range(4):
        assert sorted(i for i, _ in a[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert len({s for _, s in a}) == 40  # every sample position has its own augmentation seed


def test_different_seed_changes_order():
    assert take(StepSampler(10, 4, seed=0), 10) != take(StepSampler(10, 4, seed=1), 10)


def test_resuming_at_a_step_continues_the_stream():
    full = take(StepSampler(7, batch_size=3, seed=5), 30)
    resumed = take(StepSampler(7, batch_size=3, seed=5, start_step=4), 18)
    assert resumed == full[12:30]


def test_ranks_partition_the_single_process_global_batch():
    single = StepSampler(9, batch_size=4, seed=2)
    ranks = [StepSampler(9, batch_size=2, seed=2, rank=r, world_size=2) for r in range(2)]
    for step in range(6):
        joined = ranks[0].indices_for_step(step) + ranks[1].indices_for_step(step)
        assert joined == single.indices_for_step(step)
