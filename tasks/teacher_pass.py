"""The teacher of task distillation, run_glue.py's and run_qa.py's alike: loaded, frozen and checked once per
command (`load_teacher`), how it reads the student's rows (its ids, the same pieces under its own ids, or its
own tokenization), and its pass: its logits over the training rows, computed once (inference mode, batches
sorted by length, the run's precision, sharded under torchrun) and kept on disk, keyed by its weights and
tokenizer, the rows and the precision, so that every later run, seed and learning rate reuses them."""

import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import teachers
from core.errors import InputError, say
from core.files import atomic_write
from core.loading import load_tokenizer
from core.precision import autocast_dtype
from core.teachers import piece_map, tokenization_differs
from tasks.runs import forward_inputs, model_identity

TEACHER_LOGITS = "teacher_logits"  # the data column of cached logits


def teacher_dataset(tokenizer, texts, max_length):
    """The training rows as the teacher reads them, in the same order: its own tokenizer, special tokens and
    length limit over the rows' raw text (one column, or two for sentence pairs)."""
    import datasets

    columns = {f"text{i}": list(column) for i, column in enumerate(texts)}
    ds = datasets.Dataset.from_dict(columns)
    return ds.map(lambda b: tokenizer(*[b[c] for c in columns], truncation=True, max_length=max_length),
                  batched=True, remove_columns=list(columns), desc="tokenizing for the teacher")


# ----------------------------------------------------------------------------------------------------------
# Teacher logits, computed once for the training set


def head_logits(out):
    """A model output's logits as one tensor: (rows, classes) for a classifier; (rows, length, 2) for a span head,
    its start and end logits side by side."""
    if getattr(out, "start_logits", None) is not None:
        return torch.stack([out.start_logits, out.end_logits], dim=-1)
    return out.logits


@torch.inference_mode()  # no autograd state at all: the logits only become a data column or predictions
def model_logits(model, dataset, collator, batch_size, device, autocast_dtype=None, desc="teacher logits",
                 quiet=False):
    """A model's float32 logits per row of `dataset`, in eval mode, in the dataset's order, as numpy arrays: one
    (classes,) per row for a classifier, one (row length, 2) for a span head. Batches of similar lengths pad
    less. Under torchrun each process computes every world_size-th row and the shares are exchanged: every
    process holds every row, whatever order a sampler would have dealt them in. The teacher's pass, and run_qa.py's
    evaluation."""
    import torch.distributed as dist
    from tqdm.auto import tqdm

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    keep = forward_inputs(model)
    mine = list(range(rank, len(dataset), world))
    ids = dataset["input_ids"]
    lengths = [len(ids[i]) for i in mine]
    order = sorted(range(len(mine)), key=lengths.__getitem__)
    out = [None] * len(mine)
    was_training = model.training
    model.to(device).eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=quiet or rank != 0):
        picked = order[start : start + batch_size]
        batch = collator([{k: v for k, v in dataset[mine[k]].items() if k in keep} for k in picked])
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = head_logits(model(**{k: v.to(device) for k, v in batch.items()})).float().cpu().numpy()
        for row, k in enumerate(picked):
            out[k] = logits[row, : lengths[k]] if logits.ndim == 3 else logits[row]
    model.train(was_training)
    if not distributed:
        return out
    shares = [None] * world
    dist.all_gather_object(shares, out)
    full = [None] * len(dataset)
    for r, share in enumerate(shares):
        full[r::world] = share
    return full


def cache_folder(setting):
    """The logits cache's folder (None: off): --teacher_logits_cache, else $TEACHER_LOGITS_CACHE, else the
    user's cache folder."""
    folder = setting or os.environ.get("TEACHER_LOGITS_CACHE") or Path.home() / ".cache" / "distilbert_small" / \
        "teacher_logits"
    return None if str(folder).lower() == "off" else Path(folder)


def logits_key(identity, dataset, precision, num_labels):
    """What the teacher's logits depend on: its weights and tokenizer (digests), the precision of its pass,
    and every input id it reads, row by row; a change in any of them is another key, never a stale hit."""
    h = hashlib.sha256(json.dumps([identity, precision, num_labels]).encode())
    for name in sorted(c for c in dataset.column_names if c in ("input_ids", "token_type_ids", "attention_mask")):
        column = dataset[name]
        h.update(name.encode())
        h.update(np.fromiter((len(r) for r in column), np.int64, len(column)).tobytes())
        h.update(np.fromiter((t for r in column for t in r), np.int64).tobytes())
    return h.hexdigest()[:32]


def write_cached_logits(path, key, logits):
    """Keep `logits` (float32) at `path` with their key and the sha256 of their bytes, atomically."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    digest = hashlib.sha256(logits.tobytes()).hexdigest()
    with atomic_write(path) as f:
        np.savez(f, logits=logits, key=np.array(key), sha256=np.array(digest))


def read_cached_logits(path, key, shape):
    """(the cached logits at `path`, None) when they are whole and what `key` names; else (None, why not): not
    there (why None), unreadable, another key's, another shape, contents that do not match their digest (bytes
    changed after they were written, even to other finite numbers), or non-finite values. A miss is recomputed
    and written again; it is never used."""
    if not Path(path).exists():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as stored:
            logits, stored_key, digest = stored["logits"], str(stored["key"]), str(stored["sha256"])
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        return None, f"unreadable: {type(e).__name__}"
    if stored_key != key:
        return None, f"it holds the logits of another key ({stored_key})"
    if logits.dtype != np.float32 or logits.shape != tuple(shape):
        return None, f"its logits are {logits.dtype} {logits.shape}, not float32 {tuple(shape)}"
    if hashlib.sha256(logits.tobytes()).hexdigest() != digest:
        return None, "its contents do not match their digest"
    if not np.isfinite(logits).all():
        return None, "it holds non-finite values"
    return logits, None


def agree_on_hit(logits, device):
    """Under torchrun, a cache hit only if every process hit (else every process computes the logits)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        hit = torch.tensor([int(logits is not None)], device=device)
        torch.distributed.all_reduce(hit, op=torch.distributed.ReduceOp.MIN)
        return logits if hit.item() else None
    return logits


class WithTeacherLogits:
    """A collator that pads as `base` does and puts the cached teacher logits beside the batch: stacked for a
    classifier's rows, padded with zeros to the batch's length for a span head's (the losses leave padding out)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features):
        features = [dict(f) for f in features]
        cached = [f.pop(TEACHER_LOGITS) for f in features] if TEACHER_LOGITS in features[0] else None
        batch = self.base(features)
        if cached is not None:
            rows = [torch.tensor(c, dtype=torch.float32) for c in cached]
            if rows[0].dim() == 1:
                batch[TEACHER_LOGITS] = torch.stack(rows)
            else:
                padded = torch.zeros(len(rows), batch["input_ids"].shape[1], rows[0].shape[1])
                for i, r in enumerate(rows):
                    padded[i, : len(r)] = r
                batch[TEACHER_LOGITS] = padded
        return batch


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
        if self.id_map is not None:  # the same pieces under its own ids, padded with its own pad id
            table, reader = self.id_map, self.tokenizer
            rows = rows.map(lambda b: {"input_ids": [table[ids].tolist() for ids in b["input_ids"]]}, batched=True,
                            desc="the teacher's ids")
        if self.own_tokens:
            rows, reader = teacher_dataset(self.tokenizer, texts, max_length), self.tokenizer
            say(f"the teacher reads its own tokenization of the {len(rows):,} training {unit} ({self.own_tokens})")
        lengths = [len(ids) for ids in rows["input_ids"]]
        width = 2 if per_token else self.model.config.num_labels
        folder = cache_folder(self.args.teacher_logits_cache)
        path = logits = None
        if folder is not None:
            key = logits_key(self.identity, rows, str(dtype), "qa start/end" if per_token else width)
            path = folder / f"{key}.npz"  # the logits, their key and their digest
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
