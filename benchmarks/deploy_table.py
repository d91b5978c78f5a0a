"""The tables of docs/deploy.md from what benchmarks/deploy_models.sh leaves in its folder: each real model's dev
score in PyTorch, ONNX fp32 and ONNX int8 (export_onnx.py's export.json, the run's results.json), its size, and
its latency and throughput in each runtime (bench_inference.py's inference.json), each student beside its
teacher; then the issue's goals on the shapes, met or missed and by how much.

    python benchmarks/deploy_table.py deploy_run             # markdown to stdout
"""

import argparse
import json
import sys
from pathlib import Path

from core.errors import InputError, reports_errors

PAIRS = {"sst2_student": "sst2_teacher", "qa_student": "qa_teacher"}  # deploy_models.sh's names
RUNTIMES = [("eager", "PyTorch fp32"), ("onnx", "ONNX fp32"), ("onnx-int8", "ONNX int8")]
# (what, student, teacher or None, runtime, compared runtime, at least): throughput ratios at the benchmark's batch
GOALS = [
    ("3x384 task student / MPNet teacher, same runtime", "task-student", "mpnet-base", None, None, 12.0),
    ("DistilBERT_small (4 x 768) / bert-base, same runtime", "distilbert-small", "bert-base", None, None, 2.8),
    ("ONNX int8 / ONNX fp32, DistilBERT_small", "distilbert-small", None, "onnx-int8", "onnx", 2.0),
]


def read(folder):
    """(inference.json, {model: export.json}, {model: PyTorch dev score}) of a deploy_models.sh folder."""
    bench = folder / "inference.json"
    if not bench.is_file():
        raise InputError(f"{folder}: no inference.json (run benchmarks/deploy_models.sh {folder} first)")
    exports, torch_scores = {}, {}
    order = [m for student, teacher in PAIRS.items() for m in (teacher, student)]  # each teacher, then its student
    for path in sorted((folder / "onnx").glob("*/export.json"), key=lambda p: (order + [p.parent.name]).index(
            p.parent.name)):
        record = json.loads(path.read_text())
        exports[path.parent.name] = record
        results = Path(record["source"]).parent / "results.json"
        if results.is_file():
            torch_scores[path.parent.name] = json.loads(results.read_text()).get("score")
    return json.loads(bench.read_text()), exports, torch_scores


def best_rows(bench):
    """{(model, runtime): row} at the largest thread count the benchmark ran (all cores by default)."""
    threads = max(r["threads"] for r in bench["rows"])
    return {(r["model"], r["runtime"]): r for r in bench["rows"] if r["threads"] == threads and "throughput" in r}


def models_table(bench, exports, torch_scores):
    rows = best_rows(bench)
    lines = ["| model | runtime | dev score | size MB | batch 1, 32 / 128 tokens (ms) | sentences/s at batch "
             f"{bench['settings']['batch']} | speed-up over its teacher |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, record in exports.items():
        dev = record.get("dev", {})
        scores = {"eager": torch_scores.get(name), "onnx": dev.get("fp32", {}).get("score"),
                  "onnx-int8": dev.get("int8", {}).get("score")}
        for runtime, label in RUNTIMES:
            r = rows.get((name, runtime))
            if r is None:
                continue
            teacher = rows.get((PAIRS.get(name), runtime))
            ratio = f"{r['throughput'] / teacher['throughput']:.1f}x" if teacher else ""
            score = scores[runtime]
            lines.append(f"| {name} | {label} | {'' if score is None else f'{score:.2f}'} | {r['bytes'] / 2**20:.0f} | "
                         f"{r['latency_32_ms']:.1f} / {r['latency_128_ms']:.1f} | {r['throughput']:.0f} | {ratio} |")
    return "\n".join(lines)


def goals_table(bench):
    rows = best_rows(bench)
    lines = ["| goal | runtime | measured | at least | FLOPs predict | |", "|---|---|---:|---:|---:|---|"]
    for what, student, teacher, runtime, base, least in GOALS:
        runtimes = [runtime] if runtime else [rt for rt, _ in RUNTIMES] + ["bf16"]
        for rt in runtimes:
            s, t = rows.get((student, rt)), rows.get((teacher, rt) if teacher else (student, base))
            if s is None or t is None:
                continue
            ratio = s["throughput"] / t["throughput"]
            flops = s.get("flops_speedup") if teacher else None
            verdict = "met" if ratio >= least else f"missed by {least - ratio:.2f}x"
            lines.append(f"| {what} | {rt} | {ratio:.2f}x | {least:g}x | {'' if flops is None else f'{flops:.1f}x'} | "
                         f"{verdict} |")
    return "\n".join(lines)


def int8_losses(exports):
    """The dev points each real model loses in ONNX int8 (goal: at most 1)."""
    lines = []
    for name, record in exports.items():
        lost = record.get("int8", {}).get("dev_points_lost")
        if lost is not None:
            verdict = "met" if lost <= 1 else f"missed by {lost - 1:.2f} points"
            lines.append(f"- {name}: int8 loses {lost:+.2f} dev points against ONNX fp32 (at most 1: {verdict}); "
                         f"agrees with fp32 on {100 * record['int8']['argmax_agreement_with_fp32']:.1f}% of "
                         "predictions")
    return "\n".join(lines)


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(prog="deploy_table.py", description=__doc__.split("\n")[0])
    p.add_argument("folder", help="benchmarks/deploy_models.sh's output folder")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    bench, exports, torch_scores = read(Path(args.folder))
    print(f"{bench['cpu']}; {bench['sentences']}\n")
    print(models_table(bench, exports, torch_scores) + "\n")
    print(goals_table(bench) + "\n")
    print(int8_losses(exports))


if __name__ == "__main__":
    main()
