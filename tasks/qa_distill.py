"""Question-answering distillation for scripts/run_qa.py (upstream's run_squad_w_distillation.py, on the Trainer):

    loss = alpha_squad * the span loss: cross-entropy of the start and of the end position, averaged
         + alpha_ce    * KL(teacher || student) of the start and of the end distributions at --temperature,
                         times T^2, averaged

Unlike upstream, both softmaxes run over the window's real tokens only: padding is left out, so a batch's
longest window does not change a shorter one's distributions. The teacher is a QA model already fine-tuned
on the task that reads the student's tokenization (its start/end logits are compared position by position);
it runs once over the training features, in eval mode, and its logits are a data column that every epoch,
seed and learning rate reuses, kept on disk as run_glue.py keeps a classifier's (--teacher_logits_cache).
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from core import teachers
from core.errors import InputError, say
from core.loading import load_tokenizer
from core.precision import autocast_dtype
from tasks import teacher_pass

TEACHER_START, TEACHER_END = "teacher_start", "teacher_end"  # the data columns of cached logits


@dataclass
class QADistillArguments:
    teacher_name_or_path: str = field(
        default=None, metadata={"help": "a QA model fine-tuned on the task with the student's tokenizer (e.g. "
                                "run_qa.py --save_model's squad/RUN/model): turns fine-tuning into distillation"}
    )
    alpha_ce: float = field(default=0.5, metadata={"help": "weight of the KD loss on start/end logits (upstream's)"})
    alpha_squad: float = field(default=0.5, metadata={"help": "weight of the span loss on the gold spans (upstream's)"})
    temperature: float = field(default=2.0, metadata={"help": "KD softmax temperature (upstream's default)"})
    teacher_logits_cache: str = field(
        default=None, metadata={"help": "folder of the teacher's logits kept on disk (default: $TEACHER_LOGITS_CACHE, "
                                "else ~/.cache/distilbert_small/teacher_logits; off: none)"}
    )

    @property
    def on(self):
        return self.teacher_name_or_path is not None


def check_flags(d, argv):
    """The distillation flags, refused before anything is read or written."""
    given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
    if not d.on:
        stray = [f for f in ("alpha_ce", "temperature", "teacher_logits_cache") if f in given]
        if stray:
            raise InputError(f"--{stray[0]} needs --teacher_name_or_path (a QA model fine-tuned on the task)")
    for name in ("alpha_ce", "alpha_squad"):
        value = getattr(d, name)
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--{name} {value}: give a finite weight of at least 0")
    if d.on and not d.alpha_ce:
        raise InputError("--alpha_ce 0: the teacher would teach nothing (leave out --teacher_name_or_path)")
    if not d.on and not d.alpha_squad:
        raise InputError("--alpha_squad 0 without a teacher: nothing to learn from")
    if not math.isfinite(d.temperature) or d.temperature <= 0:
        raise InputError(f"--temperature {d.temperature}: give a finite number above 0")


def settings(d, identity):
    """What a distilled run's result depends on (None: no teacher)."""
    if not d.on:
        return None
    return {"teacher": identity["model"], "alpha_ce": d.alpha_ce, "alpha_squad": d.alpha_squad,
            "temperature": d.temperature}


# ----------------------------------------------------------------------------------------------------------
# The losses of one step (pure functions: tests pin them to hand computations)


def masked_log_softmax(logits, mask, temperature=1.0):
    """log_softmax over the positions where mask is true (padding left out); -inf elsewhere."""
    return F.log_softmax((logits.float() / temperature).masked_fill(~mask, float("-inf")), dim=-1)


def span_loss(start_logits, end_logits, start_positions, end_positions, mask):
    """Cross-entropy of the gold start and end positions over each window's real tokens, the two averaged."""
    start = F.nll_loss(masked_log_softmax(start_logits, mask), start_positions)
    end = F.nll_loss(masked_log_softmax(end_logits, mask), end_positions)
    return (start + end) / 2


def span_kd(s_start, s_end, t_start, t_end, mask, temperature):
    """KL(teacher || student) of the start and of the end distributions at T over the real tokens, times T^2,
    averaged over windows (batchmean) and over the two."""

    def kl(s, t):
        s, t = masked_log_softmax(s, mask, temperature), masked_log_softmax(t, mask, temperature)
        terms = t.exp() * (t - s)
        return terms.masked_fill(~mask, 0.0).sum(-1).mean() * temperature**2

    return (kl(s_start, t_start) + kl(s_end, t_end)) / 2


def qa_trainer(d):
    """A transformers Trainer class whose training loss is alpha_squad * span_loss + alpha_ce * span_kd (the
    latter with a teacher); evaluation and prediction are the student's alone. Each micro-batch's loss is its
    mean over windows (the Trainer divides by --gradient_accumulation_steps)."""
    from transformers import Trainer

    class QATrainer(Trainer):
        def _set_signature_columns_if_needed(self):  # keep the cached logits beside the model's inputs
            if self._signature_columns is None:
                keep = teacher_pass.forward_inputs(self.model) | {TEACHER_START, TEACHER_END}
                self._signature_columns = sorted(keep)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            starts, ends = inputs.pop("start_positions", None), inputs.pop("end_positions", None)
            t_start, t_end = inputs.pop(TEACHER_START, None), inputs.pop(TEACHER_END, None)
            out = model(**inputs)
            mask = inputs["attention_mask"].bool()
            loss = out.start_logits.sum() * 0.0
            if d.alpha_squad and starts is not None:
                loss = loss + d.alpha_squad * span_loss(out.start_logits, out.end_logits, starts, ends, mask)
            if t_start is not None and model.training:
                loss = loss + d.alpha_ce * span_kd(out.start_logits, out.end_logits, t_start, t_end, mask,
                                                   d.temperature)
            return (loss, out) if return_outputs else loss

    return QATrainer


class WithTeacherSpans:
    """A collator that pads as `base` does and pads the cached start/end logits to the batch's length."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features):
        features = [dict(f) for f in features]
        cached = None
        if TEACHER_START in features[0]:
            cached = [(f.pop(TEACHER_START), f.pop(TEACHER_END)) for f in features]
        batch = self.base(features)
        if cached is not None:
            width = batch["input_ids"].shape[1]
            for k, name in enumerate((TEACHER_START, TEACHER_END)):
                out = torch.zeros(len(cached), width)  # padding: masked out of both softmaxes
                for row, pair in enumerate(cached):
                    out[row, : len(pair[k])] = torch.tensor(pair[k], dtype=torch.float32)
                batch[name] = out
        return batch


# ----------------------------------------------------------------------------------------------------------
# The teacher: loaded, checked, and run once over the training features


def load_teacher(path, student_tokenizer, texts):
    """The teacher QA model in eval mode and its tokenizer; refused when it has no span head (not fine-tuned
    for QA) or splits the task's text otherwise than the student (positions must line up)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model, _ = teachers.load_teacher(AutoModelForQuestionAnswering, path, (
        "a question-answering model", "fine-tune it on the task first (run_qa.py --save_model: its squad/RUN/model)"))
    tokenizer = load_tokenizer(AutoTokenizer, path, "the teacher's tokenizer")
    differs = teacher_pass.tokenization_differs(student_tokenizer, tokenizer, texts)
    if differs:
        raise InputError(f"the teacher {path} has {differs}: QA distillation compares start/end logits position "
                         "by position, so teacher and student need one tokenization")
    return model, tokenizer


@torch.inference_mode()
def span_logits(model, dataset, collator, batch_size, device, dtype=None, desc="teacher logits", quiet=False):
    """(starts, ends): a QA model's float32 start/end logits per window, each as long as the window, in the
    dataset's order; batches of similar lengths pad less. The teacher's pass, and every evaluation: each
    process reads every window, so the answers never depend on how a sampler dealt or gathered batches (the
    Trainer's evaluation returns them length-grouped, that is shuffled, and under torchrun one rank's share)."""
    from tqdm.auto import tqdm

    keep = teacher_pass.forward_inputs(model)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lengths.__getitem__)
    starts, ends = [None] * len(dataset), [None] * len(dataset)
    was_training = model.training
    model.to(device).eval()
    for at in tqdm(range(0, len(order), batch_size), desc=desc, disable=quiet):
        picked = order[at : at + batch_size]
        batch = collator([{k: v for k, v in dataset[i].items() if k in keep} for i in picked])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(**{k: v.to(device) for k, v in batch.items()})
        for row, i in enumerate(picked):
            starts[i] = out.start_logits[row, : lengths[i]].float().cpu().numpy()
            ends[i] = out.end_logits[row, : lengths[i]].float().cpu().numpy()
    model.train(was_training)
    return starts, ends


def with_teacher_logits(teacher, identity, dataset, tokenizer, targs, cache_setting):
    """The training features with the teacher's start/end logits as two columns: read from the cache when the
    same teacher, precision and features were seen before, else computed (and kept)."""
    from transformers import DataCollatorWithPadding

    dtype = autocast_dtype(targs)
    start = time.time()
    lengths = np.array([len(ids) for ids in dataset["input_ids"]])
    folder = teacher_pass.cache_folder(cache_setting)
    path = logits = None
    if folder is not None:
        key = teacher_pass.logits_key(identity, dataset, str(dtype), "qa start/end")
        path = teacher_pass.cache_path(folder, key)
        logits, why = teacher_pass.read_cached_logits(path, key, (int(lengths.sum()), 2))
        if why:
            say(f"the cached teacher logits at {path} were not used ({why}): computing them again")
    logits = teacher_pass.agree_on_hit(logits, targs.device)  # a hit on every process, or none
    if logits is None:
        collator = DataCollatorWithPadding(tokenizer)
        starts, ends = span_logits(teacher, dataset, collator, targs.per_device_eval_batch_size, targs.device, dtype,
                                   quiet=targs.disable_tqdm)
        teacher.cpu()
        logits = np.stack([np.concatenate(starts), np.concatenate(ends)], axis=1).astype(np.float32)
        if path is not None and targs.process_index == 0:
            try:
                teacher_pass.write_cached_logits(path, key, logits)
            except OSError as e:  # a cache that cannot be written costs the next run a pass, nothing more
                say(f"the teacher's logits could not be kept in {folder} ({e.strerror or e})")
        say(f"the teacher's start/end logits for {len(dataset):,} training windows took {time.time() - start:.1f} s"
            f" (once, for all runs{f'; kept in {path}' if path is not None else ''})")
    else:
        say(f"the teacher's start/end logits for {len(dataset):,} training windows: read from {path}")
    cuts = np.cumsum(lengths)[:-1]
    dataset = dataset.add_column(TEACHER_START, [a.tolist() for a in np.split(logits[:, 0], cuts)])
    return dataset.add_column(TEACHER_END, [a.tolist() for a in np.split(logits[:, 1], cuts)])
