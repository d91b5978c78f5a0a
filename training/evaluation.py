"""Masked-LM evaluation on held-out data, shared by scripts/evaluate.py and train.py's --valid_file.

The held-out sequences are masked once by training's own `Masking` (masking.py: 15%
of the tokens, rarer ones more often, 80/10/10 [MASK]/keep/random) under a fixed seed, so every model, and
every evaluation during a run, is scored on exactly the same masked positions. The global RNG is restored
afterwards: evaluating mid-run changes nothing in the training that follows.

Figures, over all masked positions: MLM loss (mean cross-entropy, nats), perplexity (exp of it), top-1 and
top-5 accuracy; against a reference model (the teacher), top-1 agreement (same argmax) and the KL
divergence KL(reference || model) at temperature 1.
"""

from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.models import RowsLM

EVAL_SEED = 0  # fixes the masked positions: the same for every model and every evaluation
EVAL_BATCH_SIZE = 64  # sequences per batch (the masking draws per batch, so this is part of the recipe)


def masked_batches(masking, dataset, batch_size=EVAL_BATCH_SIZE, seed=EVAL_SEED):
    """All of `dataset`, shortest sequences first (little padding), as masked `Batch`es on the masking's
    device, masked by `masking.prepare_batch_mlm` with the global RNG seeded to `seed` and then restored."""
    order = np.argsort(dataset.lengths, kind="stable")
    device = masking.device
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    batches = []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        for start in range(0, len(order), batch_size):
            token_ids, lengths = dataset.batch_sequences([dataset[i] for i in order[start : start + batch_size]])
            batches.append(masking.prepare_batch_mlm(token_ids, lengths))
    return batches


@torch.no_grad()
def evaluate(models, batches, reference=None, progress=False):
    """Score each of `models` ({name: HF masked LM}) on `batches`; return {name: {figure: value}}.

    `reference` names the model the others are compared with (agreement, KL); it gets no such figures
    itself. Models are put in eval mode and given back in the mode they came in.
    """
    was_training = {name: m.training for name, m in models.items()}
    wrapped = {name: RowsLM(m.eval()) for name, m in models.items()}
    sums = {name: defaultdict(float) for name in models}
    n_masked = 0
    for batch in tqdm(batches, desc="evaluating", disable=not progress):
        targets = batch.targets
        logprobs = {}
        for name, model in wrapped.items():
            _, logits, _ = model(batch.input_ids, batch.attention_mask, batch.rows, batch.n_targets)
            logp = F.log_softmax(logits.float(), dim=-1)
            logprobs[name] = logp
            top5 = logp.topk(5, dim=-1).indices
            s = sums[name]
            s["loss"] += F.nll_loss(logp, targets, reduction="sum")
            s["top1"] += (top5[:, 0] == targets).sum()
            s["top5"] += (top5 == targets[:, None]).any(dim=1).sum()
        if reference is not None:
            ref = logprobs[reference]
            ref_top1 = ref.argmax(dim=-1)
            for name, logp in logprobs.items():
                if name != reference:
                    sums[name]["agreement"] += (logp.argmax(dim=-1) == ref_top1).sum()
                    sums[name]["kl"] += F.kl_div(logp, ref, log_target=True, reduction="sum")
        n_masked += len(targets)
    for name, m in models.items():
        m.train(was_training[name])

    results = {}
    for name, s in sums.items():
        r = {k: float(v) / max(n_masked, 1) for k, v in s.items()}
        r["perplexity"] = float(np.exp(r["loss"])) if n_masked else float("nan")
        r["masked_tokens"] = n_masked
        results[name] = r
    return results
