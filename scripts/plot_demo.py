"""Plot training runs side by side: training MLM loss and held-out top-1 accuracy against iterations.

    python scripts/plot_demo.py --run distilled=demo_run/student_distilled --run mlm_only=demo_run/student_mlm \\
        --evaluation demo_run/evaluation.json --output demo_run/students.png

Reads each run folder's metrics.jsonl (train.py: one record per log interval, `valid_*` records from
--valid_file evaluations). With --evaluation (the JSON of scripts/evaluate.py), the teacher's held-out
top-1 is drawn as a dashed line. Writes one PNG with two panels.
"""

import argparse
import json
import sys
from pathlib import Path

from core.errors import InputError, reports_errors


def read_metrics(run_dir):
    """(training records, evaluation records) of a run folder, in file order; a resumed run's later
    records replace the earlier ones of the same iteration."""
    train, valid = {}, {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"{path} does not exist (train.py writes it)")
    for line in path.read_text().splitlines():
        r = json.loads(line)
        (valid if "valid_top1" in r else train)[r["iter"]] = r
    return [train[k] for k in sorted(train)], [valid[k] for k in sorted(valid)]


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR of a train.py run; repeat")
    p.add_argument("--evaluation", default=None, help="scripts/evaluate.py's JSON: the teacher's top-1 as a line")
    p.add_argument("--output", required=True, help="PNG to write")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(11, 4))
    for spec in args.run:
        name, _, run_dir = spec.rpartition("=")
        name = name or Path(run_dir).name
        train, valid = read_metrics(run_dir)
        if train and "mlm" in train[0]:  # a MiniLM student has no MLM loss to show
            ax_loss.plot([r["iter"] for r in train], [r["mlm"] for r in train], label=name)
        ax_top1.plot([r["iter"] for r in valid], [100 * r["valid_top1"] for r in valid], marker=".", label=name)
    if args.evaluation:
        ev = json.loads(Path(args.evaluation).read_text())
        if ev.get("teacher"):
            top1 = 100 * ev["models"][ev["teacher"]]["top1"]
            ax_top1.axhline(top1, color="grey", linestyle="--", label=f"teacher ({top1:.1f}%)")
    ax_loss.set(title="training MLM loss (masked tokens)", xlabel="iteration (batch)", ylabel="cross-entropy (nats)")
    ax_top1.set(title="held-out top-1 accuracy on masked tokens", xlabel="iteration (batch)", ylabel="top-1 (%)")
    for ax in (ax_loss, ax_top1):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
