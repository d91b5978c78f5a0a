"""Step 3: count how often each token id occurs, for the smoothed MLM masking probabilities.

    python scripts/token_counts.py --data_file data/binarized_text.bert-base-uncased.pickle \
        --token_counts_dump data/token_counts.bert-base-uncased.pickle --vocab_size 30522

writes one int64 count per id of the vocabulary (plus metadata; see training/data_format.py). train.py masks rare tokens
more often than frequent ones: p(token) ~ count ** -mlm_smoothing (cf. XLM / word2vec).

np.bincount over the id arrays, shard by shard (the counts add up, so the order does not matter), replaces
upstream's Counter loop (benchmarks/bench_token_counts.py). Memory stays at one block, whatever the corpus.
"""

import argparse
import sys

import numpy as np

from core.errors import InputError, reports_errors
from core.files import check_writable
from training.data_format import load_binarized, save_token_counts


def count_tokens(token_ids, vocab_size, block=1 << 18):
    """Occurrences of each id in one array, or in each array of an iterable of them (shards). bincount
    casts its input to int64: in cache-sized blocks that cast stays in the cache."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in [token_ids] if isinstance(token_ids, np.ndarray) else token_ids:
        for start in range(0, len(ids), block):
            counts += np.bincount(ids[start : start + block], minlength=vocab_size)
    return counts


def check_vocab_size(data_file, meta, max_id, vocab_size):
    """--vocab_size must agree with the tokenizer recorded in the data and cover every id in it."""
    recorded = meta.get("vocab_size")
    if recorded is not None and recorded != vocab_size:
        raise InputError(
            f"--vocab_size {vocab_size} does not match {data_file}, binarized with {meta.get('tokenizer_name')!r} "
            f"({recorded} ids): pass --vocab_size {recorded}"
        )
    if max_id >= vocab_size:
        raise InputError(
            f"{data_file} holds token id {max_id}, outside --vocab_size {vocab_size}: pass the vocabulary size "
            f"of the tokenizer the data was binarized with (at least {max_id + 1})"
        )


@reports_errors
def main(argv=None):
    parser = argparse.ArgumentParser(prog="token_counts.py",
                                     description="Token counts for smoothing the MLM masking probabilities.")
    parser.add_argument("--data_file", default="data/dump.bert-base-uncased.pickle", help="binarized data (step 2)")
    parser.add_argument("--token_counts_dump", default="data/token_counts.bert-base-uncased.pickle",
                        help="output file")
    parser.add_argument("--vocab_size", type=int, default=30522, help="ids in the tokenizer (bert-base-uncased: 30522)")
    args = parser.parse_args(argv)

    try:
        check_writable(args.token_counts_dump, "--token_counts_dump")
        data = load_binarized(args.data_file)
        if data.n_tokens == 0:
            raise InputError(f"{args.data_file} holds no tokens: re-create it with scripts/binarized_data.py")
        check_vocab_size(args.data_file, data.meta, data.max_id(), args.vocab_size)
        counts = count_tokens(data.blocks(), args.vocab_size)
        meta = {"data_file": str(args.data_file), "tokenizer_name": data.meta.get("tokenizer_name"),
                "vocab_digest": data.meta.get("vocab_digest"),  # train.py refuses counts of another vocabulary
                "n_sequences": len(data)}
        save_token_counts(args.token_counts_dump, counts, meta)
    except OSError as e:  # a full disk, a folder that vanished during the run
        raise InputError(f"could not write {args.token_counts_dump} ({e.strerror or e})") from e
    seen = int((counts > 0).sum())
    print(f"counted {counts.sum():,} tokens of {len(data):,} sequences; {seen:,} of {args.vocab_size:,} ids occur; "
          f"wrote {args.token_counts_dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
