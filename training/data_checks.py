"""Whether a binarized file fits what it is used with: the tokenizer of the run (every id in its vocabulary,
its special ids where the file says they are), and, for a held-out file, the training file (no shared
sequence)."""

import logging
from pathlib import Path

from core.errors import InputError
from training.data_format import vocab_digest

logger = logging.getLogger("distillation")  # configured by utils.py

def check_held_out(train_file, train, valid_file, valid):
    """A held-out file must share no sequence with the training file. Two files of one binarization share
    one order.npy, so their position ranges must not overlap; files of different folders are not compared."""
    if train.span is None or valid.span is None or train.span[0] != valid.span[0]:
        return
    (_, a0, a1), (_, b0, b1) = train.span, valid.span
    shared = max(0, min(a1, b1) - max(a0, b0))
    if shared:
        raise InputError(f"{valid_file} shares {shared:,} of its {b1 - b0:,} sequences with {train_file}: it is not "
                         "held out; re-run scripts/binarized_data.py with --valid_size N to write both "
                         "again")


def check_data_fits(data_file, data, data_meta, tokenizer, special):
    """The data must have been binarized with the tokenizer in use (the teacher's): same vocabulary, same
    special ids. InputError otherwise; a warning when an old file does not record its vocabulary."""
    vocab = len(tokenizer)
    remedy = f"re-binarize it with --tokenizer_name {tokenizer.name_or_path}"
    if "vocab_size" in data_meta and data_meta["vocab_size"] != vocab:
        raise InputError(
            f"{data_file} was binarized with a vocabulary of {data_meta['vocab_size']} "
            f"({data_meta.get('tokenizer_name')}) but the tokenizer has {vocab}: {remedy}"
        )
    for name, idx in (data_meta.get("special_token_ids") or {}).items():
        if name in special and special[name] != idx:
            raise InputError(f"{data_file} has {name} id {idx} but the tokenizer's is {special[name]}: {remedy}")
    if data.max_id() >= vocab:
        raise InputError(f"{data_file} holds token ids >= the vocabulary size {vocab}: {remedy}")
    # Compare vocabularies, not names: the same vocabulary often sits in folders of different names.
    data_tok, digest = data_meta.get("tokenizer_name"), data_meta.get("vocab_digest")
    if digest is not None:
        if digest != vocab_digest(tokenizer):
            raise InputError(
                f"{data_file} was binarized with another vocabulary of the same size ({data_tok}): {remedy}"
            )
    elif data_tok and Path(str(data_tok)).name != Path(str(tokenizer.name_or_path)).name:
        logger.warning(
            f"{data_file} was made with tokenizer {data_tok!r}, training uses {tokenizer.name_or_path!r}; "
            f"the file does not record its vocabulary, so they could not be compared"
        )
