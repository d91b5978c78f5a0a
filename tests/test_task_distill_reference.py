"""Task distillation pinned to a plain PyTorch loop: run_glue.py's own path (the Trainer, the cached
teacher logits, the collator, DistillTrainer) against a loop of a few lines written from the textbook, on a
tiny model and task, dropout off, one seed, fp32. Per step, the KD, task and total losses and, at the end,
every weight agree to float tolerance.

What is pinned, as the loop below spells it out:
- KD: KL(teacher || student) at T, times T^2, averaged over every row of the optimizer step, labelled or not;
- task: cross-entropy averaged over the labelled rows of the optimizer step (none: 0);
- gradient accumulation: the micro-batches of a step weigh as one batch of their rows, so a micro-batch of
  unlabelled rows, or a short last one, changes no other row's weight;
- AdamW with weight decay off biases and LayerNorm, gradients clipped to norm 1, linear warmup over 10% of
  the steps then linear decay (run_glue.py's defaults, BERT's recipe)."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainerCallback,
)

from glue_helpers import FAST
from scripts import run_glue
from tasks import glue_runs
from train_helpers import tiny_bert_config

ALPHA_CE, ALPHA_TASK, T = 0.5, 0.5, 2.0
LABELLED, UNLABELLED = 11, 7  # 18 rows, batches of 4: micro-batches of 4, 4, 4 (3 labelled), 4 (none), 2 (none)
BATCH, ACCUMULATE, EPOCHS, LR = 4, 2, 2, 1e-3


class Recorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.steps.append((logs["loss_ce"], logs["loss_task"], logs["loss"]))


@pytest.fixture(scope="module")
def confident_teacher(tmp_path_factory, task_teacher):
    """The tiny fine-tuned teacher with its head's weights scaled up: sure of its classes, so KD weighs."""
    model = AutoModelForSequenceClassification.from_pretrained(task_teacher)
    with torch.no_grad():
        model.classifier.weight.mul_(400.0)
    folder = tmp_path_factory.mktemp("confident_teacher")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(task_teacher).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student(tmp_path_factory, teacher, task_teacher):
    """A tiny BERT of other weights than the teacher's (so that KD has something to teach), dropout off, its
    classification head already in place (nothing random at load)."""
    labels = AutoModelForSequenceClassification.from_pretrained(task_teacher).config.id2label
    tok = AutoTokenizer.from_pretrained(teacher)
    config = tiny_bert_config(len(tok), layers=2)
    config.update(dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, id2label=labels,
                       label2id={v: k for k, v in labels.items()}))
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("student")
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def project_run(tmp_path, monkeypatch, student, teacher_dir, task):
    recorder = Recorder()
    monkeypatch.setattr(run_glue, "callbacks", lambda: [glue_runs.finite_check(), recorder])
    run_glue.main([str(a) for a in (
        "--model_name_or_path", student, "--train_file", task / "train.csv", "--validation_file", task / "dev.csv",
        "--output_dir", tmp_path / "kd", "--teacher_name_or_path", teacher_dir, "--alpha_ce", ALPHA_CE,
        "--alpha_task", ALPHA_TASK, "--temperature", T, "--max_train_samples", LABELLED,
        "--unlabeled_samples", UNLABELLED, "--per_device_train_batch_size", BATCH,
        "--gradient_accumulation_steps", ACCUMULATE, "--num_train_epochs", EPOCHS, "--learning_rate", LR,
        "--train_sampling_strategy", "sequential", "--logging_steps", 1, "--save_model", *FAST,
    )])
    weights = load_file(str(tmp_path / "kd" / "custom" / f"lr{LR:g}_seed42" / "model" / "model.safetensors"))
    return recorder.steps, weights


def reference_run(student, teacher_dir, task):
    """The textbook loop: no Trainer, no cached logits, nothing of the project's."""
    tok = AutoTokenizer.from_pretrained(student)
    model = AutoModelForSequenceClassification.from_pretrained(student).train()
    t_model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    with open(task / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: LABELLED + UNLABELLED]
    label2id = model.config.label2id
    labels = [label2id[r["label"]] if i < LABELLED else -100 for i, r in enumerate(rows)]
    limit = model.config.max_position_embeddings
    encoded = [tok(r["text"], truncation=True, max_length=min(128, limit)) for r in rows]
    collate = DataCollatorWithPadding(tok)
    micro = [list(range(i, min(i + BATCH, len(rows)))) for i in range(0, len(rows), BATCH)]
    windows = [micro[i : i + ACCUMULATE] for i in range(0, len(micro), ACCUMULATE)]

    no_decay = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    decay = [p for n, p in model.named_parameters()
             if not n.endswith("bias") and not any(n.startswith(m + ".") for m in no_decay)]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, eps=1e-8)
    total = EPOCHS * len(windows)
    warmup = math.ceil(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    steps = []
    for _ in range(EPOCHS):
        for window in windows:
            n_rows = sum(len(mb) for mb in window)
            n_labelled = sum(labels[i] != -100 for mb in window for i in mb)
            kd = task_loss = 0.0
            for mb in window:
                batch = collate([encoded[i] for i in mb])
                y = torch.tensor([labels[i] for i in mb])
                with torch.no_grad():
                    t = t_model(**batch).logits
                s = model(**batch).logits
                log_ps, log_pt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
                kd = kd + (log_pt.exp() * (log_pt - log_ps)).sum() * T**2 / n_rows
                if n_labelled:
                    task_loss = task_loss + F.cross_entropy(s, y, ignore_index=-100, reduction="sum") / n_labelled
            loss = ALPHA_CE * kd + ALPHA_TASK * task_loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            steps.append((float(kd.detach()), float(task_loss.detach()) if n_labelled else 0.0, loss.item()))
    return steps, model.state_dict()


def test_task_distillation_equals_a_plain_loop_step_by_step(tmp_path, monkeypatch, student, confident_teacher,
                                                           custom_task):
    ours, our_weights = project_run(tmp_path, monkeypatch, student, confident_teacher, custom_task)
    ref, ref_weights = reference_run(student, confident_teacher, custom_task)
    assert len(ours) == len(ref) == EPOCHS * 3  # 5 micro-batches: steps of 2, 2 and 1
    assert ref[2][1] == 0.0 and ref[0][1] > 0  # the last step of an epoch has no labelled row
    assert min(ce for ce, _, _ in ref) > 0.05  # the teacher has something to teach
    for step, (got, want) in enumerate(zip(ours, ref)):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), f"step {step + 1}: (ce, task, total) {got} != {want}"
    start = AutoModelForSequenceClassification.from_pretrained(student).state_dict()
    for name, want in ref_weights.items():
        torch.testing.assert_close(our_weights[name], want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    moved = max((ref_weights[n] - start[n]).abs().max().item() for n in start)
    assert moved > 1e-3  # training moved the weights far beyond the tolerance: the agreement is not trivial
