"""Length-grouped batches: sequences of similar length share a batch, so little of each batch is padding.

`epoch_batches()` gives one epoch's batches, a pure function of (seed, epoch, rank, world size): the
training loop can skip the batches a resumed run has already seen, and every rank gets the same number
of batches. It gives exactly the batches of torch's DistributedSampler feeding upstream's
GroupedBatchSampler (kept below as the reference), computed with array operations: no Python int per
sequence, a few bytes a sequence and well under a second for millions.
"""

import math
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from utils import logger

BLOCK = 1 << 20  # lengths computed a block at a time: the scratch stays ~50 MB, whatever the corpus


def length_bins(k):
    return np.arange(3, k, 4) if k > 0 else np.array([10])


def group_dtype(k):
    """The smallest type of create_lengths_groups(k=k)'s ids."""
    return np.dtype(np.uint8) if len(length_bins(k)) < 256 else np.dtype(np.uint16)


def create_lengths_groups(lengths, k=0, log=True):
    """Group id per sequence: length bins of width 4 (edges 3, 7, 11, ... below k), or <10 / >=10 if k=0.
    As uint8 (uint16 past 256 groups): a byte a sequence, and numpy sorts it by radix."""
    bins = length_bins(k)
    groups = np.searchsorted(bins, np.asarray(lengths), side="right").astype(group_dtype(k))
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


class EpochBatches:
    """One epoch's batches: consecutive runs of `batch_size` in one flat index array (the last may be short).

    Iterating yields lists of ints (what a DataLoader's batch_sampler gives); `batches[k:]` skips k."""

    def __init__(self, indices, batch_size, first=0):
        self.indices, self.batch_size, self.first = indices, batch_size, first

    def __len__(self):
        return max(0, math.ceil(len(self.indices) / self.batch_size) - self.first)

    def __getitem__(self, k):
        if isinstance(k, slice):
            if k.step not in (None, 1) or k.stop is not None:
                raise ValueError("only batches[k:] is supported")
            return EpochBatches(self.indices, self.batch_size, self.first + (k.start or 0))
        k = range(len(self))[k]  # negative indices, IndexError
        start = (self.first + k) * self.batch_size
        return self.indices[start : start + self.batch_size].tolist()

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    def __eq__(self, other):
        return list(self) == list(other)


def distributed_indices(n, epoch, seed, rank=0, world_size=1):
    """This rank's share of the shuffled indices, exactly as DistributedSampler(shuffle=True) gives them."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    # int32 gives the same permutation as int64 (tested) at half the memory.
    indices = torch.randperm(n, generator=g, dtype=torch.int32 if n < 2**31 else torch.int64).numpy()
    total = math.ceil(n / world_size) * world_size
    if total > n:  # pad by repeating from the start, so every rank has as many
        indices = np.concatenate([indices, np.resize(indices, total - n)])
    return indices[rank:total:world_size]


def group_batches(groups, batch_size):
    """Positions 0..len(groups)-1 arranged as GroupedBatchSampler arranges the indices it is fed in that order.

    Each group fills batches in order, a batch leaving when it is full (so batches come out in the order
    of their last element); the leftovers of all groups are then joined in group order and cut."""
    n = len(groups)
    order = np.argsort(groups, kind="stable")  # by group, then by position (a radix sort of bytes)
    sizes = np.bincount(groups)
    starts = np.cumsum(sizes) - sizes
    # In `order`, group g holds [starts[g], starts[g] + sizes[g]); its first sizes[g] // batch_size batches are full.
    edges = np.zeros(n + 1, dtype=np.int8)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + sizes // batch_size * batch_size, -1)
    full = np.cumsum(edges[:n], dtype=np.int8) > 0
    full_batches = order[full].reshape(-1, batch_size)
    full_batches = full_batches[np.argsort(full_batches[:, -1])]  # in the order they fill up
    return np.concatenate([full_batches.ravel(), order[~full]])


def epoch_batches(groups, batch_size, epoch, seed, rank=0, world_size=1, group_by_size=True):
    """This rank's batches (an EpochBatches of dataset indices) in `epoch`.

    groups: every sequence's length group (create_lengths_groups; LmSeqsDataset.groups holds its own, a byte a
    sequence). Shuffled with (seed, epoch) as a DistributedSampler (a world of one is fine) and given this
    rank's share; then grouped by length, or taken in order.
    """
    indices = distributed_indices(len(groups), epoch, seed, rank, world_size)
    if group_by_size:
        indices = indices[group_batches(np.asarray(groups)[indices], batch_size)]
    return EpochBatches(indices, batch_size)
