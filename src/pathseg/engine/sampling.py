"""Which samples go into which step, computed from the step number alone.

The batch of global step ``s`` is a pure function of ``(seed, s)``: epoch ``e`` uses the permutation
drawn from ``(seed, e)``, and every sample also gets its own augmentation seed drawn from
``(seed, position)``. Because nothing depends on sampler or worker state, a resumed run sees exactly
the batches an uninterrupted run would have seen, with any number of data-loader workers, and a
DDP run over W ranks with batch B sees the same samples as one process with batch W*B.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def augmentation_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the sample at this position of the infinite sample stream."""
    return int(np.random.SeedSequence([seed, position, 0xA5]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset_index, augmentation_seed)`` for this rank, from ``start_step`` on, forever.

    Args:
        dataset_size: number of samples in the dataset.
        batch_size: per-rank batch size.
        seed: run seed.
        start_step: first step to produce (the step a resumed run continues from).
        rank, world_size: this process's place in a DDP group.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def indices_for_step(self, step: int) -> list[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        out = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.n)
            out.append(
                (int(_permutation(self.seed, epoch, self.n)[offset]), augmentation_seed(self.seed, position))
            )
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            yield from self.indices_for_step(step)
            step += 1
