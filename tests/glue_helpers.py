"""Helpers of the task tests (scripts/run_glue.py, and the Trainer flags run_qa.py shares): where the real GLUE
data lives, the flags that keep a test's run quiet, GLUE's TSV files written by hand, run_glue.py's main, the
custom task's arguments, a distillation from a teacher folder, and a teacher-logits cache file changed in place."""

import numpy as np

from conftest import ROOT, run_main
from scripts import run_glue

GLUE_DATA = ROOT.parent / "shared" / "data" / "glue"
FAST = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(map(str, r)) + "\n" for r in lines), encoding="utf-8")


def glue_main(*args):
    return run_glue.main([str(a) for a in args])


def task_argv(model, task, out, *extra):
    """run_glue.py's flags for `model` on a custom task folder (train.csv, dev.csv) into `out`, then `extra`."""
    return ["--model_name_or_path", model, "--train_file", task / "train.csv", "--validation_file", task / "dev.csv",
            "--output_dir", out, *extra]


def custom_args(teacher, custom_task, out, *extra):
    return task_argv(teacher, custom_task, out, "--max_steps", 2, *FAST, *extra)


def distil(student, task, teacher_dir, out, *extra):
    return run_main(run_glue.main, "--model_name_or_path", student, "--train_file", task / "train.csv",
                    "--validation_file", task / "dev.csv", "--output_dir", out, "--teacher_name_or_path",
                    teacher_dir, "--max_train_samples", 40, "--unlabeled_samples", 10, "--max_steps", 3, *FAST,
                    *extra)


def overwrite_logits(path, change):
    """Rewrite the logits inside a cache file with change(logits), keeping its key and its digest: what a disk
    error, or a copy cut and pasted by hand, leaves."""
    with np.load(path) as stored:
        parts = {k: stored[k] for k in stored.files}
    change(parts["logits"])
    with open(path, "wb") as f:
        np.savez(f, **parts)
