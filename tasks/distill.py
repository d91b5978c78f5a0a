"""Task distillation's shared path, for run_glue.py and run_qa.py alike: the teacher (loaded and checked once,
its logits computed once and kept on disk) and the Trainer whose loss is the task family's losses.

A task family (tasks/task_distill.Classification, tasks/qa_distill.Spans) says only what differs: the model
class, the batch keys of the gold answers, which rows carry one, and the losses of one batch. Everything
here is one rule for both: how a step weighs its rows over micro-batches and processes, the teacher's pass
under torchrun, the cache and what a run records of its teacher.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

from core import teachers
from core.errors import InputError, say
from core.loading import load_tokenizer
from core.precision import autocast_dtype
from core.teachers import piece_map, tokenization_differs
from tasks.glue_runs import model_identity
from tasks.teacher_pass import (
    TEACHER_LOGITS,
    agree_on_hit,
    cache_folder,
    cache_path,
    forward_inputs,
    head_logits,
    logits_key,
    model_logits,
    read_cached_logits,
    teacher_dataset,
    write_cached_logits,
)
from training.models import relation_layers

STAGE_ONE = ("cos", "att", "vv", "hidden")  # the losses of --intermediate_epochs' first stage; the rest: its second


@dataclass
class Teacher:
    """The teacher of --teacher_name_or_path, loaded and checked once for every run of a command."""

    args: object  # the script's distillation flags (DistillArguments, QADistillArguments)
    model: object
    tokenizer: object
    identity: dict  # digests of its weights and tokenizer
    logits_seconds: float | None = None  # the one pass over the training set (benchmarks read it)
    own_tokens: str | None = None  # why it reads its own tokenization of the text (None: the student's ids)
    logits_cached: str | None = None  # the cache file its logits were read from (None: computed here)
    id_map: object = None  # student id -> its id of the same piece, when only the ids differ (core.teachers.piece_map)
    mapped: str | None = None  # why the ids are mapped (the vocabularies' difference)

    def check_tokens(self, tokenizer, texts):
        """How the teacher reads the rows (`texts`: a sample, each a text or a tuple of a pair's texts): the
        student's input ids; the same pieces under its own ids (mapped: every loss still compares position by
        position); or its own tokenization of the text, refused when a loss in use compares positions."""
        differs = tokenization_differs(tokenizer, self.tokenizer, texts)
        why = None
        if differs:
            self.id_map, why = piece_map(tokenizer, self.tokenizer, texts)
            self.own_tokens, self.mapped = (None, differs) if self.id_map is not None else (differs, None)
            if self.mapped:
                say(f"the teacher reads the student's pieces under its own ids ({differs})")
        needs_one = self.args.one_tokenization()  # (what compares positions, what to do instead), or None
        if self.own_tokens and needs_one:
            what, instead = needs_one
            raise InputError(f"{what} position by position, so it needs one tokenization, but the teacher "
                             f"{self.args.teacher_name_or_path} has {self.own_tokens} and its pieces differ ({why}): "
                             f"{instead}")

    def reads(self, rows):
        """The student's rows as the teacher reads them: its ids for the same pieces when they are mapped."""
        if self.id_map is None:
            return rows
        table = self.id_map
        return rows.map(lambda b: {"input_ids": [table[ids].tolist() for ids in b["input_ids"]]}, batched=True,
                        desc="the teacher's ids")

    def with_logits(self, train_set, tokenizer, training_args, per_token, texts=None, max_length=None):
        """train_set with the teacher's logits as a column (computed once, in eval mode, for every run; read
        from the cache when the same teacher, precision and rows were seen before). per_token: a span head's
        start/end logits per token, else a classifier's per row. With its own tokenizer, the teacher reads
        `texts` (train_set's rows, in order) cut at `max_length`."""
        from transformers import DataCollatorWithPadding

        dtype = autocast_dtype(training_args)  # as the steps run
        start = time.time()
        rows, reader = train_set, tokenizer
        unit = "windows" if per_token else "rows"
        if self.id_map is not None:  # its own ids, padded with its own pad id
            rows, reader = self.reads(train_set), self.tokenizer
        if self.own_tokens:
            rows, reader = teacher_dataset(self.tokenizer, texts, max_length), self.tokenizer
            say(f"the teacher reads its own tokenization of the {len(rows):,} training {unit} ({self.own_tokens})")
        lengths = [len(ids) for ids in rows["input_ids"]]
        width = 2 if per_token else self.model.config.num_labels
        folder = cache_folder(self.args.teacher_logits_cache)
        path = logits = None
        if folder is not None:
            key = logits_key(self.identity, rows, str(dtype), "qa start/end" if per_token else width)
            path = cache_path(folder, key)
            logits, why = read_cached_logits(path, key, (sum(lengths) if per_token else len(rows), width))
            if why:
                say(f"the cached teacher logits at {path} were not used ({why}): computing them again")
        logits = agree_on_hit(logits, training_args.device)  # a hit on every process, or none
        if logits is not None:
            self.logits_cached = str(path)
            say(f"the teacher's logits for {len(rows):,} training {unit}: read from {path}")
        else:
            per_row = model_logits(self.model, rows, DataCollatorWithPadding(reader),
                                   training_args.per_device_eval_batch_size,
                                   training_args.device, dtype, quiet=training_args.disable_tqdm)
            logits = (np.concatenate if per_token else np.stack)(per_row).astype(np.float32)
            if path is not None and training_args.process_index == 0:
                try:
                    write_cached_logits(path, key, logits)
                except OSError as e:  # a cache that cannot be written costs the next run a pass, nothing more
                    say(f"the teacher's logits could not be kept in {folder} ({e.strerror or e})")
            say(f"the teacher's logits for {len(rows):,} training {unit} took {time.time() - start:.1f} s"
                f" (once, for all runs{f'; kept in {path}' if path is not None else ''})")
            self.model.cpu()  # the steps need only the column
        self.logits_seconds = round(time.time() - start, 2)
        column = np.split(logits, np.cumsum(lengths)[:-1]) if per_token else logits
        return train_set.add_column(TEACHER_LOGITS, [a.tolist() for a in column])

    def settings(self):
        """What a distilled run's result depends on (its run key's "distillation"); a teacher that reads another
        tokenizer's ids adds that tokenizer's digest."""
        return self.args.settings(self.identity, self.own_tokens or self.mapped)

    def record(self):
        """What a run's results say of its teacher."""
        return {"path": self.args.teacher_name_or_path, **self.settings(),
                "teacher_logits": "computed once" if not self.args.per_step else "every step" if not
                self.args.intermediate_epochs else "every step of the first stage, computed once for the second",
                "logits_read_from": self.logits_cached,
                "tokenization": f"its own: {self.own_tokens}" if self.own_tokens else
                f"the student's pieces under its own ids: {self.mapped}" if self.mapped else "the student's",
                **self.args.data_record()}


PROJECTION = "hidden_projection"  # the student's submodule holding TinyBERT's W_h while it is distilled


@dataclass
class Intermediate:
    """What the intermediate losses need beside the two models' outputs."""

    relations: tuple = None  # (relation_layers()'s answer, the student, the teacher), for att/vv
    projection: object = None  # the student's hidden states to the teacher's width (--alpha_hidden, widths differ)


def load_teacher(family, distill_args, student_config):
    """The teacher of --teacher_name_or_path as `family`'s model, frozen, with its tokenizer and identity; a
    checkpoint without the family's head (an encoder not yet fine-tuned on the task) is refused. For the losses
    that compare hidden states, its shapes are checked against the student's (modules built without weights:
    only their shapes are read)."""
    import transformers

    path = distill_args.teacher_name_or_path
    model_class = getattr(transformers, family.model_class)
    model, _ = teachers.load_frozen(model_class, path, family.teacher_needs)
    tokenizer = load_tokenizer(transformers.AutoTokenizer, path, "the teacher's tokenizer")
    if distill_args.per_step:
        with torch.device("meta"):
            student = transformers.AutoModel.from_config(student_config)
        distill_args.check_shapes(student, model)
    return Teacher(distill_args, model, tokenizer, model_identity(path, model.config, tokenizer))


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
