"""Task distillation for scripts/run_glue.py: a student fine-tuned on a task with a teacher already fine-tuned on
it (upstream's run_squad_w_distillation.py, for GLUE and your own tasks; TinyBERT's second stage).

    loss = alpha_ce   * KL(teacher || student) of the class distributions at --temperature, times T^2
                        (for a regression, the squared error to the teacher's prediction)
         + alpha_task * the task's own loss on the labelled rows (cross-entropy, or MSE for a regression)
         + the intermediate losses of tasks/distill.py (--alpha_cos, --alpha_att, --alpha_vv, --alpha_hidden)

Here: run_glue.py's teacher flags, the teacher's label checks, and `Classification`, the loss adapter of
tasks/distill.py's Trainer. --unlabeled_samples and --transfer_file add text without labels: the teacher's
logits are its only target (the semi-supervised setting: few labels, more text).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.errors import InputError
from core.flags import option
from tasks.distill import TeacherArguments, intermediate_losses
from training.losses import kd_loss, mse_loss

UNLABELED = -100  # the label of a row the teacher alone labels (regressions: NaN), as cross_entropy's ignore_index


@dataclass
class DistillArguments(TeacherArguments):
    teacher_name_or_path: str = option(None, "a sequence classifier fine-tuned on the same task (e.g. run_glue.py "
                                             "--save_model's TASK/RUN/model): turns fine-tuning into distillation")
    alpha_task: float = option(0.5, "weight of the task's own loss on the labels (upstream's --alpha_squad; 0: KD "
                                    "alone)")
    unlabeled_samples: int = option(None, "N more training examples after --max_train_samples, their labels dropped: "
                                          "the teacher labels them")
    hard_targets: bool = option(False, "learn the teacher's top class (cross-entropy) instead of its distribution: to "
                                       "measure what the soft targets are worth (classification only)")
    transfer_file: str = option(None, "a transfer set that only the teacher labels: a text file (one sentence a line) "
                                      "or csv/tsv/json/jsonl with the task's text columns")

    KEYED = ("alpha_cos", "alpha_att", "alpha_vv")  # in every run key since the first distilled runs
    TEACHER_ONLY = ("alpha_task", "unlabeled_samples", "hard_targets", "transfer_file")

    def data_record(self):
        return {"unlabeled_samples": self.unlabeled_samples, "transfer_file": self.transfer_file}

    def check(self, argv, training_args):
        super().check(argv, training_args)
        if self.unlabeled_samples is not None and self.unlabeled_samples < 1:
            raise InputError(f"--unlabeled_samples {self.unlabeled_samples}: give at least 1")
        for flag in ("unlabeled_samples", "transfer_file"):
            if getattr(self, flag) and not self.alpha_ce:
                raise InputError(f"--{flag} needs --alpha_ce above 0: the teacher's logits are its rows' only target")


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


def labelled(labels, regression):
    """Which rows carry a label (the others: UNLABELED, or NaN for a regression)."""
    return ~torch.isnan(labels) if regression else labels != UNLABELED


def task_loss(s_logits, labels, regression, label_smoothing=0.0):
    """The task's own loss, a mean over the labelled rows (the others: UNLABELED, or NaN for a regression), 0 if
    none. A masked sum over their count: no host sync per step (a mask's indexing or `.any()` waits for the GPU)."""
    known = labelled(labels, regression)
    if regression:  # NaN labels zeroed first: a NaN in the masked-out branch would still reach the gradient
        per_row = (s_logits.squeeze(-1).float() - labels.nan_to_num().float()) ** 2
    else:
        per_row = F.cross_entropy(s_logits.float(), labels, ignore_index=UNLABELED, label_smoothing=label_smoothing,
                                  reduction="none")
    return torch.where(known, per_row, 0.0).sum() / known.sum().clamp(min=1)


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


class Classification:
    """run_glue.py's loss adapter for tasks/distill.py's Trainer: a sequence classifier or regressor, its gold
    answers the `labels` (UNLABELED, or NaN for a regression, where only the teacher labels a row)."""

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
