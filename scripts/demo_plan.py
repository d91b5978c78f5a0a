"""The demo's sizes and model shapes, and its plan: what each stage will do and how long it should take here.

    python scripts/demo_plan.py sizes                       # the sizes as shell assignments (demo.sh evals them)
    python scripts/demo_plan.py configs RUN_DIR VOCAB       # writes RUN_DIR/teacher_config.json, student_config.json
    python scripts/demo_plan.py estimate                    # times a few steps, prints the plan for the sizes

The sizes live here only (SIZES); DEMO_<NAME> in the environment overrides one (the test suite runs a small
demo). `estimate` times a few real training steps (train.py's Distiller, on random batches of the demo's
shape) of the teacher and the three students (distilled, MLM-only, MiniLM) and a held-out evaluation, then
scales them by the number of steps each stage runs. It takes ~10 s; the figures are a guide (the machine's
speed can change after the timed steps; docs/demo.md gives how close they came).
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from core.errors import fail
from core.precision import cpu_bf16_is_fast, cpu_description
from distiller import Distiller
from lm_seqs_dataset import LmSeqsDataset, SequenceSpec
from training import train_args
from utils import DistInfo, logger

# The demo's sizes, each with its reason; DEMO_<NAME> overrides one.
SIZES = dict(
    articles=1600,  # ~3,400 lines of ~46 tokens: sized for < 10 min on a slow 2-core CPU
    people=130,  # a fixed population: each person's facts retold in ~12 articles
    teacher_epochs=9,  # the teacher must learn the facts before it can teach them
    student_epochs=1,  # short and equal for the three students
    valid=1000,  # held-out sequences
    teacher_eval_every=250,  # batches between the teacher's held-out evaluations
    student_eval_every=15,  # the students' curves in students.png
    glue_train=16000,  # step 8 (with DEMO_GLUE_DIR): SST-2 training sentences (of 67,349), ~1 min a student run
    glue_seeds=3,  # step 8: runs per model, the median reported
)

# Lines per article after extraction with --pack_words 48, and tokens per line, measured on the demo corpus.
LINES_PER_ARTICLE = 2.0
TOKENS_PER_LINE = 46
VOCAB_GUESS = 1500  # the WordPiece vocabulary the demo trains on its dump (~1,450-1,550 ids)
BATCH = 32
PROCESS_START = 4.0  # seconds to start a python process that loads a model (torch + transformers' model code)
DATA_STEPS = 7.0  # the five data steps (corpus, extraction, tokenizer, binarization, counts): mostly process starts

SHAPE = dict(max_position_embeddings=128, pad_token_id=0)
TEACHER = dict(
    architectures=["BertForMaskedLM"], model_type="bert", hidden_size=256, num_hidden_layers=4,
    num_attention_heads=4, intermediate_size=1024, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    type_vocab_size=2,
)
STUDENT = dict(
    architectures=["DistilBertForMaskedLM"], model_type="distilbert", dim=256, n_layers=2, n_heads=4,
    hidden_dim=1024, dropout=0.0, attention_dropout=0.0, activation="gelu", sinusoidal_pos_embds=False,
    tie_word_embeddings=True,
)


def configs(vocab):
    """(teacher, student) config dicts for a vocabulary of `vocab` ids."""
    return dict(TEACHER, vocab_size=vocab, **SHAPE), dict(STUDENT, vocab_size=vocab, **SHAPE)


def write_configs(run, vocab):
    teacher, student = configs(vocab)
    for name, config in (("teacher_config", teacher), ("student_config", student)):
        (Path(run) / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")


def time_steps(n_steps=3, bf16=False, only=None):
    """Seconds per step of the three trainings and per held-out sequence of evaluation, measured here (under
    bf16 autocast with `bf16`; `only`: just that training, e.g. "distilled")."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    logger.setLevel("WARNING")  # the Distillers built here to time steps are not news
    special = {"pad_token": 0, "unk_token": 1, "cls_token": 2, "sep_token": 3, "mask_token": 4}
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.normal(TOKENS_PER_LINE, 6, BATCH), 14, 64).astype(int)
    seqs = [np.concatenate(([2], rng.integers(5, VOCAB_GUESS, n - 2), [3])) for n in lengths]
    t_cfg, s_cfg = configs(VOCAB_GUESS)
    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(**t_cfg))
    probs = torch.ones(VOCAB_GUESS)
    probs[list(special.values())] = 0

    def step_time(student, teacher, student_type, objective):
        args = train_args.defaults(student_type=student_type, teacher_type="bert", gradient_accumulation_steps=1,
                                   objective=objective, bf16=bf16)
        dataset = LmSeqsDataset(SequenceSpec(special, 128, pad_to_multiple_of=8), seqs)
        distiller = Distiller(args, dataset, probs, student, teacher, dist=DistInfo())
        token_ids, lens = dataset.batch_sequences([dataset[i] for i in range(len(dataset))])
        times = []
        for _ in range(n_steps + 1):  # the first step warms up the optimizer state and the allocator
            start = time.perf_counter()
            distiller.train_step(distiller.prepare_batch(token_ids, lens))
            times.append(time.perf_counter() - start)
        return min(times[1:])

    if only == "distilled":
        return {"distilled": step_time(DistilBertForMaskedLM(DistilBertConfig(**s_cfg)), teacher, "distilbert",
                                       "distilbert")}
    out = {"teacher": step_time(teacher, None, "bert", "mlm")}  # the objectives demo.sh gives train.py
    out["distilled"] = step_time(DistilBertForMaskedLM(DistilBertConfig(**s_cfg)), teacher, "distilbert", "distilbert")
    out["mlm_only"] = step_time(DistilBertForMaskedLM(DistilBertConfig(**s_cfg)), None, "distilbert", "mlm")
    out["minilm"] = step_time(DistilBertForMaskedLM(DistilBertConfig(**s_cfg)), teacher, "distilbert", "minilm")
    # evaluation is a forward pass: about a third of a training step, per sequence
    out["eval_per_seq"] = (out["teacher"] + out["distilled"] + out["mlm_only"]) / 3 / 3 / BATCH
    return out


BF16_GAIN = 0.9  # the demo trains in bf16 only if a step takes at most this share of fp32's: else exact fp32 wins


def precision_flags(t=None):
    """train.py's precision flag for the demo on this machine: "--bf16" where a bf16 step of the distilled student
    measures at most BF16_GAIN of its fp32 step (an AMX Xeon: yes), else "". `t`: {"fp32": s, "bf16": s}."""

    if t is None:
        if not cpu_bf16_is_fast():
            return "", "this CPU has no fast bf16: fp32"
        t = {name: time_steps(2, bf16=name == "bf16", only="distilled")["distilled"] for name in ("fp32", "bf16")}
    ratio = t["bf16"] / t["fp32"]
    choice = "--bf16" if ratio <= BF16_GAIN else ""
    return choice, (f"a distillation step took {1000 * t['bf16']:.0f} ms in bf16, {1000 * t['fp32']:.0f} ms in fp32 "
                    f"({ratio:.2f}x): {'bf16' if choice else 'fp32'}")


def sizes(environ=os.environ):
    """SIZES with DEMO_<NAME> overrides from `environ`; an override that is not a positive integer is an error."""
    out = {}
    for name, default in SIZES.items():
        value = environ.get(f"DEMO_{name.upper()}", str(default))
        if not value.isdigit() or int(value) < 1:
            fail("demo_plan.py", f"DEMO_{name.upper()}={value!r}: give a positive whole number")
        out[name] = int(value)
    return out


def fmt(seconds):
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def plan(articles, teacher_epochs, student_epochs, valid, t, teacher_eval_every=SIZES["teacher_eval_every"],
         student_eval_every=SIZES["student_eval_every"]):
    """[(stage, work, estimated seconds)] for the demo's sizes, from the step times `t` (time_steps())."""
    lines = LINES_PER_ARTICLE * articles
    batches = math.ceil(max(lines - valid, BATCH) / BATCH)
    t_steps, s_steps = teacher_epochs * batches, student_epochs * batches
    eval_s = valid * t["eval_per_seq"]
    return [
        ("data: corpus, extraction, tokenizer, binarization, counts", f"~{int(lines):,} lines", DATA_STEPS),
        ("teacher (4 x 256 BERT, plain MLM)", f"{t_steps:,} steps",
         t_steps * t["teacher"] + (t_steps // teacher_eval_every + 1) * eval_s + PROCESS_START),
        ("student init from teacher layers 0 and 3", "", PROCESS_START),
        ("distilled student (KD + MLM + cosine)", f"{s_steps:,} steps",
         s_steps * t["distilled"] + (s_steps // student_eval_every + 1) * eval_s + PROCESS_START),
        ("MLM-only student", f"{s_steps:,} steps",
         s_steps * t["mlm_only"] + (s_steps // student_eval_every + 1) * eval_s + PROCESS_START),
        ("MiniLM student (attention + value relations)", f"{s_steps:,} steps",
         s_steps * t["minilm"] + (s_steps // student_eval_every + 1) * eval_s + PROCESS_START),
        ("evaluation, plot, fill-mask", f"{valid:,} held-out lines", 4 * eval_s + 3 * PROCESS_START),
    ]


def estimate(articles, teacher_epochs, student_epochs, valid, t=None, bf16=False, **evals):
    """Time the steps (unless `t` is given), print the plan, return its total in seconds."""

    start = time.perf_counter()
    t = t or time_steps(bf16=bf16)
    stages = plan(articles, teacher_epochs, student_epochs, valid, t, **evals)
    total = sum(s for _, _, s in stages)
    print(f"CPU: {cpu_description()}; measured per step: teacher {1000 * t['teacher']:.0f} ms, distilled "
          f"student {1000 * t['distilled']:.0f} ms, MLM-only student {1000 * t['mlm_only']:.0f} ms, MiniLM "
          f"student {1000 * t['minilm']:.0f} ms "
          f"({time.perf_counter() - start:.0f} s to measure)")
    width = max(len(name) for name, _, _ in stages)
    for name, work, seconds in stages:
        print(f"  {name:<{width}}  {work:>18}  ~{fmt(seconds)}")
    print(f"  {'total':<{width}}  {'':>18}  ~{fmt(total)}")
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("configs", help="write the teacher and student configs")
    c.add_argument("run")
    c.add_argument("vocab", type=int)
    sub.add_parser("sizes", help="print the sizes as NAME=value lines (with the DEMO_<NAME> overrides)")
    e = sub.add_parser("estimate", help="time a few steps and print the plan for the sizes")
    e.add_argument("--bf16", action="store_true", help="time the steps under bf16 autocast (as the demo will run)")
    sub.add_parser("precision", help="print --bf16 where bf16 steps measure faster here (the reason on stderr)")
    args = p.parse_args(argv)
    if args.command == "configs":
        write_configs(args.run, args.vocab)
    elif args.command == "sizes":
        print("\n".join(f"{name.upper()}={value}" for name, value in sizes().items()))
    elif args.command == "precision":
        import transformers

        transformers.logging.set_verbosity_error()
        choice, why = precision_flags()
        print(choice)
        print(f"demo: precision: {why}", file=sys.stderr)
    else:
        import transformers

        transformers.logging.set_verbosity_error()
        z = sizes()
        estimate(z["articles"], z["teacher_epochs"], z["student_epochs"], z["valid"], bf16=args.bf16,
                 teacher_eval_every=z["teacher_eval_every"], student_eval_every=z["student_eval_every"])


if __name__ == "__main__":
    main()
