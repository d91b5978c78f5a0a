"""One fine-tuning and distillation path under scripts/run_glue.py and scripts/run_qa.py.

A task family (a TaskFamily: tasks/glue_family.GlueFamily, tasks/qa_family.QAFamily) says only what differs
between tasks: how its rows become the model's inputs (prepare), how predictions become metrics (evaluate),
its model class and, to distil, the losses of one batch (the loss adapter tasks/distill.py's Trainer takes).
Everything else is one path for every family: the run plan (seeds, the learning-rate grid, kept, resumed and
overwritten runs, tasks/runs.py), one fine_tune, one teacher (tasks/distill.py) and the summary in
--output_dir. docs/glue.md#a-third-task-family shows a family of a few lines (tests/test_runner.py runs it).
"""

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import files
from core.errors import NON_FINITE_EXIT, NonFiniteLoss, fail, first_line, say
from core.files import atomic_write, check_writable
from core.loading import load_pretrained, load_tokenizer, model_input_limit
from core.precision import trainer_precision, use_attention
from tasks.arguments import decide_precision, learning_rates
from tasks.distill import distill_trainer
from tasks.runs import (
    Run,
    callbacks,
    execute,
    forward_inputs,
    model_identity,
    model_inputs,
    plan_run,
    read_summary,
    save_model,
    seeded_sampling,
    summarize,
    train_or_restore,
)
from tasks.teacher_pass import TEACHER_LOGITS, WithTeacherLogits, load_teacher


class TaskFamily:
    """What a task family says. A family sets script, pipeline_tag (the model card's), model_class (a
    transformers Auto class's name), teacher_needs ((what a teacher must be, how to get one)) and defines
    prepare(job, cmd) (job.train_set, job.dev from job.task), evaluate(trainer, job, args, collator) -> ({dev
    set: metrics}, {file name: JSON object written beside the results}) and dev_score(metrics) (points); the
    rest has defaults that suit most tasks."""

    targets = ("labels",)  # the batch keys of the gold answers (the losses' inputs; kept beside the model's)
    max_length = None  # the longest input the model (and its teacher) take, within --max_seq_length: open_command's

    def __init__(self, data_args=None):
        self.data_args = data_args  # the script's data flags

    def collator(self, tokenizer, args):
        """Each batch padded to its longest row, or with --pad_to_max_length to the input length as run; to a
        multiple of 8 in half precision (tensor cores)."""
        from transformers import DataCollatorWithPadding

        if getattr(self.data_args, "pad_to_max_length", False):
            return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=self.max_length)
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 or args.bf16 else None)

    def model_kwargs(self, job):
        return {}

    def losses(self, job, args, teacher):
        """The loss adapter of tasks/distill.py's Trainer; None: the model's own loss (transformers' Trainer)."""
        return None

    def score(self, metrics):
        """A run's score: the mean of its dev sets' scores, in points."""
        return sum(self.dev_score(m) for m in metrics.values()) / len(metrics)

    def shown(self, metrics):
        return ", ".join(f"{dev} {name} {100 * v:.2f}" for dev, ms in metrics.items() for name, v in ms.items())

    def teacher_rows(self, job):
        """What a run records of the rows only its teacher labels."""
        return {}

    def data_source(self, job):
        return job.title

    def card_dataset(self, job):
        """(the dataset's name, its hub id or file, the hub config) for the model card."""
        return job.title, job.title, None

    def summarize(self, job, results):
        """The task's figures over its runs (the median per learning rate, the best rate)."""
        return summarize(job, results, self.dev_score)

    def sum_up(self, summary):
        """Figures over the folder's tasks, added to its results.json (GLUE: the average)."""


@dataclass
class Job:
    """One task of a command and its runs; its data is prepared once (tokenized, the teacher's logits added)
    for every run that trains."""

    name: str  # its folder in --output_dir and its key in results.json
    title: str
    task: object  # the family's description of the task: its rows, labels and dev sets
    run_key: dict  # everything a run's result depends on besides its seed and learning rate
    runs: list = field(default_factory=list)
    train_set: object = None
    dev: object = None
    fit: dict = None  # how well the tokenizer fits the task's text (GLUE)


@dataclass
class Command:
    """What every run of one run_glue.py or run_qa.py command shares."""

    family: object
    model_args: object  # ModelArguments
    sweep: object  # SweepArguments
    distill_args: object  # the script's distillation flags
    training_args: object  # transformers' TrainingArguments
    tokenizer: object
    identity: dict  # digests of the model's weights and tokenizer
    precision: object  # core.precision.Precision: asked and ran
    teacher: object = None  # tasks.teacher_pass.Teacher
    overwrite: bool = False


def open_command(family, model_args, data_args, sweep, distill_args, training_args):
    """(the Command, the learning rates, the input length) of a run_glue.py or run_qa.py call whose flags are
    checked: the precision decided, --output_dir writable, the model's config, tokenizer and identity read, the
    teacher loaded and checked against the student's shapes, and the longest input both models take (also
    family.max_length)."""
    import transformers

    rates = learning_rates(sweep, training_args)
    decision, training_args = decide_precision(training_args)
    results_path = Path(training_args.output_dir) / "results.json"
    check_writable(results_path.parent, "--output_dir", folder=True)
    check_writable(results_path, "results")
    path = model_args.model_name_or_path
    config = load_pretrained(transformers.AutoConfig, path, "the model")
    tokenizer = load_tokenizer(transformers.AutoTokenizer, model_args.tokenizer_name or path)
    teacher = load_teacher(family, distill_args, config) if distill_args.on else None
    max_length = min(data_args.max_seq_length, model_input_limit(tokenizer, config, *(
        (teacher.model.config,) if teacher else ())))
    if max_length < data_args.max_seq_length:
        who = "the model or its teacher" if teacher else "the model"
        say(f"--max_seq_length {data_args.max_seq_length} is more than {who} takes: {max_length}")
    model_args.model_label = model_args.model_label or Path(path.rstrip("/")).name
    family.max_length = max_length
    cmd = Command(family, model_args, sweep, distill_args, training_args, tokenizer,
                  model_identity(path, config, tokenizer), decision, teacher, data_args.overwrite_output_dir)
    return cmd, rates, max_length


def run_script(script, main):
    """A task script's exit: its status, or one line for an interrupt (a rerun resumes) or a failed write."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(f"{script}: interrupted; rerun the same command to resume")
    except OSError as e:  # a full disk while writing a checkpoint, ...
        fail(script, first_line(e))


def fine_tune(cmd, job, run):
    """One run: fine-tune from the pretrained weights (distil, with a teacher), evaluate every dev set, write
    the run's results; the results dict."""
    import torch
    import transformers
    from transformers import Trainer

    family, teacher, training_args = cmd.family, cmd.teacher, cmd.training_args
    pin = training_args.dataloader_pin_memory and torch.cuda.is_available()  # pinning without a GPU only warns
    stage_one = cmd.distill_args.intermediate_epochs if teacher else 0  # epochs before --num_train_epochs
    args = dataclasses.replace(training_args, output_dir=str(run.dir), learning_rate=run.lr, seed=run.seed,
                               dataloader_pin_memory=pin, num_train_epochs=training_args.num_train_epochs + stage_one)
    transformers.set_seed(run.seed)  # the new head's initialisation
    model = load_pretrained(getattr(transformers, family.model_class), cmd.model_args.model_name_or_path,
                            "the model", **family.model_kwargs(job))
    # The attention implementation measured fastest for this precision and device (precision.ATTENTION).
    device_type = "cpu" if args.use_cpu or not torch.cuda.is_available() else "cuda"
    for m in (model, teacher.model) if teacher else (model,):
        use_attention(m, device_type, trainer_precision(args))
    losses = family.losses(job, args, teacher)  # None: the model's own loss, transformers' Trainer as it is
    trainer_class = Trainer if losses is None else distill_trainer(losses, cmd.distill_args, teacher)
    also = {*family.targets, TEACHER_LOGITS, *(forward_inputs(teacher.model) if teacher else ())}
    collator = family.collator(cmd.tokenizer, args)
    trainer = seeded_sampling(trainer_class)(
        model=model, args=args, train_dataset=model_inputs(job.train_set, model, also),
        data_collator=WithTeacherLogits(collator), callbacks=callbacks())
    start = time.time()
    train_metrics = train_or_restore(trainer, run)
    train_time = time.time() - start
    metrics, outputs = family.evaluate(trainer, job, args, collator)
    result = {
        "task": job.name, "title": job.title, "metrics": metrics, "score": family.score(metrics),
        "model": cmd.model_args.model_label, "model_path": cmd.model_args.model_name_or_path, "seed": run.seed,
        "learning_rate": run.lr, "hyper_parameters": job.run_key, "precision": trainer_precision(training_args),
        "attention": model.config._attn_implementation,
        "teacher": teacher.record() | {"logits_seconds": teacher.logits_seconds, **family.teacher_rows(job)}
        if teacher else None,
        "steps": trainer.state.global_step, "train_seconds": round(train_time, 1),
        "train_samples_per_second": train_metrics.get("train_samples_per_second"), "device": str(args.device),
        "data": family.data_source(job), "tokenizer_fit": job.fit,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if trainer.is_world_process_zero():
        if cmd.sweep.save_model:
            save_model(trainer, cmd.tokenizer, run.dir / "model", result, family.pipeline_tag,
                       family.card_dataset(job), f"scripts/{family.script}")
        for name, obj in outputs.items():  # the predictions, where the family keeps them
            with atomic_write(run.dir / name, "w") as f:
                json.dump(obj, f, indent=2)
        with atomic_write(run.dir / "results.json", "w") as f:  # last: the run's commit point
            json.dump(result, f, indent=2)
        for checkpoint in run.dir.glob("checkpoint-*"):  # the results are in; the optimizer state is not needed
            shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def run_jobs(cmd, jobs, rates):
    """Every run of every job: planned (kept, resumed or started over, each checked before the first trains),
    then trained in turn, each job's data prepared once; results.json in --output_dir after each job, and its
    contents returned (the summary)."""
    family, training_args, teacher = cmd.family, cmd.training_args, cmd.teacher
    out_dir = Path(training_args.output_dir)
    results_path = out_dir / "results.json"
    main_process = training_args.process_index == 0
    # One command per output folder: two at once would write over each other's runs (the lock is the main
    # process's; torchrun's other processes follow it)
    lock = files.folder_lock(out_dir / ".lock", f"--output_dir {out_dir}") if main_process else \
        contextlib.nullcontext()
    with lock:
        label, path = cmd.model_args.model_label, cmd.model_args.model_name_or_path
        summary = {"model": label, "model_path": path, "model_identity": cmd.identity,
                   "precision": {"asked": cmd.precision.requested, "ran": cmd.precision.used},
                   "teacher": teacher.record() if teacher else None,
                   "tasks": read_summary(results_path, path, cmd.identity, cmd.overwrite)}
        seeds = [training_args.seed + i for i in range(cmd.sweep.seeds)]
        outputs = ("model",) if cmd.sweep.save_model else ()
        with training_args.main_process_first(local=False, desc="planning"):  # the first repairs; the others read
            for job in jobs:
                job.runs = [plan_run(Run(lr, seed, out_dir / job.name / f"lr{lr:g}_seed{seed}"), job.run_key,
                                     cmd.overwrite, main_process, outputs) for lr in rates for seed in seeds]
        for job in jobs:
            if not all(run.kept for run in job.runs):
                family.prepare(job, cmd)
            results = []
            for run in job.runs:
                title = f"{job.title} lr {run.lr:g} seed {run.seed}"
                if run.kept:
                    results.append(run.kept)
                    say(f"{title}: kept {run.dir / 'results.json'} ({run.kept['score']:.2f})")
                    continue
                say(f"{title}: fine-tuning {label} -> {run.dir}")
                try:
                    result = execute(run, training_args, cmd.overwrite, job.run_key,
                                     lambda run=run: fine_tune(cmd, job, run))
                except NonFiniteLoss as e:
                    fail(family.script, f"{title}: {e}: the run is not recorded (lower --learning_rate, or check the "
                         "data)", NON_FINITE_EXIT)
                say(f"{title}: {family.shown(result['metrics'])} ({result['train_seconds']:.0f} s of training)")
                results.append(result)
            summary["tasks"][job.name] = family.summarize(job, results)
            family.sum_up(summary)
            if main_process:
                with atomic_write(results_path, "w") as f:
                    json.dump(summary, f, indent=2)
    return summary
