"""Faults that gave a wrong result with exit 0, or a traceback, or a state no rerun repairs. Each
test is named after the case a fault probe hit, and covers the other members of its class (another array
of the same file, another script, another flag)."""

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_data_checks
from conftest import input_error, run_main, write_bert_vocab
from core import files, loading
from core.errors import finite_float
from pipeline_helpers import binarize, count, train_argv, train_error, vocab_size
from scripts import binarized_data, evaluate, fill_mask, token_counts
from scripts.extract import distilbert as extract_bert, student as extract_student
from train_helpers import (
    make_bpe_teacher,
    tiny_bert_config,
    tiny_student_config,
    with_args,
    write_student_config,
)
from training import data_checks, data_format

# The fixtures `corpus` (a text file) and `teacher_dir` (a tiny BERT): tests/fixtures_train.py


# -- 1. silently wrong results -------------------------------------------------------------------------------


def test_a_held_out_file_that_overlaps_the_training_data(tmp_path, corpus, tokenizer_dir, teacher_dir):
    train_file, valid_file = binarize(tmp_path, corpus, tokenizer_dir, "--valid_size", 20)
    counts = count(train_file, tmp_path / "counts.pickle", vocab_size(tokenizer_dir))
    argv = train_argv(tmp_path, train_file, counts, teacher_dir, tokenizer_dir)
    old_valid = valid_file.read_bytes()
    # the same command without a held-out part: the old held-out file is removed, not left to overlap
    binarize(tmp_path, corpus, tokenizer_dir, "--valid_size", 0)
    assert not valid_file.exists()
    # a copy of it put back (or kept elsewhere beside the folder) is refused as stale, by every reader
    valid_file.write_bytes(old_valid)
    with pytest.raises(data_format.InputError, match="is stale: .* has been binarized again"):
        data_format.load_binarized(valid_file)
    assert "is stale" in train_error(with_args(argv, valid_file=valid_file))
    # variant: a held-out manifest of the current shuffle whose positions overlap the training file's
    binarize(tmp_path, corpus, tokenizer_dir, "--valid_size", 20)
    record = json.loads(train_file.read_text())  # the manifest is JSON
    record["order"] = [0, 40]  # 40 positions: 20 held out, and the training file's first 20
    overlapping = tmp_path / "overlapping.valid.pickle"
    overlapping.write_text(json.dumps(record))
    line = train_error(with_args(argv, valid_file=overlapping))
    assert "shares 20 of its 40 sequences with" in line and "not held out" in line
    assert not (tmp_path / "run").exists()
    # the same check in scripts/evaluate.py, which finds the training file through its token counts
    line = input_error(evaluate.main, ["--data_file", overlapping, "--token_counts", counts, "--model", teacher_dir,
                                       "--output", tmp_path / "eval.json"])
    assert "shares 20 of its 40 sequences with" in line and not (tmp_path / "eval.json").exists()
    # the proper held-out file passes both
    data_checks.check_held_out(train_file, data_format.load_binarized(train_file), valid_file,
                           data_format.load_binarized(valid_file))


def damage(folder, name, change):
    """Change one .npy array of a shards folder in place, keeping its size."""
    path = folder / name
    array = np.load(path)
    change(array)
    np.save(path, array)


DAMAGE = {  # what a probe did to an array, keeping its size -> the words of the refusal
    "offsets_moved_up": ("offsets.npy", lambda a: a.__setitem__(len(a) // 2, a[len(a) // 2] + 5000), "decreases"),
    "offsets_moved_by_one": ("offsets.npy", lambda a: a.__setitem__(len(a) // 2, a[len(a) // 2] + 1),
                             "disagree on where sequences end"),
    "lengths_changed": ("00000.lengths.npy", lambda a: a.__setitem__(3, a[3] + 1), "disagree on where sequences end"),
    "order_repeats": ("order.npy", lambda a: a.__setitem__(1, a[0]), "order.npy repeats sequences"),
    "order_out_of_range": ("order.npy", lambda a: a.__setitem__(2, len(a) + 7), "order.npy holds sequence"),
    "order_swapped_is_fine": ("order.npy", lambda a: a.__setitem__(slice(0, 2), a[[1, 0]]), None),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_that_keeps_array_sizes(tmp_path, corpus, tokenizer_dir, teacher_dir, case):
    name, change, words = DAMAGE[case]
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir)
    counts = count(train_file, tmp_path / "counts.pickle", vocab_size(tokenizer_dir))
    damage(data_format.shards_folder(train_file), name, change)
    if words is None:  # a permutation still: nothing to refuse
        assert len(data_format.load_binarized(train_file)) > 0
        return
    with pytest.raises(data_format.InputError, match=f"is damaged: .*{words}"):
        data_format.load_binarized(train_file)
    assert words in train_error(train_argv(tmp_path, train_file, counts, teacher_dir, tokenizer_dir))
    assert words in input_error(token_counts.main, ["--data_file", train_file, "--token_counts_dump",
                                                    tmp_path / "c2.pickle", "--vocab_size", 400])
    assert not (tmp_path / "run").exists() and not (tmp_path / "c2.pickle").exists()


def test_token_ids_beyond_the_vocabulary(tmp_path, corpus, tokenizer_dir, teacher_dir):
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir)
    counts = count(train_file, tmp_path / "counts.pickle", vocab_size(tokenizer_dir))
    damage(data_format.shards_folder(train_file), "00000.tokens.npy", lambda a: a.__setitem__(5, 60000))
    assert "holds token ids >= the vocabulary size" in train_error(
        train_argv(tmp_path, train_file, counts, teacher_dir, tokenizer_dir))
    line = input_error(token_counts.main, ["--data_file", train_file, "--token_counts_dump", tmp_path / "c2.pickle",
                                           "--vocab_size", vocab_size(tokenizer_dir)])
    assert "holds token id 60000, outside --vocab_size" in line


def test_token_counts_of_another_vocabulary_of_the_same_size(tmp_path, corpus, tokenizer_dir, teacher_dir):
    train_file, _ = binarize(tmp_path / "ours", corpus, tokenizer_dir)
    vocab = (tokenizer_dir / "vocab.txt").read_text().split("\n")[:-1]
    other = write_bert_vocab(tmp_path / "swapped" / tokenizer_dir.name, [])
    (other / "vocab.txt").write_text("\n".join(vocab[:-2] + [vocab[-1], vocab[-2]]) + "\n")  # two words trade ids
    their_file, _ = binarize(tmp_path / "theirs", corpus, other)
    their_counts = count(their_file, tmp_path / "their_counts.pickle", len(vocab))
    argv = train_argv(tmp_path, train_file, their_counts, teacher_dir, tokenizer_dir)
    assert "counts the ids of another vocabulary of the same size" in train_error(argv)
    line = input_error(evaluate.main, ["--data_file", train_file, "--token_counts", their_counts, "--model",
                                       teacher_dir, "--output", tmp_path / "eval.json"])
    assert "counts the ids of another vocabulary of the same size" in line
    # counts of this vocabulary pass
    ours = count(train_file, tmp_path / "our_counts.pickle", len(vocab))
    assert json.dumps(data_format.load_token_counts(ours)[1]["vocab_digest"])


# -- 2. tracebacks and stuck states --------------------------------------------------------------------------


def truncate_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def break_header(path):
    data = bytearray(path.read_bytes())
    data[:8] = b"\x00" * 8
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("array,harm", [("tokens", truncate_half), ("tokens", break_header),
                                        ("lengths", truncate_half), ("lengths", break_header)])
def test_a_truncated_shard_is_repaired(tmp_path, corpus, tokenizer_dir, array, harm):
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir, "--shard_mb", 0.002)
    before = [s.tolist() for s in data_format.load_binarized(train_file).sequences()]
    folder = data_format.shards_folder(train_file)
    harm(folder / f"00001.{array}.npy")
    with pytest.raises(data_format.InputError, match="damaged|do not match"):
        data_format.load_binarized(train_file)
    binarize(tmp_path, corpus, tokenizer_dir, "--shard_mb", 0.002)  # the rerun the error message asks for
    assert [s.tolist() for s in data_format.load_binarized(train_file).sequences()] == before


def test_float_flags_refuse_nan_and_infinity_in_every_script(tmp_path, corpus, tokenizer_dir, teacher_dir):
    assert finite_float("2.5") == 2.5 and finite_float("-1e-3") == -1e-3
    root = Path(__file__).resolve().parents[1]
    code = [p for d in ("", "scripts", "scripts/extract", "benchmarks") for p in (root / d).glob("*.py")]
    # every float flag goes through finite_float (HfArgumentParser's are checked by tasks/arguments.py / task_distill)
    assert [p.name for p in code if re.search(r"type=float\b", p.read_text())] == []
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir)
    counts = count(train_file, tmp_path / "counts.pickle", vocab_size(tokenizer_dir))
    argv = train_argv(tmp_path, train_file, counts, teacher_dir, tokenizer_dir)
    for flag in ("temperature", "learning_rate", "alpha_ce", "mlm_mask_prop", "max_grad_norm"):
        for bad in ("nan", "inf", "-inf"):
            assert f"argument --{flag}: must be a finite number" in train_error([*argv, f"--{flag}={bad}"])
    for flag in ("mlm_smoothing", "word_mask"):
        line = input_error(evaluate.main, ["--data_file", train_file, "--token_counts", counts, "--model",
                                           teacher_dir, f"--{flag}", "nan"])
        assert f"argument --{flag}: must be a finite number" in line
    line = input_error(binarized_data.main, ["--file_path", corpus, "--shard_mb", "inf"])
    assert "--shard_mb: must be positive and finite" in line
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_the_dump_is_named_a_folder(tmp_path, tokenizer_dir):
    line = input_error(binarized_data.main, ["--file_path", tmp_path, "--tokenizer_name", tokenizer_dir,
                                             "--dump_file", tmp_path / "out" / "bin"])
    assert f"--file_path {tmp_path} is a folder" in line and not (tmp_path / "out").exists()


def test_format_versions_are_named_as_read(tmp_path, corpus, tokenizer_dir):
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir)
    record = json.loads(train_file.read_text())
    assert record["format_version"] == 2 and record["kind"] == "binarized_text"
    # a manifest pickled by an earlier version reads as the JSON one does
    pickled = tmp_path / "pickled.pickle"
    pickled.write_bytes(pickle.dumps(record))
    a, b = data_format.load_binarized(train_file), data_format.load_binarized(pickled)
    assert a.meta == b.meta and [x.tolist() for x in a.sequences()] == [x.tolist() for x in b.sequences()]
    for damage, message in ((lambda r: {**r, "format_version": 3}, "format version 3; this code reads 1 and 2"),
                            (lambda r: {**r, "kind": "token_counts"}, "holds 'token_counts' data, but")):
        train_file.write_text(json.dumps(damage(record)))
        with pytest.raises(data_format.InputError, match=message):
            data_format.load_binarized(train_file)
    train_file.write_text(json.dumps(record)[:-20])  # cut short
    with pytest.raises(data_format.InputError, match="is truncated or damaged \\(not a whole JSON manifest"):
        data_format.load_binarized(train_file)
    train_file.write_text(json.dumps(record))
    record = pickle.loads(pickled.read_bytes())
    record["format_version"] = 3
    pickled.write_bytes(pickle.dumps(record))
    with pytest.raises(data_format.InputError, match="format version 3; this code reads 1 and 2"):
        data_format.load_binarized(pickled)


def test_temporary_files_of_a_living_writer_are_left_alone(tmp_path):
    """Two commands writing one file (two --shard i/n runs finishing together): neither deletes the other's
    temporary file; a dead process's is removed."""
    import os
    import subprocess
    import sys

    target = tmp_path / "offsets.npy"
    with files.atomic_write(target) as f:  # this process's own, mid-write
        mine = next(tmp_path.glob(".offsets.npy.*.tmp"))
        assert mine.name.startswith(f".offsets.npy.{files.HOST}.{os.getpid()}.") and mine.exists()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        gone = tmp_path / f".offsets.npy.{files.HOST}.{dead}.abcd.tmp"
        gone.write_text("left by a killed run")
        other_host = tmp_path / ".offsets.npy.elsewhere.1.abcd.tmp"
        other_host.write_text("another machine's run, still writing")
        files.remove_stale_tmp(target)  # what a second writer does first
        assert mine.exists() and other_host.exists() and not gone.exists()
        f.write(b"done")
    assert target.read_bytes() == b"done" and not mine.exists()
    # two processes writing one file at once both finish; the file is one of them, whole
    script = ("import sys\nfrom core import files\n"
              "for i in range(200):\n"
              "    with files.atomic_write(sys.argv[1]) as f:\n"
              "        f.write(sys.argv[2].encode() * 1000)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), tag]) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert target.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other_host.name])


def test_an_unwritable_held_out_file_is_named(tmp_path, corpus, tokenizer_dir, monkeypatch):
    """A write that fails late (permissions changed mid-run, a file system turned read-only) names the file
    that could not be written, not the training file, and blames free space only when space ran out."""
    import errno

    real = binarized_data.save_manifest
    valid_file = tmp_path / f"bin.{tokenizer_dir.name}.valid.pickle"

    def refuse_valid(path, *args, **kwargs):
        if Path(path) == valid_file:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(binarized_data, "save_manifest", refuse_valid)
    argv = ["--file_path", corpus, "--tokenizer_name", tokenizer_dir, "--dump_file", tmp_path / "bin",
            "--valid_size", 10, "--num_proc", 1]
    line = input_error(binarized_data.main, argv)
    assert f"could not write {valid_file} (Permission denied)" in line and "free space" not in line

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(binarized_data, "save_manifest", full_disk)
    assert "free space" in input_error(binarized_data.main, argv)


def test_the_checks_benchmark_runs_and_compares_with_the_unchecked_load(tmp_path):
    proc = run_main(bench_data_checks.main, "--sequences", 5000, "--work", tmp_path / "work", "--rounds", 1)
    assert proc.returncode == 0, proc.stderr
    assert "| load the manifest and map its arrays |" in proc.stdout and "x) |" in proc.stdout
    assert "the checks in all:" in proc.stdout and not (tmp_path / "work").exists()
    assert run_main(bench_data_checks.main, "--sequences", 10).returncode == 2


def test_a_teacher_of_the_wrong_type_gives_no_student(tmp_path, articles, tokenizer_dir, teacher_dir):
    """A checkpoint of another architecture loads into any LM class with every weight random; every
    extraction (and train.py's teacher, through loading.load_lm) refuses it by its model_type, and refuses a
    checkpoint of the right type that does not fill every weight it copies."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    roberta, _ = make_bpe_teacher(tmp_path / "roberta", "roberta", [a["text"] for a in articles[:40]])
    gpt_config = tmp_path / "gpt2.json"  # GPT-2 fields that fit the RoBERTa folder's, as the probe's did
    gpt_config.write_text(GPT2Config(vocab_size=roberta.config.vocab_size, n_embd=32, n_layer=2, n_head=2,
                                     n_positions=130).to_json_string())
    out = tmp_path / "init.safetensors"
    not_gpt2 = "is a RoBERTa checkpoint (model_type 'roberta'), not GPT-2"
    not_roberta = "is a BERT checkpoint (model_type 'bert'), not RoBERTa"
    not_bert = "is a RoBERTa checkpoint (model_type 'roberta'), not BERT"
    cases = [
        (extract_student.main, ["--model_type", "gpt2", "--model_name", tmp_path / "roberta", "--student_config",
                                gpt_config], not_gpt2),
        (extract_student.main, ["--model_type", "roberta", "--model_name", teacher_dir, "--student_config",
                                tmp_path / "roberta" / "config.json"], not_roberta),
        (extract_bert.main, ["--model_name", tmp_path / "roberta"], not_bert),
    ]
    for main, argv, words in cases:
        assert words in input_error(main, [*argv, "--dump_checkpoint", out])
        assert not out.exists()
    with pytest.raises(data_format.InputError, match="is a RoBERTa checkpoint"):  # train.py's teacher
        loading.load_lm(GPT2LMHeadModel, str(tmp_path / "roberta"), "the teacher")
    # the right type, but a checkpoint that lacks some of the weights copied (a pruned or cut file)
    pruned = tmp_path / "pruned"
    shutil.copytree(teacher_dir, pruned)
    weights = load_file(str(pruned / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".layer.1." not in k}, str(pruned / "model.safetensors"),
              metadata={"format": "pt"})
    config = write_student_config(tmp_path / "student.json", vocab_size(tokenizer_dir), layers=2)
    line = input_error(extract_bert.main, ["--model_name", pruned, "--student_config", config,
                                           "--dump_checkpoint", out])
    assert "did not fill" in line and "bert.encoder.layer.1." in line and not out.exists()
    # and one layer named twice
    line = input_error(extract_bert.main, ["--model_name", teacher_dir, "--student_config", config, "--layers", "0,0",
                                           "--dump_checkpoint", out])
    assert "--layers 0,0 copies teacher layer 0 twice" in line and not out.exists()


@pytest.mark.parametrize("kind", ["roberta", "gpt2", "bert", "distilbert"])
def test_every_student_type_takes_inputs_up_to_its_limit_and_no_longer(tmp_path, articles, kind, tokenizer_dir):
    """The input limit comes from the model type (RoBERTa's position ids start after its pad id), not from a
    tokenizer that may record none: the longest input the limit allows runs, one more token does not."""
    import torch
    from transformers import AutoModelForMaskedLM, BertTokenizerFast, DistilBertForMaskedLM

    if kind in ("roberta", "gpt2"):
        model, tok = make_bpe_teacher(tmp_path / kind, kind, [a["text"] for a in articles[:40]])
    else:
        tok = BertTokenizerFast.from_pretrained(str(tokenizer_dir))
        config = tiny_bert_config(len(tok)) if kind == "bert" else tiny_student_config(len(tok))
        model = AutoModelForMaskedLM.from_config(config) if kind == "bert" else DistilBertForMaskedLM(config)
    tok.model_max_length = int(1e30)  # a tokenizer folder that records no limit
    limit = loading.model_input_limit(tok, model.config)
    positions = model.config.max_position_embeddings
    assert limit == (positions - model.config.pad_token_id - 1 if kind == "roberta" else positions)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.full((1, limit), 5))
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, limit + 1), 5))


def test_an_unfinished_training_run_given_as_a_model_is_named(tmp_path, corpus, tokenizer_dir):
    """evaluate.py (and fill_mask.py, run_glue.py: every model loader) on a train.py run folder that holds
    only its checkpoint says what it is, not transformers' "Unrecognized model"."""

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"a run still training")
    train_file, _ = binarize(tmp_path, corpus, tokenizer_dir)
    counts = count(train_file, tmp_path / "counts.pickle", vocab_size(tokenizer_dir))
    words = f"cannot load the masked LM {run}: it is a train.py run that has not finished"
    assert words in input_error(evaluate.main, ["--data_file", train_file, "--token_counts", counts, "--model", run,
                                                "--tokenizer_name", tokenizer_dir])
    unfinished = f"{run}: it is a train.py run that has not finished: the model is written at its end"
    assert unfinished in input_error(fill_mask.main, ["--model", run, "--text", "the [MASK] river"])
    (run / "checkpoint.pth").unlink()
    line = input_error(evaluate.main, ["--data_file", train_file, "--token_counts", counts, "--model", run,
                                       "--tokenizer_name", tokenizer_dir])
    assert f"cannot load the masked LM {run}: no config.json there" in line
