"""Task distillation's shared path, for run_glue.py and run_qa.py alike: the teacher's flags, the losses that
compare the two models inside, and the Trainer whose loss is the task family's losses.

A loss adapter (tasks/task_distill.Classification, tasks/qa_distill.Spans) says only what differs: the batch
keys of the gold answers, which rows carry one, and the losses of one batch. Everything here is one rule for
both: the flags and their checks, how a step weighs its rows over micro-batches and processes, and TinyBERT's
two stages. The teacher itself (loaded, checked, its pass) is tasks/teacher_pass.py's.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from core import teachers
from core.errors import InputError
from core.flags import option
from tasks.runs import forward_inputs
from tasks.teacher_pass import TEACHER_LOGITS, head_logits
from training.losses import cosine_loss, hidden_mse, relation_losses
from training.models import attention_projections, hidden_layer_map, relation_layers

INTERMEDIATE = ("alpha_cos", "alpha_att", "alpha_vv", "alpha_hidden")  # the losses that run the teacher every step
STAGE_ONE = tuple(n.removeprefix("alpha_") for n in INTERMEDIATE)  # --intermediate_epochs' first stage's losses


def weight_at_least_0(distill_args, name):
    value = getattr(distill_args, name)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"--{name} {value}: give a finite weight of at least 0")


@dataclass
class TeacherArguments:
    """The teacher's flags of run_glue.py and run_qa.py alike: the logit KD, the losses that compare the two
    models inside (the teacher then runs at every step) and TinyBERT's two stages. A family's subclass adds
    --teacher_name_or_path, its task loss's weight (TASK_WEIGHT) and its own flags (TEACHER_ONLY)."""

    alpha_ce: float = option(0.5, "weight of the KD loss on the teacher's logits (upstream's default)")
    temperature: float = option(2.0, "KD softmax temperature (upstream's default)")
    alpha_cos: float = option(0.0, "weight of the cosine loss on last hidden states (equal widths)")
    alpha_att: float = option(0.0, "weight of MiniLM's attention-distribution KL (equal head counts)")
    alpha_vv: float = option(0.0, "weight of MiniLM's value-relation KL (any widths)")
    alpha_hidden: float = option(0.0, "weight of TinyBERT's hidden-state MSE: the embeddings and every student layer "
                                      "against the teacher layer at the same relative depth, through a learned "
                                      "projection where the widths differ")
    intermediate_epochs: float = option(0.0, "TinyBERT's two stages: this many epochs of the intermediate losses "
                                             "alone (--alpha_hidden, --alpha_att, --alpha_vv, --alpha_cos) before "
                                             "--num_train_epochs of the logit losses alone (--alpha_ce and the task's "
                                             "loss), each stage with its own warmup and decay and a fresh optimizer "
                                             "state (0: one stage, every loss at once)")
    teacher_layer: int = option(None, "the teacher layer (1-based) for att/vv (default: its last)")
    relation_heads: int = option(None, "relation heads of vv (default: the student's heads)")
    teacher_logits_cache: str = option(None, "folder of the teacher's logits kept on disk, keyed by its weights, its "
                                             "tokenizer, the rows and the precision, so later runs skip its pass "
                                             "(default: $TEACHER_LOGITS_CACHE, else "
                                             "~/.cache/distilbert_small/teacher_logits; off: none)")

    TASK_WEIGHT = "alpha_task"  # the flag weighing the task's own loss
    KEYED = ()  # weights in every distilled run key (older kept runs have them); the others only when on
    TEACHER_ONLY = ()  # the family's flags that need a teacher, besides these

    @property
    def on(self):
        return self.teacher_name_or_path is not None

    @property
    def per_step(self):
        """The teacher must run at every step (its hidden states are used), not once for its logits."""
        return any(getattr(self, name) for name in INTERMEDIATE)

    @property
    def logits_once(self):
        """The teacher's logits are computed once, a data column: the logit losses alone, or the second stage."""
        return not self.per_step or bool(self.intermediate_epochs)

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

    def settings(self, teacher_identity, own_tokens=None):
        """What a distilled run's result depends on, for the kept-run and resume checks. A teacher that reads
        another tokenizer's ids adds that tokenizer's digest."""
        out = {"teacher": teacher_identity["model"], **{k: getattr(self, k) for k in (
            "alpha_ce", self.TASK_WEIGHT, "temperature", *self.KEYED)}}
        for name in (*INTERMEDIATE, "intermediate_epochs", "hard_targets"):  # only when on: kept runs keep their key
            if getattr(self, name, None) and name not in out:
                out[name] = getattr(self, name)
        if own_tokens:
            out["teacher_tokenizer"] = teacher_identity["tokenizer"]
        if self.relations:
            out.update(teacher_layer=self.teacher_layer, relation_heads=self.relation_heads)
        return out

    def data_record(self):
        """The rows only the teacher labels, as asked (results.json's teacher record)."""
        return {}

    def one_tokenization(self):
        """(the loss that compares the models position by position, what to do instead), or None: the logit KD
        of --alpha_ce compares one distribution per row and needs no shared tokenization."""
        flag = next((f"--{n}" for n in INTERMEDIATE if getattr(self, n)), None)
        return None if flag is None else (f"{flag} compares the two models", "leave it out (the logit KD of "
                                          "--alpha_ce needs no shared tokenization)")

    def check(self, argv, training_args):
        """The flags, refused before anything is read or written."""
        given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
        if not self.on:
            own = [f.name for f in dataclasses.fields(TeacherArguments)]  # every flag of this class needs a teacher
            stray = next((f for f in (*own, *self.TEACHER_ONLY) if f in given), None)
            if stray:
                raise InputError(f"--{stray} needs --teacher_name_or_path (a teacher fine-tuned on the task)")
            return
        for name in ("alpha_ce", self.TASK_WEIGHT, *INTERMEDIATE):
            weight_at_least_0(self, name)
        if not (self.alpha_ce or self.per_step):
            raise InputError("--alpha_ce 0 and no --alpha_cos/--alpha_att/--alpha_vv/--alpha_hidden: the teacher would "
                             "teach nothing (leave out --teacher_name_or_path to fine-tune alone)")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise InputError(f"--temperature {self.temperature}: give a finite number above 0")
        for name in ("teacher_layer", "relation_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name} {value}: give at least 1")
        stages = self.intermediate_epochs
        if not math.isfinite(stages) or stages < 0:
            raise InputError(f"--intermediate_epochs {stages}: give a finite number of epochs of at least 0")
        if not stages:
            return
        if not self.per_step:
            raise InputError("--intermediate_epochs needs an intermediate loss for its first stage (--alpha_hidden, "
                             "--alpha_att, --alpha_vv or --alpha_cos)")
        if not (self.alpha_ce or getattr(self, self.TASK_WEIGHT)):
            raise InputError(f"--intermediate_epochs: the second stage trains --alpha_ce and --{self.TASK_WEIGHT}, "
                             "both 0")
        if training_args.max_steps > 0:
            raise InputError("--intermediate_epochs counts epochs: give --num_train_epochs, not --max_steps")
        schedule = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
        if schedule != "linear":
            raise InputError(f"--intermediate_epochs restarts the linear schedule at its second stage: leave out "
                             f"--lr_scheduler_type {schedule}")


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

PROJECTION = "hidden_projection"  # the student's submodule holding TinyBERT's W_h while it is distilled


@dataclass
class Intermediate:
    """What the intermediate losses need beside the two models' outputs."""

    relations: tuple = None  # (relation_layers()'s answer, the student, the teacher), for att/vv
    projection: object = None  # the student's hidden states to the teacher's width (--alpha_hidden, widths differ)


def distill_trainer(family, distill_args, teacher=None):
    """A transformers Trainer class whose training loss is `family`'s losses of each batch with `distill_args`'
    weights, against `teacher` (a Teacher; None: the family's own loss alone); evaluation is the student's own
    loss.

    An optimizer step weighs its rows as one batch, however many micro-batches (--gradient_accumulation_steps)
    and processes (torchrun) it is cut into: KD (and the other teacher losses) is the mean over all of the
    step's rows, the task loss the mean over its labelled rows. Each micro-batch's loss is its share of those
    means, so a micro-batch of unlabelled rows, or a short last one, weighs no other row more or less
    (tests/test_task_distill_reference.py pins this to a plain loop for both families)."""
    import torch.distributed as dist
    from transformers import Trainer

    class DistillTrainer(Trainer):
        loss_is_scaled_for_ga = True  # compute_loss returns the micro-batch's share of the step's loss

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            model = teacher.model if teacher is not None else None
            per_step = model is not None and distill_args.per_step  # else the teacher's logits are a cached column
            self.teacher = model.to(self.args.device).eval() if per_step else None
            # the teacher's ids of the student's pieces, where only the ids differ (moved to the device once)
            self.id_map = teacher.id_map.to(self.args.device) if per_step and teacher.id_map is not None else None
            self.student_keys = forward_inputs(self.model)
            self.teacher_keys = forward_inputs(model) if model is not None else set()
            self.inner = Intermediate()
            if per_step and distill_args.relations:
                layers = relation_layers(self.model, model, distill_args.relations, distill_args)
                self.inner.relations = (layers, self.model, model)
            s_width, t_width = (m.config.hidden_size for m in (self.model, model)) if per_step else (0, 0)
            if per_step and distill_args.alpha_hidden and s_width != t_width:
                # TinyBERT's W_h, trained with the student: a submodule, so that the optimizer, DDP and the
                # checkpoints (an exact resume) hold it; the model saved at the end leaves it out (save_model)
                self.model.add_module(PROJECTION, torch.nn.Linear(s_width, t_width).to(self.args.device))
                self.inner.projection = getattr(self.model, PROJECTION)
            self.first_stage = None  # --intermediate_epochs' optimizer steps (create_scheduler sets it)
            self.logits_stage = distill_args.logits_stage() if distill_args.intermediate_epochs else None  # once
            self.restarted = False  # the optimizer state cleared at the second stage's first step
            self.step_rows = None  # (rows, labelled rows) of the optimizer step under way, over every process
            self.parts = {}  # loss name -> its sum over the optimizer steps since the last log
            self.parts_from = 0  # the global step of the last log

        def _set_signature_columns_if_needed(self):  # keep the teacher's inputs, the targets, the cached logits
            if self._signature_columns is None:
                extra = {TEACHER_LOGITS, "label", "label_ids", *family.targets}
                self._signature_columns = sorted(self.student_keys | self.teacher_keys | extra)

        def create_scheduler(self, num_training_steps, optimizer=None):
            """With --intermediate_epochs, TinyBERT's two stages: the linear schedule (warmup, then decay to 0)
            runs once over each stage's steps."""
            if not distill_args.intermediate_epochs or self.lr_scheduler is not None:
                return super().create_scheduler(num_training_steps, optimizer)
            first = self.first_stage = round(num_training_steps * distill_args.intermediate_epochs /
                                             self.args.num_train_epochs)

            def rate(step):  # transformers' linear schedule, within the stage
                t, n = (step, first) if step < first else (step - first, num_training_steps - first)
                warmup = self.args.get_warmup_steps(n)
                return t / max(1, warmup) if t < warmup else max(0.0, (n - t) / max(1, n - warmup))

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, rate)
            self._created_lr_scheduler = True
            return self.lr_scheduler

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            """The micro-batches of one optimizer step; counts their rows and labelled rows first."""
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            counts = torch.tensor([sum(len(b["input_ids"]) for b in batches),
                                   sum(int(family.labelled(b).sum()) for b in batches)],
                                  dtype=torch.float64, device=device)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            self.step_rows = counts.tolist()
            return batches, num_items

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = {k: inputs.pop(k) for k in family.targets if k in inputs}
            cached = inputs.pop(TEACHER_LOGITS, None)
            # --intermediate_epochs: the first stage's steps run the teacher; the second's read its cached logits
            first = self.first_stage is None or self.state.global_step < self.first_stage
            run_teacher = self.teacher is not None and first
            hidden = run_teacher and model.training
            s_out = model(**{k: v for k, v in inputs.items() if k in self.student_keys}, output_hidden_states=hidden)
            if not model.training:  # evaluation: the student's own loss
                loss = family.task_loss(s_out, targets, inputs["attention_mask"])
                return (loss, s_out) if return_outputs else loss
            t_out = None
            if run_teacher:
                t_inputs = {k: v for k, v in inputs.items() if k in self.teacher_keys}
                if self.id_map is not None:  # the same pieces at the same positions, under the teacher's ids
                    t_inputs["input_ids"] = self.id_map[t_inputs["input_ids"]]
                with torch.no_grad():
                    t_out = self.teacher(**t_inputs, output_hidden_states=hidden)
            t_logits = cached if cached is not None else None if t_out is None else head_logits(t_out)
            weights = distill_args if first else self.logits_stage
            parts = family.losses(weights, s_out, t_out, t_logits, targets, inputs["attention_mask"], self.inner)
            if self.first_stage is not None:  # two stages: the intermediate losses, then the logits' alone
                parts = {name: part for name, part in parts.items() if (name in STAGE_ONE) == first}
                if self.state.global_step == self.first_stage and not self.restarted:  # a fresh optimizer state
                    self.optimizer.state.clear()
                    self.restarted = True
            # Each loss is a mean over this micro-batch's rows (the task's: its labelled rows); weighed by the
            # micro-batch's share of the step's rows, the shares add up to the step's mean.
            rows, with_label = self.step_rows
            share = {name: len(inputs["input_ids"]) / rows for name in parts}
            if "task" in parts:
                share["task"] = family.labelled(targets).sum() / with_label if with_label else 0.0  # no host sync
            loss = 0.0
            for name, (weight, value) in parts.items():
                loss = loss + weight * share[name] * value
                self.parts[name] = self.parts.get(name, 0.0) + share[name] * value.detach()
            # DDP averages the processes' gradients; the shares are of every process's rows, so sum instead
            return (loss * self.args.world_size, s_out) if return_outputs else loss * self.args.world_size

        def save_model(self, output_dir=None, _internal_call=False):
            """The student as it is used after training: without the hidden states' projection (a checkpoint,
            _internal_call, keeps it)."""
            if _internal_call or self.inner.projection is None:
                return super().save_model(output_dir, _internal_call)
            projection = self.model._modules.pop(PROJECTION)
            try:
                return super().save_model(output_dir, _internal_call)
            finally:
                self.model.add_module(PROJECTION, projection)

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
