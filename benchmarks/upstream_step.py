"""Upstream's training step (examples/research_projects/distillation/distiller.py), written from its semantics:
the reference that benchmarks/bench_train.py times our Distiller against."""

import math

from benchmarks.workload import ALPHA, SPECIAL, VOCAB, T
from training.monitor import empty_cache_if_low

EMPTY_CACHE_BELOW_GIB = 2.0  # the memory guard of train.sh (--empty_cache_threshold_gb)




class Reference:
    """Upstream's collate, masking and step (MLM), with its optimizer settings; fp32, or with `fp16` its
    --fp16 (apex O1 there; here torch's fp16 autocast and a GradScaler, apex's successors)."""

    def __init__(self, student, teacher, probs, device="cpu", fp16=False):
        import torch

        self.device = torch.device(device)
        self.student, self.teacher = student.to(self.device), teacher.to(self.device)
        self.token_probs = probs.to(self.device)
        self.pred_probs = torch.tensor([0.8, 0.1, 0.1], device=self.device)
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=5e-4, eps=1e-6, betas=(0.9, 0.98))
        self.fp16 = fp16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.n_empty_cache = 0

    @staticmethod
    def collate(seqs):
        """Pad to the longest sequence (upstream pads to a multiple of 8 only under fp16)."""
        import torch

        lengths = torch.tensor([len(s) for s in seqs])
        token_ids = torch.full((len(seqs), int(lengths.max())), SPECIAL["pad_token"], dtype=torch.long)
        for row, s in enumerate(seqs):
            token_ids[row, : len(s)] = torch.from_numpy(s)
        return token_ids, lengths

    def to_device(self, token_ids, lengths):
        return token_ids.to(self.device), lengths.to(self.device)

    def prepare(self, token_ids, lengths):
        """(bs x len) masking: 15% of the non-pad tokens drawn by weight, 80/10/10 -> (ids, attention, labels)."""
        import torch

        bs, width = token_ids.shape
        attention = torch.arange(width, device=token_ids.device) < lengths[:, None]
        labels = token_ids.clone()
        weights = self.token_probs[token_ids.flatten()]
        n_pick = math.ceil(0.15 * lengths.sum().item())
        picks = torch.multinomial(weights / weights.sum(), n_pick, replacement=False)
        pred_mask = torch.zeros(bs * width, dtype=torch.bool, device=token_ids.device)
        pred_mask[picks] = True
        pred_mask = pred_mask.view(bs, width)
        pred_mask[token_ids == SPECIAL["pad_token"]] = False
        real = token_ids[pred_mask]
        kind = torch.multinomial(self.pred_probs, len(real), replacement=True)
        new = torch.where(kind == 0, SPECIAL["mask_token"], torch.where(kind == 1, real, real.clone().random_(VOCAB)))
        token_ids = token_ids.masked_scatter(pred_mask, new)
        labels[~pred_mask] = -100
        return token_ids, attention.long(), labels

    def losses(self, input_ids, attention, labels):
        import torch
        from torch import nn

        s_out = self.student(input_ids=input_ids, attention_mask=attention, output_hidden_states=True)
        with torch.no_grad():
            t_out = self.teacher(input_ids=input_ids, attention_mask=attention, output_hidden_states=True)
        s_logits, t_logits = s_out.logits, t_out.logits
        vocab = s_logits.size(-1)
        mask = attention.bool().unsqueeze(-1).expand_as(s_logits)
        s_sel = torch.masked_select(s_logits, mask).view(-1, vocab)
        t_sel = torch.masked_select(t_logits, mask).view(-1, vocab)
        ce = nn.KLDivLoss(reduction="batchmean")(
            nn.functional.log_softmax(s_sel / T, dim=-1), nn.functional.softmax(t_sel / T, dim=-1)
        ) * (T**2)
        mlm = nn.CrossEntropyLoss(ignore_index=-100)(s_logits.view(-1, vocab), labels.view(-1))
        s_h, t_h = s_out.hidden_states[-1], t_out.hidden_states[-1]
        dim = s_h.size(-1)
        hmask = attention.bool().unsqueeze(-1).expand_as(s_h)
        s_hs = torch.masked_select(s_h, hmask).view(-1, dim)
        t_hs = torch.masked_select(t_h, hmask).view(-1, dim)
        cos = nn.CosineEmbeddingLoss(reduction="mean")(s_hs, t_hs, s_hs.new_ones(s_hs.size(0)))
        loss = ALPHA["ce"] * ce + ALPHA["mlm"] * mlm + ALPHA["cos"] * cos
        return {"ce": ce, "mlm": mlm, "cos": cos, "loss": loss}

    def train_step(self, seqs):
        import torch

        token_ids, lengths = self.collate(seqs)
        n_tokens = int(lengths.sum())
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            losses = self.losses(*self.prepare(*self.to_device(token_ids, lengths)))
        record = {k: v.item() for k, v in losses.items()}  # upstream reads every loss on the host each step
        record["loss_again"] = losses["loss"].item()  # (total_loss_epoch and last_loss: two reads)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.n_empty_cache += empty_cache_if_low(self.device, EMPTY_CACHE_BELOW_GIB)
        return n_tokens
