"""The distillation losses, as functions of the rows a batch predicts (models.RowsLM gives those rows).

- `kd_loss`, `cosine_loss`, `mse_loss`: upstream's losses as pure functions (tests pin them to hand
  computations).
- `FusedKD`: KD and the MLM/CLM cross-entropy computed straight from both models' features, chunk by chunk,
  so no (rows x vocab) logits are kept.
- `relation_losses`: self-attention relation transfer (MiniLM, MiniLMv2): KL between the teacher's and the
  student's attention distributions and Q-Q / K-K / V-V relations, from one layer's query/key/value.
"""

import math

import torch
import torch.nn.functional as F

# The losses a run can weigh, by their --alpha_<name> flag: KD (cross-entropy against the teacher), masked /
# causal LM, MSE between logits, cosine between last hidden states.
# The MiniLM relation losses (att, qq, kk, vv) are at the end of this file.
LOSS_NAMES = ("ce", "mlm", "clm", "mse", "cos", "att", "qq", "kk", "vv")


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


def hidden_mse(s_states, t_states, attention_mask, projection=None):
    """TinyBERT's hidden-state loss: per pair of (student, teacher) states, the mean squared error over the real
    tokens' features, the student's taken to the teacher's width by `projection` (None: equal widths); summed
    over the pairs, as TinyBERT sums its layers."""
    mask = attention_mask.bool()
    total = 0.0
    for s, t in zip(s_states, t_states, strict=True):
        s = s[mask] if projection is None else projection(s[mask])
        total = total + F.mse_loss(s.float(), t[mask].float())
    return total


# Rows per FusedKD chunk (each chunk holds four (rows x vocab) float32 tensors): fewer rows make thin, slow
# matmuls; more rows cost memory for little speed (docs/benchmarks.md).
KD_CHUNK_ROWS = 512

_SCRATCH = {}  # (name, dtype) -> a flat CPU tensor reused by every FusedKD call (see scratch())


def scratch(name, shape, dtype, device):
    """An uninitialised tensor of `shape` for FusedKD's per-chunk work. On CPU it is carved from a buffer kept
    between calls: the allocator returns blocks that large to the OS, so a fresh one pays its page faults
    again on every call (docs/benchmarks.md). CUDA's caching allocator already reuses its blocks, so there
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

# --------------------------------------------------------------------------------------------------------
# Self-attention relation transfer (MiniLM, Wang et al. 2020; MiniLMv2, Wang et al. 2021)

# --alpha_<name> of each relation loss: attention distributions (queries x keys, per attention head) and the
# query-query, key-key and value-value relations (per relation head). MiniLM is att + vv with as many relation
# heads as attention heads; MiniLMv2 is qq + kk + vv with --relation_heads.
RELATION_LOSSES = ("att", "qq", "kk", "vv")


def scaled_dot(a, b, heads):
    """(batch, heads, len, len) scaled dot products a_i . b_j / sqrt(d) of `heads` equal slices of the last
    dimension of a and b (batch, len, heads * d), in float32."""
    n, length, dim = a.shape
    d = dim // heads
    a = a.float().view(n, length, heads, d).transpose(1, 2)
    b = b.float().view(n, length, heads, d).transpose(1, 2)
    return a @ b.transpose(-1, -2) / math.sqrt(d)


def relation_kl(t_scores, s_scores, attention_mask):
    """KL(teacher || student) between the softmaxes over keys of two (batch, heads, len, len) score maps,
    averaged over heads and non-pad query positions. Padding is excluded as keys (no probability) and as
    queries (not averaged)."""
    keys = attention_mask[:, None, None, :].bool()
    t = t_scores.masked_fill(~keys, -1e30).log_softmax(-1)
    s = s_scores.masked_fill(~keys, -1e30).log_softmax(-1)
    kl = (t.exp() * (t - s)).masked_fill(~keys, 0.0).sum(-1)  # (batch, heads, len)
    queries = attention_mask[:, None, :].to(kl.dtype)  # a weighted mean: no boolean indexing, no host sync
    return (kl * queries).sum() / (queries.sum() * kl.size(1))


def relation_losses(s_qkv, t_qkv, attention_mask, names, attention_heads, relation_heads):
    """{name: loss} for the relation losses in `names`, between the student's and the teacher's (query, key,
    value) of their chosen layers (each (batch, len, dim); the two models' dims may differ). att: queries
    against keys, per attention head (the same count in both models); qq, kk, vv: per relation head."""
    pairs = {"att": (0, 1), "qq": (0, 0), "kk": (1, 1), "vv": (2, 2)}  # indices into (query, key, value)
    out = {}
    for name in names:
        i, j = pairs[name]
        heads = attention_heads if name == "att" else relation_heads
        t_scores, s_scores = scaled_dot(t_qkv[i], t_qkv[j], heads), scaled_dot(s_qkv[i], s_qkv[j], heads)
        out[name] = relation_kl(t_scores, s_scores, attention_mask)
    return out
