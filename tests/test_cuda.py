"""The recipe on a GPU: mixed precision against fp32, the GradScaler, the memory guard against the real
allocator, resume, NCCL. Marked `cuda`; skipped where torch sees no GPU. No timing is asserted here."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import train
from conftest import ROOT
from train_helpers import autograd_losses, build_distiller, head_problem, read_metrics, with_args
from training.losses import FusedKD

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)"),
]
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
RELATIONS = ["--alpha_att", "1", "--alpha_vv", "1"]


@pytest.mark.parametrize("precision", list(HALF))
def test_fused_kd_in_half_precision_is_close_to_fp32(precision):
    problem = [t.detach().cuda() for t in head_problem(3, n=40, n_lm=12)]
    leaves = [t.requires_grad_() for t in problem[:3]]  # student features, head weight and bias
    ref, _, _ = autograd_losses(*problem, 2.0, 5.0, 2.0)
    ref_grads = torch.autograd.grad(ref, leaves)
    with torch.autocast("cuda", dtype=HALF[precision]):
        fused, _, _ = FusedKD.apply(*problem, 2.0, 5.0, 2.0, 16)
    grads = torch.autograd.grad(fused, leaves)
    assert fused.item() == pytest.approx(ref.item(), rel=2e-2)
    for a, r in zip(grads, ref_grads):
        assert a.dtype == r.dtype and torch.isfinite(a).all()
        assert ((a - r).norm() / r.norm()).item() < 2e-2


@pytest.mark.parametrize("precision", list(HALF))
def test_training_step_in_half_precision_is_close_to_fp32(base_argv, precision):
    """The whole step on the GPU (KD + MLM + cosine and the MiniLM losses): losses and gradients of fp16 /
    bf16 autocast (teacher stored in half precision) against fp32."""
    _, d32, _ = build_distiller(base_argv + RELATIONS, device="cuda")
    _, dh, _ = build_distiller(base_argv + RELATIONS + [f"--{precision}"], device="cuda")
    assert next(dh.teacher.parameters()).dtype == HALF[precision]
    dh.student_model.load_state_dict(d32.student_model.state_dict())
    token_ids, lengths = d32.dataset.batch_sequences([d32.dataset[i] for i in range(16)])
    out = {}
    for name, d in (("fp32", d32), ("half", dh)):
        d.student.eval()
        torch.manual_seed(0)
        losses = d.compute_losses(d.prepare_batch(token_ids, lengths))
        losses["loss"].backward()
        out[name] = (losses, torch.cat([p.grad.flatten() for p in d.student_model.parameters() if p.grad is not None]))
    (l32, g32), (lh, gh) = out["fp32"], out["half"]
    for k in l32:
        assert lh[k].dtype == torch.float32 and lh[k].item() == pytest.approx(l32[k].item(), rel=3e-2, abs=1e-3), k
    assert torch.isfinite(gh).all() and F.cosine_similarity(gh, g32, dim=0).item() > 0.99


def test_grad_scaler_skips_an_overflowing_step_and_counts_it(base_argv):
    _, d, _ = build_distiller(base_argv + ["--fp16"], device="cuda")
    token_ids, lengths = d.dataset.batch_sequences([d.dataset[i] for i in range(16)])
    d.scaler.scale(d.compute_losses(d.prepare_batch(token_ids, lengths))["loss"]).backward()
    p = next(q for q in d.student_model.parameters() if q.grad is not None)
    p.grad.view(-1)[0] = float("inf")  # an overflow, as fp16 gradients produce them
    before = [q.detach().clone() for q in d.student_model.parameters()]
    d.optimizer_step()
    assert d.n_skipped_steps == 1 and d.n_optimizer_steps == 1
    assert all(torch.equal(a, q) for a, q in zip(before, d.student_model.parameters()))  # the step was skipped


def test_memory_guard_empties_the_cache_when_free_memory_runs_low(base_argv):
    _, d, _ = build_distiller(base_argv, device="cuda")
    block = torch.empty(2**30, dtype=torch.uint8, device="cuda")  # 1 GiB, then back to the allocator's cache
    del block
    reserved = torch.cuda.memory_reserved()
    free, _ = torch.cuda.mem_get_info()
    d.params.empty_cache_threshold_gb = 0.0  # plenty free: nothing to do
    d.memory_guard()
    assert d.n_empty_cache == 0 and torch.cuda.memory_reserved() == reserved
    d.params.empty_cache_threshold_gb = free / 2**30 + 1  # "less than this is free": the guard must act
    d.memory_guard()
    assert d.n_empty_cache == 1 and torch.cuda.memory_reserved() <= reserved - 2**30


def test_a_checkpoint_written_on_cuda_resumes_to_the_same_losses(tmp_path, base_argv):
    argv = with_args(base_argv, n_gpu=1, n_epoch=2, log_interval=1, checkpoint_interval=8)
    train.main(with_args(argv, dump_path=tmp_path / "full"))
    train.main(with_args(argv, dump_path=tmp_path / "cut", stop_after_iter=60))
    train.main(with_args(argv, dump_path=tmp_path / "cut", resume=True))
    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert sorted(full) == sorted(resumed)
    for it in sorted(full)[-20:]:  # GPU kernels need not be bit-reproducible: close, not equal
        for k in ("loss", "ce", "mlm", "cos"):
            assert resumed[it][k] == pytest.approx(full[it][k], rel=1e-3), (it, k)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_two_processes_end_with_identical_parameters(tmp_path, run_files):
    _, argv = run_files
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "train.py"), *with_args(argv, n_gpu=1, dump_path=tmp_path / "ddp"), "--fp16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend nccl" in proc.stderr
    assert "student parameters identical on all 2 ranks" in (tmp_path / "ddp" / "train.log").read_text()
