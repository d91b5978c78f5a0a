"""The training sequences: binarized text cleaned for distillation, and the collate function that pads them.

Built from `data_format.load_binarized()`, whose token arrays are memory maps of the binarizer's shards: the
dataset never copies them. Every rank of a node maps the same files, so the page cache holds one copy,
and a rank's own memory holds only what cleaning changed. On construction, as upstream:

1. sequences longer than the model's input size are split into chunks, each wrapped in [CLS] ... [SEP]
   (BOS/EOS for causal LMs); the chunks (rare: a sentence of 500+ tokens) are kept in memory;
2. sequences shorter than `min_len` (12) tokens are dropped: too short to mask 15% of usefully;
3. sequences that are half or more unknown tokens are dropped.

Item order is upstream's: the kept sequences in file order, then the chunks of the split ones.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from grouped_batch_sampler import BLOCK, create_lengths_groups, group_dtype
from training.data_format import Binarized, offsets_from_lengths
from utils import logger

MIN_LEN = 12  # upstream drops sequences of 11 tokens or fewer
MAX_UNK_FRACTION = 0.5  # upstream drops sequences at least half unknown
SCAN_BLOCK = 1 << 18  # sequences per step of the cleaning scan: ~15 MB of scratch, whatever the corpus
OK, LONG, SHORT, UNKNOWN = 0, 1, 2, 3  # what cleaning does with a sequence


@dataclass(frozen=True)
class SequenceSpec:
    """What the training sequences are, decided once: train.py builds it from the tokenizer (after checking the
    data file against it) and gives it to the dataset and to the masking; nothing reads ids from the flags.

    special_ids: data_format.special_token_ids(tokenizer) (cls_token, sep_token, pad_token, mask_token, unk_token,
    bos_token, eos_token -> id); max_len: the models' input size, where longer sequences are split; mlm: True
    for [CLS] ... [SEP] padded with [PAD], False for BOS ... EOS padded with unk (causal LMs); pad_to_multiple_of:
    batch widths rounded up to it (8: tensor-core friendly); min_len: shorter sequences are dropped."""

    special_ids: dict
    max_len: int
    mlm: bool = True
    pad_to_multiple_of: int = 8
    min_len: int = MIN_LEN

    @property
    def bos_id(self):
        return self.special_ids["cls_token" if self.mlm else "bos_token"]

    @property
    def eos_id(self):
        return self.special_ids["sep_token" if self.mlm else "eos_token"]

    @property
    def pad_id(self):
        return self.special_ids["pad_token"] if self.mlm else self.special_ids.get("unk_token", self.eos_id)

    @property
    def unk_id(self):
        return self.special_ids.get("unk_token")

    @property
    def mask_id(self):
        return self.special_ids.get("mask_token")


class LmSeqsDataset(Dataset):
    """Sequences of token ids, item i = (token ids as a numpy view, length).

    spec: a SequenceSpec (special ids, max_len, mlm, pad_to_multiple_of, min_len).
    data: a `data_format.Binarized` or a list of 1-D integer arrays.
    The dataset owns its length groups (`groups`, a byte an item), which an epoch's batching reads.
    """

    def __init__(self, spec, data):
        if not isinstance(data, Binarized):
            data = Binarized.from_sequences(data)
        self.data, self.spec = data, spec
        self.max_len, self.mlm, self.min_len = int(spec.max_len), spec.mlm, spec.min_len
        self.pad_to_multiple_of = spec.pad_to_multiple_of or 1
        self.bos_id, self.eos_id, self.pad_id, self.unk_id = spec.bos_id, spec.eos_id, spec.pad_id, spec.unk_id

        status, groups = self.scan()  # per position: OK, LONG, SHORT or UNKNOWN; its length group
        counts = np.bincount(status, minlength=4)
        # Item i < n_kept is position i + (removed positions before it): only the removed ones are stored.
        removed = np.flatnonzero(status != OK)
        self._skip = removed - np.arange(len(removed))
        self.n_kept = len(status) - len(removed)
        chunks, n_short, n_unk = self.split_long_sequences(np.flatnonzero(status == LONG))
        self.chunk_ids = np.concatenate(chunks).astype(data.dtype) if chunks else np.zeros(0, data.dtype)
        self.chunk_offsets = offsets_from_lengths([len(c) for c in chunks])
        # Every item's length group (one byte each): an epoch's batching looks them up, not the lengths.
        chunk_groups = create_lengths_groups(np.diff(self.chunk_offsets), k=self.max_len, log=False)
        self.groups = np.concatenate([np.delete(groups, removed), chunk_groups])
        self.n_tokens = data.n_tokens - int(data.lengths_at(removed).sum()) + len(self.chunk_ids)
        logger.info(
            f"{len(status):,} sequences read: {counts[LONG]:,} longer than {self.max_len} tokens split, "
            f"{counts[SHORT] + n_short:,} shorter than {self.min_len} removed, {counts[UNKNOWN] + n_unk:,} mostly "
            f"unknown removed -> {len(self):,} sequences, {self.n_tokens:,} tokens"
        )

    def __len__(self):
        return self.n_kept + len(self.chunk_offsets) - 1

    def __getitem__(self, i):
        if i < self.n_kept:
            ids = self.data[int(self.positions(i))]
            return ids, len(ids)
        j = i - self.n_kept
        ids = self.chunk_ids[self.chunk_offsets[j] : self.chunk_offsets[j + 1]]
        return ids, len(ids)

    def positions(self, items):
        """The data positions of kept items (items < n_kept)."""
        return items + np.searchsorted(self._skip, items, side="right")

    def length_groups(self, k):
        """Each item's length group for create_lengths_groups(k=...): the cached bytes when k is max_len."""
        if k == self.max_len:
            return self.groups
        blocks = (self.lengths_at(np.arange(i, min(i + BLOCK, len(self)))) for i in range(0, len(self), BLOCK))
        return np.concatenate([create_lengths_groups(lengths, k=k, log=False) for lengths in blocks]
                              or [np.zeros(0, group_dtype(k))])

    def lengths_at(self, items):
        """Lengths of `items` (vectorized, no token is read)."""
        items = np.asarray(items, dtype=np.int64)
        out = np.empty(len(items), dtype=np.int64)
        kept = items < self.n_kept
        out[kept] = self.data.lengths_at(self.positions(items[kept]))
        out[~kept] = np.diff(self.chunk_offsets)[items[~kept] - self.n_kept]
        return out

    @property
    def lengths(self):
        """Every item's length (an array of len(self): for small sets and tests)."""
        return self.lengths_at(np.arange(len(self)))

    # -- cleaning (no token array is copied) ---------------------------------------------------------------

    def scan(self):
        """What cleaning does with each position. Reads the tokens once, shard by shard, block by block."""
        data = self.data
        n_global = len(data.offsets) - 1
        status = np.empty(n_global, dtype=np.uint8)
        groups = np.empty(n_global, dtype=group_dtype(self.max_len))
        bounds = data.sequence_starts
        for s, shard in enumerate(data.shards):
            base = int(data.token_starts[s])
            for g0 in range(int(bounds[s]), int(bounds[s + 1]), SCAN_BLOCK):
                g1 = min(g0 + SCAN_BLOCK, int(bounds[s + 1]))
                offsets = np.asarray(data.offsets[g0 : g1 + 1]) - base
                lengths = np.diff(offsets)
                block = status[g0:g1]
                block[:] = OK
                if self.unk_id is not None:  # [UNK] is rare: find each one, then count them per sequence
                    hits = np.flatnonzero(shard[offsets[0] : offsets[-1]] == self.unk_id)
                    if len(hits):
                        seq = np.searchsorted(offsets[1:] - offsets[0], hits, side="right")
                        n_unk = np.bincount(seq, minlength=len(lengths))
                        block[n_unk >= MAX_UNK_FRACTION * lengths] = UNKNOWN
                block[lengths < self.min_len] = SHORT
                block[lengths > self.max_len] = LONG
                groups[g0:g1] = create_lengths_groups(lengths, k=self.max_len, log=False)
        if data.order is None:
            return status, groups
        return status[data.order], groups[data.order]

    def split_long_sequences(self, positions):
        """Chunks of at most max_len of each long sequence, each [CLS] body [SEP]; and of those chunks, how many
        were dropped as short and as mostly unknown (as upstream: split first, then filter)."""
        body_len = self.max_len - 2
        chunks = []
        for p in positions:
            seq = self.data[int(p)]
            start, end = int(seq[0] == self.bos_id), len(seq) - int(seq[-1] == self.eos_id)
            for j in range(start, end, body_len):
                chunks.append(np.concatenate(([self.bos_id], seq[j : min(j + body_len, end)], [self.eos_id])))
        kept, n_short, n_unk = [], 0, 0
        for c in chunks:
            if len(c) < self.min_len:
                n_short += 1
            elif self.unk_id is not None and (c == self.unk_id).sum() >= MAX_UNK_FRACTION * len(c):
                n_unk += 1
            else:
                kept.append(c)
        return kept, n_short, n_unk

    # -- batching ------------------------------------------------------------------------------------------

    def batch_sequences(self, batch):
        """Collate [(ids, length), ...] into (token_ids (bs, L) int64, lengths (bs,) int64).

        L is the longest length rounded up to a multiple of `pad_to_multiple_of` (never past max_len).
        """
        lengths = np.fromiter((n for _, n in batch), dtype=np.int64, count=len(batch))
        longest = int(lengths.max())
        m = self.pad_to_multiple_of
        width = max(longest, min(-(-longest // m) * m, self.max_len))
        out = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        for row, (ids, n) in enumerate(batch):
            out[row, :n] = ids
        return torch.from_numpy(out), torch.from_numpy(lengths)
