"""bench_inference.py's picture: throughput by model and runtime, and each scored model's latency against its dev
score (one point per model and runtime)."""

import numpy as np


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = results["settings"]["lengths"][-1]
    rows = [r for r in results["rows"] if "throughput" in r and r["threads"] == max(x["threads"] for x in
                                                                                    results["rows"])]
    scored = [r for r in rows if results["models"][r["model"]].get("score") is not None]
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(13 if scored else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    models = list(dict.fromkeys(r["model"] for r in rows))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    width = 0.8 / len(runtimes)
    for k, runtime in enumerate(runtimes):
        values = [next((r["throughput"] for r in rows if r["model"] == m and r["runtime"] == runtime), 0)
                  for m in models]
        ax.bar(np.arange(len(models)) + k * width, values, width, label=runtime)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=20)
    ax.set_ylabel(f"sentences/s at batch {results['settings']['batch']}")
    ax.set_title(f"throughput, {rows[0]['threads'] if rows else ''} threads")
    ax.legend(fontsize=8)
    if scored:
        ax = axes[0][1]
        for r in scored:
            ax.scatter(r[f"latency_{longest}_ms"], results["models"][r["model"]]["score"])
            ax.annotate(f"{r['model']} ({r['runtime']})", (r[f"latency_{longest}_ms"],
                                                           results["models"][r["model"]]["score"]), fontsize=7)
        ax.set_xlabel(f"latency at batch 1, {longest} tokens (ms)")
        ax.set_ylabel("dev score (accuracy or F1)")
        ax.set_title("score against latency")
    fig.suptitle(results["cpu"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
