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

The model is a train.py run folder (a DistilBERT student: it has no token types, and none are given to it),
the teacher, or any hub name or folder AutoModelForSequenceClassification loads; the classification head
is new. Every task's data is loaded and its labels checked before the first step of training.

In --output_dir:
  results.json                      the model's score per task (median over --seeds, at the best learning
                                    rate of --learning_rate_grid); scripts/glue_table.py makes tables of these
  TASK/lr2e-05_seed42/results.json  one run: metrics, hyper-parameters, time; while it runs, the Trainer's
                                    checkpoints (removed once it has its results) and tensorboard events
A rerun keeps the runs that have results (--overwrite_output_dir redoes them) and resumes an interrupted
run from its last checkpoint. Every other TrainingArguments flag works as in transformers (--bf16,
--gradient_accumulation_steps, --report_to, ...), and so does torchrun.
"""

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import glue
from data_io import CHECKPOINT, atomic_write, check_writable
from errors import InputError, fail, reports_errors
from scripts.glue_table import markdown_table
from utils import first_line, load_pretrained, load_tokenizer, model_input_limit

# The published fine-tuning setup of BERT and DistilBERT, where transformers' defaults differ.
DEFAULTS = dict(
    per_device_train_batch_size=32,  # BERT paper (Devlin et al. 2019), A.3; DistilBERT's GLUE runs
    per_device_eval_batch_size=128,  # evaluation only: larger is faster, same result
    learning_rate=2e-5,  # the low end of BERT's grid {5, 4, 3, 2}e-5; upstream's distillation README runs 2e-5
    num_train_epochs=3,  # BERT paper, A.3
    weight_decay=0.01,  # BERT's optimizer (AdamWeightDecay, weight_decay_rate 0.01 in run_classifier.py)
    save_strategy="epoch",  # a checkpoint to resume from; removed when the run has its results
    save_total_limit=1,
    logging_steps=50,
    train_sampling_strategy="group_by_length",  # batches of similar lengths pad less
    report_to="tensorboard",
)
WARMUP = 0.1  # warmup over the first 10% of steps: BERT's run_classifier.py (warmup_proportion 0.1)
BERT_GRID = (2e-5, 3e-5, 4e-5, 5e-5)  # BERT paper, A.3


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None, metadata={"help": "a train.py run folder, a model folder, or a hub name (required)"}
    )
    tokenizer_name: str = field(default=None, metadata={"help": "default: the model's own tokenizer"})
    model_label: str = field(default=None, metadata={"help": "the model's name in results (default: its folder)"})


@dataclass
class DataArguments:
    task_name: str = field(default=None, metadata={"help": f"one of {', '.join(glue.TASKS)}, or all"})
    data_dir: str = field(
        default=None,
        metadata={"help": "a GLUE task folder (GLUE's train.tsv/dev.tsv, or the hub's train-*.parquet/"
                  "validation-*.parquet), or a folder of such folders for --task_name all; default: the hub"},
    )  # fmt: skip
    train_file: str = field(default=None, metadata={"help": "your own training data: csv, tsv, json or jsonl"})
    validation_file: str = field(default=None, metadata={"help": "your own dev data, same columns"})
    text_columns: str = field(
        default=None, metadata={"help": "one or two text columns, comma-separated (default: sentence1,sentence2, "
                                "else the first two other columns)"}
    )  # fmt: skip
    label_column: str = field(default="label", metadata={"help": "the label column of your own files"})
    max_seq_length: int = field(default=128, metadata={"help": "longer inputs are truncated (BERT's GLUE setting)"})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "pad every batch to --max_seq_length (default: to its longest input, faster)"}
    )
    max_train_samples: int = field(default=None, metadata={"help": "train on the first N examples only"})
    max_eval_samples: int = field(default=None, metadata={"help": "evaluate on the first N dev examples only"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "redo runs that already have results"})


@dataclass
class SweepArguments:
    seeds: int = field(default=1, metadata={"help": "runs per task (seeds --seed, --seed+1, ...), median reported"})
    learning_rate_grid: str = field(
        default=None,
        metadata={"help": "comma-separated learning rates to try, or 'bert' for BERT's 2e-5,3e-5,4e-5,5e-5; "
                  "the best median on dev is reported (default: --learning_rate only)"},
    )  # fmt: skip
    save_model: bool = field(default=False, metadata={"help": "keep each run's fine-tuned model (TASK/RUN/model)"})


def say(*args):
    """Print on the first process only (under torchrun every process runs this script)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, flush=True)


def parse_args(argv=None):
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, SweepArguments, TrainingArguments))
    parser.description = __doc__.split("\n\n")[0]
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    versioned = {"warmup_ratio": WARMUP} if "warmup_ratio" in fields else {"warmup_steps": WARMUP}  # 4.x / 5.x
    if "train_sampling_strategy" not in fields:  # transformers 4.x
        versioned["group_by_length"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():  # torchrun on CPUs: without gloo the Trainer runs N separate copies
            versioned["ddp_backend"] = "gloo"
    parser.set_defaults(**{k: v for k, v in DEFAULTS.items() if k in fields}, **versioned)
    try:
        model, data, sweep, training = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # unknown flags, or TrainingArguments refusing a combination (fp16 on a CPU, ...)
        parser.error(first_line(e))
    if not model.model_name_or_path:
        parser.error("--model_name_or_path is required")
    if not training.output_dir:
        parser.error("--output_dir is required")
    return model, data, sweep, training


def learning_rates(sweep, training):
    if not sweep.learning_rate_grid:
        return [training.learning_rate]
    if sweep.learning_rate_grid.strip().lower() == "bert":
        return list(BERT_GRID)
    try:
        rates = [float(x) for x in sweep.learning_rate_grid.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r}: give numbers such as 2e-5,3e-5") from None
    if not rates or any(r <= 0 for r in rates):
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r}: give positive learning rates")
    return rates


def load_data(data):
    """Every task's TaskData, checked, before any training."""
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
        task.train = task.train.head(data.max_train_samples)
        task.dev = {k: v.head(data.max_eval_samples) for k, v in task.dev.items()}
        skipped = task.train.skipped + sum(s.skipped for s in task.dev.values())
        note = f", {skipped} malformed lines left out" if skipped else ""
        dev = ", ".join(f"{k} {len(v):,}" for k, v in task.dev.items())
        say(f"{task.task.title}: train {len(task.train):,}, dev {dev} ({task.source}{note})")
        out.append(task)
    return out


def check_model(path):
    """A train.py run folder that has not finished holds checkpoints but no model yet: say so."""
    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        hint = (
            "it is a train.py run that has not finished: the model is written at its end (or --resume it)"
            if (folder / CHECKPOINT).is_file()
            else "no config.json there"
        )
        raise InputError(f"cannot load the model {path}: {hint}")


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
        )  # fmt: skip

    dev = {name: encode(split) for name, split in task_data.dev.items()}
    first = next(iter(task_data.dev.values()))
    words = sum(len(t.split()) for texts in first.texts for t in texts)
    special = set(tokenizer.all_special_ids)
    unk = tokenizer.unk_token_id
    ids = [i for row in next(iter(dev.values()))["input_ids"] for i in row if i not in special or i == unk]
    fit = {"pieces_per_word": len(ids) / max(words, 1), "unk_fraction": ids.count(unk) / max(len(ids), 1)}
    say(f"{task_data.task.title}: {fit['pieces_per_word']:.2f} word pieces per word, {fit['unk_fraction']:.1%} "
          f"{tokenizer.unk_token} (dev; bert-base-uncased's vocabulary: 1.2-1.3, none)")  # fmt: skip
    return encode(task_data.train), dev, fit


def model_inputs(dataset, model):
    """Only the inputs the model's forward takes: DistilBERT has no token_type_ids."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    return dataset.remove_columns([c for c in dataset.column_names if c != "label" and c not in accepted])


def fine_tune(margs, sweep, targs, hyper, task_data, tokenizer, train_set, dev_sets, fit, lr, seed, run_dir):
    """One run: fine-tune from the pretrained weights, evaluate every dev set; the run's results dict."""
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    task = task_data.task
    pin = targs.dataloader_pin_memory and torch.cuda.is_available()  # pinning without a GPU only warns
    args = dataclasses.replace(targs, output_dir=str(run_dir), learning_rate=lr, seed=seed, dataloader_pin_memory=pin)
    transformers.set_seed(seed)  # the new head's initialisation
    labels = task.labels or ()
    model = load_pretrained(
        AutoModelForSequenceClassification, margs.model_name_or_path, "the model", num_labels=task_data.num_labels,
        id2label=dict(enumerate(labels)) or None, label2id={n: i for i, n in enumerate(labels)} or None,
        ignore_mismatched_sizes=True,  # a model fine-tuned before has a head of another size
    )  # fmt: skip
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 or args.bf16 else None)
    trainer = Trainer(model=model, args=args, train_dataset=model_inputs(train_set, model), data_collator=collator)
    resume = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if resume:
        say(f"  resuming from {resume}")
    start = time.time()
    train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
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
        "seed": seed,
        "learning_rate": lr,
        "hyper_parameters": hyper,
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
            trainer.save_model(str(run_dir / "model"))
            tokenizer.save_pretrained(str(run_dir / "model"))
        with atomic_write(run_dir / "results.json", "w") as f:
            json.dump(result, f, indent=2)
        for checkpoint in run_dir.glob("checkpoint-*"):  # the results are in; the optimizer state is not needed
            shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def settings(margs, data_args, targs, train_set, dev_sets):
    """What a run's result depends on besides its seed and learning rate: a kept run must match them."""
    return {
        "model_path": margs.model_name_or_path,
        "per_device_train_batch_size": targs.per_device_train_batch_size,
        "world_size": targs.world_size,
        "gradient_accumulation_steps": targs.gradient_accumulation_steps,
        "num_train_epochs": targs.num_train_epochs,
        "max_steps": targs.max_steps,
        "warmup": getattr(targs, "warmup_ratio", None) or targs.warmup_steps,
        "weight_decay": targs.weight_decay,
        "max_seq_length": data_args.max_seq_length,
        "fp16": targs.fp16,
        "bf16": targs.bf16,
        "train_examples": len(train_set),
        "eval_examples": {k: len(v) for k, v in dev_sets.items()},
    }


def check_kept(path, run, hyper):
    """A finished run is kept only if it was run with the same settings; say which differ otherwise."""
    old = run.get("hyper_parameters", {})
    differ = [f"{k} {old.get(k)!r} there, {v!r} now" for k, v in hyper.items() if old.get(k) != v]
    if differ:
        raise InputError(f"{path} was run with other settings ({'; '.join(differ[:3])}): "
                         "give --overwrite_output_dir to redo it, or another --output_dir")  # fmt: skip


def summarize(task, runs):
    """The task's figures over its runs: per learning rate the median of each metric over seeds, and the
    learning rate whose median score is best."""
    by_lr = {}
    for run in runs:
        by_lr.setdefault(run["learning_rate"], []).append(run)
    grid = {lr: median(r["score"] for r in rs) for lr, rs in by_lr.items()}
    best = max(grid, key=grid.get)
    chosen = by_lr[best]
    metrics = {
        dev: {m: median(r["metrics"][dev][m] for r in chosen) for m in chosen[0]["metrics"][dev]}
        for dev in chosen[0]["metrics"]
    }
    return {
        "task": task.name,
        "title": task.title,
        "metrics": metrics,  # median over seeds, each metric on its own
        "score": float(sum(glue.task_score(m) for m in metrics.values()) / len(metrics)),
        "learning_rate": best,
        "seeds": sorted(r["seed"] for r in chosen),
        "runs": [{"learning_rate": r["learning_rate"], "seed": r["seed"], "score": r["score"]} for r in runs],
        "grid": {str(lr): s for lr, s in grid.items()} if len(grid) > 1 else None,
        "train_seconds": round(sum(r["train_seconds"] for r in runs), 1),
        "tokenizer_fit": runs[-1].get("tokenizer_fit"),
    }


@reports_errors
def main(argv=None):
    margs, data_args, sweep, targs = parse_args(argv)
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" warning is expected
    out_dir = Path(targs.output_dir)
    if sweep.seeds < 1:
        raise InputError("--seeds must be at least 1")
    rates = learning_rates(sweep, targs)
    check_writable(out_dir, "--output_dir", folder=True)
    check_model(margs.model_name_or_path)
    config = load_pretrained(transformers.AutoConfig, margs.model_name_or_path, "the model")
    tokenizer = load_tokenizer(AutoTokenizer, margs.tokenizer_name or margs.model_name_or_path)
    tasks = load_data(data_args)
    margs.model_label = margs.model_label or Path(margs.model_name_or_path.rstrip("/")).name
    max_length = min(data_args.max_seq_length, model_input_limit(tokenizer, config))
    if max_length < data_args.max_seq_length:
        say(f"--max_seq_length {data_args.max_seq_length} is more than the model takes: {max_length}")

    results_path = out_dir / "results.json"
    summary = {"model": margs.model_label, "model_path": margs.model_name_or_path, "tasks": {}}
    if results_path.is_file():  # tasks of an earlier call (another task, or before an interruption) stay
        summary["tasks"] = json.loads(results_path.read_text()).get("tasks", {})
    seeds = [targs.seed + i for i in range(sweep.seeds)]
    for task_data in tasks:
        task = task_data.task
        train_set, dev_sets, fit = tokenize(task_data, tokenizer, max_length, data_args.pad_to_max_length)
        hyper = settings(margs, data_args, targs, train_set, dev_sets)
        plan = [(lr, seed, out_dir / task.name / f"lr{lr:g}_seed{seed}") for lr in rates for seed in seeds]
        kept = {}
        if not data_args.overwrite_output_dir:
            try:  # every kept run of the task is checked before any of its runs trains
                for _, _, run_dir in plan:
                    if (run_dir / "results.json").is_file():
                        kept[run_dir] = json.loads((run_dir / "results.json").read_text())
                        check_kept(run_dir / "results.json", kept[run_dir], hyper)
            except ValueError as e:  # a damaged results.json
                raise InputError(e) from e
        runs = []
        for lr, seed, run_dir in plan:
            if run_dir in kept:
                runs.append(kept[run_dir])
                say(f"{task.title} lr {lr:g} seed {seed}: kept {run_dir / 'results.json'} ({runs[-1]['score']:.2f})")
                continue
            if data_args.overwrite_output_dir and run_dir.is_dir():
                shutil.rmtree(run_dir)
            say(f"{task.title} lr {lr:g} seed {seed}: fine-tuning {margs.model_label} -> {run_dir}")
            run = fine_tune(margs, sweep, targs, hyper, task_data, tokenizer, train_set, dev_sets, fit, lr, seed,
                            run_dir)  # fmt: skip
            shown = ", ".join(f"{d} {m} {100 * v:.2f}" for d, ms in run["metrics"].items() for m, v in ms.items())
            say(f"{task.title} lr {lr:g} seed {seed}: {shown} ({run['train_seconds']:.0f} s of training)")
            runs.append(run)
        summary["tasks"][task.name] = summarize(task, runs)
        scores = [t["score"] for t in summary["tasks"].values()]
        summary["average"] = sum(scores) / len(scores)
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
