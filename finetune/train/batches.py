"""Length-grouped micro-batches whose order depends on the seed and the epoch only.

transformers' ``LengthGroupedSampler`` shuffles rows, cuts them into groups of up to 50 optimiser
steps, sorts each group by length and puts the longest batch first, so a micro-batch holds rows of
similar length and little of it is padding.  Its steps then run in length order, which on data whose
tasks differ in length means 50 steps of one task, then 50 of another; here the batches are formed
the same way but run in a shuffled order (the longest still first, so running out of memory happens
at once).  transformers' sampler also draws its shuffle from the global RNG when the epoch starts,
which a resumed run (or one that evaluated before training) has moved on, so ``skip_first_batches``
would skip the wrong rows.  :class:`SeededLengthGroupedSampler` draws each
epoch's order from ``seed + epoch`` instead (accelerate calls :meth:`set_epoch` on it every epoch), so
a run resumed mid-epoch and every process of a multi-process run see the very same order.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Rows grouped by length into batches of ``step_rows`` (all processes' micro-batches of one step)."""

    def __init__(self, step_rows: int, lengths: list[int], seed: int):
        super().__init__(step_rows, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if not batches:
            return iter([])
        # Each group comes out sorted by length, so rows of one kind (when kind and length go together)
        # would fill 50 steps in a row: keep the longest batch first, shuffle the order of the others.
        rest = [batches[i] for i in (torch.randperm(len(batches) - 1, generator=generator) + 1).tolist()]
        return iter([i for batch in batches[:1] + rest for i in batch])
