"""The data pipeline's scripts and train.py run through their main(argv): a corpus binarized and counted, train.py's
arguments for the result, and its one-line refusal."""

import train
from conftest import input_error, run_main
from scripts import binarized_data, token_counts
from train_helpers import write_student_config


def binarize(folder, dump, tokenizer_dir, *extra):
    folder.mkdir(parents=True, exist_ok=True)
    proc = run_main(binarized_data.main, "--file_path", dump, "--tokenizer_name", tokenizer_dir,
                    "--dump_file", folder / "bin", "--num_proc", 1, *extra)
    assert proc.returncode == 0, proc.stderr
    return folder / f"bin.{tokenizer_dir.name}.pickle", folder / f"bin.{tokenizer_dir.name}.valid.pickle"


def count(data_file, counts_file, vocab):
    run_main(token_counts.main, "--data_file", data_file, "--token_counts_dump", counts_file, "--vocab_size", vocab,
             check=True)
    return counts_file


def vocab_size(tokenizer_dir):
    return len((tokenizer_dir / "vocab.txt").read_text().split("\n")[:-1])


def train_argv(tmp_path, data_file, counts_file, teacher_dir, tokenizer_dir):
    config = write_student_config(tmp_path / "student.json", vocab_size(tokenizer_dir))
    return ["--data_file", str(data_file), "--token_counts", str(counts_file), "--student_type", "distilbert",
            "--student_config", str(config), "--teacher_type", "bert", "--teacher_name", str(teacher_dir), "--mlm",
            "--batch_size", "8", "--gradient_accumulation_steps", "1", "--n_epoch", "1", "--n_gpu", "0",
            "--dump_path", str(tmp_path / "run")]


def train_error(argv):
    line = input_error(train.main, argv)
    return line
