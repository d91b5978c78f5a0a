"""The fast path's parts pinned to plain autograd: the fused KD, the split LM heads, bf16 autocast on CPU.

(The whole step against upstream's semantics is in test_distiller_losses.py.)"""

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from train_helpers import autograd_losses, build_distiller, head_problem
from training.losses import FusedKD
from training.models import lm_head_parts


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_lm", [0, 10, 37])  # no LM rows, some (spread over chunks), every row
@pytest.mark.parametrize("chunk_rows", [1, 7, 37, 512])  # one row, a short last chunk, exact, one chunk
def test_fused_kd_equals_autograd_kd_and_cross_entropy(bias, n_lm, chunk_rows):
    problem = head_problem(chunk_rows + n_lm, n_lm=n_lm, bias=bias)
    x, w, b = problem[:3]
    params = [x, w] + ([b] if bias else [])
    temperature, alpha_kd, alpha_lm = 2.0, 5.0, 2.0

    ref, ref_kd, ref_lm = autograd_losses(*problem, temperature, alpha_kd, alpha_lm)
    ref_grads = torch.autograd.grad(ref * 2.5, params)
    fused, kd, lm = FusedKD.apply(*problem, temperature, alpha_kd, alpha_lm, chunk_rows)
    fused_grads = torch.autograd.grad(fused * 2.5, params)
    for got, want in ((fused, ref), (kd, ref_kd), (lm, ref_lm)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, r in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)
    assert not kd.requires_grad and not lm.requires_grad  # for logging only: `fused` carries the gradients


@pytest.mark.parametrize("alphas", [(5.0, 2.0), (0.01, 2.0)])  # the recipe; a cross-entropy-dominated mix
def test_fused_kd_under_bf16_autocast_is_close_to_fp32(alphas):
    """The low-precision path (matmuls in bf16, g rescaled so that its entries stay within [-2, 2])."""
    problem = head_problem(3, n=40, n_lm=12)
    x, w, b = problem[:3]
    ref, _, _ = autograd_losses(*problem, 2.0, *alphas)
    ref_grads = torch.autograd.grad(ref, [x, w, b])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, _, _ = FusedKD.apply(*problem, 2.0, *alphas, 16)
    grads = torch.autograd.grad(fused, [x, w, b])
    assert fused.item() == pytest.approx(ref.item(), rel=2e-2)
    for a, r in zip(grads, ref_grads):
        assert a.dtype == r.dtype
        assert ((a - r).norm() / r.norm()).item() < 2e-2


def test_fused_kd_calls_do_not_share_results_through_their_scratch_buffers():
    """Two losses formed before either backward (CPU scratch buffers are reused between calls)."""
    first, second = head_problem(1), head_problem(2, n=20, n_lm=5)
    want = [torch.autograd.grad(autograd_losses(*p, 2.0, 1.0, 1.0)[0], p[:3]) for p in (first, second)]
    losses = [FusedKD.apply(*p, 2.0, 1.0, 1.0, 8)[0] for p in (first, second)]
    got = [torch.autograd.grad(loss, p[:3]) for loss, p in zip(losses, (first, second))]
    for g_got, g_want in zip(got, want):
        for a, r in zip(g_got, g_want):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_fused_kd_is_zero_for_identical_models():
    x, w = torch.randn(9, 4), torch.randn(20, 4)
    loss, kd, _ = FusedKD.apply(
        x.requires_grad_(), w, None, x.detach(), w, None, torch.zeros(0, dtype=torch.long), 2.0, 1.0, 0.0, 4
    )
    assert kd.item() == pytest.approx(0.0, abs=1e-6)
    (gx,) = torch.autograd.grad(loss, [x])
    assert gx.abs().max().item() < 1e-6


BERTLIKE = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
TINY_LMS = {
    "distilbert": lambda: T.DistilBertForMaskedLM(
        T.DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    ),
    "bert": lambda: T.BertForMaskedLM(T.BertConfig(**BERTLIKE)),
    "roberta": lambda: T.RobertaForMaskedLM(T.RobertaConfig(**BERTLIKE)),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, bos_token_id=1)),
}


@pytest.mark.parametrize("kind", list(TINY_LMS))
def test_split_lm_head_equals_the_models_own(kind):
    torch.manual_seed(0)
    m = TINY_LMS[kind]().eval()
    ids = torch.randint(5, 50, (2, 7))
    with torch.no_grad():
        logits = m(input_ids=ids).logits
        hidden = m.base_model(input_ids=ids).last_hidden_state
        features, projection = lm_head_parts(m)
        assert isinstance(projection, torch.nn.Linear) and projection.out_features == 50
        torch.testing.assert_close(projection(features(hidden)), logits)


def test_bf16_autocast_step_on_cpu_is_close_to_fp32(base_argv, bf16_fast):
    """--bf16 on CPU: the teacher is stored in bf16, the step runs under autocast, losses and gradients are
    those of fp32 to bf16's precision."""
    _, d32, _ = build_distiller(base_argv)
    _, d16, _ = build_distiller(base_argv + ["--bf16"])
    assert next(d16.teacher.parameters()).dtype == torch.bfloat16
    assert next(d16.student_model.parameters()).dtype == torch.float32  # the student trains in fp32
    d16.student_model.load_state_dict(d32.student_model.state_dict())
    for d in (d32, d16):
        d.student.eval()
    token_ids, lengths = d32.dataset.batch_sequences([d32.dataset[i] for i in range(16)])
    out = {}
    for name, d in (("fp32", d32), ("bf16", d16)):
        torch.manual_seed(0)
        losses = d.compute_losses(d.prepare_batch(token_ids, lengths))
        losses["loss"].backward()
        out[name] = (losses, torch.cat([p.grad.flatten() for p in d.student_model.parameters()]))
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in l16.values())
    for k in l32:
        assert l16[k].item() == pytest.approx(l32[k].item(), rel=3e-2, abs=1e-3), k
    assert torch.isfinite(g16).all()
    assert F.cosine_similarity(g16, g32, dim=0).item() > 0.99
