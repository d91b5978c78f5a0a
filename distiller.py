"""The Distiller: trains a student to imitate a teacher (knowledge distillation) on masked- or causal-LM data.

Loss, as upstream (Sanh et al., 2019): alpha_ce * KD + alpha_mlm * MLM (or alpha_clm * CLM)
+ alpha_mse * MSE(logits) + alpha_cos * cosine(last hidden states), where KD is the KL divergence between
the teacher's and the student's distributions at temperature T, times T^2. The loss functions and the
vocabulary head are in training/losses.py, the masking in training/masking.py, the logging in
training/monitor.py.

Read `step()` (one batch: both forwards, the losses) and then `train()` (the loop: prepare a batch, step,
backward, optimizer step at the end of each accumulation cycle, log, evaluate, checkpoint). Checkpoints hold
everything a resumed run needs to repeat the uninterrupted run's losses exactly on CPU. Why the step is
fast (rows picked by index, KD fused with the projections, no per-step host sync): docs/benchmarks.md.
"""

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from core import model_card
from core.errors import InputError, NonFiniteLoss
from core.files import atomic_write
from core.precision import Precision, use_attention
from grouped_batch_sampler import epoch_batches
from training import checkpoint, evaluation
from training.checkpoint import CHECKPOINT
from training.losses import KD_CHUNK_ROWS, FusedKD, cosine_loss, kd_loss, mse_loss, relation_losses
from training.masking import Masking, prepare_batch_clm
from training.models import RowsLM, lm_head_parts, relation_layers
from training.monitor import Meter, MetricsLog, empty_cache_if_low, log_line, memory_stats
from training.train_args import LossPlan, LossWeights
from utils import DistInfo, check_same_on_all_ranks, logger, rng_state, weight_decay_groups

MAX_CONSECUTIVE_SKIPS = 20  # fp16: this many overflow-skipped optimizer steps in a row means the loss is broken


class Distiller:
    def __init__(self, params, dataset, token_probs, student, teacher, dist=None, valid_dataset=None, teacher_ids=None):
        """params: train.py's argument namespace; dataset: LmSeqsDataset; token_probs: (vocab,) masking
        weights (MLM) or None; student, teacher: HF models (teacher None for a plain MLM run);
        valid_dataset: held-out LmSeqsDataset the student is evaluated on (MLM; see evaluate());
        teacher_ids: the teacher's id of each student id, where it has the same pieces under other ids."""
        self.params = params
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.dump_path = Path(params.dump_path) if params.dump_path else None  # None: steps only, never writes
        self.dataset = dataset
        self.mlm = params.mlm
        self.vocab_size = student.config.vocab_size
        self.temperature = params.temperature
        self.plan = plan = LossPlan.from_args(params)  # the losses that are on, what they need
        if plan.needs_teacher and teacher is None:
            raise InputError("alpha_ce, alpha_mse, alpha_cos and the relation losses need a teacher (--teacher_name)")
        s_layer = t_layer = None
        if plan.relations:  # the layers they read, and their heads
            s_layer, t_layer, self.heads = relation_layers(student, teacher, plan.relations, params)

        # Decided once (precision.py): autocast dtype, GradScaler, the teacher's dtype, the non-finite watch.
        self.precision = Precision.decide(params.fp16, params.bf16, self.device)
        if self.precision.why:
            logger.warning(self.precision.why)
        self.scaler = self.precision.scaler()

        self.student_model = use_attention(student.to(self.device), self.device.type, self.precision.used)
        self.student = RowsLM(self.student_model, s_layer)
        if self.dist.world_size > 1:
            self.student = self.dist.wrap(self.student, find_unused_parameters=not plan.head_used)
        self.teacher = None
        if plan.needs_teacher:
            teacher = teacher.to(self.device, dtype=self.precision.teacher_dtype).eval()
            use_attention(teacher, self.device.type, self.precision.used)
            teacher.requires_grad_(False)
            self.teacher = RowsLM(teacher, t_layer)
        self.teacher_ids = None if teacher_ids is None else teacher_ids.to(self.device)  # moved once

        self.masking = (Masking.from_params(params, dataset.spec.mask_id, token_probs, self.vocab_size, self.device)
                        if self.mlm else None)

        # Data order: a pure function of (seed, epoch, rank, world size), see epoch_batches().
        self.batches_per_epoch = len(self.epoch_batches(0))
        accum = params.gradient_accumulation_steps
        self.cycles_per_epoch = math.ceil(self.batches_per_epoch / accum)
        self.total_steps = self.cycles_per_epoch * params.n_epoch

        groups = weight_decay_groups(self.student_model, params.weight_decay)
        # fused: one pass over all parameters, not a Python loop over them
        self.optimizer = torch.optim.AdamW(groups, lr=params.learning_rate, eps=params.adam_epsilon, betas=(0.9, 0.98),
                                           fused=True)
        self.warmup_steps = math.ceil(self.total_steps * params.warmup_prop)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        n_train = sum(p.numel() for g in groups for p in g["params"])
        n_all = sum(p.numel() for p in self.student_model.parameters())
        logger.info(
            f"student: {n_all / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained); "
            f"{self.batches_per_epoch:,} batches per epoch per process, {self.total_steps:,} optimizer steps "
            f"({self.warmup_steps:,} warmup)"
        )

        # Progress and counters (all part of the checkpoint).
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already trained
        self.n_total_iter = 0  # batches trained in all (upstream's name; log/checkpoint intervals count these)
        self.n_optimizer_steps = 0
        self.n_empty_cache = 0
        self.n_skipped_steps = 0  # fp16 overflow steps the scaler skipped
        self.consecutive_skips = 0
        self.first_bad_iter = torch.full((), -1, dtype=torch.long, device=self.device)
        self.ckpt_bucket = 0  # n_total_iter // checkpoint_interval at the last checkpoint
        self.metrics_log = None  # metrics.jsonl and tensorboard (rank 0, opened by train())
        self.valid_dataset = valid_dataset
        self.valid_batches = None  # masked once, on the first evaluation
        self.last_eval_iter = None
        self.last_valid = None  # the last held-out evaluation's record, for the model card
        self.meter = Meter()  # the current log interval's sums (checkpointed: a resumed interval averages right)
        self.metrics_bytes = None  # on resume: metrics.jsonl's length when the checkpoint was written
        self.checkpoint_callbacks = []  # called after every checkpoint written (rank 0): train.py's --force cleanup

    # ----------------------------------------------------------------------------------------------------
    # Schedule and data

    def lr_factor(self, step):
        """Linear warmup to the peak learning rate, then linear decay to 0 at the last optimizer step."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))

    def epoch_batches(self, epoch):
        """This rank's batches for `epoch` (kept for the latest epoch: grouping 5M indices takes seconds)."""
        if getattr(self, "_batches", (None,))[0] != epoch:
            p, d, data = self.params, self.dist, self.dataset
            batches = epoch_batches(data.groups, p.batch_size, epoch, p.seed, rank=d.rank, world_size=d.world_size,
                                    group_by_size=p.group_by_size)
            self._batches = (epoch, batches)
        return self._batches[1]

    def data_order(self):
        """What fixes the sequence of batches: a resumed run must agree on all of it."""
        names = ("seed", "batch_size", "group_by_size", "gradient_accumulation_steps", "n_epoch")
        return {**{k: getattr(self.params, k) for k in names}, "world_size": self.dist.world_size,
                "n_sequences": len(self.dataset), "n_tokens": self.dataset.n_tokens}

    def prepare_batch(self, token_ids, lengths):
        """Move a collated batch to the device and pick the positions to predict (MLM masking or CLM)."""
        if self.mlm:
            return self.masking.prepare_batch_mlm(token_ids, lengths)
        return prepare_batch_clm(token_ids, lengths, self.device)

    # ----------------------------------------------------------------------------------------------------
    # One step: forward both models, return the losses (0-d tensors on the device)

    def autocast(self):
        return self.precision.autocast(self.device.type)

    def compute_losses(self, batch):
        """Forward the student (and the teacher) on `batch`; return {"loss": weighted total, "ce": ..., ...}."""
        plan, w = self.plan, self.plan.weights
        m = batch.n_targets  # the LM rows are the first m of batch.rows
        # The vocabulary head runs on every non-pad row only when KD/MSE need them all, on none when no loss
        # reads the logits.
        head_rows = 0 if not plan.head_used else None if plan.kd_all_rows else m
        lm, w_lm = plan.lm, w.of(plan.lm)
        fused = plan.fused_kd  # s_out/t_out: logits, or (fused) the features FusedKD projects chunk by chunk
        losses = {}
        total = 0.0
        inputs = (batch.input_ids, batch.attention_mask, batch.rows)
        with self.autocast():
            s_hidden, s_out, s_qkv = self.student(*inputs, head_rows, fused)
            if self.teacher is not None:
                with torch.no_grad():
                    t_inputs = inputs if self.teacher_ids is None else (self.teacher_ids[batch.input_ids], *inputs[1:])
                    t_hidden, t_out, t_qkv = self.teacher(*t_inputs, head_rows if (w.ce or w.mse) else 0, fused)
            if fused:  # KD and the LM loss from one chunked projection of the features: no logits materialised
                s_proj, t_proj = lm_head_parts(self.student_model)[1], lm_head_parts(self.teacher.model)[1]
                targets = batch.targets if w_lm > 0 else batch.targets[:0]
                total, losses["ce"], lm_loss = FusedKD.apply(
                    s_out, s_proj.weight, s_proj.bias, t_out, t_proj.weight, t_proj.bias,
                    targets, self.temperature, w.ce, w_lm, KD_CHUNK_ROWS,
                )
                if w_lm > 0:
                    losses[lm] = lm_loss
            else:  # the logits themselves (MSE reads them), each loss in float32
                if w.ce > 0:
                    losses["ce"] = kd_loss(s_out, t_out, self.temperature)
                if w_lm > 0:
                    losses[lm] = F.cross_entropy(s_out[:m].float(), batch.targets)

        in_total = set(losses) if fused else set()  # FusedKD's total already holds its losses
        if w.mse > 0:
            losses["mse"] = mse_loss(s_out, t_out)
        if w.cos > 0:
            losses["cos"] = cosine_loss(s_hidden, t_hidden)
        if plan.relations:  # outside autocast: the maps and their softmaxes in float32
            losses.update(relation_losses(s_qkv, t_qkv, batch.attention_mask, plan.relations, *self.heads))
        for k in [k for k in losses if k not in in_total]:  # in the order above: the same sum every run
            total = total + w.of(k) * losses[k]
        losses["loss"] = total
        return losses

    def train_step(self, batch, cycle_len=1, end_of_cycle=True):
        """Train on one batch: the losses (compute_losses()), the backward of its share of the accumulation cycle's
        loss, and at the end of the cycle the optimizer step; then the memory guard. The loop, the benchmark and the
        demo's estimate all train through this. Returns the losses (on the device: no host sync)."""
        with self.no_sync(not end_of_cycle):
            losses = self.compute_losses(batch)
            self.scaler.scale(losses["loss"] / cycle_len).backward()
        self.watch_finite(losses["loss"])
        self.meter.add(losses, batch.n_tokens)
        self.batch_in_epoch += 1
        self.n_total_iter += 1
        if end_of_cycle:
            self.meter.add_grad_norm(self.optimizer_step())
        self.memory_guard()
        return losses

    def no_sync(self, skip_sync):
        """DDP: no gradient all-reduce on the batches before the end of an accumulation cycle."""
        if skip_sync and isinstance(self.student, nn.parallel.DistributedDataParallel):
            return self.student.no_sync()
        return contextlib.nullcontext()

    def optimizer_step(self):
        """Clip, step (the scaler skips fp16 overflow steps), zero the gradients, advance the schedule."""
        params = [p for p in self.student_model.parameters() if p.requires_grad]
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(params, self.params.max_grad_norm)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # the scaler found inf/nan gradients and skipped the step
                self.n_skipped_steps += 1
                self.consecutive_skips += 1
                if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    raise NonFiniteLoss(
                        f"fp16: {self.consecutive_skips} optimizer steps in a row overflowed (up to iteration "
                        f"{self.n_total_iter}); try --bf16 or a lower --learning_rate"
                    )
            else:
                self.consecutive_skips = 0
        else:
            grad_norm = nn.utils.clip_grad_norm_(params, self.params.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.n_optimizer_steps += 1
        return grad_norm

    def watch_finite(self, loss):
        """Remember the first iteration with a non-finite loss, on the device (checked at log/checkpoint)."""
        if self.precision.scaled:  # fp16 overflows are the scaler's business (skipped and counted)
            return
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_iter < 0)
        self.first_bad_iter = torch.where(bad, self.n_total_iter + 1, self.first_bad_iter)

    def memory_guard(self):
        """The reference run's GPU memory crept up until it ran out: release the allocator's cache when less
        than --empty_cache_threshold_gb is free, and count the calls."""
        self.n_empty_cache += empty_cache_if_low(self.device, self.params.empty_cache_threshold_gb)

    # ----------------------------------------------------------------------------------------------------
    # The loop

    def train(self, stop_after_iter=None):
        """Train to the end (or stop after `stop_after_iter` batches, as if killed: for testing resume).
        Returns True when all epochs are done."""
        p = self.params
        accum = p.gradient_accumulation_steps
        if self.dist.is_master:
            # On resume, the records and events a killed run wrote after its checkpoint are cut.
            self.metrics_log = MetricsLog(self.dump_path, self.metrics_bytes, self.n_total_iter, texts={
                "config/training": json.dumps(vars(p), indent=2, default=str),
                "config/student": self.student_model.config.to_json_string()})
        self.student.train()
        log_time = time.perf_counter()
        while self.epoch < p.n_epoch:
            batches = self.epoch_batches(self.epoch)
            first = self.batch_in_epoch
            logger.info(f"--- epoch {self.epoch}/{p.n_epoch - 1}" + (f", from batch {first}" if first else ""))
            loader = DataLoader(
                self.dataset,
                batch_sampler=batches[first:],
                collate_fn=self.dataset.batch_sequences,
                num_workers=p.num_workers,
                pin_memory=self.device.type == "cuda",
                # its own generator: creating the loader must not draw from the global RNG, or a resumed run
                # (which creates it mid-epoch) would mask and drop out differently from the uninterrupted one
                generator=torch.Generator().manual_seed(p.seed + self.epoch),
            )
            bar = tqdm(
                loader, desc=f"epoch {self.epoch}", initial=first, total=len(batches), disable=not self.dist.is_master
            )
            for token_ids, lengths in bar:
                i = self.batch_in_epoch
                cycle_start = i - i % accum
                cycle_len = min(accum, len(batches) - cycle_start)  # the epoch's last cycle may be short
                end_of_cycle = i + 1 == cycle_start + cycle_len

                self.train_step(self.prepare_batch(token_ids, lengths), cycle_len, end_of_cycle)

                if self.n_total_iter % p.log_interval == 0:
                    now = time.perf_counter()
                    record = self.log(self.meter.read(), now - log_time)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    self.meter, log_time = Meter(), now
                if self.n_total_iter % p.eval_interval == 0:  # a no-op without --valid_file
                    log_time += self.evaluate()  # evaluation time is not training time (tokens/s)
                if end_of_cycle and self.n_total_iter // p.checkpoint_interval > self.ckpt_bucket:
                    self.save_checkpoint()
                if stop_after_iter is not None and self.n_total_iter >= stop_after_iter:
                    bar.close()
                    logger.info(f"stopping after {self.n_total_iter} iterations (--stop_after_iter)")
                    return False
            bar.close()
            self.end_epoch()
        if self.meter.n:  # the last, partial log interval
            self.log(self.meter.read(), time.perf_counter() - log_time)
            self.meter = Meter()
        if self.last_eval_iter != self.n_total_iter:
            self.evaluate()
        self.check_finite()
        if self.dist.world_size > 1:
            check_same_on_all_ranks(self.student_model, self.dist)
        return True

    def check_finite(self):
        first_bad = int(self.first_bad_iter)
        if first_bad >= 0:
            raise NonFiniteLoss(f"the loss is not finite at iteration {first_bad} (epoch {self.epoch})")

    def end_epoch(self):
        logger.info(
            f"--- end of epoch {self.epoch}: {self.n_total_iter:,} iterations, {self.n_optimizer_steps:,} steps"
        )
        self.epoch += 1
        self.batch_in_epoch = 0
        self.save_checkpoint(epoch_weights=self.epoch - 1)

    # ----------------------------------------------------------------------------------------------------
    # Logging

    def log(self, means, seconds):
        """One line and one metrics record per log interval (rank 0); `means` are the interval's averages."""
        self.check_finite()
        record = {
            "iter": self.n_total_iter,
            "step": self.n_optimizer_steps,
            "epoch": self.epoch,
            **{k: v for k, v in means.items() if k != "tokens"},
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": means["tokens"] * self.dist.world_size / max(seconds, 1e-9),
            "empty_cache_calls": self.n_empty_cache,
            "skipped_steps": self.n_skipped_steps if self.precision.scaled else None,  # fp16 runs only
            "scale": self.scaler.get_scale() if self.precision.scaled else None,
            **memory_stats(self.device),
        }
        if self.dist.is_master:
            logger.info(log_line(record))
            self.metrics_log.write(record)
        return record

    def evaluate(self):
        """Score the student on the held-out set (rank 0, if there is one): MLM loss, perplexity, top-1/top-5
        accuracy on masked tokens (evaluation.py; fixed masking). One log line, one metrics.jsonl record
        with `valid_*` keys, tensorboard `valid/*`. Returns the seconds it took."""
        if self.valid_dataset is None or not self.dist.is_master:
            return 0.0
        start = time.perf_counter()
        if self.valid_batches is None:
            self.valid_batches = evaluation.masked_batches(self.masking, self.valid_dataset)
        r = evaluation.evaluate({"student": self.student_model}, self.valid_batches)["student"]
        self.last_eval_iter = self.n_total_iter
        record = {"iter": self.n_total_iter, "step": self.n_optimizer_steps, "epoch": self.epoch}
        record.update({f"valid_{k}": r[k] for k in ("loss", "perplexity", "top1", "top5", "masked_tokens")})
        logger.info(log_line(record))
        self.metrics_log.write(record)
        self.last_valid = record
        return time.perf_counter() - start

    # ----------------------------------------------------------------------------------------------------
    # Checkpoints

    def save_checkpoint(self, epoch_weights=None):
        """Write the resumable state to dump_path/checkpoint.pth atomically (rank 0; every rank sends its
        RNG state). With `epoch_weights`, also the student's weights as model_epoch_<n>.pth (upstream)."""
        self.check_finite()  # never checkpoint a broken model
        rngs = [rng_state(self.device)]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size
            torch.distributed.all_gather_object(rngs, rngs[0])
        self.ckpt_bucket = self.n_total_iter // self.params.checkpoint_interval
        if not self.dist.is_master:
            return
        if epoch_weights is not None:
            with atomic_write(self.dump_path / f"model_epoch_{epoch_weights}.pth") as f:
                torch.save(self.student_model.state_dict(), f)
        checkpoint.save(self, self.dump_path / CHECKPOINT, rngs)
        logger.info(f"checkpoint at iteration {self.n_total_iter} (epoch {self.epoch}, batch {self.batch_in_epoch})")
        for callback in self.checkpoint_callbacks:
            callback()

    def load_checkpoint(self, path=None):
        """Restore a run from its checkpoint (`--resume`); tensors only, no code is executed. A damaged or
        foreign file is an InputError, and nothing is written here."""
        path = Path(path or self.dump_path / CHECKPOINT)
        checkpoint.restore(self, path)
        logger.info(
            f"resumed from {path}: epoch {self.epoch}, batch {self.batch_in_epoch}, iteration {self.n_total_iter}"
        )

    def write_model_card(self):
        """README.md beside the student: what it is, its teacher and objective, its held-out scores."""
        p, cfg = self.params, self.student_model.config
        teacher = None if p.teacher_name == "none" else p.teacher_name
        weights = {k: v for k, v in dataclasses.asdict(LossWeights.from_args(p)).items() if v}
        results = []
        if self.last_valid is not None:
            metrics = {f"masked-token {k}": self.last_valid[f"valid_{k}"] for k in ("top1", "top5")}
            results.append(model_card.Result("fill-mask", f"held out: {p.valid_file}", str(p.valid_file), metrics,
                                             split="held out"))
        task = "fill-mask" if p.mlm else "text-generation"
        model_card.write(self.dump_path, model_card.Card(
            title=f"{cfg.model_type} student, {cfg.num_hidden_layers} x {cfg.hidden_size}", pipeline_tag=task,
            base_model=p.student_pretrained_weights or None, teacher=teacher, results=results,
            summary=[f"A {cfg.num_hidden_layers}-layer, {cfg.hidden_size}-wide {cfg.model_type} "
                     f"{'distilled from `' + teacher + '`' if teacher else 'trained without a teacher'} by `train.py` "
                     f"on `{p.data_file}` ({self.n_optimizer_steps} optimizer steps, {self.epoch} epochs)."],
            details={"objective": p.objective, "loss weights": ", ".join(f"{k} {v:g}" for k, v in weights.items()),
                     "batch size": p.batch_size, "precision": self.precision.used},
            command=model_card.this_command("train.py"),
        ))

    def save_final(self, tokenizer):
        """The trained student in HF format (safetensors) with the teacher's tokenizer beside it (rank 0)."""
        if not self.dist.is_master:
            return
        self.student_model.save_pretrained(self.dump_path)
        tokenizer.save_pretrained(self.dump_path)
        self.write_model_card()
        if self.metrics_log is not None:
            self.metrics_log.close()
        logger.info(f"final student saved in {self.dump_path} (AutoModelForMaskedLM.from_pretrained works on it)")

