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

Task distillation (task_distill.py) adds to the task's own loss (label cross-entropy, or MSE for a regression,
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

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import glue
import task_distill
from data_io import CHECKPOINT, atomic_write, check_writable
from errors import NON_FINITE_EXIT, InputError, fail, reports_errors
from scripts import glue_table
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

    parser = HfArgumentParser((ModelArguments, DataArguments, SweepArguments, task_distill.DistillArguments,
                               TrainingArguments))  # fmt: skip
    parser.description = __doc__.split("\n\n")[0]
    parser.prog = "run_glue.py"  # usage errors read like every other error, also when main() is called in-process
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    versioned = {"warmup_ratio": WARMUP} if "warmup_ratio" in fields else {"warmup_steps": WARMUP}  # 4.x / 5.x
    if "train_sampling_strategy" not in fields:  # transformers 4.x
        versioned["group_by_length"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():  # torchrun on CPUs: without gloo the Trainer runs N separate copies
            versioned["ddp_backend"] = "gloo"
    parser.set_defaults(**{k: v for k, v in DEFAULTS.items() if k in fields}, **versioned)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        model, data, sweep, distill, training = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as e:  # unknown flags, or TrainingArguments refusing a combination
        parser.error(first_line(e))
    if not model.model_name_or_path:
        parser.error("--model_name_or_path is required")
    # transformers 5 puts a run without --output_dir in ./trainer_output: results must not land unasked
    if not any(a.split("=")[0] in ("--output_dir", "--output-dir") for a in argv):
        parser.error("--output_dir is required")
    return model, data, sweep, distill, training, argv


def check_flags(data, sweep, training):
    """Every flag that would fail late, or train to a result that means nothing, is refused here: before
    anything is read, moved or written."""

    def at_least(value, low, flag):
        if value is not None and value < low:
            raise InputError(f"{flag} {value}: give at least {low}")

    for flag, value in (("--per_device_train_batch_size", training.per_device_train_batch_size),
                        ("--per_device_eval_batch_size", training.per_device_eval_batch_size),
                        ("--gradient_accumulation_steps", training.gradient_accumulation_steps),
                        ("--max_seq_length", data.max_seq_length), ("--seeds", sweep.seeds),
                        ("--max_train_samples", data.max_train_samples),  # a negative N would drop the last N
                        ("--max_eval_samples", data.max_eval_samples)):  # fmt: skip
        at_least(value, 1, flag)
    if training.max_steps == 0 or training.max_steps < -1:
        raise InputError(f"--max_steps {training.max_steps}: give a positive number of steps (or -1: by epochs)")
    warmup = getattr(training, "warmup_ratio", None) or training.warmup_steps
    for flag, value, low, high in (("--learning_rate", training.learning_rate, 0, None),
                                   ("--num_train_epochs", training.num_train_epochs, 0, None),
                                   ("--weight_decay", training.weight_decay, 0, None),
                                   ("--warmup_steps", warmup, 0, None),
                                   ("--max_grad_norm", training.max_grad_norm, 0, None),
                                   ("--adam_epsilon", training.adam_epsilon, 0, None),
                                   ("--adam_beta1", training.adam_beta1, 0, 1),
                                   ("--adam_beta2", training.adam_beta2, 0, 1),
                                   ("--label_smoothing_factor", training.label_smoothing_factor, 0, 1)):  # fmt: skip
        if not math.isfinite(value) or value < low or (high is not None and value >= high):
            span = f"in [{low}, {high})" if high is not None else f"finite and at least {low}"
            raise InputError(f"{flag} {value}: give a number {span}")
    if training.learning_rate == 0 or (training.num_train_epochs == 0 and training.max_steps < 0):
        which = "--learning_rate 0" if training.learning_rate == 0 else "--num_train_epochs 0"
        raise InputError(f"{which} would not train at all")


def learning_rates(sweep, training):
    """The learning rates to try, each its own run folder (lr2e-05_seed42, ...)."""
    if not sweep.learning_rate_grid:
        return [training.learning_rate]
    if sweep.learning_rate_grid.strip().lower() == "bert":
        return list(BERT_GRID)
    try:
        rates = [float(x) for x in sweep.learning_rate_grid.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r}: give numbers such as 2e-5,3e-5") from None
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r}: give positive, finite learning rates")
    names = [f"{r:g}" for r in rates]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:  # one folder trained twice, and a "median" of copies
        raise InputError(f"--learning_rate_grid {sweep.learning_rate_grid!r} gives {twice} twice")
    return rates


def load_data(data, unlabeled=None):
    """Every task's TaskData, checked, before any training; with `unlabeled` (--unlabeled_samples), that many
    more training examples, their labels dropped, for a teacher to label."""
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
                                 f"{len(full):,}")  # fmt: skip
            mark = float("nan") if task.task.labels is None else task_distill.UNLABELED
            task.unlabeled = full.rows(len(task.train), len(task.train) + unlabeled, label=mark)
        task.dev = {k: v.head(data.max_eval_samples) for k, v in task.dev.items()}
        task.check_classes()
        skipped = task.train.skipped + sum(s.skipped for s in task.dev.values())
        note = f", {skipped} malformed lines left out" if skipped else ""
        dev = ", ".join(f"{k} {len(v):,}" for k, v in task.dev.items())
        more = f" (+ {len(task.unlabeled):,} without their labels)" if task.unlabeled else ""
        say(f"{task.task.title}: train {len(task.train):,}{more}, dev {dev} ({task.source}{note})")
        out.append(task)
    return out


def load_teacher(dargs, student_path):
    """The teacher, its tokenizer and its identity; its shapes checked against the student's for the
    intermediate losses."""
    from transformers import AutoModel, AutoTokenizer

    path = dargs.teacher_name_or_path
    check_model(path)
    model = task_distill.load_teacher(path)
    tokenizer = load_tokenizer(AutoTokenizer, path, "the teacher's tokenizer")
    if dargs.per_step:
        task_distill.check_shapes(dargs, load_pretrained(AutoModel, student_path, "the model"), model)
    return Teacher(dargs, model, tokenizer, model_identity(path, model.config, tokenizer))


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


def model_identity(name, config, tokenizer):
    """Digests of the model's weights and of the tokenizer: a kept result is reused only for the same model
    (a folder may be moved, or retrained under the same name)."""
    folder = Path(name)
    if folder.is_dir():
        h = hashlib.sha256()
        for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), folder / "config.json"]):
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        model = f"sha256:{h.hexdigest()[:16]}"
    else:  # a hub name: its revision
        model = f"{name}@{getattr(config, '_commit_hash', None) or 'unknown revision'}"
    backend = getattr(tokenizer, "backend_tokenizer", None)  # vocabulary, lower-casing, accents, ...
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {"model": model, "tokenizer": hashlib.sha256(spec.encode()).hexdigest()[:16]}


# TrainingArguments that do not change a run's result: where it is logged or saved, how fast the data load,
# evaluation batch size. Every other flag is compared before a finished run is reused or a checkpoint resumed.
NOT_RESULT = {
    "output_dir", "run_name", "project", "report_to", "disable_tqdm", "seed", "learning_rate",
    "per_device_eval_batch_size", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "skip_memory_metrics", "resume_from_checkpoint",
    "do_train", "do_eval", "do_predict", "local_rank", "ddp_backend", "ddp_timeout", "ddp_bucket_cap_mb",
    "push_to_hub", "include_for_metrics", "include_num_input_tokens_seen", "batch_eval_metrics", "debug",
    "prediction_loss_only", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "restore_callback_states_from_checkpoint", "torch_empty_cache_steps", "overwrite_output_dir",
}  # fmt: skip
NOT_RESULT_PREFIXES = ("logging_", "log_", "save_", "hub_", "trackio_", "eval_")


def settings(data_args, targs, task_data, identity, max_length, distillation=None):
    """Everything a run's result depends on besides its seed and learning rate: a kept run must match it."""
    args = {k: v for k, v in targs.to_dict().items() if k not in NOT_RESULT and not k.startswith(NOT_RESULT_PREFIXES)}
    out = {
        **identity,
        "world_size": targs.world_size,
        "max_seq_length": max_length,
        "pad_to_max_length": data_args.pad_to_max_length,
        "labels": list(task_data.task.labels or ()),
        "text_columns": list(task_data.task.columns),
        "train_examples": len(task_data.train),
        "eval_examples": {k: len(v) for k, v in task_data.dev.items()},
        "train_data": task_data.train.digest(),
        "eval_data": {k: v.digest() for k, v in task_data.dev.items()},
        "distillation": distillation,  # the teacher's weights digest and the loss weights; None: no teacher
        "unlabeled_data": task_data.unlabeled.digest() if task_data.unlabeled else None,
        **args,
    }
    return json.loads(json.dumps(out, default=str))  # as it reads back from results.json


def differences(old, new):
    return [f"{k} {old.get(k)!r} there, {v!r} now" for k, v in new.items() if old.get(k) != v]


def read_json(path, what, keys):
    """A results or settings file written by this script, or an InputError that names it and the way out."""
    check_writable(path, what)  # a folder where the file belongs
    try:
        out = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is damaged ({first_line(e)}): remove it, or give --overwrite_output_dir") from None
    missing = [k for k in keys if k not in out] if isinstance(out, dict) else list(keys)
    if missing:
        raise InputError(f"{path} is not a run_glue.py {what} (it has no {missing[0]!r}): remove it, or give "
                         "--overwrite_output_dir")  # fmt: skip
    return out


def read_run(path):
    run = read_json(path, "results.json", ("metrics", "score", "learning_rate", "seed", "hyper_parameters"))
    glue_table.check_metrics(run["metrics"], path)
    return run


def read_summary(path, model, identity, overwrite):
    """The tasks of earlier calls into this --output_dir: kept when they are this model's."""
    if not Path(path).exists():
        return {}
    try:
        summary = glue_table.check_summary(read_json(path, "results.json", ("model", "tasks")), path)
    except InputError:
        if overwrite:
            return {}
        raise
    if summary.get("model_identity", {}).get("model", identity["model"]) == identity["model"] and (
        "model_identity" in summary or summary.get("model_path") == model
    ):
        return summary["tasks"]
    if overwrite:  # another model's tasks: replaced, not mixed with this one's
        return {}
    raise InputError(f"{path} holds the results of another model ({summary.get('model_path')}): give another "
                     "--output_dir, or --overwrite_output_dir to replace them")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# One run's folder: kept results, a checkpoint to resume, or a fresh start


@dataclass
class Run:
    lr: float
    seed: int
    dir: Path
    kept: dict = None  # its finished results, reused
    resume: Path = None  # the checkpoint to resume from
    discard: list = field(default_factory=list)  # checkpoints that cannot be resumed, removed when it runs
    note: str = ""  # what was found, said when it runs


def checkpoint_problem(path):
    """Why a Trainer checkpoint cannot be resumed (a kill during its save), or None."""
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
        if not (path / name).is_file():
            return f"it has no {name}"
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (ValueError, UnicodeDecodeError):
        return "its trainer_state.json is damaged"
    for name in ("optimizer.pt", "scheduler.pt"):
        if not zipfile.is_zipfile(path / name):  # torch.save writes a zip: a cut one has no central directory
            return f"its {name} is truncated"
    weights = path / "model.safetensors"
    if weights.is_file():
        return None if safetensors_complete(weights) else "its model.safetensors is truncated"
    return None if zipfile.is_zipfile(path / "pytorch_model.bin") else "it has no complete model weights"


def safetensors_complete(path):
    """True when the file is as long as its header says (a cut file still has its header)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (ValueError, KeyError, TypeError, OSError):
        return False


def plan_run(run, hyper, overwrite, main_process):
    """What to do with one run's folder, decided before anything trains or is removed."""
    results = run.dir / "results.json"
    aside = aside_path(run.dir)
    if aside.exists():  # a replacement killed outright (no chance to put the old run back): put it back now
        if main_process:
            shutil.rmtree(run.dir, ignore_errors=True)
            aside.rename(run.dir)
        say(f"{run.dir}: put back; its replacement by --overwrite_output_dir was stopped before it finished")
    if overwrite or not run.dir.exists():
        return run
    if results.exists():
        run.kept = read_run(results)
        differ = differences(run.kept["hyper_parameters"], hyper)
        if differ:
            raise InputError(f"{results} was run with other settings ({'; '.join(differ[:3])}): "
                             "give --overwrite_output_dir to redo it, or another --output_dir")  # fmt: skip
        return run
    numbered = [p for p in run.dir.glob("checkpoint-*") if p.name[11:].isdigit()]  # the Trainer's names
    checkpoints = sorted(numbered, key=lambda p: int(p.name[11:]), reverse=True)  # newest first
    if not checkpoints:
        return run
    record = run.dir / "settings.json"
    if not record.exists():
        run.discard = checkpoints
        run.note = f"{run.dir} holds checkpoints but no record of their settings: starting over"
        return run
    differ = differences(read_json(record, "settings.json", ("model",)), hyper)
    if differ:
        raise InputError(f"{run.dir} was interrupted under other settings ({'; '.join(differ[:3])}): give "
                         "--overwrite_output_dir to start it over, or another --output_dir")  # fmt: skip
    notes = []
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            run.resume = checkpoint
            break
        run.discard.append(checkpoint)
        notes.append(f"{checkpoint.name} is incomplete ({problem}) and is removed")
    then = f"resuming from {run.resume}" if run.resume else "starting over"
    run.note = f"{'; '.join(notes)}: {then}" if notes else then
    return run


class NonFiniteLoss(Exception):
    pass


def finite_check():
    """A Trainer callback that stops a run whose loss or weights are no longer finite (train.py does the same,
    with the same exit status): a diverged run must not be recorded as a score."""
    import torch
    from transformers import TrainerCallback

    class FiniteCheck(TrainerCallback):
        def check(self, state, model, loss=None):
            if loss is not None and not math.isfinite(loss):
                raise NonFiniteLoss(f"the training loss is {loss} at step {state.global_step}")
            if model is not None and not all(torch.isfinite(p).all() for p in model.parameters()):
                raise NonFiniteLoss(f"the weights are not finite at step {state.global_step}")

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            self.check(state, model, (logs or {}).get("loss"))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.check(state, model)

    return FiniteCheck()


def callbacks():
    """The Trainer callbacks of every run (a function, so that tests can add theirs)."""
    return [finite_check()]


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
    train = encode(task_data.train)
    if task_data.unlabeled:  # after the labelled rows: the teacher's logits are their only target
        train = datasets.concatenate_datasets([train, encode(task_data.unlabeled)])
    return train, dev, fit


def model_inputs(dataset, model, also=()):
    """Only the inputs the model's forward takes (DistilBERT has no token_type_ids), and the columns `also`."""
    keep = task_distill.forward_inputs(model) | {"label", *also}
    return dataset.remove_columns([c for c in dataset.column_names if c not in keep])


@dataclass
class Teacher:
    """The task distillation's teacher (--teacher_name_or_path), loaded and checked once."""

    args: task_distill.DistillArguments
    model: object
    tokenizer: object
    identity: dict
    logits_seconds: float | None = None  # the one pass over the training set (benchmarks/bench_task_distill.py)

    def check(self, task_data, tokenizer):
        """Before any training: the teacher is this task's classifier and reads the student's input ids."""
        path = self.args.teacher_name_or_path
        task_distill.check_teacher(self.model, task_data.task, task_data.num_labels, path)
        task_distill.check_vocabulary(tokenizer, self.tokenizer, task_data.train.texts[0][:64], path)

    def logits(self, train_set, tokenizer, targs):
        """train_set with the teacher's logits as a column (computed once, in eval mode, for every run)."""
        import torch
        from transformers import DataCollatorWithPadding

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision(targs))  # as the steps run
        start = time.time()
        logits = task_distill.teacher_logits(self.model, train_set, DataCollatorWithPadding(tokenizer),
                                             targs.per_device_eval_batch_size, targs.device, dtype)  # fmt: skip
        self.model.cpu()  # the step needs only the column
        self.logits_seconds = round(time.time() - start, 2)
        say(f"the teacher's logits for {len(train_set):,} training rows took {self.logits_seconds:.1f} s"
            " (once, for all runs)")
        return train_set.add_column(task_distill.TEACHER_LOGITS, logits.tolist())

    def record(self):
        return {"path": self.args.teacher_name_or_path, **task_distill.settings(self.args, self.identity),
                "teacher_logits": "every step" if self.args.per_step else "computed once",
                "unlabeled_samples": self.args.unlabeled_samples}  # fmt: skip


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
                               dataloader_pin_memory=pin)  # fmt: skip
    transformers.set_seed(run.seed)  # the new head's initialisation
    # id2label sets the head's size in transformers 5 (num_labels=1 with id2label=None leaves it unset)
    labels = task.labels or ("score",)
    model = load_pretrained(
        AutoModelForSequenceClassification, margs.model_name_or_path, "the model", num_labels=task_data.num_labels,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="regression" if task.labels is None else "single_label_classification",
        ignore_mismatched_sizes=True,  # a model fine-tuned before has a head of another size
    )  # fmt: skip
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 or args.bf16 else None)
    train_inputs = model_inputs(train_set, model)
    trainer_class = Trainer
    if teacher:
        train_inputs = model_inputs(train_set, model, task_distill.forward_inputs(teacher.model) |
                                    {task_distill.TEACHER_LOGITS})  # fmt: skip
        collator = task_distill.WithTeacherLogits(collator)
        trainer_class = task_distill.distill_trainer(teacher.args, teacher.model, task.labels is None)
    trainer = trainer_class(model=model, args=args, train_dataset=train_inputs, data_collator=collator,
                            callbacks=callbacks())  # fmt: skip
    start = time.time()
    train_metrics = trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None).metrics
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
        "precision": precision(targs),
        "teacher": teacher.record() | {"logits_seconds": teacher.logits_seconds} if teacher else None,
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
            trainer.save_model(str(run.dir / "model"))
            tokenizer.save_pretrained(str(run.dir / "model"))
        with atomic_write(run.dir / "results.json", "w") as f:
            json.dump(result, f, indent=2)
        for checkpoint in run.dir.glob("checkpoint-*"):  # the results are in; the optimizer state is not needed
            shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def precision(targs):
    return "fp16" if targs.fp16 else "bf16" if targs.bf16 else "fp32"


def aside_path(run_dir):
    """Where --overwrite_output_dir keeps a finished run until its replacement has its results."""
    return run_dir.parent / f".{run_dir.name}.replaced-by-overwrite"


def execute(run, targs, overwrite, hyper, train):
    """Train one planned run. --overwrite_output_dir moves the old folder aside and removes it only once the
    new run has its results; a run that fails or is stopped puts it back. A diverged run leaves nothing."""
    main_process = targs.process_index == 0
    aside = aside_path(run.dir)
    with targs.main_process_first(local=False, desc="run folder"):  # one process moves; the others wait
        if main_process:
            if overwrite and run.dir.exists():
                run.dir.rename(aside)
            for checkpoint in run.discard:
                shutil.rmtree(checkpoint, ignore_errors=True)
            with atomic_write(run.dir / "settings.json", "w") as f:  # what a resume is checked against
                json.dump(hyper, f, indent=2)
    if run.note:
        say(f"  {run.note}")
    try:
        result = train()
    except BaseException as e:
        if main_process and (aside.exists() or isinstance(e, NonFiniteLoss)):
            shutil.rmtree(run.dir, ignore_errors=True)
            if aside.exists():
                aside.rename(run.dir)
        raise
    if main_process and aside.exists():
        shutil.rmtree(aside)
    return result


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
    margs, data_args, sweep, dargs, targs, argv = parse_args(argv)
    import torch
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" warning is expected
    check_flags(data_args, sweep, targs)
    task_distill.check_flags(dargs, argv)
    rates = learning_rates(sweep, targs)
    asked = precision(targs)
    if targs.fp16 and not torch.cuda.is_available():  # the Trainer would run fp32 and record fp16
        say("--fp16 needs a CUDA GPU: this run is fp32, and is recorded so")
        targs = dataclasses.replace(targs, fp16=False)
    out_dir = Path(targs.output_dir)
    results_path = out_dir / "results.json"
    check_writable(out_dir, "--output_dir", folder=True)
    check_writable(results_path, "results")
    check_model(margs.model_name_or_path)
    config = load_pretrained(transformers.AutoConfig, margs.model_name_or_path, "the model")
    tokenizer = load_tokenizer(AutoTokenizer, margs.tokenizer_name or margs.model_name_or_path)
    identity = model_identity(margs.model_name_or_path, config, tokenizer)
    teacher = load_teacher(dargs, margs.model_name_or_path) if dargs.on else None
    configs = (config, teacher.model.config) if teacher else (config,)
    max_length = min(data_args.max_seq_length, model_input_limit(tokenizer, *configs))
    if max_length < data_args.max_seq_length:
        say(f"--max_seq_length {data_args.max_seq_length} is more than the model takes: {max_length}")
    room = tokenizer.num_special_tokens_to_add(pair=True) + 2
    if max_length < room:
        raise InputError(f"--max_seq_length {max_length} leaves no room for text: give at least {room}")
    tasks = load_data(data_args, dargs.unlabeled_samples)
    for task_data in tasks if teacher else ():
        teacher.check(task_data, tokenizer)
    margs.model_label = margs.model_label or Path(margs.model_name_or_path.rstrip("/")).name

    # Every kept result, checkpoint and setting of every task is checked before the first run trains.
    overwrite = data_args.overwrite_output_dir
    summary = {"model": margs.model_label, "model_path": margs.model_name_or_path, "model_identity": identity,
               "precision": {"asked": asked, "ran": precision(targs)},
               "teacher": teacher.record() if teacher else None,
               "tasks": read_summary(results_path, margs.model_name_or_path, identity, overwrite)}  # fmt: skip
    seeds = [targs.seed + i for i in range(sweep.seeds)]
    plans = []
    with targs.main_process_first(local=False, desc="planning"):  # the first process repairs; the others read after
        for task_data in tasks:
            distillation = task_distill.settings(dargs, teacher.identity) if teacher else None
            hyper = settings(data_args, targs, task_data, identity, max_length, distillation)
            folder = out_dir / task_data.task.name
            runs = [plan_run(Run(lr, seed, folder / f"lr{lr:g}_seed{seed}"), hyper, overwrite, targs.process_index == 0)
                    for lr in rates for seed in seeds]  # fmt: skip
            plans.append((task_data, hyper, runs))

    for task_data, hyper, runs in plans:
        task = task_data.task
        if all(run.kept for run in runs):
            train_set = dev_sets = fit = None
        else:
            train_set, dev_sets, fit = tokenize(task_data, tokenizer, max_length, data_args.pad_to_max_length)
            if teacher and not dargs.per_step:  # the teacher's logits, once for every run of the task
                train_set = teacher.logits(train_set, tokenizer, targs)
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
                    teacher))  # fmt: skip
            except NonFiniteLoss as e:
                fail("run_glue.py", f"{title}: {e}: the run is not recorded (lower --learning_rate, or check the "
                     "data)", NON_FINITE_EXIT)  # fmt: skip
            shown = ", ".join(f"{d} {m} {100 * v:.2f}" for d, ms in result["metrics"].items() for m, v in ms.items())
            say(f"{title}: {shown} ({result['train_seconds']:.0f} s of training)")
            results.append(result)
        summary["tasks"][task.name] = summarize(task, results)
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
