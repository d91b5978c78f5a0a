"""Length-grouped batches: sequences of similar length share a batch, so little of each batch is padding.

`epoch_batches()` gives one epoch's batches as a list, a pure function of (seed, epoch, rank, world size):
the training loop can skip the batches a resumed run has already seen, and every rank gets the same
number of batches.
"""

from collections import defaultdict

import numpy as np
from torch.utils.data import BatchSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from utils import logger


def create_lengths_groups(lengths, k=0, log=True):
    """Group id per sequence: length bins of width 4 (edges 3, 7, 11, ... below k), or <10 / >=10 if k=0."""
    bins = np.arange(3, k, 4) if k > 0 else np.array([10])
    groups = np.searchsorted(bins, np.asarray(lengths), side="right")
    if log:
        logger.info(f"{len(bins) + 1} length groups, sizes {np.bincount(groups, minlength=len(bins) + 1).tolist()}")
    return groups


class GroupedBatchSampler(BatchSampler):
    """Batches of `batch_size` indices from one length group, in the order `sampler` yields them.

    Each group fills its own buffer; a full buffer is yielded as a batch. At the end, the leftovers of all
    groups (each smaller than a batch) are joined in group order and cut into batches, so every index the
    sampler yields comes out exactly once and there are ceil(n / batch_size) batches.
    """

    def __init__(self, sampler, group_ids, batch_size):
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler should be a torch.utils.data.Sampler, got {type(sampler).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = group_ids
        self.batch_size = batch_size

    def __iter__(self):
        buffers = defaultdict(list)
        for idx in self.sampler:
            buf = buffers[self.group_ids[idx]]
            buf.append(idx)
            if len(buf) == self.batch_size:
                yield list(buf)
                buf.clear()
        rest = [idx for group in sorted(buffers) for idx in buffers[group]]
        for i in range(0, len(rest), self.batch_size):
            yield rest[i : i + self.batch_size]

    def __len__(self):
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size


def epoch_batches(lengths, batch_size, epoch, seed, rank=0, world_size=1, group_by_size=True, max_len=512):
    """The list of batches (lists of dataset indices) this rank trains on in `epoch`.

    A DistributedSampler (a world of one is fine) shuffles with (seed, epoch) and gives this rank its share,
    padded so every rank has as many indices; then batches are grouped by length or taken in order.
    """
    sampler = DistributedSampler(range(len(lengths)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    if group_by_size:
        groups = create_lengths_groups(lengths, k=max_len, log=False)
        batches = GroupedBatchSampler(sampler, groups, batch_size)
    else:
        batches = BatchSampler(sampler, batch_size, drop_last=False)
    return [list(map(int, b)) for b in batches]
