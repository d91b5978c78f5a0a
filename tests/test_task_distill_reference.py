"""Task distillation pinned to a plain PyTorch loop: run_glue.py's and run_qa.py's one path (the task runner,
the cached teacher logits, the collator, tasks/distill.py's Trainer) against a loop of a few lines written from
the textbook, on tiny models and tasks, dropout off, one seed, fp32. Per step, the KD, task and total losses
and, at the end, every weight agree to float tolerance. For QA the loop takes its windows from qa.features
(pinned in test_qa.py) and writes everything after them itself: each window's softmaxes over its real tokens.

What is pinned, as the loop below spells it out:
- KD: KL(teacher || student) at T, times T^2, averaged over every row of the optimizer step, labelled or not;
- task: cross-entropy averaged over the labelled rows of the optimizer step (none: 0);
- gradient accumulation: the micro-batches of a step weigh as one batch of their rows, so a micro-batch of
  unlabelled rows, or a short last one, changes no other row's weight;
- AdamW with weight decay off biases and LayerNorm, gradients clipped to norm 1, linear warmup over 10% of
  the steps then linear decay (run_glue.py's defaults, BERT's recipe)."""

import csv
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)

from glue_helpers import FAST
from qa_helpers import qa_argv
from scripts import run_glue, run_qa
from tasks import qa, runner
from tasks.runs import finite_check
from train_helpers import tiny_bert_config

ALPHA_CE, ALPHA_TASK, T = 0.5, 0.5, 2.0
LABELLED, UNLABELLED = 11, 7  # 18 rows, batches of 4: micro-batches of 4, 4, 4 (3 labelled), 4 (none), 2 (none)
BATCH, ACCUMULATE, EPOCHS, LR = 4, 2, 2, 1e-3


class Recorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.steps.append((logs.get("loss_ce", 0.0), logs.get("loss_task", 0.0), logs["loss"]))


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


def project_run(tmp_path, monkeypatch, student, teacher_dir, task, *more, recorder=None):
    recorder = recorder or Recorder()
    monkeypatch.setattr(runner, "callbacks", lambda: [finite_check(), recorder])
    run_glue.main([str(a) for a in (
        "--model_name_or_path", student, "--train_file", task / "train.csv", "--validation_file", task / "dev.csv",
        "--output_dir", tmp_path / "kd", "--teacher_name_or_path", teacher_dir, "--alpha_ce", ALPHA_CE,
        "--alpha_task", ALPHA_TASK, "--temperature", T, "--max_train_samples", LABELLED,
        "--unlabeled_samples", UNLABELLED, "--per_device_train_batch_size", BATCH,
        "--gradient_accumulation_steps", ACCUMULATE, "--num_train_epochs", EPOCHS, "--learning_rate", LR,
        "--train_sampling_strategy", "sequential", "--logging_steps", 1, "--save_model", *FAST, *more,
    )])
    weights = load_file(str(tmp_path / "kd" / "custom" / f"lr{LR:g}_seed42" / "model" / "model.safetensors"))
    return recorder.steps, weights


def optimizer_and_schedule(model, total):
    """run_glue.py's and run_qa.py's defaults, written out: AdamW (weight decay 0.01 off biases and LayerNorm),
    linear warmup over 10% of the steps, then linear decay."""
    no_decay = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    decay = [p for n, p in model.named_parameters()
             if not n.endswith("bias") and not any(n.startswith(m + ".") for m in no_decay)]
    rest = [p for p in model.parameters() if all(p is not q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, eps=1e-8)
    warmup = math.ceil(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    return opt, sched


def optimizer_step(model, opt, sched, loss):
    """Backward, gradients clipped to norm 1, AdamW's step, the schedule's step."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()


def reference_run(student, teacher_dir, task, projection=None, stages=None):
    """The textbook loop: no Trainer, no cached logits, nothing of the project's. `stages`: [(epochs, {loss:
    weight})], each stage with a fresh optimizer and schedule (default: one of EPOCHS, KD and the task loss);
    "hidden" is TinyBERT's hidden-state MSE through `projection` (its initial weights), trained with the
    student. Each step's (ce, task, total[, hidden]), a loss outside its stage 0."""
    stages = stages or [(EPOCHS, {"ce": ALPHA_CE, "task": ALPHA_TASK})]
    tok = AutoTokenizer.from_pretrained(student)
    model = AutoModelForSequenceClassification.from_pretrained(student).train()
    t_model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    if projection is not None:
        model.add_module("hidden_projection", projection)  # trained beside the student, in the same groups
    with open(task / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: LABELLED + UNLABELLED]
    label2id = model.config.label2id
    labels = [label2id[r["label"]] if i < LABELLED else -100 for i, r in enumerate(rows)]
    limit = model.config.max_position_embeddings
    encoded = [tok(r["text"], truncation=True, max_length=min(128, limit)) for r in rows]
    collate = DataCollatorWithPadding(tok)
    micro = [list(range(i, min(i + BATCH, len(rows)))) for i in range(0, len(rows), BATCH)]
    windows = [micro[i : i + ACCUMULATE] for i in range(0, len(micro), ACCUMULATE)]

    steps = []
    for epochs, weights in stages:
        opt, sched = optimizer_and_schedule(model, epochs * len(windows))
        for _ in range(epochs):
            for window in windows:
                n_rows = sum(len(mb) for mb in window)
                n_labelled = sum(labels[i] != -100 for mb in window for i in mb)
                parts = {"ce": 0.0, "task": 0.0, "hidden": 0.0}
                for mb in window:
                    batch = collate([encoded[i] for i in mb])
                    y = torch.tensor([labels[i] for i in mb])
                    with torch.no_grad():
                        t_out = t_model(**batch, output_hidden_states=True)
                    s_out = model(**batch, output_hidden_states=True)
                    s, t = s_out.logits, t_out.logits
                    log_ps, log_pt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
                    parts["ce"] = parts["ce"] + (log_pt.exp() * (log_pt - log_ps)).sum() * T**2 / n_rows
                    if n_labelled:
                        parts["task"] = parts["task"] + F.cross_entropy(s, y, ignore_index=-100,
                                                                        reduction="sum") / n_labelled
                    if "hidden" in weights:  # TinyBERT: embeddings to embeddings, student layer m to m * N / M
                        real = batch["attention_mask"].bool()
                        m, n = model.config.num_hidden_layers, t_model.config.num_hidden_layers
                        for layer in range(m + 1):
                            h_s = projection(s_out.hidden_states[layer][real])
                            h_t = t_out.hidden_states[layer * n // m][real]
                            parts["hidden"] = parts["hidden"] + ((h_s - h_t) ** 2).mean() * len(mb) / n_rows
                loss = sum(w * parts[name] for name, w in weights.items())  # a loss outside the stage: no gradient
                optimizer_step(model, opt, sched, loss)
                shown = {k: float(torch.as_tensor(v).detach()) if k in weights else 0.0 for k, v in parts.items()}
                step = (shown["ce"], shown["task"], loss.item())
                steps.append(step + ((shown["hidden"],) if projection is not None else ()))
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
    moved = max((ref_weights[n] - start[n]).abs().max().item() for n in ref_weights)
    assert moved > 1e-3  # training moved the weights far beyond the tolerance: the agreement is not trivial


class HiddenRecorder(Recorder):
    """Also each step's hidden-state loss, and the projection's weights before and after training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.projection_start = {k: v.clone() for k, v in model.hidden_projection.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.projection_end = {k: v.clone() for k, v in model.hidden_projection.state_dict().items()}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.steps.append((logs.get("loss_ce", 0.0), logs.get("loss_task", 0.0), logs["loss"],
                               logs.get("loss_hidden", 0.0)))


@pytest.mark.parametrize("two_stages", [False, True])
def test_hidden_state_mse_through_a_projection_equals_a_plain_loop(tmp_path, monkeypatch, student, confident_teacher,
                                                                   custom_task, two_stages):
    """--alpha_hidden with a teacher twice as deep and 1.5 times as wide: TinyBERT's W_h is trained with the
    student (the same steps, losses and weights as the loop), and the saved model leaves it out. With
    --intermediate_epochs 1, TinyBERT's two stages: an epoch of the hidden-state loss alone, then EPOCHS of KD
    and the task loss, each stage with its own optimizer and schedule, as two loops one after the other."""
    labels = AutoModelForSequenceClassification.from_pretrained(student).config.id2label
    tok = AutoTokenizer.from_pretrained(confident_teacher)
    config = tiny_bert_config(len(tok), layers=4, hidden=48)
    config.update(dict(id2label=labels, label2id={v: k for k, v in labels.items()}))
    torch.manual_seed(3)
    wide = tmp_path / "wide_teacher"
    BertForSequenceClassification(config).save_pretrained(wide)
    tok.save_pretrained(wide)
    alpha, logits = 0.3, {"ce": ALPHA_CE, "task": ALPHA_TASK}
    stages = [(1, {"hidden": alpha}), (EPOCHS, logits)] if two_stages else [(EPOCHS, {**logits, "hidden": alpha})]
    recorder = HiddenRecorder()
    ours, our_weights = project_run(tmp_path, monkeypatch, student, wide, custom_task, "--alpha_hidden", alpha,
                                    *(["--intermediate_epochs", 1] if two_stages else []), recorder=recorder)
    assert not any(k.startswith("hidden_projection") for k in our_weights)  # the saved student is the student
    projection = torch.nn.Linear(32, 48)
    projection.load_state_dict(recorder.projection_start)
    ref, ref_weights = reference_run(student, wide, custom_task, projection, stages)
    assert len(ours) == len(ref) == sum(epochs for epochs, _ in stages) * 3
    assert min(h for *_, h in ref[:3]) > 0.05  # the hidden states differ: the loss has something to teach
    if two_stages:  # the first epoch's steps train the hidden states alone, the rest the logits alone
        assert all(ce == 0 and h > 0 for ce, _, _, h in ref[:3]) and all(ce > 0 and h == 0 for ce, _, _, h in ref[3:])
        record = json.loads((tmp_path / "kd" / "custom" / f"lr{LR:g}_seed42" / "results.json").read_text())["teacher"]
        assert record["teacher_logits"] == "every step of the first stage, computed once for the second"
    for step, (got, want) in enumerate(zip(ours, ref)):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), f"step {step + 1}: (ce, task, total, hidden) {got}"
    for name, want in ref_weights.items():
        got = recorder.projection_end[name.split(".", 1)[1]] if name.startswith("hidden_projection.") else \
            our_weights[name]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    moved = (recorder.projection_end["weight"] - recorder.projection_start["weight"]).abs().max().item()
    assert moved > 1e-3  # the projection was trained, not only applied


# ----------------------------------------------------------------------------------------------------------
# Question answering: the span losses over each window's real tokens, KD on the start and end distributions

QUESTIONS = 9  # their windows make micro-batches of 4 whose steps of 2 end short (checked below)


def qa_models(tmp_path, tokenizer_dir):
    """(student, confident teacher): two tiny span models of other weights, dropout off, saved with the tokenizer."""
    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    folders = []
    for name, seed, scale in (("student", 1, 1.0), ("teacher", 2, 30.0)):
        config = tiny_bert_config(len(tok), layers=2)
        config.update(dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
        torch.manual_seed(seed)
        model = BertForQuestionAnswering(config)
        with torch.no_grad():
            model.qa_outputs.weight.mul_(scale)  # the teacher sure of its spans, so that KD weighs
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        folders.append(tmp_path / name)
    return folders


def qa_reference_run(student, teacher_dir, train_file, transfer=(), alpha_ce=ALPHA_CE, alpha_task=ALPHA_TASK):
    """`transfer`: questions only the teacher answers, their windows after the gold ones: KD alone. alpha_ce 0:
    no teacher (its KD is not counted)."""
    tok = AutoTokenizer.from_pretrained(student)
    model = AutoModelForQuestionAnswering.from_pretrained(student).train()
    t_model = AutoModelForQuestionAnswering.from_pretrained(teacher_dir).eval()
    examples = qa.load_split(str(train_file), "train", False, True, QUESTIONS).examples
    cols = qa.features(tok, examples, 64, 16, 24, training=True)
    gold = len(cols["input_ids"])
    if transfer:
        more = qa.features(tok, transfer, 64, 16, 24, training=True)
        cols = {k: cols[k] + more[k] for k in ("input_ids", "token_type_ids", "attention_mask", "start_positions",
                                                 "end_positions")}
    n = len(cols["input_ids"])
    encoded = [{k: cols[k][i] for k in ("input_ids", "token_type_ids", "attention_mask")} for i in range(n)]
    collate = DataCollatorWithPadding(tok)
    micro = [list(range(i, min(i + BATCH, n))) for i in range(0, n, BATCH)]
    windows = [micro[i : i + ACCUMULATE] for i in range(0, len(micro), ACCUMULATE)]
    assert len(micro[-1]) < BATCH or len(windows[-1]) < ACCUMULATE  # a short last step: the weighing shows

    opt, sched = optimizer_and_schedule(model, EPOCHS * len(windows))
    steps = []
    for _ in range(EPOCHS):
        for window in windows:
            n_rows = sum(len(mb) for mb in window)
            n_gold = sum(i < gold for mb in window for i in mb)  # the span loss: a mean over the gold windows
            kd = span = 0.0
            for mb in window:
                batch = collate([encoded[i] for i in mb])
                with torch.no_grad():
                    t = t_model(**batch)
                s = model(**batch)
                for row, i in enumerate(mb):
                    length = len(encoded[i]["input_ids"])
                    for s_x, t_x, answer in ((s.start_logits, t.start_logits, cols["start_positions"][i]),
                                             (s.end_logits, t.end_logits, cols["end_positions"][i])):
                        if i < gold:  # real tokens only
                            span = span - F.log_softmax(s_x[row, :length], -1)[answer] / 2 / n_gold
                        log_ps = F.log_softmax(s_x[row, :length] / T, -1)
                        log_pt = F.log_softmax(t_x[row, :length] / T, -1)
                        kd = kd + (log_pt.exp() * (log_pt - log_ps)).sum() * T**2 / 2 / n_rows
            kd = kd if alpha_ce else 0.0
            loss = alpha_ce * kd + alpha_task * span
            optimizer_step(model, opt, sched, loss)
            steps.append(tuple(float(torch.as_tensor(x).detach()) for x in (kd, span, loss)))
    return steps, model.state_dict()


@pytest.mark.parametrize("mode", ["kd", "transfer", "alone"])
def test_qa_distillation_equals_a_plain_loop_step_by_step(tmp_path, monkeypatch, tokenizer_dir, syn_qa, mode):
    """KD and the span loss; with --transfer_file, questions only the teacher answers: their windows weigh in
    KD's mean over every window of a step, never in the span loss's mean over the gold ones. Alone (no
    teacher), the span loss is the whole loss, at weight 1."""
    student, teacher_dir = qa_models(tmp_path, tokenizer_dir)
    recorder = Recorder()
    monkeypatch.setattr(runner, "callbacks", lambda: [finite_check(), recorder])
    out = tmp_path / "kd"
    train_file = syn_qa / "v1" / "train-v1.1.json"
    more, extra, transfer = [], (), mode == "transfer"
    if transfer:  # other questions of the same file, their answers in it (the run must not read them)
        more = qa.load_split(str(train_file), "train", False, True).examples[QUESTIONS : QUESTIONS + 4]
        records = [{"id": f"t{e.id}", "question": e.question, "context": e.context,
                    "answers": {"text": [t for t, _ in e.answers], "answer_start": [a for _, a in e.answers]}}
                   for e in more]
        (tmp_path / "transfer.json").write_text(json.dumps(records))
        extra = ("--transfer_file", tmp_path / "transfer.json")
    alone = mode == "alone"
    teach = () if alone else ("--teacher_name_or_path", teacher_dir, "--alpha_ce", ALPHA_CE, "--alpha_squad",
                              ALPHA_TASK, "--temperature", T, "--teacher_logits_cache", "off")
    argv = qa_argv(student, syn_qa, out, *teach, "--max_train_samples", QUESTIONS,
                   "--per_device_train_batch_size", BATCH, "--gradient_accumulation_steps", ACCUMULATE,
                   "--num_train_epochs", EPOCHS, "--learning_rate", LR, "--train_sampling_strategy", "sequential",
                   "--logging_steps", 1, "--save_model", *extra)
    run_qa.main([str(a) for a in argv])
    ours = recorder.steps
    our_weights = load_file(str(out / "squad" / f"lr{LR:g}_seed42" / "model" / "model.safetensors"))
    ref, ref_weights = qa_reference_run(student, teacher_dir, train_file, [replace(e, answers=[]) for e in more],
                                        *((0.0, 1.0) if alone else ()))
    if transfer:
        teacher = json.loads((out / "squad" / f"lr{LR:g}_seed42" / "results.json").read_text())["teacher"]
        assert teacher["transfer_questions_used"] == 4 and teacher["transfer_file"].endswith("transfer.json")
    assert len(ours) == len(ref) > 2
    assert alone or min(ce for ce, _, _ in ref) > 0.05  # the teacher has something to teach
    for step, (got, want) in enumerate(zip(ours, ref)):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), f"step {step + 1}: (ce, span, total) {got} != {want}"
    start = AutoModelForQuestionAnswering.from_pretrained(student).state_dict()
    # The span head's bias shifts every token's score alike, which no softmax sees: its gradient is 0 up to float
    # noise, which Adam's normalised steps turn into moves of up to the learning rate. It is left out.
    del ref_weights["qa_outputs.bias"]
    for name, want in ref_weights.items():
        # the teacher's logits were computed in batches padded otherwise (sorted by length): float noise, which
        # Adam's normalised steps carry into weights whose gradient is near 0, well under the 1e-3 they moved
        torch.testing.assert_close(our_weights[name], want, rtol=1e-4, atol=5e-5, msg=lambda m, n=name: f"{n}: {m}")
    moved = max((ref_weights[n] - start[n]).abs().max().item() for n in ref_weights)
    assert moved > 1e-3  # training moved the weights far beyond the tolerance: the agreement is not trivial
