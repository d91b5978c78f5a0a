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
                                                                                 torch.float16, True, "")
    fp32 = Precision.decide(fp16=False, bf16=False, device=CPU)
    assert (fp32.used, fp32.dtype, fp32.teacher_dtype, fp32.scaled) == ("fp32", None, torch.float32, False)
    assert isinstance(fp32.autocast("cpu"), contextlib.nullcontext) and not fp32.scaler().is_enabled()
    bf16 = Precision.decide(fp16=False, bf16=True, device=CUDA)
    assert (bf16.used, bf16.teacher_dtype, bf16.scaled) == ("bf16", torch.bfloat16, False)  # no scaler for bf16


def test_fp16_without_cuda_falls_back_to_fp32_and_says_why():
    p = Precision.decide(fp16=True, bf16=False, device=CPU)
    assert p.record() == {"requested": "fp16", "used": "fp32", "why": p.why, "attention": "sdpa"}
    assert "needs a CUDA GPU" in p.why
    assert not p.scaled  # so non-finite losses are errors, not overflow steps to skip


@pytest.mark.parametrize("answer", ["fast", "slow"])
def test_bf16_on_a_cpu_runs_where_the_probe_says_it_pays_and_records_how_it_knew(monkeypatch, answer):
    """The probe's answer, measured or forced: slow runs fp32 and says why; either way the record names the source."""
    monkeypatch.setattr(precision, "_measure", lambda: answer == "fast")
    monkeypatch.delenv(precision.PROBE_ENV)
    precision.cpu_bf16.cache_clear()
    p = Precision.decide(fp16=False, bf16=True, device=CPU)
    assert p.record()["cpu_bf16"] == f"measured: {answer}"
    if answer == "slow":
        assert (p.requested, p.used) == ("bf16", "fp32") and "has no native bf16 (a bf16 matmul measured" in p.why
    else:
        assert (p.used, p.why, p.record()["why"]) == ("bf16", "", None)
        with p.autocast("cpu"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv(precision.PROBE_ENV, answer)
    precision.cpu_bf16.cache_clear()
    monkeypatch.setattr(precision, "_measure", lambda: pytest.fail("the forced answer measured"))
    forced = Precision.decide(fp16=False, bf16=True, device=CPU)
    assert forced.used == p.used and forced.record()["cpu_bf16"] == f"DISTIL_CPU_BF16={answer}"
    assert forced.why == ("" if answer == "fast" else "--bf16: DISTIL_CPU_BF16=slow says this CPU has no fast "
                          "bf16, so training runs in fp32")
    assert Precision.decide(fp16=False, bf16=True, device=CUDA).record().get("cpu_bf16") is None  # not asked


def test_the_probe_answers_once_per_process(monkeypatch):
    """Every decision reads one answer: a second call does not measure again, even if the machine changed."""
    monkeypatch.delenv(precision.PROBE_ENV)
    answers = iter([True, False])
    monkeypatch.setattr(precision, "_measure", lambda: next(answers))
    precision.cpu_bf16.cache_clear()
    assert [Precision.decide(False, True, CPU).used for _ in range(3)] == ["bf16"] * 3
    assert precision.cpu_bf16_is_fast() and precision.cpu_bf16() == (True, "measured")


@pytest.mark.parametrize("bad", ["yes", "FAST", "1", " slow"])
def test_a_bad_forced_answer_is_refused_in_one_line(monkeypatch, bad):
    monkeypatch.setenv(precision.PROBE_ENV, bad)
    precision.cpu_bf16.cache_clear()
    with pytest.raises(precision.InputError, match=r"DISTIL_CPU_BF16=.*: give fast or slow \(or leave it unset"):
        Precision.decide(fp16=False, bf16=True, device=CPU)


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


def test_the_distiller_puts_both_models_on_the_chosen_attention(base_argv, cpu_bf16):
    for flags, used in (({}, "fp32"), ({"bf16": True}, "bf16" if cpu_bf16 else "fp32")):
        _, d, _ = build_distiller(with_args(base_argv, **flags))
        assert d.precision.used == used
        expected = precision.attention_for("cpu", used) or "sdpa"
        assert d.student_model.config._attn_implementation == expected
        assert d.teacher.model.config._attn_implementation == expected
