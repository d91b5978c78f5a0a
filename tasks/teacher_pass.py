"""The teacher's pass of task distillation: its logits over the training rows, computed once (in inference
mode, batches sorted by length, in the run's precision) and kept on disk, keyed by the teacher's weights and
tokenizer, the rows and the precision, so that every later run, seed and learning rate reuses them. run_glue.py
(classes) and run_qa.py (start/end logits per token) share every piece."""

import hashlib
import inspect
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from core.files import atomic_write

TEACHER_LOGITS = "teacher_logits"  # the data column of cached logits


def teacher_dataset(tokenizer, texts, max_length):
    """The training rows as the teacher reads them, in the same order: its own tokenizer, special tokens and
    length limit over the rows' raw text (one column, or two for sentence pairs)."""
    import datasets

    columns = {f"text{i}": list(column) for i, column in enumerate(texts)}
    ds = datasets.Dataset.from_dict(columns)
    return ds.map(lambda b: tokenizer(*[b[c] for c in columns], truncation=True, max_length=max_length),
                  batched=True, remove_columns=list(columns), desc="tokenizing for the teacher")


def forward_inputs(model):
    """The input names a model's forward takes (DistilBERT has no token_type_ids)."""
    return set(inspect.signature(model.forward).parameters)


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


def cache_path(folder, key):
    """Where the logits of `key` are kept: one .npz holding the logits, their key and their digest."""
    return Path(folder) / f"{key}.npz"


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
