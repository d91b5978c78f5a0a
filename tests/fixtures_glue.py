"""Fixtures of the task tests (registered in conftest.py's pytest_plugins), each built once per test module: a
tiny BERT, a sentence task from the synthetic corpus, that BERT fine-tuned on it, and a tiny RoBERTa classifier
for the same task with a byte-level BPE tokenizer of its own."""

import csv

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

from glue_helpers import FAST, glue_main, task_argv
from train_helpers import BPE_SPECIALS, make_teacher_dir, sentences


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tokenizer_dir):
    folder, _, _ = make_teacher_dir(tmp_path_factory.mktemp("teacher") / "tiny-bert", tokenizer_dir)
    return folder


@pytest.fixture(scope="module")
def custom_task(tmp_path_factory, articles):
    """A sentence task from the synthetic corpus, as csv: does the line mention a year of birth?"""
    folder = tmp_path_factory.mktemp("custom")
    lines = list(sentences(articles))[:240]
    rows = [(line[:200], "born" if "born" in line else "other") for line in lines]
    for name, part in (("train.csv", rows[:200]), ("dev.csv", rows[200:])):
        with open(folder / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["idx", "text", "label"])
            w.writerows((i, t, lab) for i, (t, lab) in enumerate(part))
    return folder


@pytest.fixture(scope="module")
def task_teacher(tmp_path_factory, teacher, custom_task):
    """The tiny BERT fine-tuned on the custom task, saved by run_glue.py --save_model."""
    out = tmp_path_factory.mktemp("task_teacher")
    glue_main(*task_argv(teacher, custom_task, out, "--max_steps", 3, "--save_model", *FAST))
    return out / "custom" / "lr2e-05_seed42" / "model"


@pytest.fixture(scope="module")
def bpe_teacher(tmp_path_factory, custom_task):
    """A tiny RoBERTa sequence classifier for the custom task's labels, with a BPE tokenizer of its own."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("roberta_teacher")
    with open(custom_task / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([r["text"] for r in rows], vocab_size=400, show_progress=False,
                            special_tokens=BPE_SPECIALS["roberta"])
    bpe.save_model(str(folder))
    tok = RobertaTokenizerFast.from_pretrained(str(folder))
    labels = {0: "born", 1: "other"}  # the custom task's labels, sorted
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=40, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, type_vocab_size=1,
                           id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(50)  # confident enough that its logits differ row to row
    model.eval().save_pretrained(folder)
    tok.model_max_length = int(1e30)  # no limit recorded: the model type's (38 positions) applies
    tok.save_pretrained(folder)
    return folder
