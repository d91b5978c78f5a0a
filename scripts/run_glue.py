"""Step 8: fine-tune a model on GLUE tasks and report its dev scores, with transformers' Trainer and the flags
of transformers' own run_glue.py example.

    # one task, offline, from GLUE's TSV files or the hub's parquet files
    python scripts/run_glue.py --model_name_or_path serialization_dir/distilbert-small-uncased --task_name sst2 \\
        --data_dir ../shared/data/glue/SST-2 --output_dir glue/distilbert-small-uncased
    # every task from the hub, 5 seeds each (the median is reported), mixed precision
    python scripts/run_glue.py --model_name_or_path bert-base-uncased --task_name all --seeds 5 --fp16 \\
        --output_dir glue/bert-base-uncased
    # your own task: csv, tsv, json or jsonl with a `label` column
    python scripts/run_glue.py --model_name_or_path M --train_file train.csv --validation_file dev.csv --output_dir O
    # task distillation: the teacher is a classifier already fine-tuned on this task (e.g. a run's --save_model)
    python scripts/run_glue.py --model_name_or_path STUDENT --task_name sst2 --data_dir D --output_dir O \
        --teacher_name_or_path O_TEACHER/sst2/lr5e-05_seed42/model --alpha_ce 1 --alpha_task 0 --temperature 2 \
        --unlabeled_samples 10000

Task distillation (tasks/task_distill.py) adds to the task's own loss (label cross-entropy, or MSE for a regression,
weighted by --alpha_task): --alpha_ce times T² KL(teacher || student) of the class distributions at
--temperature (for a regression, the squared error to the teacher's prediction), and, off by default,
--alpha_cos (last hidden states, equal widths), --alpha_att and --alpha_vv (MiniLM's relations). With the
logit KD alone, the teacher's logits are computed once before training and reused every epoch and run; the
intermediate losses run the teacher at every step. --unlabeled_samples N adds N more of the task's training
rows without their labels: only the teacher labels them. The teacher must be the task's sequence classifier,
with the task's labels in the same order and the student's vocabulary; each is checked before any training.

The model is a train.py run folder (a DistilBERT student: it has no token types, and none are given to it),
the teacher, or any hub name or folder AutoModelForSequenceClassification loads; the classification head
is new. Every task's data is loaded and its labels checked before the first step of training.

In --output_dir:
  results.json                      the model's score per task (median over --seeds, at the best learning
                                    rate of --learning_rate_grid); scripts/glue_table.py makes tables of these
  TASK/lr2e-05_seed42/results.json  one run: metrics, hyper-parameters, time; while it runs, settings.json,
                                    the Trainer's checkpoints (removed once it has its results) and
                                    tensorboard events
A rerun keeps the runs that have results and resumes an interrupted run from its newest complete checkpoint,
each only if every setting that changes the result, the model, the tokenizer and the data are the same
(else it stops and says what differs). --overwrite_output_dir redoes them, keeping each old run aside until
its replacement has results. Every other TrainingArguments flag works as in transformers (--bf16,
--gradient_accumulation_steps, --report_to, ...), and so does torchrun. A non-finite loss exits with status 3.
"""

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from core import files
from core.errors import NON_FINITE_EXIT, InputError, NonFiniteLoss, fail, first_line, reports_errors, say
from core.files import atomic_write, check_writable
from core.loading import load_pretrained, load_tokenizer, model_input_limit
from core.precision import trainer_precision, use_attention
from scripts.glue_table import markdown_table
from tasks import glue, task_distill, teacher_pass
from tasks.glue_args import check_flags, decide_precision, learning_rates, parse_args
from tasks.glue_runs import (
    Run,
    callbacks,
    execute,
    glue_average,
    model_identity,
    model_inputs,
    plan_run,
    read_summary,
    save_model,
    seeded_sampling,
    settings,
    summarize,
    train_or_restore,
)


def load_data(data, unlabeled=None, transfer_file=None):
    """Every task's TaskData, checked, before any training; with `unlabeled` (--unlabeled_samples), that many
    more training examples, their labels dropped, and the texts of `transfer_file`, for a teacher to label."""
    if data.task_name == "all":
        if data.train_file or data.validation_file:
            raise InputError("--task_name all reads GLUE's tasks: leave out --train_file/--validation_file")
        names = list(glue.TASKS)
    else:
        names = [data.task_name]
    columns = [c.strip() for c in data.text_columns.split(",")] if data.text_columns else None
    out = []
    for name in names:
        task = glue.load_task(name, data.data_dir, data.train_file, data.validation_file, columns, data.label_column)
        full, task.train = task.train, task.train.head(data.max_train_samples)
        if unlabeled:
            if len(full) <= len(task.train):
                raise InputError(f"--unlabeled_samples {unlabeled}: no {task.task.title} training examples are left "
                                 "after the labelled ones: give --max_train_samples below "
                                 f"{len(full):,}")
            task.unlabeled = full.rows(len(task.train), len(task.train) + unlabeled, label=unlabeled_mark(task))
            task.unlabeled_rows["task"] = len(task.unlabeled)
            if len(task.unlabeled) < unlabeled:  # recorded as used, not as asked
                say(f"--unlabeled_samples {unlabeled:,}: {task.task.title} has {len(task.unlabeled):,} training "
                    f"examples after the {len(task.train):,} labelled ones: using {len(task.unlabeled):,}")
        if transfer_file:
            extra = glue.load_transfer(transfer_file, task.task, unlabeled_mark(task))
            task.unlabeled_rows["transfer"] = len(extra)
            task.unlabeled = extra if task.unlabeled is None else task.unlabeled.concat(extra)
        task.dev = {k: v.head(data.max_eval_samples) for k, v in task.dev.items()}
        task.check_classes()
        splits = [task.train, *task.dev.values(), *([task.unlabeled] if task.unlabeled else [])]
        skipped = sum(s.skipped for s in splits)  # every file kind's rows left out, counted alike
        note = f", {skipped:,} rows left out (malformed, or without text)" if skipped else ""
        dev = ", ".join(f"{k} {len(v):,}" for k, v in task.dev.items())
        more = f" (+ {len(task.unlabeled):,} without their labels)" if task.unlabeled else ""
        say(f"{task.task.title}: train {len(task.train):,}{more}, dev {dev} ({task.source}{note})")
        out.append(task)
    return out


def unlabeled_mark(task_data):
    """The label of a row that only the teacher labels (a regression's: NaN)."""
    return float("nan") if task_data.task.labels is None else task_distill.UNLABELED


def load_teacher(dargs, student_config):
    """The teacher, its tokenizer and its identity; its shapes checked against the student's for the
    intermediate losses (on the student's modules built without weights: only their shapes are read)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = dargs.teacher_name_or_path
    model = task_distill.load_teacher(path)  # an unfinished train.py run is named (core.loading.load_pretrained)
    tokenizer = load_tokenizer(AutoTokenizer, path, "the teacher's tokenizer")
    if dargs.per_step:
        with torch.device("meta"):
            student = AutoModel.from_config(student_config)
        task_distill.check_shapes(dargs, student, model)
    return task_distill.Teacher(dargs, model, tokenizer, model_identity(path, model.config, tokenizer))


def tokenize(task_data, tokenizer, max_length, pad):
    """datasets.Dataset per split, tokenized once for every run of the task, and how well the tokenizer fits
    the task's text (a vocabulary learned on other text splits words into many pieces, or into [UNK])."""
    import datasets

    def encode(split):
        columns = {f"text{i}": texts for i, texts in enumerate(split.texts)}
        ds = datasets.Dataset.from_dict({**columns, "label": split.labels})
        return ds.map(
            lambda b: tokenizer(*[b[c] for c in columns], truncation=True, max_length=max_length,
                                padding="max_length" if pad else False),
            batched=True, remove_columns=list(columns), desc=f"tokenizing {task_data.task.name} {split.name}",
        )

    dev = {name: encode(split) for name, split in task_data.dev.items()}
    first = next(iter(task_data.dev.values()))
    words = sum(len(t.split()) for texts in first.texts for t in texts)
    special = set(tokenizer.all_special_ids)
    unk = tokenizer.unk_token_id
    ids = [i for row in next(iter(dev.values()))["input_ids"] for i in row if i not in special or i == unk]
    fit = {"pieces_per_word": len(ids) / max(words, 1), "unk_fraction": ids.count(unk) / max(len(ids), 1)}
    say(f"{task_data.task.title}: {fit['pieces_per_word']:.2f} word pieces per word, {fit['unk_fraction']:.1%} "
          f"{tokenizer.unk_token} (dev; bert-base-uncased's vocabulary: 1.2-1.3, none)")
    train = encode(task_data.train)
    if task_data.unlabeled:  # after the labelled rows: the teacher's logits are their only target
        train = datasets.concatenate_datasets([train, encode(task_data.unlabeled)])
    return train, dev, fit


def training_texts(task_data):
    """The raw text of the training rows, in tokenize()'s order (labelled, then unlabelled): one list per
    column."""
    extra = task_data.unlabeled.texts if task_data.unlabeled else [[] for _ in task_data.train.texts]
    return [a + b for a, b in zip(task_data.train.texts, extra)]


def fine_tune(margs, sweep, targs, hyper, task_data, tokenizer, train_set, dev_sets, fit, run, teacher=None):
    """One run: fine-tune from the pretrained weights (distil, with a teacher), evaluate every dev set; the
    run's results dict."""
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

    task = task_data.task
    pin = targs.dataloader_pin_memory and torch.cuda.is_available()  # pinning without a GPU only warns
    args = dataclasses.replace(targs, output_dir=str(run.dir), learning_rate=run.lr, seed=run.seed,
                               dataloader_pin_memory=pin)
    transformers.set_seed(run.seed)  # the new head's initialisation
    # id2label sets the head's size in transformers 5 (num_labels=1 with id2label=None leaves it unset)
    labels = task.labels or ("score",)
    model = load_pretrained(
        AutoModelForSequenceClassification, margs.model_name_or_path, "the model", num_labels=task_data.num_labels,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="regression" if task.labels is None else "single_label_classification",
        ignore_mismatched_sizes=True,  # a model fine-tuned before has a head of another size
    )
    # The attention implementation measured fastest for this precision and device (precision.ATTENTION).
    device_type = "cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda"
    for m in (model, teacher.model) if teacher else (model,):
        use_attention(m, device_type, trainer_precision(args))
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 or args.bf16 else None)
    train_inputs = model_inputs(train_set, model)
    trainer_class = Trainer
    if teacher:
        train_inputs = model_inputs(train_set, model, teacher_pass.forward_inputs(teacher.model) |
                                    {teacher_pass.TEACHER_LOGITS})
        collator = teacher_pass.WithTeacherLogits(collator)
        trainer_class = task_distill.distill_trainer(teacher.args, teacher.model, task.labels is None)
    trainer = seeded_sampling(trainer_class)(model=model, args=args, train_dataset=train_inputs,
                                             data_collator=collator, callbacks=callbacks())
    start = time.time()
    train_metrics = train_or_restore(trainer, run)
    train_time = time.time() - start
    metrics = {}
    for name, dev in dev_sets.items():
        out = trainer.predict(model_inputs(dev, model))
        logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        preds = logits.squeeze(-1) if task.labels is None else np.argmax(logits, axis=-1)
        metrics[name] = glue.compute_metrics(task, preds, out.label_ids)
    result = {
        "task": task.name,
        "title": task.title,
        "metrics": metrics,
        "score": float(np.mean([glue.task_score(m) for m in metrics.values()])),
        "model": margs.model_label,
        "model_path": margs.model_name_or_path,
        "seed": run.seed,
        "learning_rate": run.lr,
        "hyper_parameters": hyper,
        "precision": trainer_precision(targs),
        "attention": model.config._attn_implementation,
        "teacher": teacher.record() | {"logits_seconds": teacher.logits_seconds, "unlabeled_rows_used": {
            "task": task_data.unlabeled_rows.get("task", 0), "transfer_file": task_data.unlabeled_rows.get(
                "transfer", 0)}} if teacher else None,
        "steps": trainer.state.global_step,
        "train_seconds": round(train_time, 1),
        "train_samples_per_second": train_metrics.get("train_samples_per_second"),
        "device": str(args.device),
        "data": task_data.source,
        "tokenizer_fit": fit,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if trainer.is_world_process_zero():
        if sweep.save_model:
            glue_data = task.name in glue.TASKS  # GLUE's own task (its TSV files, the hub's parquet), not a user's
            dataset = (f"GLUE {task.title}", "nyu-mll/glue", task.name) if glue_data else (task_data.source,) * 2 + (
                None,)
            save_model(trainer, tokenizer, run.dir / "model", result, "text-classification", dataset,
                       "scripts/run_glue.py")
        with atomic_write(run.dir / "results.json", "w") as f:
            json.dump(result, f, indent=2)
        for checkpoint in run.dir.glob("checkpoint-*"):  # the results are in; the optimizer state is not needed
            shutil.rmtree(checkpoint, ignore_errors=True)
    return result


@reports_errors
def main(argv=None):
    margs, data_args, sweep, dargs, targs, argv = parse_args(argv, __doc__.split("\n\n")[0])
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" warning is expected
    check_flags(data_args, sweep, targs)
    task_distill.check_flags(dargs, argv)
    rates = learning_rates(sweep, targs)
    decision, targs = decide_precision(targs)
    out_dir = Path(targs.output_dir)
    results_path = out_dir / "results.json"
    check_writable(out_dir, "--output_dir", folder=True)
    check_writable(results_path, "results")
    config = load_pretrained(transformers.AutoConfig, margs.model_name_or_path, "the model")
    tokenizer = load_tokenizer(AutoTokenizer, margs.tokenizer_name or margs.model_name_or_path)
    identity = model_identity(margs.model_name_or_path, config, tokenizer)
    teacher = load_teacher(dargs, config) if dargs.on else None
    configs = (config, teacher.model.config) if teacher else (config,)
    max_length = min(data_args.max_seq_length, model_input_limit(tokenizer, *configs))
    if max_length < data_args.max_seq_length:
        say(f"--max_seq_length {data_args.max_seq_length} is more than the model takes: {max_length}")
    room = tokenizer.num_special_tokens_to_add(pair=True) + 2
    if max_length < room:
        raise InputError(f"--max_seq_length {max_length} leaves no room for text: give at least {room}")
    tasks = load_data(data_args, dargs.unlabeled_samples, dargs.transfer_file)
    for task_data in tasks if teacher else ():
        teacher.check(task_data, tokenizer)
    margs.model_label = margs.model_label or Path(margs.model_name_or_path.rstrip("/")).name

    # One command per output folder: two at once would write over each other's runs (the lock is the main
    # process's; torchrun's other processes follow it)
    lock = (files.folder_lock(out_dir / ".lock", f"--output_dir {out_dir}") if targs.process_index == 0
            else contextlib.nullcontext())
    with lock:
        # Every kept result, checkpoint and setting of every task is checked before the first run trains.
        overwrite = data_args.overwrite_output_dir
        summary = {"model": margs.model_label, "model_path": margs.model_name_or_path, "model_identity": identity,
                   "precision": {"asked": decision.requested, "ran": decision.used},
                   "teacher": teacher.record() if teacher else None,
                   "tasks": read_summary(results_path, margs.model_name_or_path, identity, overwrite)}
        seeds = [targs.seed + i for i in range(sweep.seeds)]
        plans = []
        with targs.main_process_first(local=False, desc="planning"):  # the first process repairs; the others read after
            main_process = targs.process_index == 0
            for task_data in tasks:
                distillation = task_distill.settings(dargs, teacher.identity, teacher.own_tokens) if teacher else None
                hyper = settings(data_args, targs, task_data, identity, max_length, distillation)
                folder = out_dir / task_data.task.name
                outputs = ("model",) if sweep.save_model else ()
                runs = [plan_run(Run(lr, seed, folder / f"lr{lr:g}_seed{seed}"), hyper, overwrite, main_process,
                                 outputs) for lr in rates for seed in seeds]
                plans.append((task_data, hyper, runs))

        for task_data, hyper, runs in plans:
            task = task_data.task
            if all(run.kept for run in runs):
                train_set = dev_sets = fit = None
            else:
                train_set, dev_sets, fit = tokenize(task_data, tokenizer, max_length, data_args.pad_to_max_length)
                if teacher and not dargs.per_step:  # the teacher's logits, once for every run of the task
                    teacher_length = min(data_args.max_seq_length,
                                         model_input_limit(teacher.tokenizer, teacher.model.config))
                    train_set = teacher.logits(train_set, tokenizer, targs, training_texts(task_data),
                                               teacher_length)
            results = []
            for run in runs:
                title = f"{task.title} lr {run.lr:g} seed {run.seed}"
                if run.kept:
                    results.append(run.kept)
                    say(f"{title}: kept {run.dir / 'results.json'} ({run.kept['score']:.2f})")
                    continue
                say(f"{title}: fine-tuning {margs.model_label} -> {run.dir}")
                try:
                    result = execute(run, targs, overwrite, hyper, lambda run=run: fine_tune(
                        margs, sweep, targs, hyper, task_data, tokenizer, train_set, dev_sets, fit, run,
                        teacher))
                except NonFiniteLoss as e:
                    fail("run_glue.py", f"{title}: {e}: the run is not recorded (lower --learning_rate, or check the "
                         "data)", NON_FINITE_EXIT)
                shown = ", ".join(f"{d} {m} {100 * v:.2f}"
                                  for d, ms in result["metrics"].items() for m, v in ms.items())
                say(f"{title}: {shown} ({result['train_seconds']:.0f} s of training)")
                results.append(result)
            summary["tasks"][task.name] = summarize(task, results)
            summary["average"], summary["average_of"] = glue_average(summary["tasks"])
            summary["complete"] = all(name in summary["tasks"] for name in glue.TASKS)
            if targs.process_index == 0:
                with atomic_write(results_path, "w") as f:
                    json.dump(summary, f, indent=2)
        if targs.process_index == 0 and any(n in glue.TASKS for n in summary["tasks"]):
            say()
            say(markdown_table([summary], published=False))
        say(f"results: {results_path}")
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("run_glue.py: interrupted; rerun the same command to resume")
    except OSError as e:  # a full disk while writing a checkpoint, ...
        fail("run_glue.py", first_line(e))
