"""Token counting: scripts/token_counts.py's vectorised count against upstream's Counter loop.

    python benchmarks/bench_token_counts.py [--data_file data/binarized_text.bert-base-uncased.pickle]

Without --data_file it counts 200,000 generated sequences of ~40 Zipf-distributed ids over a 30,522-id
vocabulary (the speed of counting does not depend on what the ids mean). Upstream counts its list of
per-sequence numpy arrays with `Counter.update`; ours bincounts the flat id array. Both results are
checked equal before the timings are printed; each time is the best of 3 runs.
"""

import argparse
import collections
import time

import numpy as np

from scripts.token_counts import count_tokens
from training.data_format import Binarized, load_binarized, offsets_from_lengths


def reference(sequences, vocab_size):
    """Upstream's loop over a list of arrays."""
    counter = collections.Counter()
    for ids in sequences:
        counter.update(ids)
    counts = [0] * vocab_size
    for token, n in counter.items():
        counts[token] = n
    return counts


def best_of(repeats, fn, *args):
    """Fastest of a few runs, and the result: the same rule for both implementations."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times), result


def generated(n_sequences, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(3.6, 0.5, size=n_sequences).astype(np.int64), 12, 512)
    ids = np.minimum(rng.zipf(1.2, size=int(lengths.sum())), vocab_size - 1).astype(np.uint16)
    return Binarized(ids, offsets_from_lengths(lengths), {"vocab_size": vocab_size})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_file", help="a binarized file; default: generated sequences")
    parser.add_argument("--sequences", type=int, default=200_000, help="generated sequences")
    parser.add_argument("--vocab_size", type=int, default=30522)
    args = parser.parse_args()

    data = load_binarized(args.data_file) if args.data_file else generated(args.sequences, args.vocab_size)
    sequences = data.sequences()  # upstream's in-memory shape: one array per sequence
    print(f"{len(data):,} sequences, {data.token_ids.size:,} tokens")

    t_ref, ref = best_of(3, reference, sequences, args.vocab_size)
    t_ours, ours = best_of(3, count_tokens, data.token_ids, args.vocab_size)
    assert ours.tolist() == ref, "counts differ: fix correctness first"

    n = data.token_ids.size
    print(f"\n| {'implementation':<24} | {'seconds':>8} | {'tokens/s':>14} |")
    print(f"|{'-' * 26}|{'-' * 10}|{'-' * 16}|")
    print(f"| {'upstream Counter loop':<24} | {t_ref:>8.3f} | {n / t_ref:>14,.0f} |")
    print(f"| {'token_counts.py bincount':<24} | {t_ours:>8.3f} | {n / t_ours:>14,.0f} |")
    print(f"\nspeed-up {t_ref / t_ours:,.0f}x (target >= 50x)")


if __name__ == "__main__":
    main()
