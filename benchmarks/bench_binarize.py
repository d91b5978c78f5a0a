"""Binarization: scripts/binarized_data.py against upstream's algorithm, same input, same tokenizer.

    python benchmarks/bench_binarize.py --lines 1000000 --tokenizer_name bert-base-uncased

Each implementation runs in a fresh process (so peak RSS is its own) on the same generated file
(benchmarks/corpus.py). The reference is upstream's algorithm as written: readlines(), one
`tokenizer.encode("[CLS] line [SEP]")` per line, a Python list of ids per line, converted to one small
numpy array each, shuffled, pickled. Before timing means anything, the two outputs are checked to hold
the same sequences (upstream keeps short ones; train.py drops them later, so they are left out of the
comparison). Prints lines/s, peak RSS, CPU use, and the ratios.
"""

import argparse
import json
import pickle
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.corpus import write_lines
from scripts import binarized_data
from training.data_format import load_binarized

ROOT = Path(__file__).resolve().parents[1]


def reference(file_path, tokenizer_name, out):
    """Upstream's binarization loop, kept deliberately as upstream does it."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(tokenizer_name)
    bos, sep = tokenizer.cls_token, tokenizer.sep_token
    with open(file_path, encoding="utf8") as f:
        data = f.readlines()
    result = []
    for text in data:
        result.append(tokenizer.encode(f"{bos} {text.strip()} {sep}", add_special_tokens=False))
    arrays = [np.uint16(ids) for ids in result]
    random.shuffle(arrays)
    with open(out, "wb") as f:
        pickle.dump(arrays, f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data)


def ours(file_path, tokenizer_name, out_prefix):
    rc = binarized_data.main(["--file_path", str(file_path), "--tokenizer_type", "bert",
                              "--tokenizer_name", tokenizer_name, "--dump_file", str(out_prefix)])
    assert rc == 0, "binarized_data.py failed"
    return sum(1 for _ in open(file_path, "rb"))


def child(args):
    start = time.perf_counter()
    if args.child == "reference":
        n = reference(args.file, args.tokenizer_name, args.out)
    else:
        n = ours(args.file, args.tokenizer_name, args.out)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"lines": n, "seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
                      "cpu_cores_busy": (usage.ru_utime + usage.ru_stime) / wall}))


def run_child(kind, file, tokenizer_name, out):
    cmd = [sys.executable, __file__, "--child", kind, "--file", str(file), "--tokenizer_name", tokenizer_name,
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="input lines (the target is measured at >= 1M)")
    parser.add_argument("--tokenizer_name", default="bert-base-uncased", help="hub name or local folder")
    parser.add_argument("--workdir", default="/tmp/bench_binarize", help="generated input and outputs")
    parser.add_argument("--child", choices=["reference", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    work = Path(args.workdir)
    print(f"generating {args.lines:,} lines in {work} ...", flush=True)
    text = write_lines(work / f"lines_{args.lines}.txt", args.lines)
    ref_out, our_prefix = work / "reference.pickle", work / "ours"
    results = {}
    for kind, out in (("reference", ref_out), ("ours", our_prefix)):
        print(f"running {kind} ...", flush=True)
        results[kind] = run_child(kind, text, args.tokenizer_name, out)

    ref = load_binarized(ref_out)  # data_format reads upstream's list of arrays too
    mine = load_binarized(next(work.glob("ours.*.pickle")))
    min_tokens = mine.meta["min_tokens"]
    ref_kept = sorted(s.tobytes() for s in ref.sequences() if len(s) >= min_tokens)
    assert ref_kept == sorted(s.tobytes() for s in mine.sequences()), "outputs differ: fix correctness first"
    print(f"outputs agree: {len(ref_kept):,} sequences of >= {min_tokens} tokens, {mine.token_ids.size:,} tokens")

    r, o = results["reference"], results["ours"]
    print(f"\n| {'implementation':<22} | {'lines/s':>9} | {'seconds':>7} | {'peak RSS MB':>11} | {'cores busy':>10} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 9}|{'-' * 13}|{'-' * 12}|")
    for name, x in (("upstream algorithm", r), ("binarized_data.py", o)):
        print(f"| {name:<22} | {x['lines'] / x['seconds']:>9,.0f} | {x['seconds']:>7.1f} | "
              f"{x['peak_rss_mb']:>11,.0f} | {x['cpu_cores_busy']:>10.2f} |")
    print(f"\nspeed-up {r['seconds'] / o['seconds']:.2f}x lines/s (target >= 1.5x); "
          f"peak RSS {o['peak_rss_mb'] / r['peak_rss_mb']:.3f} of upstream's (target <= 0.2)")


if __name__ == "__main__":
    main()
