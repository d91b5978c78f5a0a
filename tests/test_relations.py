"""Self-attention relation transfer (MiniLM): each loss against a hand computation from materialised attention
probabilities and projections, padding, gradients, self-distillation, and independence from the other losses."""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

from core.errors import InputError
from train_helpers import build_distiller
from training.losses import RELATION_LOSSES, relation_losses
from training.models import RowsLM, attention_projections, relation_layers

VOCAB = 40


# Weights drawn wider than BERT's 0.02, so that attention is far from uniform and the losses far from 0.


def tiny_teacher(attn="sdpa", heads=4):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=3, num_attention_heads=heads,
                     intermediate_size=48, initializer_range=0.3, attn_implementation=attn)
    return BertForMaskedLM(cfg).eval()


def tiny_student(attn="sdpa"):
    torch.manual_seed(1)
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=16, n_layers=2, n_heads=4, hidden_dim=32, initializer_range=0.3,
                           attn_implementation=attn)
    return DistilBertForMaskedLM(cfg).eval()


def padded_batch(width=9):
    """Three sequences of 9, 6 and 3 tokens, padded to `width`."""
    g = torch.Generator().manual_seed(2)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, n in enumerate([9, 6, 3]):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask, mask.flatten().nonzero().squeeze(1)


def qkv(model, layer, ids, mask):
    rows = mask.flatten().nonzero().squeeze(1)
    return RowsLM(model, layer)(ids, mask, rows, 0)[2]


def kl_by_hand(p_t, p_s, mask):
    """Mean over heads and non-pad queries of sum over non-pad keys of p_t log(p_t / p_s), with loops."""
    total, count = 0.0, 0
    n, heads, length, _ = p_t.shape
    for b in range(n):
        for h in range(heads):
            for q in range(length):
                if mask[b, q]:
                    keys = [k for k in range(length) if mask[b, k]]
                    total += sum(float(p_t[b, h, q, k]) * math.log(float(p_t[b, h, q, k] / p_s[b, h, q, k]))
                                 for k in keys)
                    count += 1
    return total / count


def relation_by_hand(x, heads, mask):
    """softmax over the non-pad keys of x_i . x_j / sqrt(d), head by head: (batch, heads, len, len), float64."""
    n, length, dim = x.shape
    d = dim // heads
    out = torch.zeros(n, heads, length, length, dtype=torch.float64)
    for b in range(n):
        for h in range(heads):
            xs = x[b, :, h * d : (h + 1) * d].double()
            scores = xs @ xs.T / math.sqrt(d)
            scores[:, ~mask[b].bool()] = float("-inf")
            out[b, h] = scores.softmax(-1)
    return out


def test_attention_loss_equals_the_kl_of_the_models_own_attention_probabilities():
    """The materialised probabilities come from eager attention (output_attentions); ours from the layer's
    own query/key projections of a model left on SDPA."""
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        p_t = tiny_teacher("eager")(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1]
        p_s = tiny_student("eager")(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1]
        teacher, student = tiny_teacher(), tiny_student()
        ours = relation_losses(qkv(student, 1, ids, mask), qkv(teacher, 2, ids, mask), mask, ["att"], 4, 4)["att"]
    assert ours.item() == pytest.approx(kl_by_hand(p_t, p_s, mask), rel=1e-4)
    assert ours.item() > 0.01  # two different models: a loss that means something


@pytest.mark.parametrize("name, which", [("qq", 0), ("kk", 1), ("vv", 2)])
def test_relation_losses_equal_a_hand_computation(name, which):
    """Q, K or V by hand from the layer's input and its Linear weights; 2 relation heads (not the 4 attention
    heads), and the teacher's middle layer (as --teacher_layer 2)."""
    ids, mask, _ = padded_batch()
    teacher, student = tiny_teacher(), tiny_student()
    with torch.no_grad():
        x_t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        x_s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        lin_t, lin_s = attention_projections(teacher, 1)[0][which], attention_projections(student, 1)[0][which]
        by_hand = kl_by_hand(relation_by_hand(x_t @ lin_t.weight.T + lin_t.bias, 2, mask),
                             relation_by_hand(x_s @ lin_s.weight.T + lin_s.bias, 2, mask), mask)
        ours = relation_losses(qkv(student, 1, ids, mask), qkv(teacher, 1, ids, mask), mask, [name], 4, 2)[name]
    assert ours.item() == pytest.approx(by_hand, rel=1e-4)


def test_padding_changes_nothing():
    """Padded positions take part neither as keys nor as queries: more padding, the same losses."""
    teacher, student = tiny_teacher(), tiny_student()
    with torch.no_grad():
        losses = []
        for width in (9, 14):
            ids, mask, _ = padded_batch(width)
            losses.append(relation_losses(qkv(student, 1, ids, mask), qkv(teacher, 2, ids, mask), mask,
                                          RELATION_LOSSES, 4, 2))
    for name in RELATION_LOSSES:
        assert losses[0][name].item() == pytest.approx(losses[1][name].item(), rel=1e-5)


def test_a_model_distilled_from_itself_has_zero_relation_loss():
    ids, mask, _ = padded_batch()
    teacher = tiny_teacher()
    with torch.no_grad():
        same = qkv(teacher, 2, ids, mask)
        losses = relation_losses(same, same, mask, RELATION_LOSSES, 4, 4)
    assert all(abs(v.item()) < 1e-6 for v in losses.values())


def test_layers_and_heads_are_checked():
    teacher, student = tiny_teacher(), tiny_student()
    params = SimpleNamespace(teacher_layer=None, relation_heads=None)
    assert relation_layers(student, teacher, ["att", "vv"], params) == (1, 2, (4, 4))
    assert relation_layers(student, teacher, ["vv"], SimpleNamespace(teacher_layer=2, relation_heads=8)) == (
        1, 1, (4, 8))
    with pytest.raises(InputError, match="the teacher has layers 1 to 3"):
        relation_layers(student, teacher, ["vv"], SimpleNamespace(teacher_layer=4, relation_heads=None))
    with pytest.raises(InputError, match="does not divide the student's attention width 16"):
        relation_layers(student, teacher, ["vv"], SimpleNamespace(teacher_layer=None, relation_heads=3))
    with pytest.raises(InputError, match="student has 4 and the teacher 2"):
        relation_layers(student, tiny_teacher(heads=2), ["att"], params)
    relation_layers(student, tiny_teacher(heads=2), ["qq", "kk", "vv"], params)  # relation heads need not match


RELATIONS = ["--alpha_att", "1", "--alpha_qq", "0.5", "--alpha_kk", "0.5", "--alpha_vv", "1"]


def test_the_distiller_adds_them_without_touching_the_other_losses(base_argv):
    """A step with the relation losses on: the other losses are as without them, the total is theirs plus the
    weighted relations; gradients reach the student's last-layer Q/K/V and nothing of the teacher."""
    _, plain, _ = build_distiller(base_argv)
    _, minilm, _ = build_distiller(base_argv + RELATIONS)
    d = plain
    token_ids, lengths = d.dataset.batch_sequences([d.dataset[i] for i in range(16)])
    for distiller in (plain, minilm):
        distiller.student.eval()  # no dropout: the same network twice
    torch.manual_seed(0)
    a = plain.compute_losses(plain.prepare_batch(token_ids, lengths))
    torch.manual_seed(0)
    b = minilm.compute_losses(minilm.prepare_batch(token_ids, lengths))
    for k in ("ce", "mlm", "cos"):
        assert b[k].item() == pytest.approx(a[k].item(), rel=1e-6)
    weights = {"att": 1.0, "qq": 0.5, "kk": 0.5, "vv": 1.0}
    assert set(weights) <= set(b) and not set(weights) & set(a)
    assert b["loss"].item() == pytest.approx(a["loss"].item() + sum(w * b[k].item() for k, w in weights.items()),
                                             rel=1e-6)

    # only the relation losses: their gradient reaches the last layer's projections, not the vocabulary head
    _, only, _ = build_distiller(base_argv + RELATIONS + ["--alpha_ce", "0", "--alpha_mlm", "0", "--alpha_cos", "0"])
    only.compute_losses(only.prepare_batch(token_ids, lengths))["loss"].backward()
    last = only.student_model.distilbert.transformer.layer[-1].attention
    for lin in (last.q_lin, last.k_lin, last.v_lin):
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert only.student_model.vocab_projector.bias.grad is None
    assert all(p.grad is None and not p.requires_grad for p in only.teacher.model.parameters())


def test_bf16_autocast_stays_close_to_fp32():
    ids, mask, _ = padded_batch()
    teacher, student = tiny_teacher(), tiny_student()
    with torch.no_grad():
        fp32 = relation_losses(qkv(student, 1, ids, mask), qkv(teacher, 2, ids, mask), mask, RELATION_LOSSES, 4, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s, t = qkv(student, 1, ids, mask), qkv(teacher, 2, ids, mask)
        assert s[0].dtype == torch.bfloat16  # the projections ran in bf16; the maps are float32
        bf16 = relation_losses(s, t, mask, RELATION_LOSSES, 4, 2)
    for name in RELATION_LOSSES:
        assert bf16[name].item() == pytest.approx(fp32[name].item(), rel=0.05)


def tiny_of_each_type():
    """A tiny model of every type the project trains or teaches with, 2 layers, 4 heads, width 16."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        MPNetConfig,
        MPNetForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    common = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32)
    torch.manual_seed(0)
    return {
        "bert": BertForMaskedLM(BertConfig(**common)),
        "roberta": RobertaForMaskedLM(RobertaConfig(**common, pad_token_id=0, max_position_embeddings=40)),
        "distilbert": DistilBertForMaskedLM(DistilBertConfig(vocab_size=VOCAB, dim=16, n_layers=2, n_heads=4,
                                                             hidden_dim=32)),
        "mpnet": MPNetForMaskedLM(MPNetConfig(**common, pad_token_id=0, max_position_embeddings=40)),
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=4, n_positions=40)),
    }


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "mpnet", "gpt2"])
def test_attention_projections_give_each_types_own_q_k_v(kind):
    """For every model type: the projections applied to the hidden states entering a layer give exactly the Q, K
    and V that layer computes in its own forward (caught by hooks on the modules that compute them)."""
    model = tiny_of_each_type()[kind].eval()
    ids, mask, _ = padded_batch()
    ids = ids.clamp(min=2)  # no pad id inside the real tokens (RoBERTa and MPNet count positions from it)
    base = model.base_model
    seen = []
    if kind == "gpt2":  # the fused projection: its output is Q, K and V side by side
        module = base.h[1].attn.c_attn
    else:
        module = attention_projections(model, 1)[0]
    targets = module if isinstance(module, tuple) else (module,)
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in targets]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        ours = [p(hidden) for p in attention_projections(model, 1)[0]]
    for h in hooks:
        h.remove()
    own = list(seen[0].split(16, dim=-1)) if kind == "gpt2" else seen[:3]
    assert len(own) == 3
    for mine, theirs in zip(ours, own):
        torch.testing.assert_close(mine, theirs)
    assert attention_projections(model, 1)[1] == 4
