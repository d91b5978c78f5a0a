"""GLUE tasks for downstream evaluation: what each task is, where its data comes from, how it is scored.

Used by scripts/run_glue.py (fine-tuning) and scripts/glue_table.py (the results table); no training here.

- `TASKS`: the nine GLUE tasks, in the benchmark's order, with their columns, label names and metrics.
- `load_task()`: a task's train and dev splits from GLUE's own TSV files, the model hub's parquet files, the
  hub itself (`nyu-mll/glue`), or the user's csv/tsv/json files, as `Split`s of texts and label ids.
  Every label is checked against the task's label set here, before any training starts.
- `compute_metrics()`: GLUE's metrics, with scikit-learn and scipy (HF `evaluate` downloads its metric code at
  run time, so it fails offline).
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from core.errors import InputError, first_line
from core.tables import Table, is_missing, read_parquet, read_table, read_text, read_tsv, visible


@dataclass(frozen=True)
class Task:
    name: str  # the hub's config name: sst2, mnli, ...
    title: str  # as the GLUE papers write it: SST-2, MNLI, ...
    columns: tuple  # the hub's text column(s)
    labels: tuple | None  # label names in the hub's id order; None: regression (a float score)
    metrics: tuple  # computed by compute_metrics; the task's GLUE score is their mean
    folder: str  # GLUE's download folder name
    tsv_columns: tuple  # text column(s) in GLUE's TSV: header names, or positions when the file has no header
    tsv_label: str | int
    dev: tuple = ("validation",)  # the hub's dev split(s); MNLI has two
    dev_tsv: tuple = ("dev.tsv",)


# The hub's label names and ids (nyu-mll/glue); GLUE's TSV files use either these names or the same ids.
TASKS = {
    t.name: t
    for t in (
        Task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",), "CoLA",
             (3,), 1),  # GLUE's CoLA TSV has no header: source, label, original mark, sentence
        Task("sst2", "SST-2", ("sentence",), ("negative", "positive"), ("accuracy",), "SST-2",
             ("sentence",), "label"),
        Task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
             "MRPC", ("#1 String", "#2 String"), "Quality"),
        Task("stsb", "STS-B", ("sentence1", "sentence2"), None, ("pearson", "spearmanr"), "STS-B",
             ("sentence1", "sentence2"), "score"),
        Task("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"), "QQP",
             ("question1", "question2"), "is_duplicate"),
        Task("mnli", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
             "MNLI", ("sentence1", "sentence2"), "gold_label", dev=("validation_matched", "validation_mismatched"),
             dev_tsv=("dev_matched.tsv", "dev_mismatched.tsv")),
        Task("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "QNLI",
             ("question", "sentence"), "label"),
        Task("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "RTE",
             ("sentence1", "sentence2"), "label"),
        Task("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "WNLI",
             ("sentence1", "sentence2"), "label"),
    )
}

# The dev sets' names in results: MNLI's two are the columns MNLI-m and MNLI-mm of every GLUE table.
DEV_NAMES = {"validation_matched": "mnli-m", "validation_mismatched": "mnli-mm"}


def dev_name(task, split):
    return DEV_NAMES.get(split, task.name)


def custom_task(labels, columns):
    """The task a user's own files define: accuracy for classes, correlations for a float score."""
    metrics = ("pearson", "spearmanr") if labels is None else ("accuracy",)
    return Task("custom", "custom", tuple(columns), labels, metrics, "", (), "")


@dataclass
class Split:
    """One split, ready to tokenize: one or two lists of texts and their label ids (floats for a score)."""

    name: str
    texts: list  # [first texts] or [first texts, second texts]
    labels: list
    source: str = ""  # the file it came from, for messages
    skipped: int = 0  # malformed lines left out (GLUE's QQP and MNLI TSV files have a few)

    def __len__(self):
        return len(self.labels)

    def head(self, n):
        if n is None or n >= len(self):
            return self
        return Split(self.name, [t[:n] for t in self.texts], self.labels[:n], self.source, self.skipped)

    def rows(self, start, stop, label):
        """Examples start..stop-1 with every label replaced by `label` (texts for a teacher to label)."""
        texts = [t[start:stop] for t in self.texts]
        return Split(f"{self.name} (unlabeled)", texts, [label] * len(texts[0]), self.source)

    def concat(self, other):
        """These examples, then `other`'s."""
        texts = [a + b for a, b in zip(self.texts, other.texts)]
        return Split(self.name, texts, self.labels + other.labels, f"{self.source} and {other.source}",
                     self.skipped + other.skipped)

    def digest(self):
        """A digest of the texts and labels: a kept result is reused only for the same data."""
        h = hashlib.sha256()
        for column in (*self.texts, self.labels):
            h.update(json.dumps(column, ensure_ascii=False).encode())
        return h.hexdigest()[:16]


@dataclass
class TaskData:
    task: Task
    train: Split
    dev: dict = field(default_factory=dict)  # result name ("sst2", "mnli-m", ...) -> Split
    source: str = ""  # "GLUE TSV in ...", "parquet in ...", "the hub", "your files"
    unlabeled: Split = None  # training texts without their labels, for a teacher to label (--unlabeled_samples)
    unlabeled_rows: dict = field(default_factory=dict)  # rows used: {"task": N of --unlabeled_samples, "transfer": M}

    @property
    def num_labels(self):
        return 1 if self.task.labels is None else len(self.task.labels)

    def check_classes(self):
        """A classifier trained on one class learns nothing: refuse it (a file sorted by label, cut by
        --max_train_samples, is the usual cause)."""
        if self.task.labels is None or len(set(self.train.labels)) > 1:
            return
        only = self.task.labels[self.train.labels[0]]
        raise InputError(f"{self.train.source}: all {len(self.train):,} training examples have the label {only!r}: "
                         "a classifier needs at least two classes (is the file sorted by label, and cut by "
                         "--max_train_samples?)")


def label_ids(task, table, column):
    """The label ids of a table's label column (names or ids; floats for a score), or a one-line InputError
    that names the values and the lines."""
    values, source = table.columns[column], table.source
    check_no_empty_labels(table, column)
    if task.labels is None:
        bad = [i for i, v in enumerate(values) if not _is_float(v) or not math.isfinite(float(v))]
        if bad:
            raise InputError(f"{source}: label {values[bad[0]]!r} at {table.where(bad)} is not a finite number "
                             f"({task.title} is scored by a number)")
        return [float(v) for v in values]
    # GLUE's files hold names (entailment) or ids (0, 1); a user's labels are names only
    index = {} if task.name == "custom" else {str(i): i for i in range(len(task.labels))}
    index.update({name: i for i, name in enumerate(task.labels)})
    out, bad = [], {}
    for row, v in enumerate(values):
        key = _label_key(v)
        i = index.get(key)
        if i is None:
            bad.setdefault(key, []).append(row)
        out.append(i)
    if bad:
        shown = "; ".join(f"{k!r} at {table.where(rows)}" for k, rows in list(bad.items())[:3])
        allowed = ", ".join(f"{i}={n}" for i, n in enumerate(task.labels))
        raise InputError(f"{source}: labels outside {task.title}'s set: {shown}; expected {allowed}")
    return out


def check_no_empty_labels(table, column):
    """An empty label cell is a missing label, not a class of its own."""
    empty = [i for i, v in enumerate(table.columns[column]) if is_missing(v) or str(v).strip() == ""]
    if empty:
        raise InputError(f"{table.source}: no label at {table.where(empty)} (column {column!r})")


def _label_key(v):
    """A label value as text: 1, 1.0 and "1" are the same label."""
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
        return str(int(v))
    text = str(v).strip()
    if re.fullmatch(r"-?\d+\.0*", text):  # "1.0" in a csv is the label 1
        return str(int(float(text)))
    return text


def _is_float(v):
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def custom_labels(table, column):
    """The classes of a user's training file (sorted: integers in numeric order, then names), or None for a
    float score. One spelling a class: 0/1 and negative/positive in one file would make four classes."""
    check_no_empty_labels(table, column)
    values = table.columns[column]
    if values and all(_is_float(v) for v in values) and not all(float(v).is_integer() for v in values):
        return None
    keys = {_label_key(v) for v in values}
    numbers = sorted(k for k in keys if re.fullmatch(r"-?\d+", k))
    names = sorted(keys - set(numbers))
    if numbers and names:
        raise InputError(f"{table.source}: the label column {column!r} mixes numbers ({', '.join(numbers[:4])}) and "
                         f"names ({', '.join(map(repr, names[:4]))}): each spelling would be a class of its own; "
                         "write every label one way")
    if len(keys) == 1:
        raise InputError(f"{table.source}: label column {column!r} holds one value only ({next(iter(keys))!r}): "
                         "a classifier needs at least two classes")
    return tuple(sorted(numbers, key=int)) + tuple(names)


def _texts(table, wanted):
    """(the text columns, the rows without text). A missing value (JSON null, NaN) or one that is not a string
    (a number in JSON) is an error, never the text "None" or "5"; a row whose texts show nothing (empty,
    spaces, zero-width characters) is returned to be left out and counted."""
    out, blank = [], set()
    for c in wanted:
        if c not in table.columns:
            raise InputError(f"{table.source} has no column {c!r} (its columns: {table.names()})")
        values = table.columns[c]
        missing = [i for i, v in enumerate(values) if is_missing(v)]
        if missing:
            raise InputError(f"{table.source}: no text (null) in column {c!r} at {table.where(missing)}")
        other = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if other:
            kind = type(values[other[0]]).__name__
            raise InputError(f"{table.source}: column {c!r} holds a {kind}, not a text, at {table.where(other)} "
                             f"(write texts as strings)")
        blank.update(i for i, v in enumerate(values) if not visible(v))
        out.append(list(values))
    return out, sorted(blank)


def _without(rows, values):
    drop = set(rows)
    return [v for i, v in enumerate(values) if i not in drop]


def _split_from_table(task, name, table, columns, label_column, skipped=0):
    """A Split of the table's rows that have text; rows without text are left out and counted in `skipped`,
    with the malformed rows the reader left out."""
    texts, blank = _texts(table, columns)
    if label_column not in table.columns:
        raise InputError(f"{table.source} has no label column {label_column!r} (its columns: {table.names()})")
    labels = label_ids(task, table, label_column)
    texts, labels = [_without(blank, t) for t in texts], _without(blank, labels)
    return Split(name, texts, labels, table.source, skipped + table.skipped + len(blank))


def load_transfer(path, task, label):
    """A transfer set (--transfer_file): text that only a teacher labels, every label `label`. One text per
    line (.txt, single-sentence tasks), or a csv/tsv/json/jsonl/parquet table holding the task's text
    columns (other columns, a label column included, are not read)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--transfer_file {path} is a folder: give a text or table file")
    if not path.is_file():
        raise InputError(f"--transfer_file {path} does not exist")
    if path.suffix.lower() == ".txt":
        if len(task.columns) != 1:
            raise InputError(f"--transfer_file {path}: {task.title} reads pairs of texts ({', '.join(task.columns)}); "
                             "one text per line cannot give both: give a csv or json file with those "
                             "columns")
        lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        texts, skipped = [[line for line in lines if visible(line)]], sum(not visible(line) for line in lines)
    else:
        table = read_table(path)
        missing = [c for c in task.columns if c not in table.columns]
        if missing:
            raise InputError(f"--transfer_file {path} has no column {missing[0]!r}, which {task.title} reads (its "
                             f"columns: {table.names()})")
        texts, blank = _texts(table, task.columns)
        texts, skipped = [_without(blank, t) for t in texts], table.skipped + len(blank)
    if not texts[0]:
        raise InputError(f"--transfer_file {path} holds no text")
    return Split("transfer", texts, [label] * len(texts[0]), str(path), skipped)


def task_folder(data_dir, task):
    """The folder holding `task`'s files: `data_dir` itself, or its subfolder named as GLUE or the hub names
    it (SST-2 or sst2, any case)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"--data_dir {data_dir} is not a folder")
    if _has_task_files(data_dir):
        return data_dir
    wanted = {task.folder.lower(), task.name}
    for sub in sorted(data_dir.iterdir()):
        if sub.is_dir() and sub.name.lower() in wanted:
            return sub
    raise InputError(
        f"no {task.title} data in {data_dir}: expected train.tsv/dev.tsv or train-*.parquet there, "
        f"or in a subfolder {task.folder}/ or {task.name}/"
    )


def _has_task_files(folder):
    return (folder / "train.tsv").is_file() or any(folder.glob("train-*.parquet"))


def _parquet(folder, split, task):
    files = sorted(folder.glob(f"{split}-*.parquet"))
    if not files:
        raise InputError(f"no {split} split for {task.title} in {folder}: expected {split}-*.parquet")
    return read_parquet(files, str(files[0]) if len(files) == 1 else f"{folder}/{split}-*.parquet")


def load_local(task, data_dir):
    """A GLUE task from a folder in either of its two real forms (GLUE's TSV, or the hub's parquet)."""
    folder = task_folder(data_dir, task)
    if any(folder.glob("train-*.parquet")):
        splits = {s: _split_from_table(task, s, _parquet(folder, s, task), task.columns, "label")
                  for s in ("train", *task.dev)}
        return TaskData(task, splits["train"], {dev_name(task, s): splits[s] for s in task.dev},
                        f"parquet files in {folder}")
    header = not isinstance(task.tsv_label, int)
    splits = {}
    for split, filename in (("train", "train.tsv"), *zip(task.dev, task.dev_tsv)):
        path = folder / filename
        if not path.is_file():
            raise InputError(f"no {split} split for {task.title} in {folder}: expected {filename}")
        table, skipped = read_tsv(path, header=header)
        columns = [str(c) for c in task.tsv_columns]
        if not header and len(table.columns) <= max(task.tsv_columns):
            expected = f"{task.title}'s TSV has {task.tsv_columns[0] + 1}, no header"
            raise InputError(f"{path} has {len(table.columns)} columns: {expected}")
        if not table.lines:
            raise InputError(f"{path} holds no rows with {len(table.columns)} fields")
        splits[split] = _split_from_table(task, split, table, columns, str(task.tsv_label), skipped)
    dev = {dev_name(task, s): splits[s] for s in task.dev}
    return TaskData(task, splits["train"], dev, f"GLUE TSV files in {folder}")


def load_hub(task):
    """A GLUE task from the model hub (`nyu-mll/glue`), through datasets."""
    try:
        import datasets

        data = datasets.load_dataset("nyu-mll/glue", task.name)
    except Exception as e:  # offline, datasets raises ConnectionError, OSError or its own errors
        raise InputError(
            f"cannot fetch {task.title} from the hub (nyu-mll/glue): {first_line(e)}; "
            "offline, give --data_dir with GLUE's TSV files or the hub's parquet files"
        ) from None
    splits = {s: _split_from_table(task, s, Table(data[s].to_dict(), f"nyu-mll/glue {task.name} {s}"), task.columns,
                                   "label") for s in ("train", *task.dev)}
    return TaskData(task, splits["train"], {dev_name(task, s): splits[s] for s in task.dev}, "the hub (nyu-mll/glue)")


def infer_text_columns(table, label_column):
    """The text columns of a user's file, as transformers' run_glue example picks them: sentence1 and
    sentence2 when both are there, else the first two other columns, else the only one. Columns named
    idx, id or index are row numbers, not text, and are passed over."""
    if "sentence1" in table.columns and "sentence2" in table.columns:
        return ["sentence1", "sentence2"]
    others = [c for c in table.columns if c != label_column and c.lower() not in ("idx", "id", "index")]
    if not others:
        raise InputError(f"{table.source}: no text column beside the label column {label_column!r}")
    return others[:2]


def load_files(train_file, validation_file, task=None, text_columns=None, label_column="label"):
    """A task from the user's own files. With a GLUE `task`, its columns and label set apply; otherwise the
    labels are whatever the training file holds (strings or integers, sorted), or a float score."""
    train, valid = read_table(train_file), read_table(validation_file)
    for table in (train, valid):
        if label_column not in table.columns:
            raise InputError(f"{table.source} has no label column {label_column!r} (its columns: {table.names()}); "
                             "name it with --label_column")
    if text_columns:
        columns = list(text_columns)
        if label_column in columns:
            raise InputError(f"--text_columns names the label column {label_column!r}: the model would read the "
                             "answer; give the text columns only")
        if len(set(columns)) < len(columns):
            raise InputError(f"--text_columns names a column twice ({','.join(columns)})")
    elif task is not None and all(c in train.columns for c in task.columns):
        columns = list(task.columns)
    else:
        columns = infer_text_columns(train, label_column)
    if not 1 <= len(columns) <= 2:
        raise InputError(f"--text_columns takes one or two columns, not {len(columns)}")
    if task is None:
        task = custom_task(custom_labels(train, label_column), columns)
    splits = [_split_from_table(task, name, table, columns, label_column)
              for name, table in (("train", train), ("validation", valid))]
    return TaskData(task, splits[0], {task.name: splits[1]}, f"{train_file} and {validation_file}")


def load_task(name, data_dir=None, train_file=None, validation_file=None, text_columns=None, label_column="label"):
    """TaskData for a GLUE task name (from `data_dir` or the hub) or for the user's files."""
    task = TASKS.get(name) if name else None
    if name and task is None:
        raise InputError(f"unknown task {name!r}: one of {', '.join(TASKS)}, or all")
    if train_file or validation_file:
        if not (train_file and validation_file):
            raise InputError("give both --train_file and --validation_file")
        return load_files(train_file, validation_file, task, text_columns, label_column)
    if task is None:
        raise InputError("give --task_name (a GLUE task, or all) or --train_file and --validation_file")
    if text_columns:
        raise InputError(f"--text_columns is for your own --train_file/--validation_file: {task.title} from "
                         "GLUE's files or the hub has its own columns")
    return load_local(task, data_dir) if data_dir else load_hub(task)


# ----------------------------------------------------------------------------------------------------------
# Metrics


def compute_metrics(task, predictions, labels):
    """The task's metrics on the dev set: class ids (or scores for STS-B) against the gold labels. F1 is the
    positive class's (1: equivalent / duplicate), as GLUE scores MRPC and QQP."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    score = {"accuracy": accuracy_score, "f1": f1_score, "matthews_correlation": matthews_corrcoef,
             "pearson": partial(_correlation, pearsonr), "spearmanr": partial(_correlation, spearmanr)}
    return {metric: float(score[metric](labels, predictions)) for metric in task.metrics}


def _correlation(fn, x, y):
    """0 for a constant prediction (scipy returns NaN and warns): it carries no information."""
    if np.all(x == x.flat[0]) or np.all(y == y.flat[0]):
        return 0.0
    return float(fn(x, y)[0])


def task_score(metrics):
    """A dev set's GLUE score in points: the mean of its metrics (F1 and accuracy for MRPC, ...)."""
    return 100 * float(np.mean(list(metrics.values())))
