"""precision.Precision: the one decision of what precision a run uses, from the flags and the device."""

import contextlib

import pytest
import torch

from core import precision
from core.precision import Precision
from train_helpers import build_distiller, with_args

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
    assert p.record() == {"requested": "fp16", "used": "fp32", "why": p.why, "attention": "sdpa"}
    assert "needs a CUDA GPU" in p.why
    assert not p.scaled  # so non-finite losses are errors, not overflow steps to skip
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: False)
    p = Precision.decide(fp16=False, bf16=True, device=CPU)
    assert (p.requested, p.used) == ("bf16", "fp32") and "no native bf16" in p.why
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: True)
    p = Precision.decide(fp16=False, bf16=True, device=CPU)
    assert (p.used, p.why, p.record()["why"]) == ("bf16", "", None)
    with p.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, attn_implementation="sdpa")
    return BertForMaskedLM(config).eval()


@pytest.mark.parametrize("used", ["fp32", "bf16"])
def test_each_precision_gets_the_attention_measured_for_it(used):
    """precision.ATTENTION as shipped: eager attention for bf16 on a CPU, SDPA otherwise (and on CUDA); the
    switched model computes the same outputs, under the precision's autocast, and records what it used."""
    ids = torch.randint(5, 200, (3, 20))
    mask = (torch.arange(20)[None, :] < torch.tensor([20, 14, 9])[:, None]).long()
    p = Precision(used, used)
    model = tiny_bert()
    with torch.no_grad(), p.autocast("cpu"):
        before = model(input_ids=ids, attention_mask=mask).logits.float()
        precision.use_attention(model, "cpu", used)
        after = model(input_ids=ids, attention_mask=mask).logits.float()
    expected = "eager" if used == "bf16" else "sdpa"
    assert model.config._attn_implementation == expected == p.record("cpu")["attention"]
    keep = mask.bool()
    assert torch.allclose(before[keep], after[keep], atol=2e-2 if used == "bf16" else 1e-5)
    assert precision.attention_for("cuda", used) is None and p.record("cuda")["attention"] == "sdpa"


def test_the_distiller_puts_both_models_on_the_chosen_attention(base_argv):
    for flags, used in (({}, "fp32"), ({"bf16": True}, "bf16" if precision.cpu_bf16_is_fast() else "fp32")):
        _, d, _ = build_distiller(with_args(base_argv, **flags))
        assert d.precision.used == used
        expected = precision.attention_for("cpu", used) or "sdpa"
        assert d.student_model.config._attn_implementation == expected
        assert d.teacher.model.config._attn_implementation == expected
