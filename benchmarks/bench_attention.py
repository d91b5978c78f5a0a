"""Which attention kernel a CPU training step should use, in fp32 and in bf16 autocast, measured.

    python benchmarks/bench_attention.py --sizes minilm,tiny,base --rounds 3

Times a forward and backward of a BertForMaskedLM (random weights, padded batches of Wikipedia-like
lengths with their attention masks) under each attention path:
- `sdpa`: PyTorch's scaled_dot_product_attention, letting it choose (on a CPU: its flash kernel);
- `math`: the same call restricted to SDPBackend.MATH (plain matmuls and softmax, autograd backward);
- `eager`: transformers' own attention (attn_implementation="eager"), the reference.
Prints ms per step, the ratio to the reference, and which path train.py and run_glue.py use
(`precision.ATTENTION`).
"""

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from core import precision
from core.precision import cpu_bf16_is_fast, cpu_description

ROOT = Path(__file__).resolve().parents[1]

SIZES = {  # layers, hidden, heads, batch, mean length
    "minilm": (6, 384, 12, 32, 40),  # all-MiniLM-L6-v2's shape, the demo's teacher: head size 32
    "tiny": (4, 128, 2, 32, 40),
    "base": (12, 768, 12, 8, 128),
}
PATHS = ("eager", "sdpa", "math")


def batch(size, seed=0):
    _, _, _, bs, mean = SIZES[size]
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.gamma(4.0, mean / 4.0, size=bs).astype(int), 12, 512)
    width = -(-int(lengths.max()) // 8) * 8
    ids = torch.from_numpy(rng.integers(1000, 30000, size=(bs, width)))
    mask = torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask.long()


def model(size, path):
    from transformers import BertConfig, BertForMaskedLM

    layers, hidden, heads, _, _ = SIZES[size]
    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        intermediate_size=4 * hidden, attn_implementation="eager" if path == "eager" else "sdpa")
    torch.manual_seed(0)
    return BertForMaskedLM(config).train()


def step_ms(m, path, dtype, ids, mask, rounds):
    times = []
    for r in range(rounds + 1):
        kernel = sdpa_kernel([SDPBackend.MATH]) if path == "math" else contextlib.nullcontext()
        autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        start = time.perf_counter()
        with autocast, kernel:
            loss = m(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        m.zero_grad(set_to_none=True)
        if r:  # the first run warms up the kernels
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="minilm,tiny,base", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per case (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    if any(s not in SIZES for s in sizes) or args.rounds < 1:
        parser.error(f"--sizes takes {', '.join(SIZES)}; --rounds at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = {"fp32": None} | ({"bf16": torch.bfloat16} if cpu_bf16_is_fast() else {})
    print(f"CPU: {cpu_description()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for size in sizes:
        ids, mask = batch(size)
        models = {p: model(size, p) for p in PATHS}
        for name, dtype in dtypes.items():
            ms = {p: step_ms(models[p], p, dtype, ids, mask, args.rounds) for p in PATHS}
            picked = precision.attention_for("cpu", name)
            cells = ", ".join(f"{p} {ms[p]:,.0f} ms ({ms['eager'] / ms[p]:.2f}x)" for p in PATHS)
            print(f"{size:>7} {name}: {cells}; picked: {picked or 'sdpa'}")


if __name__ == "__main__":
    main()
