"""The Distiller's maths pinned to simple references: KD/MLM/cosine/MSE losses, masking, the fast step."""

import math

import pytest
import torch
from torch import nn
from transformers import BertTokenizer

import distiller
from distiller import Distiller
from lm_seqs_dataset import LmSeqsDataset, SequenceSpec
from train_helpers import build_distiller
from training import data_format, train_args
from training.losses import cosine_loss, kd_loss, mse_loss
from training.masking import Masking, load_token_probs


def test_kd_loss_is_kl_times_t_squared_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 2.0
    total = 0.0
    for s_row, t_row in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(x / T) for x in s_row)
        zt = sum(math.exp(x / T) for x in t_row)
        for a, b in zip(s_row, t_row):
            p_t, p_s = math.exp(b / T) / zt, math.exp(a / T) / zs
            total += p_t * (math.log(p_t) - math.log(p_s))
    expected = total / 2 * T**2  # mean over rows ("batchmean"), times T^2
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_cosine_and_mse_losses_by_hand():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 3.0], [2.0, 2.0], [0.0, -1.0]])
    # cosines: 0, 1, -1  ->  mean(1 - cos) = (1 + 0 + 2) / 3
    assert cosine_loss(s, t).item() == pytest.approx(1.0, abs=1e-6)
    ref = nn.CosineEmbeddingLoss()(s, t, torch.ones(3))
    assert cosine_loss(s, t).item() == pytest.approx(ref.item(), abs=1e-6)
    assert mse_loss(s, t).item() == pytest.approx((1 + 9 + 1 + 1 + 0 + 9) / 3)


def _mask_many(masking, token_ids, lengths, draws):
    """Run the masking `draws` times; return (input ids, picked flat positions, targets) per draw."""
    out = []
    for _ in range(draws):
        b = masking.prepare_batch_mlm(token_ids, lengths)
        out.append((b.input_ids.flatten(), b.rows[: b.n_targets], b.targets))
    return out


def _masking(base_argv, tokenizer_dir, mask_prop=0.15):
    """The tiny run's tokenizer, training data and Masking (train.py's default rates and smoothing)."""
    tok = BertTokenizer.from_pretrained(tokenizer_dir)
    special = data_format.special_token_ids(tok)
    arg = {k: base_argv[base_argv.index(f"--{k}") + 1] for k in ("data_file", "token_counts")}
    dataset = LmSeqsDataset(SequenceSpec(special, 512), data_format.load_binarized(arg["data_file"]))
    probs = load_token_probs(arg["token_counts"], len(tok), special.values(), smoothing=0.7)
    return tok, dataset, Masking(probs, tok.mask_token_id, len(tok), mask_prop=mask_prop)


def test_masking_rates_and_special_tokens(base_argv, tokenizer_dir):
    tok, dataset, d = _masking(base_argv, tokenizer_dir)
    torch.manual_seed(0)
    token_ids, lengths = dataset.batch_sequences([dataset[i] for i in range(64)])
    n_tokens = int(lengths.sum())
    special = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
    kinds = torch.zeros(3)
    for input_ids, picked, targets in _mask_many(d, token_ids, lengths, 30):
        assert len(picked) == math.ceil(0.15 * n_tokens)  # exactly 15% of the non-pad tokens
        assert len(set(picked.tolist())) == len(picked)  # without replacement
        assert not torch.isin(token_ids.flatten()[picked], special).any()  # [CLS]/[SEP]/[PAD] never picked
        assert torch.equal(targets, token_ids.flatten()[picked])
        untouched = torch.ones_like(input_ids, dtype=torch.bool)
        untouched[picked] = False
        assert torch.equal(input_ids[untouched], token_ids.flatten()[untouched])
        new = input_ids[picked]
        is_mask = new == tok.mask_token_id
        kept = ~is_mask & (new == targets)
        kinds += torch.tensor([is_mask.sum(), kept.sum(), (~is_mask & ~kept).sum()])
    shares = kinds / kinds.sum()  # ~25k picks: a standard error of ~0.003 on each share
    assert shares[0].item() == pytest.approx(0.8, abs=0.015)
    assert shares[1].item() == pytest.approx(0.1 + 0.1 / len(tok), abs=0.015)  # a random token may equal the original
    assert shares[2].item() == pytest.approx(0.1, abs=0.015)


def test_masking_prefers_rare_tokens_by_smoothed_counts(base_argv, tokenizer_dir):
    tok, _, d = _masking(base_argv, tokenizer_dir, mask_prop=0.01)
    rare, common = 50, 60
    counts = torch.ones(len(tok))
    counts[rare], counts[common] = 100.0, 400.0
    d.token_probs = counts**-0.7
    d.token_probs[[tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]] = 0
    body = torch.tensor([rare, common] * 31)
    token_ids = torch.cat([torch.tensor([tok.cls_token_id]), body, torch.tensor([tok.sep_token_id])]).repeat(400, 1)
    lengths = torch.full((400,), 64)
    torch.manual_seed(1)
    picks = torch.cat([token_ids.flatten()[p] for _, p, _ in _mask_many(d, token_ids, lengths, 20)])
    share_rare = (picks == rare).float().mean().item()
    w = 4**0.7  # (400 / 100) ** smoothing: the rare token's weight relative to the common one
    assert share_rare == pytest.approx(w / (w + 1), abs=0.02)  # 0.725, ~5k picks


def reference_losses(d, batch, alphas, T, restrict):
    """Upstream's step semantics: full-vocab logits everywhere, (bs x len x vocab) masks, masked_select."""
    student, teacher = d.student_model, d.teacher.model
    s_out = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    s_logits, t_logits = s_out.logits, t_out.logits
    labels = torch.full_like(batch.input_ids, -100)
    labels.view(-1)[batch.rows[: batch.n_targets]] = batch.targets
    mask = (labels > -1) if restrict else batch.attention_mask.bool()
    mask = mask.unsqueeze(-1).expand_as(s_logits)
    s_sel = torch.masked_select(s_logits, mask).view(-1, s_logits.size(-1))
    t_sel = torch.masked_select(t_logits, mask).view(-1, s_logits.size(-1))
    ce = (
        nn.KLDivLoss(reduction="batchmean")(
            nn.functional.log_softmax(s_sel / T, dim=-1), nn.functional.softmax(t_sel / T, dim=-1)
        )
        * T**2
    )
    mlm = nn.CrossEntropyLoss()(s_logits.view(-1, s_logits.size(-1)), labels.view(-1))
    mse = nn.MSELoss(reduction="sum")(s_sel, t_sel) / s_sel.size(0)
    s_h, t_h = s_out.hidden_states[-1], t_out.hidden_states[-1]
    hmask = batch.attention_mask.bool().unsqueeze(-1).expand_as(s_h)
    s_hs = torch.masked_select(s_h, hmask).view(-1, s_h.size(-1))
    t_hs = torch.masked_select(t_h, hmask).view(-1, s_h.size(-1))
    cos = nn.CosineEmbeddingLoss()(s_hs, t_hs, s_hs.new_ones(s_hs.size(0)))
    losses = {"ce": ce, "mlm": mlm, "mse": mse, "cos": cos}
    losses["loss"] = sum(alphas[k] * v for k, v in losses.items())
    return losses


def random_batch(d, vocab, lengths, seed):
    """Collated random sequences ([CLS] ids [SEP]) of the given lengths, ids drawn from the non-special vocabulary."""
    g = torch.Generator().manual_seed(seed)
    cls, sep = d.dataset.spec.bos_id, d.dataset.spec.eos_id
    first = max(d.dataset.spec.special_ids.values()) + 1
    bodies = [torch.randint(first, vocab, (n - 2,), generator=g) for n in lengths]
    seqs = [torch.cat([torch.tensor([cls]), body, torch.tensor([sep])]) for body in bodies]
    return d.dataset.batch_sequences([(s.numpy(), len(s)) for s in seqs])


@pytest.mark.parametrize("kind", ["padding-heavy", "random"])
@pytest.mark.parametrize("alpha_mse", ["0", "0.5"])  # 0: the fused KD (FusedKD); > 0: KD on materialised logits
@pytest.mark.parametrize("restrict", [False, True])
def test_fast_step_equals_upstream_reference(base_argv, restrict, alpha_mse, kind, monkeypatch):
    monkeypatch.setattr(distiller, "KD_CHUNK_ROWS", 7)  # several chunks, the last one short
    extra = ["--alpha_mse", alpha_mse] + (["--restrict_ce_to_mask"] if restrict else [])
    args, d, tok = build_distiller(base_argv + extra)
    assert d.plan.fused_kd == (alpha_mse == "0")
    d.student.eval()  # no dropout: both paths must see the same network
    alphas = {"ce": args.alpha_ce, "mlm": args.alpha_mlm, "mse": args.alpha_mse, "cos": args.alpha_cos}
    if kind == "padding-heavy":  # one long sequence among short ones
        lens = d.dataset.lengths
        order = sorted(range(len(lens)), key=lambda i: lens[i])
        token_ids, lengths = d.dataset.batch_sequences([d.dataset[i] for i in order[:7] + order[-1:]])
        assert (lengths.sum() / token_ids.numel()).item() < 0.6
    else:  # random ids and lengths, 12 to 60 tokens
        lengths = torch.randint(12, 61, (10,), generator=torch.Generator().manual_seed(4)).tolist()
        token_ids, lengths = random_batch(d, len(tok), lengths, seed=5)
    torch.manual_seed(3)
    batch = d.prepare_batch(token_ids, lengths)

    ref = reference_losses(d, batch, alphas, args.temperature, restrict)
    ref["loss"].backward()
    ref_grads = [p.grad.clone() for p in d.student_model.parameters()]
    d.optimizer.zero_grad()

    fast = d.compute_losses(batch)
    (fast["loss"] * 3.0).backward()  # a scaled loss (grad scaler, accumulation) scales every gradient
    assert set(fast) == {"ce", "mlm", "cos", "loss"} | ({"mse"} if alpha_mse != "0" else set())
    for k in fast:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    for p in d.student_model.parameters():
        p.grad /= 3.0
    for (name, p), g in zip(d.student_model.named_parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=name)


def test_teacher_free_step_is_plain_mlm(base_argv):
    argv = base_argv + ["--alpha_ce", "0", "--alpha_cos", "0", "--alpha_mlm", "1"]
    teacher_dir = argv[argv.index("--teacher_name") + 1]
    argv[argv.index("--teacher_name") + 1] = "none"
    argv += ["--tokenizer_name", teacher_dir]
    args, d, _ = build_distiller(argv)
    assert d.teacher is None
    d.student.eval()
    token_ids, lengths = d.dataset.batch_sequences([d.dataset[i] for i in range(8)])
    batch = d.prepare_batch(token_ids, lengths)
    losses = d.compute_losses(batch)
    assert set(losses) == {"mlm", "loss"}
    labels = torch.full_like(batch.input_ids, -100)
    labels.view(-1)[batch.rows[: batch.n_targets]] = batch.targets
    logits = d.student_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ref = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
    torch.testing.assert_close(losses["mlm"], ref, rtol=1e-5, atol=1e-6)


def test_clm_step_equals_upstream_reference(tmp_path):
    """GPT-2 -> GPT-2 with the causal-LM loss: next-token targets from the lengths, KD and cosine on non-pad rows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, bos, eos, unk = 64, 1, 2, 0
    g = torch.Generator().manual_seed(0)
    seqs = [
        torch.cat([torch.tensor([bos]), torch.randint(3, vocab, (n,), generator=g), torch.tensor([eos])]).numpy()
        for n in (10, 15, 30, 12)
    ]
    special = {"bos_token": bos, "eos_token": eos, "unk_token": unk}
    dataset = LmSeqsDataset(SequenceSpec(special, 64, mlm=False), seqs)
    args = train_args.defaults(dump_path=str(tmp_path / "x"), student_type="gpt2", teacher_type="gpt2")
    assert not args.mlm and args.alpha_clm == 0.5
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, n_positions=64, n_embd=32, n_head=2)
    student, teacher = GPT2LMHeadModel(GPT2Config(n_layer=1, **cfg)), GPT2LMHeadModel(GPT2Config(n_layer=2, **cfg))
    d = Distiller(args, dataset, None, student, teacher)
    d.student.eval()
    token_ids, lengths = dataset.batch_sequences([dataset[i] for i in range(4)])
    batch = d.prepare_batch(token_ids, lengths)
    fast = d.compute_losses(batch)

    attn = batch.attention_mask
    s_out = student(input_ids=batch.input_ids, attention_mask=attn, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(input_ids=batch.input_ids, attention_mask=attn, output_hidden_states=True)
    labels = token_ids.masked_fill(attn == 0, -100)
    clm = nn.CrossEntropyLoss()(s_out.logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
    mask = attn.bool().unsqueeze(-1)
    s_sel = torch.masked_select(s_out.logits, mask).view(-1, vocab)
    t_sel = torch.masked_select(t_out.logits, mask).view(-1, vocab)
    T = args.temperature
    ce = (
        nn.KLDivLoss(reduction="batchmean")(
            nn.functional.log_softmax(s_sel / T, -1), nn.functional.softmax(t_sel / T, -1)
        )
        * T**2
    )
    s_h = torch.masked_select(s_out.hidden_states[-1], mask).view(-1, 32)
    t_h = torch.masked_select(t_out.hidden_states[-1], mask).view(-1, 32)
    cos = nn.CosineEmbeddingLoss()(s_h, t_h, torch.ones(len(s_h)))
    torch.testing.assert_close(fast["clm"], clm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast["ce"], ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast["cos"], cos, rtol=1e-5, atol=1e-6)
    assert len(batch.targets) == int((lengths - 1).sum())


def test_memory_guard_empties_the_cache_below_the_threshold(base_argv, monkeypatch):
    _, d, _ = build_distiller(base_argv + ["--empty_cache_threshold_gb", "2"])
    calls = []
    free = {"bytes": 5 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    d.device = torch.device("cuda", 0)  # only the guard looks at it here
    d.memory_guard()
    assert d.n_empty_cache == 0 and not calls
    free["bytes"] = int(1.5 * 2**30)
    d.memory_guard()
    d.memory_guard()
    assert d.n_empty_cache == 2 and len(calls) == 2
