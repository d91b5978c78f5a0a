"""precision.Precision: the one decision of what precision a run uses, from the flags and the device."""

import contextlib

import torch

import precision
from precision import Precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


def test_the_request_runs_where_it_can():
    fp16 = Precision.decide(fp16=True, bf16=False, device=CUDA)
    assert (fp16.used, fp16.dtype, fp16.teacher_dtype, fp16.scaled, fp16.why) == ("fp16", torch.float16,
                                                                                 torch.float16, True, "")  # fmt: skip
    fp32 = Precision.decide(fp16=False, bf16=False, device=CPU)
    assert (fp32.used, fp32.dtype, fp32.teacher_dtype, fp32.scaled) == ("fp32", None, torch.float32, False)
    assert isinstance(fp32.autocast("cpu"), contextlib.nullcontext) and not fp32.scaler().is_enabled()
    bf16 = Precision.decide(fp16=False, bf16=True, device=CUDA)
    assert (bf16.used, bf16.teacher_dtype, bf16.scaled) == ("bf16", torch.bfloat16, False)  # no scaler for bf16


def test_fp16_without_cuda_and_bf16_on_a_slow_cpu_fall_back_to_fp32_and_say_why(monkeypatch):
    p = Precision.decide(fp16=True, bf16=False, device=CPU)
    assert p.record() == {"requested": "fp16", "used": "fp32", "why": p.why} and "needs a CUDA GPU" in p.why
    assert not p.scaled  # so non-finite losses are errors, not overflow steps to skip
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: False)
    p = Precision.decide(fp16=False, bf16=True, device=CPU)
    assert (p.requested, p.used) == ("bf16", "fp32") and "no native bf16" in p.why
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: True)
    p = Precision.decide(fp16=False, bf16=True, device=CPU)
    assert (p.used, p.why, p.record()["why"]) == ("bf16", "", None)
    with p.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
