"""Task distillation for scripts/run_glue.py: a student fine-tuned on a task with a teacher already fine-tuned on
it (upstream's run_squad_w_distillation.py, for GLUE and your own tasks; TinyBERT's second stage).

    loss = alpha_ce   * KL(teacher || student) of the class distributions at --temperature, times T^2
                        (for a regression, the squared error to the teacher's prediction)
         + alpha_task * the task's own loss on the labelled rows (cross-entropy, or MSE for a regression)
         + alpha_cos  * (1 - cos) of the last hidden states (equal widths only)
         + alpha_att, alpha_vv * MiniLM's attention / value-relation KL (any widths)

The losses are losses.py's. With only the logits in use (no alpha_cos/att/vv), the teacher runs once over
the training set, in eval mode, and its logits are a column of the data that every epoch, seed and learning
rate reuses; otherwise it runs beside the student at every step. --unlabeled_samples adds task text without
its labels: the teacher's logits are its only target (the semi-supervised setting: few labels, more text).

The teacher may have another tokenizer than the student (all-mpnet-base-v2's ids are bert-base-uncased's
shifted by 4): it then reads each row's raw text with its own tokenizer, special tokens and length limit,
and only the logit losses, which compare one distribution per row, are allowed.
"""

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from core import teachers
from core.errors import InputError, say
from core.precision import autocast_dtype
from tasks.teacher_pass import (
    TEACHER_LOGITS,
    agree_on_hit,
    cache_folder,
    cache_path,
    forward_inputs,
    logits_key,
    read_cached_logits,
    teacher_dataset,
    teacher_logits,
    tokenization_differs,
    write_cached_logits,
)
from training.losses import cosine_loss, kd_loss, mse_loss, relation_losses
from training.models import attention_projections, relation_layers

UNLABELED = -100  # the label of a row the teacher alone labels (regressions: NaN), as cross_entropy's ignore_index


@dataclass
class DistillArguments:
    teacher_name_or_path: str = field(
        default=None, metadata={"help": "a sequence classifier fine-tuned on the same task (e.g. run_glue.py "
                                "--save_model's TASK/RUN/model): turns fine-tuning into distillation"}
    )
    alpha_ce: float = field(
        default=0.5, metadata={"help": "weight of the KD loss on the teacher's logits (upstream's default)"}
    )
    alpha_task: float = field(
        default=0.5,
        metadata={"help": "weight of the task's own loss on the labels (upstream's --alpha_squad; 0: KD alone)"},
    )
    temperature: float = field(default=2.0, metadata={"help": "KD softmax temperature (upstream's default)"})
    alpha_cos: float = field(
        default=0.0, metadata={"help": "weight of the cosine loss on last hidden states (equal widths)"}
    )
    alpha_att: float = field(
        default=0.0, metadata={"help": "weight of MiniLM's attention-distribution KL (equal head counts)"}
    )
    alpha_vv: float = field(default=0.0, metadata={"help": "weight of MiniLM's value-relation KL (any widths)"})
    teacher_layer: int = field(
        default=None, metadata={"help": "the teacher layer (1-based) for att/vv (default: its last)"}
    )
    relation_heads: int = field(default=None, metadata={"help": "relation heads of vv (default: the student's heads)"})
    unlabeled_samples: int = field(
        default=None, metadata={"help": "N more training examples after --max_train_samples, their labels dropped: "
                                "the teacher labels them"}
    )
    hard_targets: bool = field(
        default=False, metadata={"help": "learn the teacher's top class (cross-entropy) instead of its distribution: "
                                 "to measure what the soft targets are worth (classification only)"}
    )
    transfer_file: str = field(
        default=None, metadata={"help": "a transfer set that only the teacher labels: a text file (one sentence a "
                                "line) or csv/tsv/json/jsonl with the task's text columns"}
    )
    teacher_logits_cache: str = field(
        default=None, metadata={"help": "folder of the teacher's logits kept on disk, keyed by its weights, its "
                                "tokenizer, the rows and the precision, so later runs skip its pass (default: "
                                "$TEACHER_LOGITS_CACHE, else ~/.cache/distilbert_small/teacher_logits; off: none)"}
    )

    @property
    def on(self):
        return self.teacher_name_or_path is not None

    @property
    def per_step(self):
        """The teacher must run at every step (its hidden states are used), not once for its logits."""
        return bool(self.alpha_cos or self.alpha_att or self.alpha_vv)

    @property
    def relations(self):
        return tuple(n for n, a in (("att", self.alpha_att), ("vv", self.alpha_vv)) if a)


TEACHER_ONLY = ("alpha_ce", "alpha_task", "temperature", "alpha_cos", "alpha_att", "alpha_vv", "teacher_layer",
                "relation_heads", "unlabeled_samples", "hard_targets", "transfer_file",
                "teacher_logits_cache")


def check_flags(d, argv):
    """The distillation flags, refused before anything is read or written."""
    given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
    if not d.on:
        stray = [f for f in TEACHER_ONLY if f in given]
        if stray:
            raise InputError(f"--{stray[0]} needs --teacher_name_or_path (a teacher fine-tuned on the task)")
        return
    for name in ("alpha_ce", "alpha_task", "alpha_cos", "alpha_att", "alpha_vv"):
        value = getattr(d, name)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value}: give a finite weight of at least 0")
    if not (d.alpha_ce or d.per_step):
        raise InputError("--alpha_ce 0 and no --alpha_cos/--alpha_att/--alpha_vv: the teacher would teach nothing "
                         "(leave out --teacher_name_or_path to fine-tune alone)")
    if not math.isfinite(d.temperature) or d.temperature <= 0:
        raise InputError(f"--temperature {d.temperature}: give a finite number above 0")
    for name in ("teacher_layer", "relation_heads", "unlabeled_samples"):
        value = getattr(d, name)
        if value is not None and value < 1:
            raise InputError(f"--{name} {value}: give at least 1")
    for flag in ("unlabeled_samples", "transfer_file"):
        if getattr(d, flag) and not d.alpha_ce:
            raise InputError(f"--{flag} needs --alpha_ce above 0: the teacher's logits are its rows' only target")


def settings(d, teacher_identity, own_tokens=None):
    """What a distilled run's result depends on, for run_glue.py's kept-run and resume checks (None: no teacher).
    A teacher that reads its own tokenization adds its tokenizer's digest."""
    if not d.on:
        return None
    weights = ("alpha_ce", "alpha_task", "temperature", "alpha_cos", "alpha_att", "alpha_vv")
    out = {"teacher": teacher_identity["model"], **{k: getattr(d, k) for k in weights}}
    if d.hard_targets:
        out["hard_targets"] = True
    if own_tokens:
        out["teacher_tokenizer"] = teacher_identity["tokenizer"]
    if d.relations:
        out.update(teacher_layer=d.teacher_layer, relation_heads=d.relation_heads)
    return out


# ----------------------------------------------------------------------------------------------------------
# The teacher: loaded and checked against the task and the student before any training


def load_teacher(path):
    """The teacher as a sequence classifier, frozen; a checkpoint without a classification head (a pretrained
    encoder, not yet fine-tuned on the task) is refused."""
    from transformers import AutoModelForSequenceClassification

    return teachers.load_teacher(AutoModelForSequenceClassification, path, (
        "a sequence classifier", "fine-tune it on the task first (run_glue.py --save_model: its TASK/RUN/model)"))[0]


def check_teacher(teacher, task, num_labels, path, hard_targets=False):
    """The teacher must classify into the task's labels, in the task's order."""
    t_labels = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if task.labels is None:
        if teacher.config.num_labels != 1:
            raise InputError(f"{task.title} is a regression, but the teacher {path} is a classifier into "
                             f"{', '.join(map(str, t_labels))}: give a teacher fine-tuned on {task.title}")
        if hard_targets:
            raise InputError(f"--hard_targets: {task.title} is a regression, which has no top class to learn")
        return
    if teacher.config.num_labels == 1:
        raise InputError(f"the teacher {path} predicts one score (a regression), but {task.title} has the classes "
                         f"{', '.join(map(str, task.labels))}: give a teacher fine-tuned on {task.title}")
    if teacher.config.num_labels != num_labels or [str(x) for x in t_labels] != [str(x) for x in task.labels]:
        raise InputError(f"the teacher's labels ({', '.join(map(str, t_labels))}) are not {task.title}'s "
                         f"({', '.join(map(str, task.labels))}, in this order): give a teacher fine-tuned on "
                         f"{task.title} (its id2label must list the task's labels in the same order)")


def check_shapes(d, student, teacher):
    """The intermediate losses need shapes that fit: cos equal widths, att equal head counts."""
    if d.alpha_cos:
        teachers.check_width(student.config, teacher.config, "--alpha_cos compares last hidden states (use "
                             "--alpha_att/--alpha_vv, which need no equal widths)")
    if d.relations:
        relation_layers(student, teacher, d.relations, d)


# ----------------------------------------------------------------------------------------------------------
# The losses of one step


def task_loss(s_logits, labels, regression, label_smoothing=0.0):
    """The task's own loss on the labelled rows (unlabelled: UNLABELED, or NaN for a regression), 0 if none."""
    if regression:
        known = ~torch.isnan(labels)
        if not known.any():
            return s_logits.sum() * 0.0
        return F.mse_loss(s_logits.squeeze(-1)[known].float(), labels[known].float())
    if not (labels != UNLABELED).any():
        return s_logits.sum() * 0.0
    return F.cross_entropy(s_logits.float(), labels, ignore_index=UNLABELED, label_smoothing=label_smoothing)


def logit_kd(s_logits, t_logits, regression, temperature, hard=False):
    """KD on the task's outputs: KL at temperature T times T^2 for classes; squared error for a regression.
    hard: cross-entropy against the teacher's top class instead (what its soft targets add is measured so)."""
    if regression:
        return mse_loss(s_logits, t_logits)
    if hard:
        return F.cross_entropy(s_logits.float(), t_logits.argmax(-1))
    return kd_loss(s_logits, t_logits, temperature)


def distillation_losses(d, s_out, t_out, t_logits, labels, attention_mask, regression, label_smoothing=0.0,
                        layers=None):
    """{name: (weight, loss)} of one batch. s_out/t_out: the models' outputs (hidden states when the
    intermediate losses are on; t_out None when the logits are cached); layers: relation_layers()'s answer
    and both models, for att/vv."""
    out = {"ce": (d.alpha_ce, logit_kd(s_out.logits, t_logits, regression, d.temperature, d.hard_targets))}
    if d.alpha_task:
        out["task"] = (d.alpha_task, task_loss(s_out.logits, labels, regression, label_smoothing))
    if d.alpha_cos:
        mask = attention_mask.bool()
        out["cos"] = (d.alpha_cos, cosine_loss(s_out.hidden_states[-1][mask], t_out.hidden_states[-1][mask]))
    if d.relations:
        (s_layer, t_layer, (att_heads, rel_heads)), student, teacher = layers
        s_qkv = tuple(p(s_out.hidden_states[s_layer]) for p in attention_projections(student, s_layer)[0])
        t_qkv = tuple(p(t_out.hidden_states[t_layer]) for p in attention_projections(teacher, t_layer)[0])
        for name, loss in relation_losses(s_qkv, t_qkv, attention_mask, d.relations, att_heads, rel_heads).items():
            out[name] = ({"att": d.alpha_att, "vv": d.alpha_vv}[name], loss)
    return out


def labelled(labels, regression):
    """Which rows carry a label (the others: UNLABELED, or NaN for a regression)."""
    return ~torch.isnan(labels) if regression else labels != UNLABELED


def distill_trainer(d, teacher, regression):
    """A transformers Trainer class whose training loss is distillation_losses(); evaluation and prediction
    are the student's alone.

    An optimizer step weighs its rows as one batch, however many micro-batches (--gradient_accumulation_steps)
    and processes (torchrun) it is cut into: KD (and the other teacher losses) is the mean over all of the
    step's rows, the task loss the mean over its labelled rows. Each micro-batch's loss is its share of those
    means, so a micro-batch of unlabelled rows, or a short last one, weighs no other row more or less
    (tests/test_task_distill_reference.py pins this to a plain loop)."""
    import torch.distributed as dist
    from transformers import Trainer

    class DistillTrainer(Trainer):
        loss_is_scaled_for_ga = True  # compute_loss returns the micro-batch's share of the step's loss

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher = teacher.to(self.args.device).eval() if d.per_step else None
            self.student_keys = forward_inputs(self.model)
            self.teacher_keys = forward_inputs(teacher)
            self.layers = None
            if d.relations:
                self.layers = (relation_layers(self.model, teacher, d.relations, d), self.model, teacher)
            self.step_rows = None  # (rows, labelled rows) of the optimizer step under way, over every process
            self.parts = {}  # loss name -> its sum over the optimizer steps since the last log
            self.parts_from = 0  # the global step of the last log

        def _set_signature_columns_if_needed(self):  # keep the teacher's inputs and the cached logits
            if self._signature_columns is None:
                extra = {TEACHER_LOGITS, "label", "labels", "label_ids"}
                self._signature_columns = sorted(self.student_keys | self.teacher_keys | extra)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            """The micro-batches of one optimizer step; counts their rows and labelled rows first."""
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            counts = torch.tensor([sum(len(b["labels"]) for b in batches),
                                   sum(int(labelled(b["labels"], regression).sum()) for b in batches)],
                                  dtype=torch.float64, device=device)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            self.step_rows = counts.tolist()
            return batches, num_items

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            cached = inputs.pop(TEACHER_LOGITS, None)
            hidden = model.training and d.per_step
            s_out = model(**{k: v for k, v in inputs.items() if k in self.student_keys}, output_hidden_states=hidden)
            if not model.training:  # evaluation: the student's own loss
                loss = task_loss(s_out.logits, labels, regression)
                return (loss, {"logits": s_out.logits}) if return_outputs else loss
            t_out = None
            if cached is None:
                with torch.no_grad():
                    t_out = self.teacher(**{k: v for k, v in inputs.items() if k in self.teacher_keys},
                                         output_hidden_states=hidden)
            t_logits = cached if cached is not None else t_out.logits
            parts = distillation_losses(d, s_out, t_out, t_logits, labels, inputs["attention_mask"], regression,
                                        self.args.label_smoothing_factor, self.layers)
            # Each loss is a mean over this micro-batch's rows (the task's: its labelled rows); weighed by the
            # micro-batch's share of the step's rows, the shares add up to the step's mean.
            rows, with_label = self.step_rows
            share = {name: len(labels) / rows for name in parts}
            if "task" in parts:
                share["task"] = labelled(labels, regression).sum() / with_label if with_label else 0.0  # no host sync
            loss = 0.0
            for name, (weight, value) in parts.items():
                loss = loss + weight * share[name] * value
                self.parts[name] = self.parts.get(name, 0.0) + share[name] * value.detach()
            # DDP averages the processes' gradients; the shares are of every process's rows, so sum instead
            return (loss * self.args.world_size, s_out) if return_outputs else loss * self.args.world_size

        def log(self, logs, *args, **kwargs):
            if "loss" in logs and self.parts:  # each loss's mean per step since the last log, beside the total
                names = sorted(self.parts)
                sums = torch.stack([torch.as_tensor(self.parts[n], dtype=torch.float64) for n in names])
                if dist.is_available() and dist.is_initialized():  # every process logs here, at the same steps
                    sums = sums.to(self.args.device)
                    dist.all_reduce(sums)
                steps = max(self.state.global_step - self.parts_from, 1)
                logs.update({f"loss_{n}": float(v) / steps for n, v in zip(names, sums.tolist())})
                self.parts, self.parts_from = {}, self.state.global_step
            super().log(logs, *args, **kwargs)

    return DistillTrainer


@dataclass
class Teacher:
    """The task distillation's teacher (--teacher_name_or_path), loaded and checked once."""

    args: DistillArguments
    model: object
    tokenizer: object
    identity: dict
    logits_seconds: float | None = None  # the one pass over the training set (benchmarks/bench_py)
    own_tokens: str | None = None  # why the teacher reads its own tokenization of the text (None: the student's)
    logits_cached: str | None = None  # the cache file its logits were read from (None: computed here)

    def check(self, task_data, tokenizer):
        """Before any training: the teacher is this task's classifier; whether it can read the student's input
        ids, or reads the rows' text with its own tokenizer (logit KD needs nothing more)."""
        path = self.args.teacher_name_or_path
        check_teacher(self.model, task_data.task, task_data.num_labels, path, self.args.hard_targets)
        texts = [t for column in task_data.train.texts for t in column[:64]]
        self.own_tokens = self.own_tokens or tokenization_differs(tokenizer, self.tokenizer, texts)
        if self.own_tokens and self.args.per_step:
            flag = next(f"--{n}" for n in ("alpha_cos", "alpha_att", "alpha_vv") if getattr(self.args, n))
            raise InputError(f"{flag} compares the two models position by position, so it needs one tokenization, "
                             f"but the teacher {path} has {self.own_tokens}: leave it out (the logit KD of "
                             "--alpha_ce needs no shared tokenization)")

    def logits(self, train_set, tokenizer, targs, texts=None, max_length=None):
        """train_set with the teacher's logits as a column (computed once, in eval mode, for every run). With
        its own tokenizer, the teacher reads `texts` (train_set's rows, in order) cut at `max_length`."""
        import torch
        from transformers import DataCollatorWithPadding

        dtype = autocast_dtype(targs)  # as the steps run
        start = time.time()
        rows, reader = train_set, tokenizer
        if self.own_tokens:
            rows, reader = teacher_dataset(self.tokenizer, texts, max_length), self.tokenizer
            say(f"the teacher reads its own tokenization of the {len(rows):,} training rows ({self.own_tokens})")
        folder = cache_folder(self.args.teacher_logits_cache)
        num_labels = self.model.config.num_labels
        path = logits = None
        if folder is not None:
            key = logits_key(self.identity, rows, str(dtype), num_labels)
            path = cache_path(folder, key)
            logits, why = read_cached_logits(path, key, (len(rows), num_labels))
            if why:
                say(f"the cached teacher logits at {path} were not used ({why}): computing them again")
        logits = agree_on_hit(logits, targs.device)
        if logits is not None:
            logits = torch.from_numpy(logits)
            self.logits_cached = str(path)
            say(f"the teacher's logits for {len(rows):,} training rows: read from {path}")
        else:
            logits = teacher_logits(self.model, rows, DataCollatorWithPadding(reader),
                                    targs.per_device_eval_batch_size, targs.device, dtype)
            if path and targs.process_index == 0:
                try:
                    write_cached_logits(path, key, logits.numpy())
                except OSError as e:  # a cache that cannot be written costs the next run a pass, nothing more
                    say(f"the teacher's logits could not be kept in {folder} ({e.strerror or e})")
            say(f"the teacher's logits for {len(rows):,} training rows took {time.time() - start:.1f} s"
                f" (once, for all runs{f'; kept in {path}' if path else ''})")
        self.model.cpu()  # the step needs only the column
        self.logits_seconds = round(time.time() - start, 2)
        return train_set.add_column(TEACHER_LOGITS, logits.tolist())

    def record(self):
        return {"path": self.args.teacher_name_or_path, **settings(self.args, self.identity, self.own_tokens),
                "teacher_logits": "every step" if self.args.per_step else "computed once",
                "logits_read_from": self.logits_cached,
                "tokenization": f"its own: {self.own_tokens}" if self.own_tokens else "the student's",
                "unlabeled_samples": self.args.unlabeled_samples, "transfer_file": self.args.transfer_file}
