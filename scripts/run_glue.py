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
    python scripts/run_glue.py --model_name_or_path STUDENT --task_name sst2 --data_dir D --output_dir O \\
        --teacher_name_or_path O_TEACHER/sst2/lr5e-05_seed42/model --alpha_ce 1 --alpha_task 0 --temperature 2 \\
        --unlabeled_samples 10000

With --teacher_name_or_path the student is distilled while it fine-tunes (tasks/task_distill.py,
docs/task_distillation.md): --alpha_ce times the KD loss on the teacher's logits (computed once, cached on
disk) beside --alpha_task times the task's own loss, --unlabeled_samples / --transfer_file rows only the
teacher labels, and the intermediate losses (--alpha_cos, --alpha_att, --alpha_vv, --alpha_hidden; TinyBERT's
two stages with --intermediate_epochs). The teacher is checked against the task's labels and the student's
vocabulary before any training.

The model is a train.py run folder (a DistilBERT student: it has no token types, and none are given to it),
the teacher, or any hub name or folder AutoModelForSequenceClassification loads; the classification head
is new. Every task's data is loaded and its labels checked before the first step of training.

In --output_dir:
  results.json                      the model's score per task (median over --seeds, at the best learning
                                    rate of --learning_rate_grid); scripts/glue_table.py makes tables of these
  TASK/lr2e-05_seed42/results.json  one run: metrics, its run key, time; while it runs, settings.json,
                                    the Trainer's checkpoints (removed once it has its results) and
                                    tensorboard events
A rerun keeps the runs that have results and resumes an interrupted run from its newest complete checkpoint,
each only if every setting that changes the result, the model, the tokenizer and the data are the same
(else it stops and says what differs). --overwrite_output_dir redoes them, keeping each old run aside until
its replacement has results. Every other TrainingArguments flag works as in transformers (--bf16,
--gradient_accumulation_steps, --report_to, ...), and so does torchrun. A non-finite loss exits with status 3.
"""

from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, reports_errors, say
from core.flags import option
from scripts.glue_table import markdown_table
from tasks import glue, task_distill
from tasks.arguments import DEFAULTS, check_flags, parse_args
from tasks.glue_family import GlueFamily, load_data
from tasks.runner import Job, open_command, run_jobs, run_script
from tasks.runs import run_key


@dataclass
class DataArguments:
    task_name: str = option(None, f"one of {', '.join(glue.TASKS)}, or all")
    data_dir: str = option(None, "a GLUE task folder (GLUE's train.tsv/dev.tsv, or the hub's "
                                 "train-*.parquet/validation-*.parquet), or a folder of such folders for --task_name "
                                 "all; default: the hub")
    train_file: str = option(None, "your own training data: csv, tsv, json or jsonl")
    validation_file: str = option(None, "your own dev data, same columns")
    text_columns: str = option(None, "one or two text columns, comma-separated (default: sentence1,sentence2, else "
                                     "the first two other columns)")
    label_column: str = option("label", "the label column of your own files")
    max_seq_length: int = option(128, "longer inputs are truncated (BERT's GLUE setting)")
    pad_to_max_length: bool = option(False, "pad every batch to --max_seq_length (default: to its longest input, "
                                            "faster)")
    max_train_samples: int = option(None, "train on the first N examples only")
    max_eval_samples: int = option(None, "evaluate on the first N dev examples only")
    overwrite_output_dir: bool = option(False, "redo runs that already have results")



def flags(argv=None):
    """run_glue.py's flags: (ModelArguments, DataArguments, SweepArguments, DistillArguments, TrainingArguments,
    argv)."""
    classes = (DataArguments, task_distill.DistillArguments)
    return parse_args(argv, __doc__.split("\n\n")[0], classes, DEFAULTS, "run_glue.py")


@reports_errors
def main(argv=None):
    model_args, data_args, sweep, distill_args, training_args, argv = flags(argv)
    import transformers

    transformers.logging.set_verbosity_error()  # the new head's "newly initialized" warning is expected
    check_flags(data_args, sweep, training_args)
    distill_args.check(argv, training_args)
    family = GlueFamily(data_args)
    cmd, rates, max_length = open_command(family, model_args, data_args, sweep, distill_args, training_args)
    room = cmd.tokenizer.num_special_tokens_to_add(pair=True) + 2
    if max_length < room:
        raise InputError(f"--max_seq_length {max_length} leaves no room for text: give at least {room}")
    tasks = load_data(data_args, distill_args.unlabeled_samples, distill_args.transfer_file)
    teacher = cmd.teacher
    for task_data in tasks if teacher else ():  # the task's classifier, reading the student's ids or its own
        task_distill.check_teacher(teacher.model, task_data.task, task_data.num_labels,
                                   distill_args.teacher_name_or_path, distill_args.hard_targets)
        teacher.check_tokens(cmd.tokenizer, list(zip(*[column[:64] for column in task_data.train.texts])))
    jobs = [Job(t.task.name, t.task.title, t, run_key(
        cmd, max_length, pad_to_max_length=data_args.pad_to_max_length, labels=list(t.task.labels or ()),
        text_columns=list(t.task.columns), train_examples=len(t.train),
        eval_examples={k: len(v) for k, v in t.dev.items()}, train_data=t.train.digest(),
        eval_data={k: v.digest() for k, v in t.dev.items()},
        unlabeled_data=t.unlabeled.digest() if t.unlabeled else None)) for t in tasks]
    summary = run_jobs(cmd, jobs, rates)
    if cmd.training_args.process_index == 0 and any(n in glue.TASKS for n in summary["tasks"]):
        say()
        say(markdown_table([summary], published=False))
    say(f"results: {Path(cmd.training_args.output_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_script("run_glue.py", main)
