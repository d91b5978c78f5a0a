"""Teachers whose tokenizer has the same word pieces under other ids (all-mpnet-base-v2's vocabulary is
bert-base-uncased's after four special ids): detected on real rows, the ids mapped, and then every loss that
compares the two models position by position is allowed. Hand-built tokenizers: a BERT WordPiece student and
an MPNet tokenizer over the same pieces shifted by four specials; one piece renamed; sentence pairs (MPNet puts
two separators between the texts)."""

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertTokenizer, MPNetConfig, MPNetForSequenceClassification, MPNetTokenizerFast

from conftest import input_error
from core import teachers
from glue_helpers import FAST, distil
from scripts import run_glue


def shifted_tokenizer(folder, student_folder, rename=None, extra=()):
    """An MPNet tokenizer over the student's vocabulary after four special ids, `rename` ({old: new}) applied and
    the pieces `extra` added."""
    vocab = AutoTokenizer.from_pretrained(str(student_folder)).get_vocab()
    pieces = [(rename or {}).get(p, p) for p, _ in sorted(vocab.items(), key=lambda item: item[1])]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", *pieces, *extra, "<mask>"]) + "\n")
    tok = MPNetTokenizerFast.from_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return tok


def test_the_same_pieces_under_other_ids_are_mapped_and_one_renamed_piece_is_named(tmp_path, teacher):
    student = BertTokenizer.from_pretrained(str(teacher))
    rows = ["the city was born", "people in the river north", "a year"]
    table, why = teachers.piece_map(student, shifted_tokenizer(tmp_path / "mpnet", teacher), rows)
    assert why is None
    mpnet = MPNetTokenizerFast.from_pretrained(str(tmp_path / "mpnet"))
    for text in rows:  # the map gives the teacher's own ids, specials included ([CLS] -> <s>, [SEP] -> </s>)
        assert table[student(text)["input_ids"]].tolist() == mpnet(text)["input_ids"]
    assert table[student.pad_token_id] == mpnet.pad_token_id and table[student.mask_token_id] == mpnet.mask_token_id
    # one piece named otherwise: the first row that holds it is named, and nothing is mapped
    renamed = shifted_tokenizer(tmp_path / "renamed", teacher, rename={"river": "stream"})
    table, why = teachers.piece_map(student, renamed, rows)
    assert table is None and why.startswith("row 2 ('people in the river north') splits into other pieces")
    # a piece the rows do not use, missing or added: named, and nothing is mapped
    rows_without = ["the city was born"]
    assert teachers.piece_map(student, renamed, rows_without) == (None, "the teacher has no piece 'river' (1 of "
                                                                      "the student's pieces are not its)")
    longer = shifted_tokenizer(tmp_path / "longer", teacher, extra=["riverside"])
    _, why = teachers.piece_map(student, longer, rows_without)
    assert why == "the teacher has a piece the student lacks, 'riverside': it splits some words otherwise"
    # pairs: MPNet separates them with two separators, BERT with one
    table, why = teachers.piece_map(student, mpnet, [("the city", "was born")])
    assert table is None and "a sentence pair: the teacher separates its two texts otherwise" in why


@pytest.fixture(scope="module")
def mpnet_teacher(tmp_path_factory, teacher):
    """A tiny MPNet classifier of the custom task's labels, its tokenizer the student's pieces under MPNet's ids,
    wider than the student (48 against 32), as all-mpnet-base-v2 is than the 3x384 student."""
    folder = tmp_path_factory.mktemp("mpnet_teacher")
    tok = shifted_tokenizer(folder, teacher)
    labels = {0: "born", 1: "other"}
    torch.manual_seed(0)
    MPNetForSequenceClassification(MPNetConfig(
        vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=140, pad_token_id=tok.pad_token_id, id2label=labels,
        label2id={v: k for k, v in labels.items()})).save_pretrained(folder)
    return folder


def test_a_mapped_teacher_teaches_every_loss_and_its_logits_are_its_own(tmp_path, teacher, mpnet_teacher,
                                                                       custom_task):
    proc = distil(teacher, custom_task, mpnet_teacher, tmp_path / "kd", "--alpha_att", 1, "--alpha_vv", 1,
                  "--alpha_hidden", 1, "--alpha_cos", 0, "--logging_steps", 1)
    assert proc.returncode == 0, proc.stderr
    assert "the teacher reads the student's pieces under its own ids (another vocabulary" in proc.stdout
    run = json.loads(next((tmp_path / "kd" / "custom").glob("lr*")).joinpath("results.json").read_text())
    record = run["teacher"]
    assert record["teacher_logits"] == "every step"
    assert record["tokenization"].startswith("the student's pieces under its own ids: another vocabulary")
    assert run["hyper_parameters"]["distillation"]["teacher_tokenizer"] == record["teacher_tokenizer"]
    assert record["alpha_hidden"] == 1.0  # the hidden states through the projection, 32 to 48 wide
    # logit KD alone: the cached logits are the teacher's on its own tokenization of each row, exactly
    proc = distil(teacher, custom_task, mpnet_teacher, tmp_path / "logits", "--teacher_logits_cache",
                  tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    run = json.loads(next((tmp_path / "logits" / "custom").glob("lr*")).joinpath("results.json").read_text())
    with np.load(next((tmp_path / "cache").glob("*.npz"))) as stored:
        cached = torch.from_numpy(stored["logits"])
    assert len(cached) == 50  # 40 labelled rows and 10 only the teacher labels
    model = MPNetForSequenceClassification.from_pretrained(mpnet_teacher).eval()
    tok = AutoTokenizer.from_pretrained(str(mpnet_teacher))
    with open(custom_task / "train.csv", newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)][:50]
    limit = run["hyper_parameters"]["max_seq_length"]  # the student's limit cuts the rows both read
    with torch.no_grad():
        own = torch.cat([model(**tok(t, return_tensors="pt", truncation=True, max_length=limit)).logits
                         for t in texts])
    torch.testing.assert_close(cached, own, rtol=1e-4, atol=1e-5)


def test_pairs_under_a_teacher_that_separates_them_otherwise_are_refused_in_one_line(tmp_path, teacher,
                                                                                    mpnet_teacher, custom_task):
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for name in ("train.csv", "dev.csv"):
        with open(custom_task / name, newline="") as f, open(pairs / name, "w", newline="") as out:
            w = csv.writer(out)
            w.writerow(["idx", "sentence1", "sentence2", "label"])
            w.writerows((r["idx"], "the city", r["text"], r["label"]) for r in csv.DictReader(f))
    argv = ["--model_name_or_path", teacher, "--train_file", pairs / "train.csv", "--validation_file",
            pairs / "dev.csv", "--output_dir", tmp_path / "o", "--teacher_name_or_path", mpnet_teacher,
            "--alpha_att", 1, "--max_steps", 1, *FAST]
    line = input_error(run_glue.main, argv)
    assert "--alpha_att compares the two models position by position, so it needs one tokenization" in line
    assert "a sentence pair: the teacher separates its two texts otherwise" in line
    assert not (tmp_path / "o").exists()
