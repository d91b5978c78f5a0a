"""Gather run_glue.py results into one markdown table: a row per model, a column per task, the average of the
task scores, and published rows beside them for the same tasks (with their sources).

    python scripts/glue_table.py glue/bert-base-uncased glue/distilbert-small-uncased teacher=glue/teacher
    python scripts/glue_table.py demo_run/glue/* --output demo_run/glue.md

Each argument is a run_glue.py --output_dir (or its results.json), as NAME=PATH to name the row. A cell is
the median over seeds; MRPC and QQP show F1/accuracy, STS-B Pearson/Spearman, MNLI matched/mismatched, CoLA
Matthews correlation, the rest accuracy, all in points. The average is over the table's columns, for the rows
that have them all.
"""

import argparse
import json
import sys
from pathlib import Path

from core.errors import InputError, first_line, reports_errors
from core.files import atomic_write, check_writable
from core.loading import split_name
from tasks import glue
from tasks.runs import check_summary

# Published rows beside ours, as their papers print them: one number per task in points (MNLI: matched and
# mismatched where the paper gives both), the split, and the paper's own average over its columns. The
# papers do not all use the same metric for a task (see each source); treat a gap of a point as noise.
PUBLISHED = [
    dict(name="BERT-base, dev", average=79.5, scores=dict(
        cola=56.3, mnli=86.7, mrpc=88.6, qnli=91.8, qqp=89.6, rte=69.3, sst2=92.7, stsb=89.0, wnli=53.5),
        source="Sanh et al. 2019, DistilBERT (arXiv 1910.01108), Table 1: GLUE dev, median of 5 seeds; average "
               "79.5 over the 9 tasks. MNLI 86.7 is as printed (upstream's README re-ran it: 84.7)."),
    dict(name="DistilBERT 6L, dev", average=77.0, scores=dict(
        cola=51.3, mnli=82.2, mrpc=87.5, qnli=89.2, qqp=88.5, rte=59.9, sst2=91.3, stsb=86.9, wnli=56.3),
        source="Sanh et al. 2019, DistilBERT (arXiv 1910.01108), Table 1: GLUE dev, median of 5 seeds; "
               "macro-score 77.0 over the 9 tasks."),
    dict(name="MiniLM 6Lx768, dev", average=80.4, scores=dict(
        mnli=84.0, sst2=92.0, qnli=91.0, cola=49.2, rte=71.5, mrpc=88.4, qqp=91.0),
        source="Wang et al. 2020, MiniLM (arXiv 2002.10957), Table 2: GLUE dev, accuracy for every task "
               "(MRPC and QQP too); average 80.4 over these 7 tasks and SQuAD 2.0 (76.4 F1)."),
    dict(name="BERT-base, dev (MiniLM's)", average=81.5, scores=dict(
        mnli=84.5, sst2=93.2, qnli=91.7, cola=58.9, rte=68.6, mrpc=87.3, qqp=91.3),
        source="Wang et al. 2020, MiniLM (arXiv 2002.10957), Table 2: the teacher, same conventions as its "
               "MiniLM row; average 81.5 with SQuAD 2.0 (76.8 F1)."),
    dict(name="DistilBERT 4L, test", average=71.9, scores=dict(
        mnli=(78.9, 78.0), qqp=68.5, qnli=85.2, sst2=91.4, cola=32.8, stsb=76.1, mrpc=82.4, rte=54.1),
        source="Jiao et al. 2020, TinyBERT (arXiv 1909.10351, v5), Table 1: GLUE test (not dev), 8 tasks; "
               "average 71.9 counts MNLI-m and -mm separately. Same table: BERT-PKD 4L 72.6, BERT-Small 72.1."),
    dict(name="TinyBERT 4Lx312 general distillation only, dev", average=61.1, scores=dict(
        mnli=(76.6, 77.2), mrpc=82.0, cola=8.7),
        source="Jiao et al. 2020, TinyBERT (arXiv 1909.10351, v5), Appendix C, Table 7: 'TinyBERT (GD)', "
               "GLUE dev, 3 tasks; average 61.1 counts MNLI-m and -mm separately."),
]


def _cell(metrics):
    """A task's cell: its metrics in points, joined by / (MRPC: F1/acc, STS-B: Pearson/Spearman, MNLI: m/mm)."""
    return "/".join(f"{100 * v:.1f}" for dev in metrics.values() for v in dev.values())


def markdown_table(summaries, published=True, names=None):
    """One markdown table: a row per model (run_glue.py's results.json contents), a column per task any of
    them has, and the average of the task scores over those columns (for rows that have them all)."""
    order = [t for t in glue.TASKS if any(t in s["tasks"] for s in summaries)] or list(glue.TASKS)
    average = f"average ({len(order)} task{'s' * (len(order) > 1)})"
    header = ["model"] + [_header(glue.TASKS[t]) for t in order] + [average]
    rows = []
    for i, s in enumerate(summaries):
        name = (names[i] if names else None) or s["model"]
        cells, scores = [], []
        for t in order:
            done = s["tasks"].get(t)
            cells.append(_cell(done["metrics"]) if done else "")
            if done:
                scores.append(done["score"])
        avg = f"{sum(scores) / len(scores):.1f}" if len(scores) == len(order) else ""
        rows.append([name] + cells + [avg])
    notes = []
    if published:
        for k, p in enumerate(PUBLISHED, 1):
            have = [t for t in order if t in p["scores"]]
            if not have:
                continue
            cells = [_published_cell(p["scores"].get(t)) for t in order]
            scores = [_published_score(p["scores"][t]) for t in have]
            avg = f"{sum(scores) / len(scores):.1f}" if len(have) == len(order) else ""
            rows.append([f"{p['name']} (published [{k}])"] + cells + [avg])
            notes.append(f"[{k}] {p['source']}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines + ([""] + notes if notes else []))


def _header(task):
    return {"cola": "CoLA (MCC)", "mrpc": "MRPC (F1/acc)", "stsb": "STS-B (P/S)", "qqp": "QQP (F1/acc)",
            "mnli": "MNLI (m/mm)"}.get(task.name, task.title)


def _published_cell(value):
    if value is None:
        return ""
    return "/".join(f"{v:.1f}" for v in value) if isinstance(value, (tuple, list)) else f"{value:.1f}"


def _published_score(value):
    return sum(value) / len(value) if isinstance(value, (tuple, list)) else value


def read_results(spec):
    """(row name, or "" for the model's own, results dict) for 'PATH' or 'NAME=PATH'."""
    name, path = split_name(spec)
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist: give run_glue.py's --output_dir")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a readable results.json ({first_line(e)})") from None
    return name, check_summary(results, path)


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="[NAME=]run_glue.py --output_dir or its results.json")
    p.add_argument("--no_published", action="store_true", help="leave out the published rows")
    p.add_argument("--output", default=None, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.output:
        check_writable(args.output, "--output")
    rows = [read_results(spec) for spec in args.results]
    table = markdown_table([r for _, r in rows], published=not args.no_published, names=[n for n, _ in rows])
    print(table)
    if args.output:
        with atomic_write(args.output, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
