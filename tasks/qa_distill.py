"""Question-answering distillation for scripts/run_qa.py (upstream's run_squad_w_distillation.py, on the Trainer):

    loss = alpha_squad * the span loss: cross-entropy of the start and of the end position, averaged
         + alpha_ce    * KL(teacher || student) of the start and of the end distributions at --temperature,
                         times T^2, averaged
    (without a teacher: the span loss alone, weight 1, as upstream's)

Unlike upstream, both softmaxes run over the window's real tokens only: padding is left out, so a batch's
longest window does not change a shorter one's distributions. The teacher is a QA model already fine-tuned
on the task that reads the student's tokenization (its start/end logits are compared position by position);
it runs once over the training features, in eval mode, and its logits are a data column that every epoch,
seed and learning rate reuses, kept on disk as run_glue.py keeps a classifier's (--teacher_logits_cache).
The intermediate losses and TinyBERT's two stages are run_glue.py's (tasks/distill.TeacherArguments,
intermediate_losses): with them the teacher runs at every step (of the first stage).
"""

from dataclasses import dataclass

import torch.nn.functional as F

from core.errors import InputError
from core.flags import option
from tasks.distill import TeacherArguments, intermediate_losses

UNANSWERED = -100  # the start and end of a window only the teacher answers, as nll_loss's ignore_index


@dataclass
class QADistillArguments(TeacherArguments):
    teacher_name_or_path: str = option(None, "a QA model fine-tuned on the task with the student's tokenizer (e.g. "
                                             "run_qa.py --save_model's squad/RUN/model): turns fine-tuning into "
                                             "distillation")
    alpha_squad: float = option(0.5, "weight of the span loss on the gold spans (upstream's)")
    transfer_file: str = option(None, "SQuAD JSON (either form) of more questions that only the teacher answers: "
                                      "KD alone on their windows (any answers in it are not read)")

    TASK_WEIGHT = "alpha_squad"
    TEACHER_ONLY = ("alpha_squad", "transfer_file")  # alone, the span loss is the whole loss (weight 1)

    def data_record(self):
        return {"transfer_file": self.transfer_file}

    def one_tokenization(self):
        """Why the teacher must read the student's ids: its logits are compared token by token."""
        return "QA distillation compares start/end logits", "give a teacher with the student's tokenizer"

    def check(self, argv, training_args):
        super().check(argv, training_args)
        if self.transfer_file and not self.alpha_ce:
            raise InputError("--transfer_file needs --alpha_ce above 0: the teacher's logits are its questions' only "
                             "target")


# ----------------------------------------------------------------------------------------------------------
# The losses of one step (pure functions: tests pin them to hand computations)


def masked_log_softmax(logits, mask, temperature=1.0):
    """log_softmax over the positions where mask is true (padding left out); -inf elsewhere."""
    return F.log_softmax((logits.float() / temperature).masked_fill(~mask, float("-inf")), dim=-1)


def span_loss(start_logits, end_logits, start_positions, end_positions, mask):
    """Cross-entropy of the gold start and end positions over each window's real tokens, the two averaged,
    over the windows that have them (a transfer question's are UNANSWERED); 0 if none does."""
    def summed(logits, positions):  # UNANSWERED is nll_loss's ignore_index
        return F.nll_loss(masked_log_softmax(logits, mask), positions, ignore_index=UNANSWERED, reduction="sum")

    known = (start_positions != UNANSWERED).sum().clamp(min=1)  # a sum, then a mean: no host sync per step
    return (summed(start_logits, start_positions) + summed(end_logits, end_positions)) / 2 / known


def span_kd(s_start, s_end, t_start, t_end, mask, temperature):
    """KL(teacher || student) of the start and of the end distributions at T over the real tokens, times T^2,
    averaged over windows (batchmean) and over the two."""

    def kl(s, t):
        s, t = masked_log_softmax(s, mask, temperature), masked_log_softmax(t, mask, temperature)
        terms = t.exp() * (t - s)
        return terms.masked_fill(~mask, 0.0).sum(-1).mean() * temperature**2

    return (kl(s_start, t_start) + kl(s_end, t_end)) / 2


class Spans:
    """run_qa.py's loss adapter for tasks/distill.py's Trainer: a span head, its gold answers the
    start and end positions (a training window has them, [CLS] when the answer is not in it; a transfer
    question's windows have UNANSWERED), its teacher logits the start and end logits of every token."""

    targets = ("start_positions", "end_positions")

    def labelled(self, batch):
        return batch["start_positions"] != UNANSWERED

    def task_loss(self, s_out, targets, attention_mask):
        return span_loss(s_out.start_logits, s_out.end_logits, targets["start_positions"], targets["end_positions"],
                         attention_mask.bool())

    def losses(self, distill_args, s_out, t_out, t_logits, targets, attention_mask, inner):
        out = intermediate_losses(distill_args, s_out, t_out, attention_mask, inner)
        weight = distill_args.alpha_squad if distill_args.on else 1.0  # without a teacher: the whole loss, as upstream
        if weight and targets:
            out["task"] = (weight, self.task_loss(s_out, targets, attention_mask))
        if t_logits is not None:
            kd = span_kd(s_out.start_logits, s_out.end_logits, t_logits[..., 0], t_logits[..., 1],
                         attention_mask.bool(), distill_args.temperature)
            out["ce"] = (distill_args.alpha_ce, kd)
        return out
