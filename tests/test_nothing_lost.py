"""Nothing lost, never a traceback: --force, damaged run_files, unwritable outputs, resumed logs, file modes.

Each class of bad input gets one line on stderr, exit status 2, and leaves what was there as it was.
"""

import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

import train
from conftest import input_error, write_bert_vocab
from core import files
from core.errors import InputError
from scripts import binarized_data, evaluate, fill_mask, token_counts
from scripts.extract import distilbert as extract_student
from scripts.make_synthetic_wiki import generate
from train_helpers import sentences, with_args, write_data, write_student_config
from training import data_format, train_args

TIMING = ("tokens_per_s", "rss_gib", "gpu_allocated_gib", "gpu_reserved_gib", "gpu_peak_gib")


def arg(argv, name):
    return argv[argv.index(f"--{name}") + 1]


def snapshot(folder):
    """{relative path: bytes} of everything under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert err[-1].startswith(prefix), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


def train_fails(argv, capsys, match, code=2):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == code
    line = one_line_error(capsys, "train.py: error: ")
    assert match in line, line
    return line


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def metrics_lines(dump):
    """metrics.jsonl as a list of records, timing and memory figures left out."""
    lines = (dump / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.fixture
def finished_run(run_files, tmp_path):
    _, argv = run_files
    dump = tmp_path / "run"
    train.main(with_args(argv, dump_path=dump, checkpoint_interval=4))
    assert (dump / "model.safetensors").is_file()
    return dump, with_args(argv, dump_path=dump, checkpoint_interval=4)


# ---- --force ------------------------------------------------------------------------------------------


def test_force_that_fails_a_check_leaves_the_old_run_intact(finished_run, tmp_path, capsys, articles):
    dump, argv = finished_run
    before = snapshot(dump)
    other_tok = write_bert_vocab(tmp_path / "other_tok" / "tiny-bert", ["the", "city", "river"])
    valid, _ = write_data(tmp_path / "other", other_tok, articles[:20])  # another tokenizer's held-out file
    train_fails(with_args(argv, force=True, valid_file=valid), capsys, "binarized with a vocabulary of")
    assert snapshot(dump) == before
    assert not train.replacement(dump).aside.exists()


def test_force_that_fails_before_its_first_checkpoint_puts_the_old_run_back(finished_run, capsys):
    dump, argv = finished_run
    before = snapshot(dump)
    argv = with_args(argv, force=True, learning_rate=1e30, warmup_prop=0, log_interval=4, checkpoint_interval=1000)
    train_fails(argv, capsys, "the loss is not finite", code=3)
    assert snapshot(dump) == before
    assert not train.replacement(dump).aside.exists()


def test_force_keeps_the_old_run_aside_until_the_first_checkpoint(finished_run, caplog):
    dump, argv = finished_run
    before = snapshot(dump)
    aside = train.replacement(dump).aside
    # stopped before its first checkpoint, as a kill would: the old run waits aside
    train.main(with_args(argv, force=True, stop_after_iter=2))
    assert snapshot(aside) == before and not (dump / "checkpoint.pth").exists()
    # the next command puts it back (run_folder.py's one rule), then --force moves it aside again; after the
    # new run's first checkpoint it goes
    train.main(with_args(argv, force=True, stop_after_iter=5))
    assert f"{dump}: put back; its replacement by --force was stopped before it had written its first" in caplog.text
    assert not aside.exists()
    assert (dump / "checkpoint.pth").exists() and not (dump / "model.safetensors").exists()


def test_a_command_after_a_stopped_force_puts_the_old_run_back(finished_run, capsys):
    """A replacement stopped before its first checkpoint left the old run aside: the next command, whatever it
    is, puts it back; a --resume of the replacement is refused, as it has nothing to resume."""
    dump, argv = finished_run
    before = snapshot(dump)
    train.main(with_args(argv, force=True, stop_after_iter=2))
    train_fails(with_args(argv, resume=True), capsys,
                f"--resume: {dump}: put back; its replacement by --force was stopped before it had written its "
                "first checkpoint: nothing of it to resume; start it again with --force")
    assert snapshot(dump) == before and not train.replacement(dump).aside.exists()


def test_a_replacement_killed_after_its_first_checkpoint_is_kept(finished_run, caplog):
    """Killed after the new run's first checkpoint but before the old run was removed: the next command keeps
    the new run and removes the old one (the same rule as a task run's, whose commit point is its results)."""
    dump, argv = finished_run
    train.main(with_args(argv, force=True, stop_after_iter=5))  # the new run, with its first checkpoint
    new = snapshot(dump)
    shutil.copytree(dump, train.replacement(dump).aside)  # what a kill before the old run's removal leaves
    train.main(with_args(argv, resume=True, stop_after_iter=6))
    assert f"{dump}: its replacement by --force had written its first checkpoint; the old run is removed" in caplog.text
    assert not train.replacement(dump).aside.exists() and snapshot(dump) != new  # resumed, one step on


# ---- damaged and foreign run_files ----------------------------------------------------------------------


def _foreign_pickle(path):
    import datetime

    torch.save({"student": datetime.date(2020, 1, 1)}, path)  # weights_only refuses the class


@pytest.mark.parametrize(
    "damage, match",
    [
        (truncate, "is damaged or truncated"),
        (lambda p: p.write_bytes(b""), "is damaged or truncated"),
        (_foreign_pickle, "is not a train.py checkpoint (it holds more than tensors"),
        (lambda p: torch.save({"weights": torch.zeros(3)}, p), "is not a train.py checkpoint (it lacks"),
    ],
    ids=["truncated", "empty", "foreign-pickle", "foreign-tensors"],
)
def test_resume_from_a_damaged_or_foreign_checkpoint(run_files, tmp_path, capsys, damage, match):
    _, argv = run_files
    dump = tmp_path / "run"
    argv = with_args(argv, dump_path=dump, checkpoint_interval=4)
    train.main(with_args(argv, stop_after_iter=6))
    damage(dump / "checkpoint.pth")
    before = snapshot(dump)
    train_fails(with_args(argv, resume=True), capsys, match)
    assert snapshot(dump) == before  # not even a line in train.log


def test_damaged_safetensors_everywhere(run_files, tmp_path, capsys):
    folder, argv = run_files
    teacher = arg(argv, "teacher_name")
    # a teacher folder with a cut-short model.safetensors: train.py, extract/distilbert.py, evaluate.py
    bad_teacher = tmp_path / "bad_teacher" / "tiny-bert"
    shutil.copytree(teacher, bad_teacher)
    truncate(bad_teacher / "model.safetensors")

    bad_run = with_args(argv, dump_path=tmp_path / "run", teacher_name=bad_teacher)
    train_fails(bad_run, capsys, "is damaged or truncated")
    assert not (tmp_path / "run").exists()

    out = tmp_path / "init.safetensors"
    line = input_error(extract_student.main, ["--model_name", bad_teacher, "--student_config",
                                                      arg(argv, "student_config"), "--dump_checkpoint", out])
    assert "distilbert.py: error: cannot load the teacher" in line and "damaged or truncated" in line
    assert not out.exists()

    line = input_error(evaluate.main, ["--model", bad_teacher, "--data_file", arg(argv, "data_file"),
                                               "--token_counts", arg(argv, "token_counts"),
                                               "--output", tmp_path / "eval.json", "--n_gpu", "0"])
    assert line.startswith("evaluate.py: error: cannot load the masked LM") and "damaged" in line
    assert not (tmp_path / "eval.json").exists()

    two_models = ["--model", teacher, "--model", bad_teacher, "--text", "the [MASK] river"]
    line = input_error(fill_mask.main, two_models)
    assert line.startswith("fill_mask.py: error: cannot load the masked LM") and "damaged" in line

    # student initial weights cut short
    init = tmp_path / "good_init.safetensors"
    extract_student.main(["--model_name", teacher, "--student_config", arg(argv, "student_config"),
                          "--dump_checkpoint", str(init)])
    truncate(init)
    train_fails(with_args(argv, dump_path=tmp_path / "run", student_pretrained_weights=init), capsys,
                "good_init.safetensors is damaged or truncated")
    assert not (tmp_path / "run").exists()


def test_damaged_student_config(run_files, tmp_path, capsys):
    _, argv = run_files
    config = tmp_path / "student.json"
    config.write_text('{"dim": 32, "n_layers": ')
    train_fails(with_args(argv, dump_path=tmp_path / "run", student_config=config), capsys, "is not a readable")
    line = input_error(extract_student.main, ["--model_name", arg(argv, "teacher_name"), "--student_config",
                                                      config, "--dump_checkpoint", tmp_path / "init.safetensors"])
    assert "is not a readable DistilBertConfig JSON file" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "init.safetensors").exists()


def test_missing_folders_are_named(run_files, tmp_path, capsys):
    _, argv = run_files
    missing = tmp_path / "no_such_teacher"
    train_fails(with_args(argv, dump_path=tmp_path / "run", teacher_name=missing), capsys,
                f"the teacher {missing} does not exist")
    line = input_error(extract_student.main, ["--model_name", missing, "--dump_checkpoint",
                                                      tmp_path / "x.safetensors"])
    assert f"the teacher {missing} does not exist" in line
    dump_txt = tmp_path / "dump.txt"
    dump_txt.write_text("a line of text with enough words to keep\n")
    line = input_error(binarized_data.main, ["--file_path", dump_txt, "--tokenizer_name", missing,
                                                     "--dump_file", tmp_path / "bin"])
    assert f"tokenizer {missing} does not exist" in line
    assert not list(tmp_path.glob("bin*"))


# ---- unwritable outputs: refused before the long work ----------------------------------------------


def test_unwritable_outputs_fail_before_any_work(run_files, tmp_path, capsys, tokenizer_dir):
    _, argv = run_files
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    where = blocker / "sub"  # its parent would have to be a folder
    line = f"{blocker} is a file, not a folder"

    dump_txt = tmp_path / "dump.txt"
    dump_txt.write_text("a line with quite a few words in it for the tokenizer to chew on\n" * 50)
    with pytest.raises(SystemExit) as e:
        binarized_data.main(["--file_path", str(dump_txt), "--tokenizer_name", str(tokenizer_dir),
                             "--dump_file", str(where / "bin")])
    captured = capsys.readouterr()
    assert e.value.code == 2 and line in captured.err.strip().splitlines()[-1]
    assert "binarize:" not in captured.err  # refused before the tokenizing started: no progress bar

    last = input_error(token_counts.main, ["--data_file", arg(argv, "data_file"),
                                                   "--token_counts_dump", where / "c.pickle", "--vocab_size", "1"])
    assert last.startswith("token_counts.py: error: cannot write --token_counts_dump")  # before the vocab check
    assert line in last

    assert line in input_error(extract_student.main, ["--model_name", arg(argv, "teacher_name"),
                                                              "--student_config", arg(argv, "student_config"),
                                                              "--dump_checkpoint", where / "i.safetensors"])

    train_fails(with_args(argv, dump_path=where / "run"), capsys, line)

    assert line in input_error(evaluate.main, ["--model", arg(argv, "teacher_name"), "--data_file",
                                                       arg(argv, "data_file"), "--token_counts",
                                                       arg(argv, "token_counts"), "--output", where / "eval.json",
                                                       "--n_gpu", "0"])
    assert blocker.read_text() == "" and not any(p != blocker for p in tmp_path.glob("a_file*"))


def test_an_output_path_that_is_a_folder_or_a_device(run_files, tmp_path, capsys):
    _, argv = run_files
    (tmp_path / "counts").mkdir()
    assert "is a folder: give a file path" in input_error(token_counts.main, [
        "--data_file", arg(argv, "data_file"), "--token_counts_dump", tmp_path / "counts"])
    # atomic_write renames over its target: it must never replace a device node
    with pytest.raises(InputError, match="not a regular file"):
        files.check_writable("/dev/null")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="is not writable"):
            files.check_writable(ro / "x.pickle")
    finally:
        ro.chmod(0o755)


def test_a_place_no_one_can_write(tmp_path):
    # /proc refuses new run_files even to root: the stand-in for a read-only or missing mount
    with pytest.raises(InputError, match="is not writable"):
        files.check_writable("/proc/distil-test/out.pickle")


# ---- resumed logs, stale temporary run_files, file modes, vocabularies ------------------------------------


@pytest.mark.slow
def test_metrics_after_resume_read_as_if_never_interrupted(run_files, tmp_path, tokenizer_dir, articles):
    _, argv = run_files
    valid, _ = write_data(tmp_path / "valid", tokenizer_dir, list(generate(20, seed=3)))
    argv = with_args(argv, n_epoch=2, log_interval=3, checkpoint_interval=8, valid_file=valid, eval_interval=10)
    train.main(with_args(argv, dump_path=tmp_path / "full"))
    cut = tmp_path / "cut"
    train.main(with_args(argv, dump_path=cut, stop_after_iter=31))  # last checkpoint at 25, mid log interval
    (cut / ".checkpoint.pth.deadbeef.tmp").write_bytes(b"half a checkpoint")  # a kill during a write
    train.main(with_args(argv, dump_path=cut, resume=True))
    full = metrics_lines(tmp_path / "full")
    assert metrics_lines(cut) == full
    assert not list(cut.glob(".*.tmp"))
    assert any("valid_top1" in r for r in full) and len({r["iter"] for r in full}) < len(full)
    # resuming a finished run adds nothing
    train.main(with_args(argv, dump_path=cut, resume=True))
    assert metrics_lines(cut) == full


def test_written_files_respect_the_umask(run_files, tmp_path):
    old = os.umask(0o022)
    try:
        data_format.save_token_counts(tmp_path / "c.pickle", np.ones(4, dtype=np.int64), {})
        _, argv = run_files
        train.main(with_args(argv, dump_path=tmp_path / "run", stop_after_iter=4, checkpoint_interval=2))
        os.umask(0o077)
        data_format.save_token_counts(tmp_path / "private.pickle", np.ones(4, dtype=np.int64), {})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "c.pickle") == 0o644
    assert mode(tmp_path / "run" / "checkpoint.pth") == 0o644
    assert mode(tmp_path / "private.pickle") == 0o600


def test_vocabularies_are_compared_not_folder_names(tmp_path, tokenizer_dir, caplog, capsys):
    dump_txt = tmp_path / "dump.txt"

    dump_txt.write_text("\n".join(sentences(generate(60, seed=0))) + "\n")
    assert binarized_data.main(["--file_path", str(dump_txt), "--tokenizer_name", str(tokenizer_dir),
                                "--dump_file", str(tmp_path / "bin")]) == 0
    data = tmp_path / f"bin.{tokenizer_dir.name}.pickle"
    vocab = len((tokenizer_dir / "vocab.txt").read_text().split())
    assert token_counts.main(["--data_file", str(data), "--token_counts_dump", str(tmp_path / "counts.pickle"),
                              "--vocab_size", str(vocab)]) == 0
    config = tmp_path / "student.json"

    vocab = (tokenizer_dir / "vocab.txt").read_text().split("\n")[:-1]
    write_student_config(config, len(vocab))
    base = ["--data_file", str(data), "--token_counts", str(counts := tmp_path / "counts.pickle"),
            "--student_type", "distilbert", "--student_config", str(config), "--teacher_type", "bert",
            "--teacher_name", "none", "--alpha_ce", "0", "--alpha_cos", "0", "--alpha_mlm", "1", "--n_gpu", "0",
            "--batch_size", "8", "--gradient_accumulation_steps", "1", "--n_epoch", "1"]
    assert counts.exists()

    same = tmp_path / "same-vocab-other-name"
    shutil.copytree(tokenizer_dir, same)
    args = train_args.parse_args([*base, "--tokenizer_name", str(same), "--dump_path", str(tmp_path / "r1")])
    train_args.sanity_checks(args)
    with caplog.at_level("WARNING"):
        train.setup(args)
    assert "was made with tokenizer" not in caplog.text

    swapped = vocab[:-2] + [vocab[-1], vocab[-2]]  # the same size and special ids, two words trade ids
    other = write_bert_vocab(tmp_path / "swapped", [])
    (other / "vocab.txt").write_text("\n".join(swapped) + "\n")
    train_fails([*base, "--tokenizer_name", str(other), "--dump_path", str(tmp_path / "r2")], capsys,
                "was binarized with another vocabulary of the same size")
    assert not (tmp_path / "r2").exists()
