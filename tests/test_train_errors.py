"""Bad input: one-line errors, exit status 2, nothing written."""

import json

import numpy as np
import pytest
import torch

import train
from conftest import run_script, write_bert_vocab
from train_helpers import (
    make_headless_teacher_dir,
    read_metrics,
    tiny_student_config,
    with_args,
    write_data,
    write_student_config,
)
from training import data_format, train_args


def fails(argv, tmp_path, capsys, match):
    """train.main exits with status 2, prints one matching error line, and creates no run folder."""
    dump = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.main(with_args(argv, dump_path=dump))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert err.startswith("train.py: error: ")
    assert match in err, err
    assert not dump.exists()
    return err


def test_missing_data_and_token_count_files(run_files, tmp_path, capsys):
    _, argv = run_files
    fails(with_args(argv, data_file=tmp_path / "nope.pickle"), tmp_path, capsys, "nope.pickle does not exist")
    fails(with_args(argv, token_counts=tmp_path / "nope.pickle"), tmp_path, capsys, "scripts/token_counts.py")


def test_data_from_another_tokenizer(run_files, tmp_path, capsys, articles):
    _, argv = run_files
    other_tok = write_bert_vocab(tmp_path / "tok" / "tiny-bert", ["the", "city", "river"])
    data_file, _ = write_data(tmp_path / "other", other_tok, articles[:20])
    fails(with_args(argv, data_file=data_file), tmp_path, capsys, "binarized with a vocabulary of")

    # same vocabulary size, but another [MASK] id: the metadata tells
    b = data_format.load_binarized(argv[argv.index("--data_file") + 1])
    meta = dict(b.meta, special_token_ids=dict(b.meta["special_token_ids"], mask_token=7))
    swapped = tmp_path / "swapped.pickle"
    data_format.save_binarized(swapped, b.token_ids, b.offsets, meta)
    fails(with_args(argv, data_file=swapped), tmp_path, capsys, "mask_token id 7")

    # upstream's list of arrays has no metadata: ids past the vocabulary are still caught
    import pickle

    upstream = tmp_path / "upstream.pickle"
    upstream.write_bytes(pickle.dumps([np.array([2, 5, 99999, 3], dtype=np.int32)] * 3))
    fails(with_args(argv, data_file=upstream), tmp_path, capsys, "token ids >= the vocabulary size")

    counts = tmp_path / "counts.pickle"
    data_format.save_token_counts(counts, np.ones(50, dtype=np.int64), {})
    fails(with_args(argv, token_counts=counts), tmp_path, capsys, "counts 50 token ids but the vocabulary has")


def test_student_that_does_not_fit_the_teacher(run_files, tmp_path, capsys, tokenizer_dir):
    folder, argv = run_files
    n_vocab = json.loads((folder / "student.json").read_text())["vocab_size"]
    wide = write_student_config(tmp_path / "wide.json", n_vocab, hidden=64)
    fails(with_args(argv, student_config=wide), tmp_path, capsys, "hidden size 64 differs from the teacher's 32")
    big_vocab = write_student_config(tmp_path / "vocab.json", n_vocab + 10)
    fails(with_args(argv, student_config=big_vocab), tmp_path, capsys, f"vocab_size {n_vocab + 10}")

    # a student checkpoint made for 3 layers, with a 2-layer config
    from transformers import DistilBertForMaskedLM

    three = DistilBertForMaskedLM(tiny_student_config(n_vocab, layers=3))
    ckpt = tmp_path / "three.pth"
    torch.save(three.state_dict(), ckpt)
    fails(with_args(argv, student_pretrained_weights=ckpt), tmp_path, capsys, "holds 3 transformer layers")
    fails(with_args(argv, student_pretrained_weights=tmp_path / "none.pth"), tmp_path, capsys, "run scripts/extract")


def test_existing_dump_path_needs_force(run_files, tmp_path, capsys):
    _, argv = run_files
    dump = tmp_path / "run"
    dump.mkdir()
    (dump / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as e:
        train.main(with_args(argv, dump_path=dump))
    assert e.value.code == 2 and "--force" in capsys.readouterr().err
    assert (dump / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--alpha_mlm", "0"], "--mlm needs --alpha_mlm > 0"),
        (["--alpha_clm", "0.5"], "exclusive"),
        (["--alpha_ce", "-1"], "must be >= 0"),
        (["--alpha_ce", "0", "--alpha_mlm", "0", "--alpha_cos", "0", "--alpha_mse", "0"], "all loss weights are 0"),
        (["--word_mask", "0.5"], "must sum to 1"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--teacher_name", "none"], "--alpha_ce 0 --alpha_cos 0"),
        (["--student_type", "gpt2"], "MLM needs a distilbert/roberta student"),
        (["--freeze_token_type_embds"], "roberta students only"),
        (["--fp16", "--bf16"], "exclusive"),
        (["--teacher_layer", "0"], "--teacher_layer counts the teacher's layers from 1"),  # 0 was the last, silently
        (["--teacher_layer", "-1", "--alpha_att", "1"], "from 1 (the first)"),
        (["--alpha_ce", "nan"], "argument --alpha_ce: must be a finite number, got nan"),  # NaN was a weight of 0
        (["--alpha_att", "nan"], "argument --alpha_att: must be a finite number"),
        (["--alpha_cos", "inf"], "argument --alpha_cos: must be a finite number, got inf"),
        (["--alpha_vv", "-1"], "loss weights must be >= 0, got --alpha_vv -1.0"),
        (["--temperature", "nan"], "argument --temperature: must be a finite number"),
    ],
)
def test_rejected_argument_combinations(run_files, tmp_path, capsys, extra, match):
    _, argv = run_files
    fails(argv + extra, tmp_path, capsys, match)  # argparse: a repeated option's last value wins


def test_cli_error_is_one_line_with_status_2(run_files, tmp_path):
    _, argv = run_files
    proc = run_script("train.py", *with_args(argv, dump_path=tmp_path / "run"), "--alpha_mlm", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train.py: error: --mlm needs --alpha_mlm > 0 (or a relation loss: --alpha_att/qq/kk/vv)"
    ]
    assert not (tmp_path / "run").exists()


def test_relation_flags_without_a_relation_loss_are_warned_about(run_files, tmp_path, caplog):
    _, argv = run_files
    flags = ["--teacher_layer", "2", "--relation_heads", "2"]
    train.main(with_args(argv + flags, dump_path=tmp_path / "run", stop_after_iter=1))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["--teacher_layer and --relation_heads: ignored, only the relation losses (--alpha_att/qq/kk/vv) "
                      "use them"]
    assert (tmp_path / "run" / "parameters.json").is_file()  # and the run went on

    caplog.clear()
    train_args.sanity_checks(train_args.parse_args(with_args(argv + flags, dump_path=tmp_path / "x", alpha_vv=1)))
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]


@pytest.fixture(scope="module")
def headless_teacher(tmp_path_factory, tokenizer_dir):
    """A BertModel teacher: the tiny run's teacher shape, no masked-LM head."""
    return make_headless_teacher_dir(tmp_path_factory.mktemp("headless") / "tiny-bert", tokenizer_dir)[0]


@pytest.mark.parametrize("losses", [{}, {"alpha_ce": 0, "alpha_mse": 1}])
def test_a_teacher_without_mlm_head_refuses_kd_and_mse(run_files, headless_teacher, tmp_path, capsys, losses):
    _, argv = run_files
    err = fails(with_args(argv, teacher_name=headless_teacher, **losses), tmp_path, capsys, "has no masked-LM head")
    assert "--alpha_ce and --alpha_mse would learn from a random head" in err
    assert "--alpha_cos" in err and "--alpha_att/qq/kk/vv" in err and "cls.predictions.bias" in err


def test_a_teacher_without_mlm_head_teaches_cosine_and_relations(run_files, headless_teacher, tmp_path):
    _, argv = run_files
    dump = tmp_path / "run"
    argv = with_args(argv, teacher_name=headless_teacher, alpha_ce=0, alpha_att=1, alpha_vv=1, log_interval=2)
    train.main(with_args(argv, dump_path=dump, stop_after_iter=4))  # 2 optimizer steps
    records = read_metrics(dump)
    assert sorted(records) == [2, 4]
    for r in records.values():
        assert all(np.isfinite(r[k]) and r[k] > 0 for k in ("cos", "att", "vv", "mlm")), r
