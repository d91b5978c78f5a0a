"""run_glue.py's task family for tasks/runner.py: GLUE's tasks and your own sequence classification or
regression files (tasks/glue.py reads and checks them), tokenized once per task, scored with GLUE's metrics,
and distilled with tasks/task_distill.py's losses."""

import numpy as np

from core.errors import InputError, say
from core.loading import model_input_limit
from tasks import glue
from tasks.runner import TaskFamily
from tasks.runs import QA_KIND, model_inputs
from tasks.task_distill import UNLABELED, Classification


def load_data(data_args, unlabeled=None, transfer_file=None):
    """Every task's TaskData, checked, before any training; with `unlabeled` (--unlabeled_samples), that many
    more training examples, their labels dropped, and the texts of `transfer_file`, for a teacher to label."""
    if data_args.task_name == "all":
        if data_args.train_file or data_args.validation_file:
            raise InputError("--task_name all reads GLUE's tasks: leave out --train_file/--validation_file")
        names = list(glue.TASKS)
    else:
        names = [data_args.task_name]
    columns = [c.strip() for c in data_args.text_columns.split(",")] if data_args.text_columns else None
    out = []
    for name in names:
        task = glue.load_task(name, data_args.data_dir, data_args.train_file, data_args.validation_file, columns,
                              data_args.label_column)
        full, task.train = task.train, task.train.head(data_args.max_train_samples)
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
        task.dev = {k: v.head(data_args.max_eval_samples) for k, v in task.dev.items()}
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
    return float("nan") if task_data.task.labels is None else UNLABELED


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


def glue_average(tasks):
    """(the mean score of an output folder's classification tasks, their names): a question-answering task that
    shares the folder (run_qa.py's, F1) is not averaged with accuracies and correlations."""
    kept = {n: t for n, t in tasks.items() if t.get("kind") != QA_KIND and "exact_match" not in t["metrics"].get(
        "dev", {}) and "exact" not in t["metrics"].get("dev", {})}
    return (sum(t["score"] for t in kept.values()) / len(kept) if kept else None), sorted(kept)


class GlueFamily(TaskFamily):
    """Sequence classification and regression: a head over the first token, one label (or score) per row,
    the rows of one or two text columns."""

    script = "run_glue.py"
    pipeline_tag = "text-classification"
    model_class = "AutoModelForSequenceClassification"
    teacher_needs = ("a sequence classifier", "fine-tune it on the task first (run_glue.py --save_model: its "
                     "TASK/RUN/model)")

    def model_kwargs(self, job):
        """A head of the task's size (id2label sets it in transformers 5: num_labels=1 with id2label=None leaves
        it unset); a model fine-tuned before has a head of another size."""
        task_data = job.task
        labels = task_data.task.labels or ("score",)
        return dict(num_labels=task_data.num_labels, id2label=dict(enumerate(labels)),
                    label2id={n: i for i, n in enumerate(labels)}, ignore_mismatched_sizes=True,
                    problem_type="regression" if task_data.task.labels is None else "single_label_classification")

    def losses(self, job, args, teacher):
        """Without a teacher, the model's own loss (transformers' Trainer as it is); with one, KD and the rest."""
        if teacher is None:
            return None
        return Classification(job.task.task.labels is None, args.label_smoothing_factor)

    def prepare(self, job, cmd):
        """The task's splits tokenized once for all its runs; with a teacher whose logits suffice, its logits."""
        teacher = cmd.teacher
        job.train_set, job.dev, job.fit = tokenize(job.task, cmd.tokenizer, self.max_length,
                                                   self.data_args.pad_to_max_length)
        if teacher and teacher.args.logits_once:
            teacher_length = min(self.data_args.max_seq_length,
                                 model_input_limit(teacher.tokenizer, teacher.model.config))
            job.train_set = teacher.with_logits(job.train_set, cmd.tokenizer, cmd.training_args, False,
                                                training_texts(job.task), teacher_length)

    def evaluate(self, trainer, job, args, collator):
        """({dev set: metrics}, no extra outputs)."""
        task, metrics = job.task.task, {}
        for name, dev in job.dev.items():
            out = trainer.predict(model_inputs(dev, trainer.model))
            logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
            preds = logits.squeeze(-1) if task.labels is None else np.argmax(logits, axis=-1)
            metrics[name] = glue.compute_metrics(task, preds, out.label_ids)
        return metrics, {}

    def dev_score(self, metrics):
        return glue.task_score(metrics)

    def teacher_rows(self, job):
        rows = job.task.unlabeled_rows
        return {"unlabeled_rows_used": {"task": rows.get("task", 0), "transfer_file": rows.get("transfer", 0)}}

    def data_source(self, job):
        return job.task.source

    def card_dataset(self, job):
        """(the dataset's name, its hub id or file, the hub config) for the model card."""
        task = job.task.task
        if task.name in glue.TASKS:  # GLUE's own task (its TSV files, the hub's parquet), not a user's
            return f"GLUE {task.title}", "nyu-mll/glue", task.name
        return job.task.source, job.task.source, None

    def sum_up(self, summary):
        """The GLUE average over the folder's classification tasks, and whether it holds all nine."""
        summary["average"], summary["average_of"] = glue_average(summary["tasks"])
        summary["complete"] = all(name in summary["tasks"] for name in glue.TASKS)
