"""What benchmarks/bench_train.py times: the models (built from configs, random weights), the batches, the
masking weights, the model FLOPs of a step, and the GPUs' peak FLOP/s for MFU."""

import numpy as np

from grouped_batch_sampler import create_lengths_groups, epoch_batches

VOCAB = 30522  # bert-base-uncased
SPECIAL = {"pad_token": 0, "unk_token": 100, "cls_token": 101, "sep_token": 102, "mask_token": 103}
SIZES = {
    # teacher (BertConfig), student (DistilBertConfig), batch size, line lengths
    "tiny": dict(teacher=(4, 128, 2, 512), student=(2, 128, 2, 512), batch_size=32, lengths="gamma"),
    "base": dict(teacher=(12, 768, 12, 3072), student=(4, 768, 12, 3072), batch_size=8, lengths=128),
    "gpu": dict(teacher=(12, 768, 12, 3072), student=(4, 768, 12, 3072), batch_size=32, lengths="gamma"),
}
# Dense fp16/bf16 tensor-core peaks (TFLOP/s, fp32 accumulation, no sparsity), matched in this order
# against torch.cuda.get_device_name(); --peak_tflops for anything else.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("A10G", 70.0),
    ("L4", 121.0),
    ("V100", 125.0),
    ("T4", 65.0),
]
T, ALPHA = 2.0, {"ce": 5.0, "mlm": 2.0, "cos": 1.0}  # the DistilBERT recipe




def build_models(size):
    import torch
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    tl, th, ta, tf = SIZES[size]["teacher"]
    sl, sh, sa, sf = SIZES[size]["student"]
    torch.manual_seed(0)
    teacher = BertForMaskedLM(
        BertConfig(vocab_size=VOCAB, num_hidden_layers=tl, hidden_size=th, num_attention_heads=ta, intermediate_size=tf)
    )
    student = DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=VOCAB, n_layers=sl, dim=sh, n_heads=sa, hidden_dim=sf, pad_token_id=0)
    )
    return student, teacher.eval()


def make_batches(size, n_batches, seed=0):
    """`n_batches` lists of sequences (numpy int64: [CLS] random ids [SEP]), grouped by length as train.py does."""

    cfg = SIZES[size]
    bs = cfg["batch_size"]
    rng = np.random.default_rng(seed)
    n_pool = bs * max(200, 4 * n_batches)
    if cfg["lengths"] == "gamma":
        lengths = np.minimum(12 + rng.gamma(2.0, 19.0, n_pool).astype(np.int64), 512)
    else:
        lengths = np.full(n_pool, cfg["lengths"], dtype=np.int64)
    seqs = [
        np.concatenate(([SPECIAL["cls_token"]], rng.integers(999, VOCAB, n - 2), [SPECIAL["sep_token"]]))
        for n in lengths
    ]
    groups = create_lengths_groups(lengths, k=512, log=False)
    batches = [b for b in epoch_batches(groups, bs, 0, seed) if len(b) == bs][:n_batches]
    return [[seqs[i] for i in b] for b in batches]


def token_probs(seed=0):
    """Masking weights ~ count^-0.7 on Zipf-like counts, 0 on special tokens (as train.py builds them)."""
    import torch

    counts = np.random.default_rng(seed).zipf(1.3, VOCAB).clip(1, 10**7).astype(np.float64)
    probs = counts**-0.7
    probs[list(SPECIAL.values())] = 0.0
    return torch.from_numpy(probs).float()


def model_flops(lengths, size):
    """Model FLOPs of one distillation step on sequences of these lengths (matmuls, 2 per multiply-add):
    the teacher's forward (x1) and the student's forward and backward (x3). A forward is, per layer,
    4 d^2 + 2 d ffn multiply-adds per token (attention projections, FFN) plus 2 n d per token for QK^T and
    AV over its sequence of n tokens, then the LM head (d^2 transform, d x vocab projection) on every token,
    as KD needs. Padding is not counted: it is waste, not model work."""
    tokens = sum(lengths)
    squares = sum(n * n for n in lengths)

    def forward(layers, d, heads, ffn):
        per_layer = (4 * d * d + 2 * d * ffn) * tokens + 2 * d * squares
        return 2 * (layers * per_layer + (d * d + d * VOCAB) * tokens)

    return forward(*SIZES[size]["teacher"]) + 3 * forward(*SIZES[size]["student"])


def peak_tflops_for(device_name):
    for key, tflops in PEAK_TFLOPS:
        if key in device_name:
            return tflops
    return None
