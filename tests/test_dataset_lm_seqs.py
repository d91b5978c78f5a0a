"""LmSeqsDataset cleaning and collation, and the length-grouped batch sampler."""

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

from grouped_batch_sampler import GroupedBatchSampler, create_lengths_groups, epoch_batches
from lm_seqs_dataset import LmSeqsDataset, SequenceSpec
from training import data_format

CLS, SEP, PAD, UNK, MASK = 2, 3, 0, 1, 4
SPECIAL = {"cls_token": CLS, "sep_token": SEP, "pad_token": PAD, "unk_token": UNK, "mask_token": MASK}


def seq(body):
    return np.array([CLS, *body, SEP], dtype=np.uint16)


def binarized(seqs):
    return data_format.Binarized(np.concatenate(seqs), data_format.offsets_from_lengths([len(s) for s in seqs]))


def test_long_sequences_are_split_into_cls_sep_wrapped_chunks():
    body = np.arange(10, 10 + 45)  # 47 tokens with [CLS]/[SEP]
    short_ok = seq(np.arange(100, 115))
    ds = LmSeqsDataset(SequenceSpec(SPECIAL, max_len=20, min_len=3), binarized([seq(body), short_ok]))
    items = [ds[i][0] for i in range(len(ds))]
    assert any(np.array_equal(x, short_ok) for x in items)
    chunks = [x for x in items if not np.array_equal(x, short_ok)]
    assert [len(c) for c in chunks] == [20, 20, 11]  # 45 body tokens: 18 + 18 + 9, each wrapped
    for c in chunks:
        assert c[0] == CLS and c[-1] == SEP and CLS not in c[1:-1] and SEP not in c[1:-1]
    assert np.array_equal(np.concatenate([c[1:-1] for c in chunks]), body)  # nothing lost, order kept
    assert all(ds.lengths == [len(x) for x in items])


def test_short_and_mostly_unknown_sequences_are_removed():
    keep = seq(np.arange(20, 30))  # 12 tokens: kept
    too_short = seq(np.arange(20, 29))  # 11 tokens: removed, as upstream (<= 11)
    unknown = seq([UNK] * 6 + list(range(20, 24)))  # 6 of 12 unknown: removed (>= 50%)
    almost = seq([UNK] * 5 + list(range(20, 25)))  # 5 of 12: kept
    ds = LmSeqsDataset(SequenceSpec(SPECIAL, max_len=512), binarized([keep, too_short, unknown, almost]))
    assert len(ds) == 2
    assert np.array_equal(ds[0][0], keep) and np.array_equal(ds[1][0], almost)


def test_upstream_list_of_arrays_is_accepted():
    ds = LmSeqsDataset(
        SequenceSpec(SPECIAL, max_len=512), [seq(np.arange(20, 40)), seq(np.arange(5, 30))]
    )
    assert list(ds.lengths) == [22, 27]


def test_collate_pads_to_a_multiple_of_8_within_max_len():
    ds = LmSeqsDataset(
        SequenceSpec(SPECIAL, max_len=30),
        binarized([seq(np.arange(20, 30)), seq(np.arange(20, 41)), seq(np.arange(20, 48))]),
    )
    ids, lengths = ds.batch_sequences([ds[0], ds[1]])
    assert ids.shape == (2, 24) and ids.dtype == torch.int64 and lengths.tolist() == [12, 23]
    assert ids[0, 12:].eq(PAD).all() and ids[1, 23:].eq(PAD).all()
    assert ids[1, :23].tolist() == ds[1][0].tolist()
    ids, _ = ds.batch_sequences([ds[2]])  # 30 tokens: rounding up to 32 would pass the model's 30
    assert ids.shape == (1, 30)


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_grouped_sampler_yields_every_index_exactly_once(batch_size):
    rng = np.random.default_rng(0)
    lengths = rng.integers(12, 120, size=203)
    groups = create_lengths_groups(lengths, k=128)
    sampler = GroupedBatchSampler(SequentialSampler(range(203)), groups, batch_size)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert len(batches) == len(sampler) == -(-203 // batch_size)
    assert all(len(b) <= batch_size for b in batches)
    # every full batch yielded before the leftovers comes from a single length group
    n_full_first = sum(1 for b in batches if len(b) == batch_size and len({groups[i] for i in b}) == 1)
    assert n_full_first >= len(batches) - len(set(groups)) - 1


def test_epoch_batches_shuffle_per_epoch_and_split_across_ranks():
    lengths = np.random.default_rng(1).integers(12, 60, size=101)
    groups = create_lengths_groups(lengths, k=512, log=False)
    e0 = epoch_batches(groups, 8, epoch=0, seed=5)
    assert e0 == epoch_batches(groups, 8, epoch=0, seed=5)  # a pure function: resume can replay it
    assert e0 != epoch_batches(groups, 8, epoch=1, seed=5)
    assert sorted(i for b in e0 for i in b) == list(range(101))
    r0 = epoch_batches(groups, 8, epoch=0, seed=5, rank=0, world_size=2)
    r1 = epoch_batches(groups, 8, epoch=0, seed=5, rank=1, world_size=2)
    assert len(r0) == len(r1)  # DDP needs the same number of steps on every rank
    seen = [i for b in list(r0) + list(r1) for i in b]
    assert set(seen) == set(range(101)) and len(seen) == 102  # one index repeated to even out the ranks
    plain = epoch_batches(groups, 8, epoch=0, seed=5, group_by_size=False)
    assert sorted(i for b in plain for i in b) == list(range(101))
