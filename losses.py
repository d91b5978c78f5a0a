"""The distillation losses and the student's vocabulary head, on the rows a batch predicts.

- `lm_head_parts()` / `RowsLM`: a HF LM's encoder on the whole batch, its vocabulary head only on chosen rows.
- `kd_loss`, `cosine_loss`, `mse_loss`: upstream's losses as pure functions (tests pin them to hand
  computations).
- `FusedKD`: KD and the MLM/CLM cross-entropy computed straight from both models' features, chunk by chunk,
  so no (rows x vocab) logits are kept.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# The losses a run can weigh, by their --alpha_<name> flag: KD (cross-entropy against the teacher), masked /
# causal LM, MSE between logits, cosine between last hidden states.
LOSS_NAMES = ("ce", "mlm", "clm", "mse", "cos")


def lm_head_parts(model):
    """The model's language-modelling head as (features, projection): logits = projection(features(hidden)),
    where `projection` is the nn.Linear onto the vocabulary (weight (vocab, dim), bias or None)."""
    if hasattr(model, "vocab_projector"):  # DistilBertForMaskedLM
        return (
            lambda h: model.vocab_layer_norm(model.activation(model.vocab_transform(h))),
            model.vocab_projector,
        )
    if hasattr(model, "cls"):  # BertForMaskedLM
        return model.cls.predictions.transform, model.cls.predictions.decoder
    head = model.lm_head
    if hasattr(head, "decoder"):  # RobertaForMaskedLM
        return (lambda h: head.layer_norm(F.gelu(head.dense(h)))), head.decoder
    return (lambda h: h), head  # GPT2LMHeadModel


class RowsLM(nn.Module):
    """Wraps a HF LM: runs the encoder on the batch and the vocabulary head only at chosen rows.

    forward(input_ids, attention_mask, rows, n_head=None, features=False) -> (hidden, logits):
      hidden: last hidden states at `rows` (flat indices into batch x length), shape (len(rows), dim);
      logits: the LM head at the first `n_head` of those rows (all of them when n_head is None); with
      features=True, the head's input to its vocabulary projection instead (see lm_head_parts; FusedKD).
    Wrapping (rather than calling the model's parts from outside) keeps DDP's hooks on the forward.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, rows, n_head=None, features=False):
        out = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, rows)
        h = hidden if n_head is None else hidden[:n_head]
        to_features, projection = lm_head_parts(self.model)
        return hidden, to_features(h) if features else projection(to_features(h))


# --------------------------------------------------------------------------------------------------------
# Losses on selected rows (pure functions: tests pin them to hand computations)


def kd_loss(s_logits, t_logits, temperature):
    """KL(teacher || student) at temperature T, averaged over rows, times T^2 (upstream's batchmean KD)."""
    s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def cosine_loss(s_hidden, t_hidden):
    """Mean of 1 - cos(student, teacher) over rows (CosineEmbeddingLoss with target 1)."""
    return (1.0 - F.cosine_similarity(s_hidden.float(), t_hidden.float(), dim=-1)).mean()


def mse_loss(s_logits, t_logits):
    """Summed squared error divided by the number of rows (upstream's batchmean MSE)."""
    return F.mse_loss(s_logits.float(), t_logits.float(), reduction="sum") / s_logits.size(0)


# Rows per FusedKD chunk (each chunk holds four (rows x vocab) float32 tensors): fewer rows make thin, slow
# matmuls; more rows cost memory for little speed (README, "Benchmarks").
KD_CHUNK_ROWS = 512

_SCRATCH = {}  # (name, dtype) -> a flat CPU tensor reused by every FusedKD call (see scratch())


def scratch(name, shape, dtype, device):
    """An uninitialised tensor of `shape` for FusedKD's per-chunk work. On CPU it is carved from a buffer kept
    between calls: the allocator returns blocks that large to the OS, so a fresh one pays its page faults
    again on every call (README, "Benchmarks"). CUDA's caching allocator already reuses its blocks, so there
    it is a plain torch.empty."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    numel = math.prod(shape)
    buf = _SCRATCH.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = _SCRATCH[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def _project(x, weight, bias, out):
    """out = x @ weight.T (+ bias): F.linear into a given tensor."""
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


class FusedKD(torch.autograd.Function):
    """The losses on the student's vocabulary head, computed straight from both models' features:

        total = alpha_kd * kd_loss(s, t, T) + alpha_lm * cross_entropy(s[:m], targets)
        with s = F.linear(s_feat, weight, bias), t = F.linear(t_feat, t_weight, t_bias), m = len(targets)

    (the LM rows come first: Batch.rows lists the positions to predict first). No (rows x vocab) tensor
    exists for all rows: logits, log-probabilities and gradients live for one chunk of rows at a time.

    Gradients are formed during the forward, chunk by chunk, and backward only scales them:
      d total / d s = alpha_kd * T / n * (softmax(s / T) - softmax(t / T))       on every row,
                    + alpha_lm / m * (softmax(s) - onehot(target))             on the m LM rows,
    so the LM rows are projected once for both losses (not a second time for the cross-entropy), and the
    cross-entropy's log-probabilities come from the KD's: log_softmax(s) = log_softmax(T * log_softmax(s / T))
    (log_softmax ignores a per-row shift). Fewer elementwise passes than autograd's version, memory bounded
    by the chunk, and reusable per-chunk buffers on CPU (scratch()).

    apply(s_feat, weight, bias, t_feat, t_weight, t_bias, targets, temperature, alpha_kd, alpha_lm, chunk_rows)
      -> (total, kd, lm): 0-d float32; only `total` carries gradients (kd and lm are for logging; lm is 0
      when there are no targets). alpha_kd must be > 0. Backward may run once (it scales in place).
    """

    @staticmethod
    def forward(
        ctx, s_feat, weight, bias, t_feat, t_weight, t_bias, targets, temperature, alpha_kd, alpha_lm, chunk_rows
    ):
        if not alpha_kd > 0:
            raise ValueError("FusedKD needs alpha_kd > 0")
        dev = s_feat.device.type
        # Matmuls in autocast's type (if on), the softmax maths in float32.
        mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        f32 = torch.float32
        n, m, vocab = s_feat.size(0), targets.numel(), weight.size(0)
        need_grad = any(ctx.needs_input_grad[:3])
        # Both gradients go into one (rows x vocab) tensor g, with weights relative to `scale` (applied to
        # the (rows x dim) and (vocab x dim) results at the end). In fp16/bf16 the larger coefficient is the
        # scale, so |g| <= 2 and its matmuls cannot overflow; in fp32, KD's (no extra pass over g).
        kd_coef, lm_coef = alpha_kd * temperature / n, alpha_lm / max(m, 1)
        scale = kd_coef if mm_dtype == torch.float32 else max(kd_coef, lm_coef)
        kd_w, lm_w = kd_coef / scale, lm_coef / scale
        with torch.autocast(dev, enabled=False):
            # 1/T folded into the features (rows x dim, small) and biases: the matmuls give logits / T.
            x, w = (s_feat / temperature).to(mm_dtype), weight.to(mm_dtype)
            b = None if bias is None else (bias / temperature).to(mm_dtype)
            tx, tw = (t_feat / temperature).to(t_weight.dtype), t_weight
            tb = None if t_bias is None else t_bias / temperature
            grad_x = torch.empty(n, x.size(1), dtype=f32, device=x.device) if need_grad else None
            grad_w = torch.zeros(w.shape, dtype=f32, device=x.device) if need_grad else None
            grad_b = torch.zeros(vocab, dtype=f32, device=x.device) if need_grad else None
            kd_sum = torch.zeros((), dtype=f32, device=x.device)
            lm_sum = torch.zeros((), dtype=f32, device=x.device)
            for i in range(0, n, chunk_rows):
                j = min(i + chunk_rows, n)
                k = max(0, min(m, j) - i)  # LM rows in this chunk: its first k
                shape = (j - i, vocab)
                log_pt, pt, log_ps = (scratch(name, shape, f32, x.device) for name in ("log_pt", "pt", "log_ps"))
                z = _project(tx[i:j], tw, tb, out=scratch("logits", shape, tw.dtype, x.device))
                torch.log_softmax(z, -1, dtype=f32, out=log_pt)
                torch.exp(log_pt, out=pt)
                z = _project(x[i:j], w, b, out=scratch("logits", shape, mm_dtype, x.device))
                torch.log_softmax(z, -1, dtype=f32, out=log_ps)
                kd_sum += torch.vdot(pt.flatten(), log_pt.sub_(log_ps).flatten())  # sum of p_t (log p_t - log p_s)
                if k:
                    tgt = targets[i : i + k, None]
                    log_p1 = F.log_softmax(log_ps[:k] * temperature, dim=-1)  # = log_softmax(s): see above
                    lm_sum -= log_p1.gather(1, tgt).sum()
                if need_grad:
                    g = log_ps.exp_().sub_(pt)  # p_s - p_t, in [-1, 1]
                    if kd_w != 1:
                        g.mul_(kd_w)
                    if k:  # p - onehot(target), in [-1, 1]
                        g_lm = log_p1.exp_().scatter_add_(1, tgt, torch.full(tgt.shape, -1.0, device=x.device))
                        g[:k].add_(g_lm, alpha=lm_w)
                    grad_x[i:j] = torch.mm(g.to(mm_dtype), w)
                    if mm_dtype == f32:  # accumulate in place: no (vocab x dim) temporary
                        grad_w.addmm_(g.t(), x[i:j])
                    else:
                        grad_w += torch.mm(g.t().to(mm_dtype), x[i:j])
                    grad_b += g.sum(0)
            if need_grad:  # x holds a 1/T, hence grad_w's extra T
                ctx.grads = (grad_x.mul_(scale), grad_w.mul_(scale * temperature), grad_b.mul_(scale))
        ctx.dtypes = (s_feat.dtype, weight.dtype, None if bias is None else bias.dtype)
        kd = kd_sum * (temperature**2 / n)
        lm = lm_sum / max(m, 1)
        ctx.mark_non_differentiable(kd, lm)
        return alpha_kd * kd + alpha_lm * lm, kd, lm

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _grad_kd, _grad_lm):
        grad_x, grad_w, grad_b = ctx.grads
        del ctx.grads  # scaled in place below: a second backward must not reuse them
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        return (
            grad_x.mul_(grad_total).to(x_dtype),
            grad_w.mul_(grad_total).to(w_dtype),
            None if b_dtype is None else grad_b.mul_(grad_total).to(b_dtype),
            *[None] * 8,
        )
