"""Teachers whose tokenizer has the same word pieces under other ids (all-mpnet-base-v2's vocabulary is
bert-base-uncased's after four special ids): detected on real rows, the ids mapped, and then every loss that
compares the two models position by position is allowed. Hand-built tokenizers: a BERT WordPiece student and
an MPNet tokenizer over the same pieces shifted by four specials; one piece renamed; sentence pairs (MPNet puts
two separators between the texts)."""

import copy
import csv
import json

import numpy as np
import pytest
import torch
from tokenizers import AddedToken
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    MPNetConfig,
    MPNetForMaskedLM,
    MPNetForSequenceClassification,
    MPNetModel,
    MPNetTokenizerFast,
)

import train
from conftest import input_error
from core import teachers
from glue_helpers import FAST, distil
from scripts import run_glue
from train_helpers import build_distiller, read_metrics, with_args


def shifted_tokenizer(folder, student_folder, rename=None, extra=()):
    """An MPNet tokenizer over the student's vocabulary after four special ids, `rename` ({old: new}) applied and
    the pieces `extra` added."""
    vocab = BertTokenizer.from_pretrained(str(student_folder)).get_vocab()
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
    # all-mpnet-base-v2's tokenizer.json also holds "<unk>" as an added token beside its unk_token "[UNK]": matched
    # as a whole, never a word piece, so it is no piece the student lacks
    mpnet.add_tokens([AddedToken("<unk>", special=True)])
    assert mpnet("<unk>", add_special_tokens=False)["input_ids"] == [mpnet.convert_tokens_to_ids("<unk>")]
    assert teachers.piece_map(student, mpnet, rows)[1] is None
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


# ----------------------------------------------------------------------------------------------------------
# train.py: general distillation from a teacher of the student's pieces under its own ids


@pytest.fixture(scope="module")
def mpnet_encoder(tmp_path_factory, tokenizer_dir):
    """A tiny headless MPNet (as all-mpnet-base-v2 is), 48 wide against the tiny run's 32, its tokenizer the
    run's pieces under MPNet's ids."""
    folder = tmp_path_factory.mktemp("mpnet_encoder")
    tok = shifted_tokenizer(folder, tokenizer_dir)
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=140,
                           pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    return folder


def mpnet_argv(run_files, mpnet_encoder, tokenizer_dir):
    _, argv = run_files
    return with_args(argv, teacher_type="mpnet", teacher_name=mpnet_encoder, tokenizer_name=tokenizer_dir,
                     alpha_ce=0, alpha_cos=0, alpha_att=1, alpha_vv=1)


def test_train_maps_a_teacher_of_the_same_pieces_and_its_relations_equal_the_reindexed_teacher(
        run_files, mpnet_encoder, tokenizer_dir):
    """The mapped teacher's losses equal those of the same teacher with its embedding rows reordered to the
    student's ids (its positions counted as before, from the student's padding id): reading the student's rows
    under its own ids is reading the same text."""
    from transformers.models.mpnet.modeling_mpnet import create_position_ids_from_input_ids

    argv = mpnet_argv(run_files, mpnet_encoder, tokenizer_dir)
    _, mapped, _ = build_distiller(argv)
    assert mapped.teacher_ids is not None
    _, plain, _ = build_distiller(argv)  # the same student (seeded), then the re-indexed teacher without a map
    teacher = copy.deepcopy(mapped.teacher.model)
    emb = teacher.base_model.embeddings
    rows = emb.word_embeddings.weight.data[mapped.teacher_ids]  # student id -> the teacher's row of that piece
    pad = mapped.dataset.spec.special_ids["pad_token"]
    emb.word_embeddings = torch.nn.Embedding.from_pretrained(rows, freeze=True, padding_idx=pad)
    embed, offset = emb.forward, emb.padding_idx - pad  # MPNet numbers its positions from its padding id on

    def forward(input_ids=None, position_ids=None, inputs_embeds=None, **kwargs):
        position_ids = create_position_ids_from_input_ids(input_ids, pad) + offset
        return embed(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)

    emb.forward = forward
    plain.teacher.model, plain.teacher_ids = teacher, None
    for d in (mapped, plain):
        d.student_model.eval()  # no dropout: the two students must compute the same
    dataset = mapped.dataset
    batch = mapped.prepare_batch(*dataset.batch_sequences([dataset[i] for i in range(8)]))
    a, b = mapped.compute_losses(batch), plain.compute_losses(batch)
    assert set(a) >= {"att", "vv", "mlm"} and a["att"] > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    # and the map matters: the teacher fed the student's ids as they are reads other text
    plain.teacher.model, plain.teacher_ids = mapped.teacher.model, None
    assert not torch.allclose(plain.compute_losses(batch)["att"], a["att"])


def test_train_runs_from_a_mapped_teacher_and_records_it(run_files, mpnet_encoder, tokenizer_dir, tmp_path, capsys):
    dump = tmp_path / "run"
    train.main(with_args(mpnet_argv(run_files, mpnet_encoder, tokenizer_dir), dump_path=dump, stop_after_iter=4,
                         log_interval=2))
    records = read_metrics(dump)
    assert sorted(records) == [2, 4] and all(np.isfinite(r["att"]) and r["att"] > 0 for r in records.values())
    params = json.loads((dump / "parameters.json").read_text())
    assert params["teacher_reads"] == "the student's pieces under its own ids (core/teachers.piece_map)"


@pytest.fixture(scope="module")
def mpnet_lm(tmp_path_factory, tokenizer_dir):
    """The tiny MPNet with a masked-LM head: its vocabulary distribution is over its own ids."""
    folder = tmp_path_factory.mktemp("mpnet_lm")
    tok = shifted_tokenizer(folder, tokenizer_dir)
    MPNetForMaskedLM(MPNetConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=140,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("change, expected", [
    ({"alpha_ce": 1}, "orders its vocabulary otherwise"),
    ({"tokenizer_name": None}, "--teacher_type mpnet reads the student's word pieces under its own ids: give "
                               "--tokenizer_name"),
])
def test_train_refuses_what_a_mapped_teacher_cannot_teach(run_files, mpnet_lm, tokenizer_dir, tmp_path, capsys,
                                                         change, expected):
    argv = mpnet_argv(run_files, mpnet_lm, tokenizer_dir)
    if change.get("tokenizer_name", "") is None:
        i = argv.index("--tokenizer_name")
        argv = argv[:i] + argv[i + 2:]
    else:
        argv = with_args(argv, **change)
    dump = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.main(with_args(argv, dump_path=dump))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and expected in err, err
    assert not dump.exists()


def test_train_refuses_a_teacher_whose_pieces_differ_naming_the_row(run_files, tokenizer_dir, tmp_path, capsys):
    """One piece renamed in the teacher's vocabulary: the first data row that holds it is named."""
    folder = tmp_path / "renamed"
    vocab = BertTokenizer.from_pretrained(str(tokenizer_dir)).get_vocab()
    common = next(p for p in sorted(vocab, key=vocab.get) if p.isalpha() and len(p) > 3)
    tok = shifted_tokenizer(folder, tokenizer_dir, rename={common: common + "x"})
    MPNetModel(MPNetConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=140,
                           pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    argv = with_args(mpnet_argv(run_files, folder, tokenizer_dir), dump_path=tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "splits into other pieces or positions" in err and "row " in err, err
    assert "train.py compares the two models position by position, so it needs one tokenization" in err
