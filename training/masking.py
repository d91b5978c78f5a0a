"""Which positions a batch predicts: BERT's masking for MLM, the next token for CLM.

`Masking` is built from the token probabilities (token counts ** -smoothing, 0 for special tokens), the
[MASK] id and the rates; training, the held-out evaluation, the benchmark and the tests all mask through
it. `prepare_batch_mlm` / `prepare_batch_clm` (upstream's names) turn a collated batch into a `Batch`.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import InputError, finite_float
from training import data_format


@dataclass
class Batch:
    input_ids: torch.Tensor  # (bs, L) after masking
    attention_mask: torch.Tensor  # (bs, L) 1 on tokens, 0 on padding
    rows: torch.Tensor  # (n,) flat indices of the non-pad positions, the m positions to predict first
    targets: torch.Tensor  # (m,) the token ids to predict at rows[:m]
    n_tokens: int  # n, non-pad tokens (host ints: counting them needs no device sync)
    n_targets: int  # m

    # Putting the predicted positions first makes them a slice (rows[:m], hidden[:m]) for every model and
    # lets FusedKD find them chunk by chunk without asking the device; KD and cosine are means over rows,
    # so the order changes nothing else.


def load_token_probs(counts_file, vocab, special_ids, smoothing, digest=None):
    """Masking weights from a token counts file: count ** -smoothing (rare tokens are masked more often, as
    upstream's --mlm_smoothing), 0 for the special tokens, which are never predicted. `digest`: the
    tokenizer's vocab_digest, which the counts must have been made with (when they record theirs)."""
    counts, meta = data_format.load_token_counts(counts_file)
    if len(counts) != vocab:
        raise InputError(
            f"{counts_file} counts {len(counts)} token ids but the vocabulary has {vocab}: "
            f"re-run scripts/token_counts.py with --vocab_size {vocab}"
        )
    if digest is not None and meta.get("vocab_digest") not in (None, digest):
        raise InputError(
            f"{counts_file} counts the ids of another vocabulary of the same size ({meta.get('tokenizer_name')}): "
            "re-run scripts/token_counts.py on data binarized with this tokenizer"
        )
    probs = np.maximum(counts, 1).astype(np.float64) ** -smoothing
    probs[list(special_ids)] = 0.0
    return torch.from_numpy(probs).float()


# BERT's masking (Devlin et al. 2019), the one set of defaults of training (train.py) and of the held-out
# evaluation (scripts/evaluate.py), which must mask as training did
MASK_PROP = 0.15  # share of the tokens a batch predicts
WORD_MASK, WORD_KEEP, WORD_RAND = 0.8, 0.1, 0.1  # of those: replaced by [MASK], kept, replaced by a random id
SMOOTHING = 0.7  # masking weight ~ count ** -0.7: rare tokens are masked more often (XLM)


def add_flags(add):
    """The masking flags, on an ArgumentParser's `add_argument`."""
    add("--mlm_mask_prop", default=MASK_PROP, type=finite_float, help="share of tokens to predict (BERT's 15%%)")
    add("--word_mask", default=WORD_MASK, type=finite_float, help="of those, share replaced by [MASK]")
    add("--word_keep", default=WORD_KEEP, type=finite_float, help="share kept as is")
    add("--word_rand", default=WORD_RAND, type=finite_float, help="share replaced by a random token")
    add("--mlm_smoothing", default=SMOOTHING, type=finite_float,
        help="masking weight ~ count^-smoothing: rare tokens more often (XLM)")


def check_flags(args):
    if not 0.0 <= args.mlm_mask_prop <= 1.0:
        raise InputError(f"--mlm_mask_prop must be in [0, 1], got {args.mlm_mask_prop}")
    if not math.isclose(args.word_mask + args.word_keep + args.word_rand, 1.0, abs_tol=1e-6):
        raise InputError("--word_mask + --word_keep + --word_rand must sum to 1")


class Masking:
    """BERT's masking: ceil(mask_prop * tokens) non-special positions a batch, drawn without replacement with
    probability ~ token_probs; 80% become [MASK] (word_mask), 10% stay (word_keep), 10% a random token."""

    def __init__(self, token_probs, mask_id, vocab_size, mask_prop=MASK_PROP, word_mask=WORD_MASK, word_keep=WORD_KEEP,
                 device=None):
        self.device = torch.device(device or "cpu")
        self.token_probs = token_probs.to(self.device, torch.float32)
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.mask_prop = mask_prop
        self.cumprobs = (word_mask, word_mask + word_keep)

    @classmethod
    def from_params(cls, params, mask_id, token_probs, vocab_size, device):
        """From the masking flags (--mlm_mask_prop, --word_mask, --word_keep: add_flags) and the [MASK] id."""
        return cls(token_probs, mask_id, vocab_size, params.mlm_mask_prop, params.word_mask, params.word_keep, device)

    def prepare_batch_mlm(self, token_ids, lengths):
        """A collated batch on the device, masked; the masked positions are its rows to predict."""
        attention_mask, rows, n_tokens = _non_pad(token_ids, lengths)
        dev = dict(device=self.device, non_blocking=True)
        input_ids, rows, targets = self.mask_tokens(token_ids.to(**dev), rows.to(**dev), n_tokens)
        return Batch(input_ids, attention_mask.to(**dev).long(), rows, targets, n_tokens, len(targets))

    def mask_tokens(self, token_ids, rows, n_tokens):
        """(input ids, `rows` with the picked ones first, the picked positions' original ids)."""
        flat = token_ids.flatten()
        real = flat.index_select(0, rows)
        weights = self.token_probs[real]  # 0 for special tokens: never picked
        n_pick = math.ceil(self.mask_prop * n_tokens)
        target_rows = torch.multinomial(weights, n_pick, replacement=False)
        targets = real[target_rows]
        u = torch.rand(n_pick, device=self.device)
        random_ids = torch.randint(self.vocab_size, (n_pick,), device=self.device)
        new = torch.where(
            u < self.cumprobs[0],
            torch.full_like(targets, self.mask_id),
            torch.where(u < self.cumprobs[1], targets, random_ids),
        )
        input_ids = flat.index_copy(0, rows[target_rows], new).view_as(token_ids)
        # The other rows, in order, after the picks (a stable sort of the picked flags: no device sync).
        picked = torch.zeros(n_tokens, dtype=torch.uint8, device=self.device).index_fill_(0, target_rows, 1)
        others = torch.argsort(picked, stable=True)[: n_tokens - n_pick]
        return input_ids, torch.cat([rows[target_rows], rows[others]]), targets


def prepare_batch_clm(token_ids, lengths, device):
    """A collated batch on the device for causal LM: every non-pad position but the last of each sequence
    predicts the next token (those rows first, the last positions at the end)."""
    attention_mask, rows, _ = _non_pad(token_ids, lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    target_rows = torch.repeat_interleave(starts, lengths - 1) + _ranges(lengths - 1)
    targets = token_ids.flatten()[rows[target_rows] + 1]
    rows = torch.cat([rows[target_rows], rows[starts + lengths - 1]])
    dev = dict(device=device, non_blocking=True)
    n_tokens = int(lengths.sum())
    return Batch(token_ids.to(**dev), attention_mask.to(**dev).long(), rows.to(**dev), targets.to(**dev),
                 n_tokens, len(targets))


def _non_pad(token_ids, lengths):
    """(attention mask, flat indices of the non-pad positions, their count), computed on the host: no sync."""
    attention_mask = torch.arange(token_ids.size(1)) < lengths[:, None]
    return attention_mask, attention_mask.flatten().nonzero().squeeze(1), int(lengths.sum())


def _ranges(counts):
    """concatenate(arange(c) for c in counts), vectorised."""
    total = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(total) - torch.repeat_interleave(starts, counts)
