"""Upstream's helpers of the training loop: logging, distributed setup, seeds and RNG state, the git record.

- `logger`: one logger for the training code (rank 0 logs at INFO, the other ranks at WARNING).
- `init_distributed()`: reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE and joins the process group.
- `set_seed()`, `rng_state()`, `git_log()`: reproducibility records.
Loading models and tokenizers is core/loading.py's.
"""

import json
import logging
import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logging.basicConfig(
    format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
)
logger = logging.getLogger("distillation")
logger.setLevel(logging.INFO)  # also when something else configured the root logger first


# ----------------------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class DistInfo:
    rank: int = 0  # global rank
    local_rank: int = 0  # rank on this node: picks the GPU
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_master(self):
        return self.rank == 0

    def wrap(self, module, find_unused_parameters=False):
        """`module` in DistributedDataParallel, on this process's GPU (or on the CPU with gloo)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                         find_unused_parameters=find_unused_parameters)



def weight_decay_groups(model, weight_decay):
    """The optimizer's parameter groups: weight decay on the trained weights, none on biases and LayerNorms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def rng_state(device):
    """The random generators' states a resumed run needs (CPU, and the GPU's when training on one)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def check_same_on_all_ranks(model, dist):
    """Multi-process runs: check that every rank ends with bit-identical parameters of `model`."""
    with torch.no_grad():  # per tensor: sum and sum of squares, in float64 (order-aware, cheap)
        digest = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in model.parameters()])
    digest = digest.flatten()
    digests = [torch.zeros_like(digest) for _ in range(dist.world_size)]
    torch.distributed.all_gather(digests, digest)
    if not all(torch.equal(d, digests[0]) for d in digests):
        raise RuntimeError(f"parameters differ across ranks: {[d.tolist() for d in digests]}")
    logger.info(f"student parameters identical on all {dist.world_size} ranks (checksum {digest.sum().item():.6f})")


def init_distributed(n_gpu=1):
    """Set up this process from torchrun's environment; a plain `python train.py` is a world of one.

    NCCL on GPUs, gloo on CPU. `n_gpu=0` forces the CPU (upstream's `--n_gpu 0`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = n_gpu > 0 and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)
    logger.setLevel(logging.INFO if info.is_master else logging.WARNING)
    if world_size > 1:
        logger.info(
            f"distributed: world size {world_size}, backend {torch.distributed.get_backend()}, "
            f"host {socket.gethostname()}"
        )
    elif n_gpu > 0 and not use_cuda:
        logger.info("no CUDA device: training on the CPU")
    return info


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def git_log(folder):
    """Write git_log.json (repo, commit, branch, dirty) into `folder`; outside a git clone, record nulls."""
    record = {"repo_id": None, "repo_sha": None, "repo_branch": None, "dirty": None}
    try:
        import git

        repo = git.Repo(Path(__file__).resolve().parent, search_parent_directories=True)
        record["repo_id"] = str(repo.working_dir)
        record["repo_sha"] = repo.head.object.hexsha
        record["dirty"] = repo.is_dirty()
        try:
            record["repo_branch"] = repo.active_branch.name
        except TypeError:  # detached HEAD, as on CI
            record["repo_branch"] = None
    except Exception as e:  # no git binary, not a clone, ...: a record without git info beats a crash
        record["error"] = f"{type(e).__name__}: {e}"
    with open(Path(folder) / "git_log.json", "w") as f:
        json.dump(record, f, indent=4)
    return record
