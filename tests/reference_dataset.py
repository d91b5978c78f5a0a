"""The in-memory LmSeqsDataset as it was before the data was memory-mapped: the reference the mapped
dataset must match item for item (tests/test_mapped_data.py). It copies the tokens as it cleans them."""


import numpy as np
from torch.utils.data import Dataset

from training.data_format import Binarized, offsets_from_lengths
from utils import logger

MIN_LEN = 12  # upstream drops sequences of 11 tokens or fewer
MAX_UNK_FRACTION = 0.5  # upstream drops sequences at least half unknown


class InMemoryLmSeqsDataset(Dataset):
    """Sequences of token ids, item i = (token ids as a numpy view, length).

    spec: an lm_seqs_dataset.SequenceSpec, read here field by field as upstream read its params.
    data: a `data_format.Binarized` or a list of 1-D integer arrays.
    """

    def __init__(self, spec, data):
        if not isinstance(data, Binarized):
            data = Binarized.from_sequences(data)
        self.spec = spec
        self.max_len = int(spec.max_len)
        self.mlm = spec.mlm
        self.pad_to_multiple_of = spec.pad_to_multiple_of or 1
        ids = spec.special_ids
        if self.mlm:
            self.bos_id, self.eos_id, self.pad_id = ids["cls_token"], ids["sep_token"], ids["pad_token"]
        else:
            self.bos_id, self.eos_id = ids["bos_token"], ids["eos_token"]
            self.pad_id = ids.get("unk_token", self.eos_id)
        self.unk_id = ids.get("unk_token")

        self.token_ids = data.token_ids
        self.lengths = np.diff(data.offsets).astype(np.int64)
        n0 = len(self.lengths)
        n_long = self.split_long_sequences()
        min_len = spec.min_len
        n_short = self.remove_short_sequences(min_len)
        n_unk = self.remove_unknown_sequences()
        self.offsets = offsets_from_lengths(self.lengths)
        logger.info(
            f"{n0:,} sequences read: {n_long:,} longer than {self.max_len} tokens split, {n_short:,} shorter than "
            f"{min_len} removed, {n_unk:,} mostly unknown removed -> {len(self):,} sequences, "
            f"{int(self.lengths.sum()):,} tokens"
        )

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        return self.token_ids[self.offsets[i] : self.offsets[i + 1]], self.lengths[i]

    # -- cleaning (each step keeps the arrays flat) ------------------------------------------------------

    def _keep(self, keep):
        self.token_ids = self.token_ids[np.repeat(keep, self.lengths)]
        self.lengths = self.lengths[keep]

    def split_long_sequences(self):
        """Cut sequences longer than max_len into chunks of at most max_len, each [CLS] body [SEP]."""
        long = self.lengths > self.max_len
        n_long = int(long.sum())
        if not n_long:
            return 0
        offsets = offsets_from_lengths(self.lengths)
        body_len = self.max_len - 2
        chunks = []
        for i in np.flatnonzero(long):
            seq = self.token_ids[offsets[i] : offsets[i + 1]]
            start, end = int(seq[0] == self.bos_id), len(seq) - int(seq[-1] == self.eos_id)
            for j in range(start, end, body_len):
                chunks.append(np.concatenate(([self.bos_id], seq[j : min(j + body_len, end)], [self.eos_id])))
        self._keep(~long)
        dtype = self.token_ids.dtype
        self.token_ids = np.concatenate([self.token_ids] + [c.astype(dtype) for c in chunks])
        self.lengths = np.concatenate([self.lengths, np.fromiter(map(len, chunks), np.int64, len(chunks))])
        return n_long

    def remove_short_sequences(self, min_len=MIN_LEN):
        keep = self.lengths >= min_len
        self._keep(keep)
        return int((~keep).sum())

    def remove_unknown_sequences(self):
        if self.unk_id is None or not len(self.lengths):
            return 0
        starts = offsets_from_lengths(self.lengths)[:-1]  # every sequence is non-empty here
        n_unk = np.add.reduceat((self.token_ids == self.unk_id).astype(np.int64), starts)
        keep = n_unk < MAX_UNK_FRACTION * self.lengths
        self._keep(keep)
        return int((~keep).sum())
