"""The cost of checking a binarized file's contents at load, against loading it unchecked.

    python benchmarks/bench_data_checks.py [--sequences 5355344] [--work /tmp/bench_data_checks]

Writes a format-2 file of the reference run's size (5,355,344 sequences of ~37 tokens, ~200M uint16 ids,
in 64 shards; random ids: the checks read every byte whatever it holds), then times, each the best of 3:
- the reference: the manifest and its arrays mapped, sizes compared (what loading did before the checks);
- data_format.load_binarized: the same, plus offsets against every shard's lengths.npy and order.npy a
  permutation (data_format.check_contents);
- Binarized.max_id(): every token id scanned (check_data_fits), against reading the binarizer's record.
The files are read from the page cache after the first round, as they are on a training machine.
"""

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from core.errors import InputError
from training import data_format


def write_corpus(folder, n_sequences, n_shards=64, seed=0):
    """A format-2 file of n_sequences in n_shards shards, as scripts/binarized_data.py lays it out."""
    rng = np.random.default_rng(seed)
    shards_dir = data_format.shards_folder(folder / "bin.pickle")
    shards_dir.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n_sequences, n_shards + 1).astype(np.int64)
    shards, ends = [], [np.zeros(1, np.int64)]
    for k in range(n_shards):
        lengths = rng.integers(12, 63, bounds[k + 1] - bounds[k]).astype(np.int32)
        n_tokens = int(lengths.sum())
        np.save(shards_dir / f"{k:05d}.tokens.npy", rng.integers(0, 30522, n_tokens, dtype=np.uint16))
        np.save(shards_dir / f"{k:05d}.lengths.npy", lengths)
        ends.append(ends[-1][-1] + np.cumsum(lengths, dtype=np.int64))
        shards.append({"file": f"{k:05d}.tokens.npy", "n_tokens": n_tokens, "n_sequences": len(lengths)})
    np.save(shards_dir / "offsets.npy", np.concatenate(ends))
    np.save(shards_dir / "order.npy", rng.permutation(n_sequences).astype(np.uint32))
    order_id = data_format.save_order_stamp(shards_dir, {"sequences": n_sequences, "seed": seed, "valid_size": 0})
    meta = {"max_id": 30521, "vocab_size": 30522}
    data_format.save_manifest(folder / "bin.pickle", shards_dir, shards, (0, n_sequences), meta, order_id)
    return folder / "bin.pickle", sum(s["n_tokens"] for s in shards)


def unchecked(path):
    """The reference: map the arrays and compare sizes only (data_format's loader without check_contents)."""
    saved = data_format.check_contents
    data_format.check_contents = lambda *a: None
    try:
        return data_format.load_binarized(path)
    finally:
        data_format.check_contents = saved


def best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench_data_checks.py", description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=5_355_344, help="sequences in the file (the reference run's)")
    p.add_argument("--work", default="/tmp/bench_data_checks", help="scratch folder (removed at the end)")
    p.add_argument("--rounds", type=int, default=3, help="timings per row; the best is reported")
    args = p.parse_args(argv)
    if args.sequences < 64 or args.rounds < 1:
        p.error("give --sequences of at least 64 and --rounds of at least 1")
    work = Path(args.work)
    if work.exists():
        p.error(f"--work {work} exists: give a new folder (it is removed at the end)")
    try:
        t0 = time.perf_counter()
        path, n_tokens = write_corpus(work, args.sequences)
        print(f"{args.sequences:,} sequences, {n_tokens:,} tokens in 64 shards, written in "
              f"{time.perf_counter() - t0:.1f} s")
        ref, data = best_of(args.rounds, lambda: unchecked(path))
        ours, checked = best_of(args.rounds, lambda: data_format.load_binarized(path))
        assert len(checked) == len(data) == args.sequences
        recorded, _ = best_of(args.rounds, lambda: int(data.meta["max_id"]))
        scan, max_id = best_of(args.rounds, data.max_id)
        assert max_id <= 30521
        print("| step | reference | with the checks | extra |")
        print("|---|---:|---:|---:|")
        print(f"| load the manifest and map its arrays | {ref * 1e3:.1f} ms | {ours * 1e3:.1f} ms | "
              f"+{(ours - ref) * 1e3:.0f} ms ({ours / ref:.1f}x) |")
        print(f"| the largest id: recorded / scanned | {recorded * 1e6:.1f} us | {scan * 1e3:.1f} ms | "
              f"+{scan * 1e3:.0f} ms |")
        extra = (ours - ref + scan) * 1e3
        print(f"the checks in all: {extra:.0f} ms once per process, at {args.sequences:,} sequences")
    except InputError as e:
        p.error(str(e))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    main()
