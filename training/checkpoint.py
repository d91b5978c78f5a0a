"""train.py's checkpoint, in one place: its file name, its keys, how it is written and how it is read.

A checkpoint holds everything a resumed run needs to repeat the uninterrupted run's losses exactly (on CPU):
the student, optimizer, scheduler and grad scaler states, the progress counters, the open log interval's sums
(`meter`), what fixes the order of the batches (`data_order`, checked on resume) and every rank's RNG states.
It is tensors and plain containers only, written atomically and read with torch's weights_only load.
"""

import pickle
import zipfile

import torch

from core.errors import InputError, first_line
from core.files import atomic_write
from core.loading import RUN_CHECKPOINT
from training.monitor import Meter, metrics_size
from utils import set_rng_state

CHECKPOINT = RUN_CHECKPOINT  # "checkpoint.pth" in the run folder, replaced atomically
KEYS = ("student", "optimizer", "scheduler", "scaler", "progress", "meter", "data_order", "rng")
OPTIONAL = ("meter",)  # absent from checkpoints written before it existed
# The Distiller's counters that `progress` holds, by attribute name.
PROGRESS = ("epoch", "batch_in_epoch", "n_total_iter", "n_optimizer_steps", "n_empty_cache", "n_skipped_steps",
            "ckpt_bucket")


def save(d, path, rngs):
    """Distiller `d`'s resumable state to `path`; `rngs`: every rank's RNG states, by rank."""
    progress = {**{k: getattr(d, k) for k in PROGRESS}, "metrics_bytes": metrics_size(d.dump_path),
                "last_eval_iter": -1 if d.last_eval_iter is None else d.last_eval_iter}
    write(path, student=d.student_model.state_dict(), optimizer=d.optimizer.state_dict(),
          scheduler=d.scheduler.state_dict(), scaler=d.scaler.state_dict(), progress=progress,
          meter=d.meter.state_dict(), data_order=d.data_order(), rng=rngs)


def restore(d, path):
    """Distiller `d` as it was when `path` was written (read() checks the file and the data order first)."""
    state = read(path, d.data_order())
    try:
        d.student_model.load_state_dict(state["student"])
        d.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(
            f"--resume: {path} was written for another student ({first_line(e)}); resume with the same --student_config"
        ) from None
    d.scheduler.load_state_dict(state["scheduler"])
    d.scaler.load_state_dict(state["scaler"])
    progress = state["progress"]
    for k in PROGRESS:
        setattr(d, k, progress[k])
    last_eval = progress.get("last_eval_iter", -1)
    d.last_eval_iter = None if last_eval < 0 else last_eval
    d.metrics_bytes = progress.get("metrics_bytes")
    if "meter" in state:
        d.meter = Meter.from_state_dict(state["meter"], d.device)
    set_rng_state(state["rng"][d.dist.rank], d.device)


def write(path, **state):
    """Save `state` (exactly KEYS) to `path` atomically: a kill mid-write leaves the previous checkpoint."""
    if set(state) != set(KEYS):
        raise ValueError(f"a checkpoint holds {KEYS}, not {tuple(state)}")
    with atomic_write(path) as f:
        torch.save(state, f)


def read(path, data_order):
    """A train.py checkpoint: tensors and plain containers only (torch's weights_only load: no code runs).
    A missing, damaged or foreign file, or one written with another `data_order` (the settings and data that
    fix the sequence of batches), is an InputError."""
    fix = "start the run again with --force, or resume from a copy of a good checkpoint"
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist (no checkpoint was written yet); start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"--resume: {path} is not a train.py checkpoint (it holds more than tensors: {first_line(e)}); {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        why = f"{type(e).__name__}: {first_line(e)}"
        raise InputError(f"--resume: {path} is damaged or truncated ({why}); {fix}") from None
    if not isinstance(state, dict) or any(k not in state for k in KEYS if k not in OPTIONAL):
        raise InputError(f"--resume: {path} is not a train.py checkpoint (it lacks the training state); {fix}")
    saved = state["data_order"]
    changes = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in data_order.items() if saved.get(k) != v)
    if changes:
        raise InputError(f"--resume: the run was started with other settings or data ({changes}); resume with the "
                         "same ones")
    return state
