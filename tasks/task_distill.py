"""Task distillation for scripts/run_glue.py: a student fine-tuned on a task with a teacher already fine-tuned on
it (upstream's run_squad_w_distillation.py, for GLUE and your own tasks; TinyBERT's second stage).

    loss = alpha_ce   * KL(teacher || student) of the class distributions at --temperature, times T^2
                        (for a regression, the squared error to the teacher's prediction)
         + alpha_task * the task's own loss on the labelled rows (cross-entropy, or MSE for a regression)
         + alpha_cos  * (1 - cos) of the last hidden states (equal widths only)
         + alpha_att, alpha_vv * MiniLM's attention / value-relation KL (any widths)

Here: the flags, the teacher's label checks, the losses (losses.py's) and `Classification`, the loss adapter
of tasks/distill.py's Trainer (which run_qa.py shares). With only the logits in use (no alpha_cos/att/vv), the
teacher runs once over the training set, in eval mode, and its logits are a column of the data that every
epoch, seed and learning rate reuses; otherwise it runs beside the student at every step. --unlabeled_samples
adds task text without its labels: the teacher's logits are its only target (the semi-supervised setting: few
labels, more text).

The teacher may have another tokenizer than the student (all-mpnet-base-v2's ids are bert-base-uncased's
shifted by 4): it then reads each row's raw text with its own tokenizer, special tokens and length limit,
and only the logit losses, which compare one distribution per row, are allowed.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core import teachers
from core.errors import InputError
from core.flags import option
from training.losses import cosine_loss, hidden_mse, kd_loss, mse_loss, relation_losses
from training.models import attention_projections, hidden_layer_map, relation_layers

UNLABELED = -100  # the label of a row the teacher alone labels (regressions: NaN), as cross_entropy's ignore_index


@dataclass
class IntermediateArguments:
    """The losses that compare the two models inside (the teacher runs at every step) and TinyBERT's two stages:
    run_glue.py's and run_qa.py's flags alike."""

    alpha_cos: float = option(0.0, "weight of the cosine loss on last hidden states (equal widths)")
    alpha_att: float = option(0.0, "weight of MiniLM's attention-distribution KL (equal head counts)")
    alpha_vv: float = option(0.0, "weight of MiniLM's value-relation KL (any widths)")
    alpha_hidden: float = option(0.0, "weight of TinyBERT's hidden-state MSE: the embeddings and every student layer "
                                      "against the teacher layer at the same relative depth, through a learned "
                                      "projection where the widths differ")
    intermediate_epochs: float = option(0.0, "TinyBERT's two stages: this many epochs of the intermediate losses "
                                             "alone (--alpha_hidden, --alpha_att, --alpha_vv, --alpha_cos) before "
                                             "--num_train_epochs of the logit losses alone (--alpha_ce, --alpha_task), "
                                             "each stage with its own warmup and decay and a fresh optimizer state "
                                             "(0: one stage, every loss at once)")
    teacher_layer: int = option(None, "the teacher layer (1-based) for att/vv (default: its last)")
    relation_heads: int = option(None, "relation heads of vv (default: the student's heads)")

    @property
    def per_step(self):
        """The teacher must run at every step (its hidden states are used), not once for its logits."""
        return any(getattr(self, name) for name in INTERMEDIATE)

    @property
    def relations(self):
        return tuple(n for n, a in (("att", self.alpha_att), ("vv", self.alpha_vv)) if a)

    def logits_stage(self):
        """These flags with the intermediate losses off: --intermediate_epochs' second stage."""
        return dataclasses.replace(self, **{name: 0.0 for name in INTERMEDIATE})

    def check_shapes(self, student, teacher):
        """The intermediate losses need shapes that fit: cos equal widths, att equal head counts."""
        if self.alpha_cos:
            teachers.check_width(student.config, teacher.config, "--alpha_cos compares last hidden states (use "
                                 "--alpha_att/--alpha_vv/--alpha_hidden, which need no equal widths)")
        if self.relations:
            relation_layers(student, teacher, self.relations, self)


@dataclass
class DistillArguments(IntermediateArguments):
    teacher_name_or_path: str = option(None, "a sequence classifier fine-tuned on the same task (e.g. run_glue.py "
                                             "--save_model's TASK/RUN/model): turns fine-tuning into distillation")
    alpha_ce: float = option(0.5, "weight of the KD loss on the teacher's logits (upstream's default)")
    alpha_task: float = option(0.5, "weight of the task's own loss on the labels (upstream's --alpha_squad; 0: KD "
                                    "alone)")
    temperature: float = option(2.0, "KD softmax temperature (upstream's default)")
    unlabeled_samples: int = option(None, "N more training examples after --max_train_samples, their labels dropped: "
                                          "the teacher labels them")
    hard_targets: bool = option(False, "learn the teacher's top class (cross-entropy) instead of its distribution: to "
                                       "measure what the soft targets are worth (classification only)")
    transfer_file: str = option(None, "a transfer set that only the teacher labels: a text file (one sentence a line) "
                                      "or csv/tsv/json/jsonl with the task's text columns")
    teacher_logits_cache: str = option(None, "folder of the teacher's logits kept on disk, keyed by its weights, its "
                                             "tokenizer, the rows and the precision, so later runs skip its pass "
                                             "(default: $TEACHER_LOGITS_CACHE, else "
                                             "~/.cache/distilbert_small/teacher_logits; off: none)")

    @property
    def on(self):
        return self.teacher_name_or_path is not None

    def settings(self, teacher_identity, own_tokens=None):
        """What a distilled run's result depends on, for the kept-run and resume checks. A teacher that reads its
        own tokenization adds its tokenizer's digest."""
        weights = ("alpha_ce", "alpha_task", "temperature", "alpha_cos", "alpha_att", "alpha_vv")
        out = {"teacher": teacher_identity["model"], **{k: getattr(self, k) for k in weights}}
        if self.hard_targets:
            out["hard_targets"] = True
        for name in ("alpha_hidden", "intermediate_epochs"):  # only when on: older kept runs keep their key
            if getattr(self, name):
                out[name] = getattr(self, name)
        if own_tokens:
            out["teacher_tokenizer"] = teacher_identity["tokenizer"]
        if self.relations:
            out.update(teacher_layer=self.teacher_layer, relation_heads=self.relation_heads)
        return out

    def data_record(self):
        """The rows only the teacher labels, as asked (results.json's teacher record)."""
        return {"unlabeled_samples": self.unlabeled_samples, "transfer_file": self.transfer_file}

    def one_tokenization(self):
        """(the loss that compares the models position by position, what to do instead), or None: the logit KD
        of --alpha_ce compares one distribution per row and needs no shared tokenization."""
        flag = next((f"--{n}" for n in INTERMEDIATE if getattr(self, n)), None)
        if flag is None:
            return None
        return f"{flag} compares the two models", ("leave it out (the logit KD of --alpha_ce needs no shared "
                                                  "tokenization)")


INTERMEDIATE = ("alpha_cos", "alpha_att", "alpha_vv", "alpha_hidden")  # the losses that run the teacher every step
TEACHER_ONLY = ("alpha_ce", "alpha_task", "temperature", *INTERMEDIATE, "intermediate_epochs", "teacher_layer",
                "relation_heads",
                "unlabeled_samples", "hard_targets", "transfer_file", "teacher_logits_cache")


def check_flags(distill_args, argv, training_args):
    """The distillation flags, refused before anything is read or written."""
    given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
    if not distill_args.on:
        stray = [f for f in TEACHER_ONLY if f in given]
        if stray:
            raise InputError(f"--{stray[0]} needs --teacher_name_or_path (a teacher fine-tuned on the task)")
        return
    for name in ("alpha_ce", "alpha_task"):
        value = getattr(distill_args, name)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value}: give a finite weight of at least 0")
    check_intermediate(distill_args, training_args, ("alpha_ce", "alpha_task"))
    if not (distill_args.alpha_ce or distill_args.per_step):
        raise InputError("--alpha_ce 0 and no --alpha_cos/--alpha_att/--alpha_vv/--alpha_hidden: the teacher would "
                         "teach nothing (leave out --teacher_name_or_path to fine-tune alone)")
    if not math.isfinite(distill_args.temperature) or distill_args.temperature <= 0:
        raise InputError(f"--temperature {distill_args.temperature}: give a finite number above 0")
    if distill_args.unlabeled_samples is not None and distill_args.unlabeled_samples < 1:
        raise InputError(f"--unlabeled_samples {distill_args.unlabeled_samples}: give at least 1")
    for flag in ("unlabeled_samples", "transfer_file"):
        if getattr(distill_args, flag) and not distill_args.alpha_ce:
            raise InputError(f"--{flag} needs --alpha_ce above 0: the teacher's logits are its rows' only target")


def check_intermediate(distill_args, training_args, logit_weights):
    """The intermediate losses' flags and --intermediate_epochs (whose second stage trains `logit_weights`)."""
    for name in INTERMEDIATE:
        value = getattr(distill_args, name)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value}: give a finite weight of at least 0")
    for name in ("teacher_layer", "relation_heads"):
        value = getattr(distill_args, name)
        if value is not None and value < 1:
            raise InputError(f"--{name} {value}: give at least 1")
    stages = distill_args.intermediate_epochs
    if not math.isfinite(stages) or stages < 0:
        raise InputError(f"--intermediate_epochs {stages}: give a finite number of epochs of at least 0")
    if stages:
        if not distill_args.per_step:
            raise InputError("--intermediate_epochs needs an intermediate loss for its first stage (--alpha_hidden, "
                             "--alpha_att, --alpha_vv or --alpha_cos)")
        if not any(getattr(distill_args, name) for name in logit_weights):
            raise InputError(f"--intermediate_epochs: the second stage trains --{logit_weights[0]} and "
                             f"--{logit_weights[1]}, both 0")
        if training_args.max_steps > 0:
            raise InputError("--intermediate_epochs counts epochs: give --num_train_epochs, not --max_steps")
        schedule = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
        if schedule != "linear":
            raise InputError(f"--intermediate_epochs restarts the linear schedule at its second stage: leave out "
                             f"--lr_scheduler_type {schedule}")


# ----------------------------------------------------------------------------------------------------------
# The teacher: loaded and checked against the task and the student before any training


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


def distillation_losses(distill_args, s_out, t_out, t_logits, labels, attention_mask, regression, label_smoothing=0.0,
                        inner=None):
    """{name: (weight, loss)} of one batch. s_out/t_out: the models' outputs (hidden states when the
    intermediate losses are on; t_out None when the logits are cached); inner: what the intermediate losses
    need beside the outputs (tasks/distill.Intermediate: the relation layers and both models, the hidden
    states' projection)."""
    kd = logit_kd(s_out.logits, t_logits, regression, distill_args.temperature, distill_args.hard_targets)
    out = {"ce": (distill_args.alpha_ce, kd)}
    if distill_args.alpha_task:
        out["task"] = (distill_args.alpha_task, task_loss(s_out.logits, labels, regression, label_smoothing))
    return out | intermediate_losses(distill_args, s_out, t_out, attention_mask, inner)


def intermediate_losses(distill_args, s_out, t_out, attention_mask, inner):
    """{name: (weight, loss)} of the losses that compare the models inside, for both task families."""
    out = {}
    if distill_args.alpha_cos:
        mask = attention_mask.bool()
        out["cos"] = (distill_args.alpha_cos, cosine_loss(s_out.hidden_states[-1][mask], t_out.hidden_states[-1][mask]))
    if distill_args.alpha_hidden:
        pairs = hidden_layer_map(len(s_out.hidden_states) - 1, len(t_out.hidden_states) - 1)
        out["hidden"] = (distill_args.alpha_hidden, hidden_mse([s_out.hidden_states[s] for s, _ in pairs],
                                                               [t_out.hidden_states[t] for _, t in pairs],
                                                               attention_mask, inner.projection))
    if distill_args.relations:
        (s_layer, t_layer, (att_heads, rel_heads)), student, teacher = inner.relations
        s_qkv = tuple(p(s_out.hidden_states[s_layer]) for p in attention_projections(student, s_layer)[0])
        t_qkv = tuple(p(t_out.hidden_states[t_layer]) for p in attention_projections(teacher, t_layer)[0])
        relations = relation_losses(s_qkv, t_qkv, attention_mask, distill_args.relations, att_heads, rel_heads)
        for name, loss in relations.items():
            out[name] = ({"att": distill_args.alpha_att, "vv": distill_args.alpha_vv}[name], loss)
    return out


def labelled(labels, regression):
    """Which rows carry a label (the others: UNLABELED, or NaN for a regression)."""
    return ~torch.isnan(labels) if regression else labels != UNLABELED


class Classification:
    """The task family of run_glue.py for distillation (tasks/distill.py): a sequence classifier or regressor,
    its gold answers the `labels` (UNLABELED, or NaN for a regression, where only the teacher labels a row)."""

    model_class = "AutoModelForSequenceClassification"
    teacher_needs = ("a sequence classifier", "fine-tune it on the task first (run_glue.py --save_model: its "
                     "TASK/RUN/model)")
    targets = ("labels",)

    def __init__(self, regression, label_smoothing=0.0):
        self.regression, self.label_smoothing = regression, label_smoothing

    def labelled(self, batch):
        return labelled(batch["labels"], self.regression)

    def task_loss(self, s_out, targets, attention_mask):
        return task_loss(s_out.logits, targets["labels"], self.regression)

    def losses(self, distill_args, s_out, t_out, t_logits, targets, attention_mask, inner):
        return distillation_losses(distill_args, s_out, t_out, t_logits, targets["labels"], attention_mask,
                                   self.regression, self.label_smoothing, inner)
