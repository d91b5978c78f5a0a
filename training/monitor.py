"""What a training run reports: loss sums over a log interval, memory figures, the GPU memory guard, and
one writer for metrics.jsonl and tensorboard (used by the training log and the in-training evaluation)."""

import json
from pathlib import Path

import psutil
import torch

from training.losses import LOSS_NAMES


class Meter:
    """Sums of the losses on the device over a log interval; read once (one host sync) per interval."""

    def __init__(self):
        self.sums = {}
        self.n = 0
        self.tokens = 0
        self.grad_norms = []

    def add(self, losses, n_tokens):
        for k, v in losses.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += 1
        self.tokens += n_tokens

    def add_grad_norm(self, norm):
        self.grad_norms.append(norm.detach().float())

    def state_dict(self):
        return {
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "n": self.n,
            "tokens": self.tokens,
            "grad_norms": [g.cpu() for g in self.grad_norms],
        }

    @classmethod
    def from_state_dict(cls, state, device):
        meter = cls()
        meter.sums = {k: v.to(device) for k, v in state["sums"].items()}
        meter.n, meter.tokens = state["n"], state["tokens"]
        meter.grad_norms = [g.to(device) for g in state["grad_norms"]]
        return meter

    def read(self):
        """The interval's means (and `tokens`, its token count)."""
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).tolist() if keys else []
        out = {k: v / max(self.n, 1) for k, v in zip(keys, values)}
        if self.grad_norms:
            out["grad_norm"] = torch.stack(self.grad_norms).mean().item()
        out["tokens"] = self.tokens
        return out


def empty_cache_if_low(device, threshold_gb):
    """torch.cuda.empty_cache() when less than `threshold_gb` GiB of the GPU is free; 1 if it ran, else 0."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    if free < threshold_gb * 2**30:
        torch.cuda.empty_cache()
        return 1
    return 0


def memory_stats(device):
    if device.type == "cuda":
        return {
            "gpu_allocated_gib": torch.cuda.memory_allocated(device) / 2**30,
            "gpu_reserved_gib": torch.cuda.memory_reserved(device) / 2**30,
            "gpu_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        }
    return {"rss_gib": psutil.Process().memory_info().rss / 2**30}


def log_line(record):
    """The train.log line of a metrics record: a training interval's, or an evaluation's (valid_* keys)."""
    r = record
    where = f"iter {r['iter']} step {r['step']}"
    if "valid_loss" in r:
        return (
            f"eval {where} | valid loss {r['valid_loss']:.4f} ppl {r['valid_perplexity']:.2f} "
            f"top1 {r['valid_top1']:.4f} top5 {r['valid_top5']:.4f} | {r['valid_masked_tokens']:,} masked tokens"
        )
    losses = " ".join(f"{k} {r[k]:.4f}" for k in LOSS_NAMES if k in r)
    mem = (
        f"mem {r['gpu_allocated_gib']:.2f}/{r['gpu_reserved_gib']:.2f}/{r['gpu_peak_gib']:.2f} GiB "
        f"(alloc/reserved/peak), empty_cache {r['empty_cache_calls']}"
        if "gpu_allocated_gib" in r
        else f"rss {r['rss_gib']:.2f} GiB"
    )
    return f"{where} | loss {r['loss']:.4f} {losses} | lr {r['lr']:.2e} | {r['tokens_per_s']:,.0f} tok/s | {mem}"


def tensorboard_tag(key, record):
    """The tensorboard tag of a metrics record's key, or None for keys that are not plotted."""
    if key == "loss" or key in LOSS_NAMES:
        return f"losses/{key}"
    if key in ("valid_loss", "valid_perplexity", "valid_top1", "valid_top5"):
        return f"valid/{key[len('valid_'):]}"
    if key.startswith(("gpu_", "rss_")) or key == "empty_cache_calls":
        return f"memory/{key}"
    if key in ("skipped_steps", "scale"):  # None (not plotted) outside fp16 runs
        return f"fp16/{key}"
    return {"lr": "learning_rate/lr", "tokens_per_s": "global/tokens_per_s", "grad_norm": "global/grad_norm"}.get(key)


class MetricsLog:
    """metrics.jsonl (one JSON record per line) and tensorboard (dump_path/log/train), written together.

    `texts`: {tag: text} shown once (the run's settings). `resume_bytes` is metrics.jsonl's length at the
    checkpoint a run resumes from: the records (and events) a killed run wrote after it are cut, so that both
    read as if the run had never stopped."""

    def __init__(self, dump_path, resume_bytes=None, resume_iter=None, texts=None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(dump_path) / "metrics.jsonl"
        if resume_bytes is not None and self.path.exists() and self.path.stat().st_size > resume_bytes:
            with open(self.path, "r+b") as f:
                f.truncate(resume_bytes)
        purge = resume_iter + 1 if resume_bytes is not None else None
        self.tensorboard = SummaryWriter(log_dir=str(Path(dump_path) / "log" / "train"), purge_step=purge)
        for tag, text in (texts or {}).items():  # the run's settings, on tensorboard's text tab
            self.tensorboard.add_text(tag, text, 0)

    def write(self, record):
        """Append `record` (it holds its "iter") to metrics.jsonl and plot its figures at that iteration."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            tag = tensorboard_tag(key, record)
            if tag is not None and value is not None:
                self.tensorboard.add_scalar(tag, value, record["iter"])

    def close(self):
        self.tensorboard.close()


def metrics_size(dump_path):
    """metrics.jsonl's length in bytes (0 before the first record): what a checkpoint remembers."""
    path = Path(dump_path) / "metrics.jsonl"
    return path.stat().st_size if path.exists() else 0
