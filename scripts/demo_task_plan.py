"""How long demo_task.sh's strong-teacher option will take on this machine, printed before it starts.

    python scripts/demo_task_plan.py --teacher teachers/all-mpnet-base-v2 --student demo_task/student_init \\
        --teacher_steps 200 --rows 8400 --student_steps 600 --seeds 3 --max_seq_length 64

It times real steps of the models the option trains, at the demo's shape (batches of 32 sequences of
--max_seq_length tokens, random ids, fp32, the threads this process has): two training steps of the teacher
(the first one warms up and is not counted), one teacher forward over a batch of 128 (its pass over the
--rows sentences that get its logits), and three training steps of the student. It scales them by the
steps each stage runs and prints one line per stage and the total. It takes a few seconds for the
student and about three teacher steps; the estimate is a guide (sentences are shorter than the padded
--max_seq_length, so the pass usually runs faster; another process on the cores makes every stage slower).
"""

import argparse
import time

import torch

from core.errors import InputError, reports_errors
from core.loading import load_pretrained


def seconds_per_step(model, batch, seq, steps, train=True):
    """Mean seconds of `steps` calls at (batch, seq) on random ids, after one call that is not counted."""
    ids = torch.randint(5, model.config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    labels = torch.zeros(batch, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6) if train else None
    model.train(train)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        if train:
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps


def minutes(s):
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


@reports_errors
def main(argv=None):
    p = argparse.ArgumentParser(prog="demo_task_plan.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the strong teacher's model folder")
    p.add_argument("--student", required=True, help="the student's model folder")
    p.add_argument("--teacher_steps", type=int, required=True, help="the teacher's fine-tuning steps")
    p.add_argument("--rows", type=int, required=True, help="sentences the teacher labels (labelled + transfer)")
    p.add_argument("--student_steps", type=int, required=True, help="steps of each student run")
    p.add_argument("--seeds", type=int, required=True, help="student runs")
    p.add_argument("--max_seq_length", type=int, default=64)
    args = p.parse_args(argv)
    for flag in ("teacher_steps", "rows", "student_steps", "seeds", "max_seq_length"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} {getattr(args, flag)}: give at least 1")
    from transformers import AutoModelForSequenceClassification

    seq = args.max_seq_length
    teacher = load_pretrained(AutoModelForSequenceClassification, args.teacher, "the strong teacher", num_labels=2)
    student = load_pretrained(AutoModelForSequenceClassification, args.student, "the student", num_labels=2)
    seq = min(seq, teacher.config.max_position_embeddings - 2, student.config.max_position_embeddings)
    t_step = seconds_per_step(teacher, 32, seq, 1)
    t_pass = seconds_per_step(teacher, 128, seq, 1, train=False) * -(-args.rows // 128)
    s_step = seconds_per_step(student, 32, seq, 3)
    stages = [
        (f"the teacher fine-tuned, {args.teacher_steps} steps ({t_step:.2f} s a step)", t_step * args.teacher_steps),
        (f"its logits for {args.rows:,} sentences (once; kept on disk)", t_pass),
        (f"{args.seeds} student run(s) of {args.student_steps} steps ({s_step:.2f} s a step)",
         s_step * args.student_steps * args.seeds),
    ]
    print(f"the strong-teacher option on this machine ({torch.get_num_threads()} thread(s), timed just now):")
    for what, s in stages:
        print(f"  {what}: ~{minutes(s)}")
    print(f"  in all: ~{minutes(sum(s for _, s in stages))} on top of the demo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
