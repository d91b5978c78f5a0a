"""Training step: our Distiller against upstream's step, on the same batches and the same models.

    python benchmarks/bench_train.py                        # both CPU sizes, ~7 minutes on 2 cores
    python benchmarks/bench_train.py --sizes tiny --steps 3 --rounds 1   # a quick look (~1 minute)
    python benchmarks/bench_train.py --impls ref,ours,ours-unfused,ours-pad1,ours-adamw-loop   # ablations
    python benchmarks/bench_train.py --impls ref,ours,ours-minilm   # what the MiniLM losses cost
    python benchmarks/bench_train.py --device cuda --fp16   # on a GPU: 1,000 fp16 steps at batch 32, memory, MFU

Sizes (models built from configs, random weights: speed does not depend on what the weights know):
- tiny: teacher BERT 4 x 128 (2 heads, FFN 512), student DistilBERT 2 x 128, batches of 32 lines of
  ~50 tokens (12 + Gamma(2, 19) tokens, grouped by length as in training);
- base: teacher bert-base (12 x 768), student DistilBERT 4 x 768, batches of 8 lines of 128 tokens;
- gpu: the base models on batches of 32 lines of ~50 tokens, as train.sh runs them on a GPU.
Both use the bert-base-uncased vocabulary size (30,522) and its special ids; no tokenizer is needed.

Each timed step is the whole per-batch work: masking, forward of both models, losses, backward, clip,
optimizer step. The reference is upstream's step as written (examples/research_projects/distillation):
(bs x len) masking, full-vocab logits for every position, (bs x len x vocab) masks and masked_select,
separate softmax / log_softmax, KLDivLoss(batchmean) * T^2, cross-entropy over every position (-100
ignored), CosineEmbeddingLoss on masked-selected hidden states, fp32, `.item()` on each loss. Ours is
distiller.Distiller: prepare_batch + step + backward + optimizer_step, losses left on the device.

Before any timing, the losses of both (KD, MLM, cosine, total; dropout off; the same masked batch) are
checked to agree to a relative 1e-5 in fp32. Then each implementation runs in its own fresh process
(so peak RSS is its own), all of them interleaved, `--rounds` times; the table gives medians over
rounds, and each ratio is the median of the per-round ratios.
By default our step is also timed under bf16 autocast (`--bf16`: teacher in bf16, student in fp32
under autocast; its losses are not held to the fp32 check). Tokens are non-pad tokens; one torch thread
per run by default (see --threads). Compare ratios from the same run.

On a GPU (--device cuda; the defaults become --sizes gpu --steps 1000 --rounds 1 --impls ref,ours):
with --fp16 both steps run under fp16 autocast with a GradScaler (ours also keeps its teacher in fp16).
Both get the memory guard (torch.cuda.empty_cache() when less than 2 GiB is free) and count its calls;
allocated / reserved / peak memory is sampled every --trace_every steps. Model FLOPs (model_flops():
the teacher's forward and the student's forward + backward on the non-pad tokens, 2 per multiply-add)
over the time give FLOP/s, and over the card's dense fp16 peak (workload.PEAK_TFLOPS, or --peak_tflops) the MFU.
The models, batches and FLOP count are in workload.py, upstream's step in upstream_step.py.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.upstream_step import Reference
from benchmarks.workload import SIZES, SPECIAL, build_models, make_batches, model_flops, peak_tflops_for, token_probs
from core.errors import finite_float
from core.precision import cpu_bf16_is_fast, cpu_description
from distiller import Distiller
from lm_seqs_dataset import LmSeqsDataset, SequenceSpec
from training import train_args
from training.monitor import Meter, memory_stats
from utils import DistInfo


# ----------------------------------------------------------------------------------------------------------
# Our step
def make_distiller(student, teacher, flags=None, device="cpu", fused_kd=True, fused_adamw=True):
    """A Distiller with train.py's defaults and `flags` ({"bf16": True, ...}) around the given models. The
    ablations turn a fast path off: fused_kd=False, KD through autograd on materialised logits (the path MSE
    takes); fused_adamw=False, torch's AdamW looping over the tensors."""
    import dataclasses

    import torch

    args = train_args.defaults(student_type="distilbert", teacher_type="bert", gradient_accumulation_steps=1,
                               num_workers=0, **(flags or {}))
    one_line = [np.array([101] + [2000] * 20 + [102])]  # the Distiller wants a dataset; batches come from outside
    dataset = LmSeqsDataset(SequenceSpec(SPECIAL, 512, pad_to_multiple_of=args.pad_to_multiple_of), one_line)

    dist = DistInfo(device=torch.device(device))
    distiller = Distiller(args, dataset, token_probs(), student, teacher, dist=dist)
    if not fused_kd:
        distiller.plan = dataclasses.replace(distiller.plan, fused_kd=False)
    if not fused_adamw:  # the same groups and hyper-parameters, stepped tensor by tensor
        opt = distiller.optimizer
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
        distiller.optimizer = torch.optim.AdamW(groups, fused=False, **{k: opt.defaults[k] for k in ("lr", "eps",
                                                                                                    "betas")})
        distiller.scheduler = torch.optim.lr_scheduler.LambdaLR(distiller.optimizer, distiller.lr_factor)
    return distiller, dataset


class Ours:
    """distiller.Distiller's per-batch work: collation, then Distiller.train_step, the very method its training
    loop calls (gradient accumulation of 1)."""

    def __init__(self, student, teacher, flags=None, device="cpu", **ablations):
        self.distiller, self.dataset = make_distiller(student, teacher, flags, device, **ablations)
        self.distiller.student.train()

    def train_step(self, seqs):
        d = self.distiller
        token_ids, lengths = self.dataset.batch_sequences([(s, len(s)) for s in seqs])
        batch = d.prepare_batch(token_ids, lengths)
        d.train_step(batch)
        return batch.n_tokens

    @property
    def n_empty_cache(self):
        return self.distiller.n_empty_cache

    def finish(self):
        """The one host read of a log interval; the next interval starts from zero."""

        means, self.distiller.meter = self.distiller.meter.read(), Meter()
        return means


# ----------------------------------------------------------------------------------------------------------
# The check: same masked batch, dropout off, fp32


def check_agreement(size, n_batches=2, rtol=1e-5, device="cpu"):
    import torch

    student, teacher = build_models(size)
    student.eval()  # both implementations must see the same (dropout-free) network
    ours = Ours(student, teacher, device=device)
    ours.distiller.student.eval()
    ref = Reference(student, teacher, token_probs(), device=device)
    worst = 0.0
    for i, seqs in enumerate(make_batches(size, n_batches, seed=1)):
        d = ours.distiller
        token_ids, lengths = ours.dataset.batch_sequences([(s, len(s)) for s in seqs])
        torch.manual_seed(i)
        batch = d.masking.prepare_batch_mlm(token_ids, lengths)  # one masked batch for both implementations
        labels = torch.full_like(batch.input_ids, -100)
        labels.view(-1)[batch.rows[: batch.n_targets]] = batch.targets
        with torch.no_grad():
            fast = d.compute_losses(batch)
            slow = ref.losses(batch.input_ids, batch.attention_mask, labels)
        for k in ("ce", "mlm", "cos", "loss"):
            a, b = float(fast[k]), float(slow[k])
            rel = abs(a - b) / max(abs(b), 1e-12)
            worst = max(worst, rel)
            if rel > rtol:
                raise SystemExit(f"{size}: loss {k} differs: ours {a:.8g}, reference {b:.8g} (relative {rel:.2g})")
    return worst


# ----------------------------------------------------------------------------------------------------------
# One timed run (in its own process)


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss():
    """Linux: make the process's peak RSS (VmHWM) restart from its current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def worker(impl, size, steps, warmup, threads, device="cpu", fp16=False, trace_every=0):
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    student, teacher = build_models(size)
    batches = make_batches(size, warmup + steps)
    if impl == "ref":
        runner = Reference(student, teacher, token_probs(), device, fp16)
        student.train()
    else:
        flags = {"ours-bf16": {"bf16": True}, "ours-pad1": {"pad_to_multiple_of": 1},
                 "ours-minilm": {"alpha_att": 1.0, "alpha_vv": 1.0}}.get(impl, {})
        runner = Ours(student, teacher, {**flags, "fp16": fp16}, device,
                      fused_kd=impl != "ours-unfused",  # KD through autograd on materialised logits
                      fused_adamw=impl != "ours-adamw-loop")  # torch's default AdamW on CPU: a loop over tensors
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    torch.manual_seed(0)
    for seqs in batches[:warmup]:  # optimizer state, allocator pools, compilation
        runner.train_step(seqs)
    if hasattr(runner, "finish"):
        runner.finish()
    sync()
    rss_before = psutil_rss()
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, flops, trace = 0, 0, []
    t0 = time.perf_counter()
    for i, seqs in enumerate(batches[warmup:], 1):
        tokens += runner.train_step(seqs)
        flops += model_flops([len(s) for s in seqs], size)
        if trace_every and (i % trace_every == 0 or i == steps):  # no device sync: allocator counters only
            trace.append({"step": i, **memory_stats(device), "empty_cache_calls": runner.n_empty_cache})
    if hasattr(runner, "finish"):
        runner.finish()
    sync()
    seconds = time.perf_counter() - t0
    result = {
        "impl": impl,
        "size": size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "fp16": fp16,
        "steps": steps,
        "tokens": tokens,
        "seconds": seconds,
        "ms_per_step": 1000 * seconds / steps,
        "tokens_per_s": tokens / seconds,
        "model_tflop_per_s": flops / seconds / 1e12,
        "peak_rss_gib": vm_hwm_bytes() / 2**30,  # peak over the timed steps (models and optimizer included)
        "rss_before_gib": rss_before / 2**30,  # after warmup: models, optimizer state, libraries
        "empty_cache_calls": runner.n_empty_cache,
        "threads": torch.get_num_threads(),
        "trace": trace,
    }
    if device.type == "cuda":
        result.update(memory_stats(device))
    return result


def psutil_rss():
    import psutil

    return psutil.Process().memory_info().rss


def run_worker(impl, size, args):
    cmd = [sys.executable, __file__, "--_worker", impl, "--sizes", size, "--steps", str(args.steps[size])]
    cmd += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
    cmd += ["--trace_every", str(args.trace_every)] + (["--fp16"] if args.fp16 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} on {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both steps run")
    parser.add_argument("--sizes", help="comma-separated: tiny, base, gpu (default: tiny,base on cpu; gpu on cuda)")
    parser.add_argument(
        "--steps", help="timed steps per run, per size, or one number (default: tiny=6,base=3 on cpu; 1000 on cuda)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps first (optimizer state, allocator; 1 on cpu, 20 on cuda)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved runs of each implementation (a load spike moves no median; 3 on cpu, 1 on cuda)",
    )
    parser.add_argument(
        "--impls",
        help="what to time: ref, ours, ours-bf16 (bf16 autocast, teacher in bf16), ours-unfused (KD through "
        "autograd on (rows x vocab) logits instead of FusedKD), ours-pad1 (no padding to a multiple of 8), "
        "ours-adamw-loop (torch's default AdamW on CPU instead of the fused one), ours-minilm (ours plus MiniLM's "
        "attention and value-relation losses) (default: ref,ours,ours-bf16,ours-minilm "
        "on cpu; ref,ours,ours-minilm on cuda)",
    )
    parser.add_argument("--fp16", action="store_true", help="both steps under fp16 autocast with a GradScaler (GPU)")
    parser.add_argument("--trace_every", type=int, help="sample memory every this many steps (default 50 on cuda)")
    parser.add_argument("--peak_tflops", type=finite_float, help="the card's dense fp16 peak, if not in PEAK_TFLOPS")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run; 1 by default: on a small machine shared with other work, a second "
        "OpenMP thread waits on the busy core and timings swing several-fold (0: torch's default)",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    defaults = {
        "sizes": "gpu" if gpu else "tiny,base",
        "steps": "1000" if gpu else "tiny=6,base=3",
        "warmup": 20 if gpu else 1,
        "rounds": 1 if gpu else 3,
        "impls": "ref,ours,ours-minilm" if gpu else "ref,ours,ours-bf16,ours-minilm",
        "trace_every": 50 if gpu else 0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = args.sizes.split(",")
    if "=" in args.steps:
        args.steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    else:
        args.steps = dict.fromkeys(SIZES, int(args.steps))

    if args._worker:
        res = worker(
            args._worker, sizes[0], args.steps[sizes[0]], args.warmup, args.threads, args.device, args.fp16,
            args.trace_every,
        )
        print(json.dumps(res))
        return

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = args.impls.split(",")

    if not gpu:
        print(f"CPU: {cpu_description()}, {torch.get_num_threads()} thread(s)")
        if "ours-bf16" in impls and not cpu_bf16_is_fast():
            print("  no native bf16 on this CPU (no AVX-512): ours-bf16 would measure emulation, ~10x slower "
                  "than fp32; left out (train.py --bf16 falls back to fp32 here too)")
            impls.remove("ours-bf16")
    if impls[0] != "ref":
        raise SystemExit("--impls must start with ref (the ratios are against it)")
    results = []
    for size in sizes:
        t0 = time.perf_counter()
        worst = check_agreement(size, device=args.device)
        took = time.perf_counter() - t0
        print(f"{size}: losses agree (fp32, largest relative difference {worst:.1e}) [{took:.0f} s]")
        for r in range(args.rounds):
            order = impls if r % 2 == 0 else impls[::-1]  # interleaved: drifts in machine load hit both
            for impl in order:
                res = run_worker(impl, size, args)
                res["round"] = r
                results.append(res)
                peak = f"GPU peak {res['gpu_peak_gib']:.2f} GiB" if gpu else f"peak {res['peak_rss_gib']:.2f} GiB"
                print(
                    f"  round {r} {impl:13s} {res['ms_per_step']:9.0f} ms/step {res['tokens_per_s']:9.0f} tok/s "
                    f"{1000 * res['model_tflop_per_s']:9.1f} GFLOP/s {peak}",
                    flush=True,
                )
    print_table(results, sizes, impls)
    if gpu:
        print_gpu_table(results, impls, args.peak_tflops)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_table(results, sizes, impls):
    """Medians over rounds; each ratio is the median of the per-round ratios (same round, same load)."""
    print()
    print("| setting | step | tokens/s | ms/step | peak RSS (GiB) | speed vs reference | peak vs reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size in sizes:
        runs = {(r["impl"], r["round"]): r for r in results if r["size"] == size}
        rounds = sorted({k[1] for k in runs})
        for impl in impls:
            mine = [runs[impl, r] for r in rounds]
            ref = [runs["ref", r] for r in rounds]

            def med(key, rows=mine):
                return statistics.median(row[key] for row in rows)

            speed = statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(mine, ref))
            peak = statistics.median(a["peak_rss_gib"] / b["peak_rss_gib"] for a, b in zip(mine, ref))
            print(
                f"| {size} | {impl} | {med('tokens_per_s'):,.0f} | {med('ms_per_step'):,.0f} "
                f"| {med('peak_rss_gib'):.2f} | {speed:.2f}x | {peak:.2f} |"
            )
    for size in sizes:  # what the relation losses add to our step, from the same rounds
        runs = {(r["impl"], r["round"]): r for r in results if r["size"] == size}
        rounds = sorted({r for _, r in runs})
        pairs = [(runs["ours-minilm", r], runs["ours", r]) for r in rounds if ("ours-minilm", r) in runs]
        if pairs:
            cost = statistics.median(a["ms_per_step"] / b["ms_per_step"] for a, b in pairs)
            print(f"{size}: the MiniLM losses (attention + value relation) make our step {cost:.2f}x as long")


def print_gpu_table(results, impls, peak_tflops=None):
    """GPU memory over the steps (the first round): allocated / reserved at the first sample at or after
    step 100 and at the last step, reserved growth between them (creep), peak, guard calls; and MFU."""
    print()
    print(
        "| step | model TFLOP/s | MFU | allocated (GiB) | reserved @100 -> last (GiB) | reserved growth | "
        "peak (GiB) | empty_cache calls |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for impl in impls:
        r = next(x for x in results if x["impl"] == impl)
        peak = peak_tflops or peak_tflops_for(r["device"])
        mfu = f"{r['model_tflop_per_s'] / peak:.1%}" if peak else "(--peak_tflops)"
        trace = r["trace"]
        at100 = next((t for t in trace if t["step"] >= 100), trace[0])
        last = trace[-1]
        growth = last["gpu_reserved_gib"] / at100["gpu_reserved_gib"] - 1
        print(
            f"| {impl} | {r['model_tflop_per_s']:.1f} | {mfu} | {last['gpu_allocated_gib']:.2f} "
            f"| {at100['gpu_reserved_gib']:.2f} (step {at100['step']}) "
            f"-> {last['gpu_reserved_gib']:.2f} (step {last['step']}) "
            f"| {growth:+.1%} | {r['gpu_peak_gib']:.2f} | {r['empty_cache_calls']} |"
        )
    print(f"\ndevice: {results[0]['device']}; FLOPs: model_flops() (teacher forward + 3 x student forward)")


if __name__ == "__main__":
    main()
