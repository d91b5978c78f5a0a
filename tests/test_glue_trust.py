"""GLUE results that can be trusted (scripts/run_glue.py, glue.py, scripts/glue_table.py): all nine tasks in
GLUE's own file layouts, nothing lost by --overwrite_output_dir, nothing kept or resumed under other settings
or another model, checkpoints cut short, labels and flags that would make a wrong result, and one-line errors."""

import json
import math
import random

import pytest
from transformers import BertTokenizer

from conftest import input_error, write_bert_vocab
from core import precision
from glue_helpers import FAST, custom_args, glue_main, write_tsv
from scripts import glue_table, run_glue
from tasks import glue, runner
from train_helpers import make_teacher_dir

# ----------------------------------------------------------------------------------------------------------
# All nine tasks, each in the layout of GLUE's own download


WORDS = "the a cat dog sat ran on under mat house big small red blue is was not very good bad".split()


def phrase(rng, n=6):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_glue_root(root, n_train=24, n_dev=8, seed=0):
    """GLUE's nine task folders as its download has them: CoLA's file has no header, MRPC's text columns are
    '#1 String'/'#2 String', STS-B's score is the last of ten columns, MNLI has two dev files and 16 columns
    in them, QNLI/RTE labels are names, the others ids."""
    rng = random.Random(seed)

    def rows(n, make):
        return [make(i) for i in range(n)]

    for split, n in (("train", n_train), ("dev", n_dev)):
        write_tsv(root / "CoLA" / f"{split}.tsv", None,
                  rows(n, lambda i: ["gj04", i % 2, "*" if i % 2 == 0 else "", phrase(rng)]))
        write_tsv(root / "SST-2" / f"{split}.tsv", ["sentence", "label"], rows(n, lambda i: [phrase(rng), i % 2]))
        write_tsv(root / "MRPC" / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  rows(n, lambda i: [i % 2, 100 + i, 200 + i, phrase(rng), phrase(rng)]))
        write_tsv(root / "STS-B" / f"{split}.tsv",
                  ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                   "score"],
                  rows(n, lambda i: [i, "main-news", "f", "2012", i, "none", "none", phrase(rng), phrase(rng),
                                     f"{rng.uniform(0, 5):.3f}"]))
        write_tsv(root / "QQP" / f"{split}.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                  rows(n, lambda i: [i, 2 * i, 2 * i + 1, phrase(rng) + " ?", phrase(rng) + " ?", i % 2]))
        for task, names in (("QNLI", ["index", "question", "sentence", "label"]),
                            ("RTE", ["index", "sentence1", "sentence2", "label"])):
            write_tsv(root / task / f"{split}.tsv", names,
                      rows(n, lambda i: [i, phrase(rng), phrase(rng), ["entailment", "not_entailment"][i % 2]]))
        write_tsv(root / "WNLI" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                  rows(n, lambda i: [i, phrase(rng), phrase(rng), i % 2]))
    nli = ["entailment", "neutral", "contradiction"]
    parse = ["(ROOT x)"] * 4
    head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    write_tsv(root / "MNLI" / "train.tsv", head + ["label1", "gold_label"],
              rows(n_train, lambda i: [i, i, f"{i}n", "fiction", *parse, phrase(rng), phrase(rng), nli[i % 3],
                                       nli[i % 3]]))
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        write_tsv(root / "MNLI" / name, head + [f"label{k}" for k in range(1, 6)] + ["gold_label"],
                  rows(n_dev, lambda i: [i, i, f"{i}n", "fiction", *parse, phrase(rng), phrase(rng),
                                         *[nli[i % 3]] * 5, nli[i % 3]]))


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    write_glue_root(root)
    return root


@pytest.mark.slow
def test_all_nine_tasks_finish_from_glue_tsv_files(tmp_path, teacher, glue_root):
    out = tmp_path / "all"
    glue_main("--model_name_or_path", teacher, "--task_name", "all", "--data_dir", glue_root, "--output_dir", out,
              "--max_steps", 2, "--learning_rate", 1e-3, *FAST)
    summary = json.loads((out / "results.json").read_text())
    assert list(summary["tasks"]) == list(glue.TASKS) and summary["complete"]
    for name, task in summary["tasks"].items():
        assert math.isfinite(task["score"]), name
        assert set(task["metrics"]) == ({"mnli-m", "mnli-mm"} if name == "mnli" else {name})
        for metrics in task["metrics"].values():
            assert set(metrics) == set(glue.TASKS[name].metrics) and all(map(math.isfinite, metrics.values()))
    stsb = json.loads((out / "stsb/lr0.001_seed42/results.json").read_text())
    assert stsb["steps"] == 2 and stsb["hyper_parameters"]["labels"] == []  # a regression: one output, no classes
    assert math.isfinite(summary["average"])
    table = glue_table.markdown_table([summary], published=False).splitlines()
    assert table[0].startswith("| model | CoLA (MCC) | SST-2 | MRPC (F1/acc) | STS-B (P/S) |")
    assert table[2].count("|") == 12 and table[2].split("|")[-2].strip()  # a cell per task, and the average


# ----------------------------------------------------------------------------------------------------------
# A finished run is never lost, reused for other inputs, or mixed with another model's


@pytest.fixture
def finished(tmp_path, teacher, custom_task):
    """A finished run in tmp_path/out: (its args, its results.json, the file's text)."""
    args = custom_args(teacher, custom_task, tmp_path / "out")
    glue_main(*args)
    results = tmp_path / "out" / "custom" / "lr2e-05_seed42" / "results.json"
    return args, results, results.read_text()


def test_overwrite_checks_every_flag_before_it_moves_anything(finished, capsys):
    args, results, text = finished
    top = (results.parents[2] / "results.json").read_text()
    line = input_error(run_glue.main, [*args, "--overwrite_output_dir", "--per_device_train_batch_size", 0])
    assert "--per_device_train_batch_size 0: give at least 1" in line
    assert results.read_text() == text and (results.parents[2] / "results.json").read_text() == top


def test_overwrite_keeps_the_old_run_aside_until_the_new_one_has_results(finished, monkeypatch, capsys):
    args, results, text = finished
    run_dir = results.parent
    aside = run_dir.parent / f".{run_dir.name}.replaced"
    real = runner.fine_tune
    seen = {}

    def interrupted(*a, **k):
        seen["aside"] = (aside / "results.json").read_text()
        (run_dir / "partial").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fine_tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        glue_main(*args, "--overwrite_output_dir")
    assert seen["aside"] == text  # moved aside while the new run trained
    assert results.read_text() == text and not aside.exists() and not (run_dir / "partial").exists()

    def finishes(*a, **k):
        seen["during"] = aside.is_dir()
        return real(*a, **k)

    monkeypatch.setattr(runner, "fine_tune", finishes)
    glue_main(*args, "--overwrite_output_dir", "--weight_decay", 0.1)
    assert seen["during"] and not aside.exists()
    new = json.loads(results.read_text())
    assert new["hyper_parameters"]["weight_decay"] == 0.1


def test_a_replacement_killed_outright_puts_the_old_run_back(finished, capsys):
    args, results, text = finished
    run_dir = results.parent
    aside = run_dir.parent / f".{run_dir.name}.replaced"
    run_dir.rename(aside)  # what a SIGKILL during an --overwrite_output_dir run leaves: the old run aside ...
    (run_dir / "checkpoint-1").mkdir(parents=True)  # ... and the replacement's first checkpoint
    glue_main(*args)
    out = capsys.readouterr().out
    assert "put back; its replacement by --overwrite_output_dir was stopped" in out and ": kept " in out
    assert results.read_text() == text and not aside.exists() and not (run_dir / "checkpoint-1").exists()


def test_another_model_into_the_same_output_dir_is_refused(finished, tmp_path, tokenizer_dir, custom_task, capsys):
    args, results, _ = finished
    other, _, _ = make_teacher_dir(tmp_path / "other-bert", tokenizer_dir, seed=1)
    argv = custom_args(other, custom_task, tmp_path / "out")
    line = input_error(run_glue.main, argv)
    assert "holds the results of another model" in line
    glue_main(*argv, "--overwrite_output_dir")  # replaced, not mixed
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["model"] == "other-bert" and list(summary["tasks"]) == ["custom"]
    assert json.loads(results.read_text())["model"] == "other-bert"


def flipped(custom_task, folder):
    """The same training file with every label flipped: same size, other data."""
    folder.mkdir()
    lines = (custom_task / "train.csv").read_text().splitlines()
    swap = {"born": "other", "other": "born"}
    body = [",".join(line.split(",")[:-1] + [swap[line.split(",")[-1]]]) for line in lines[1:]]
    (folder / "train.csv").write_text("\n".join([lines[0], *body]) + "\n")
    (folder / "dev.csv").write_text((custom_task / "dev.csv").read_text())
    return folder


@pytest.mark.parametrize(
    "change, expected",
    [
        (["--lr_scheduler_type", "constant"], "lr_scheduler_type 'linear' there, 'constant' now"),
        (["--adam_beta2", "0.98"], "adam_beta2 0.999 there, 0.98 now"),
        (["--max_grad_norm", "0.5"], "max_grad_norm 1.0 there, 0.5 now"),
        ("labels flipped", "train_data"),
        ("tokenizer", "tokenizer"),
        (["--text_columns", "idx"], "text_columns ['text'] there, ['idx'] now"),
    ],
)
def test_a_finished_run_is_not_reused_when_a_setting_or_the_data_changed(finished, tmp_path, tokenizer_dir,
                                                                          custom_task, change, expected, capsys):
    args, results, text = finished
    argv = list(args)
    if change == "labels flipped":
        folder = flipped(custom_task, tmp_path / "flipped")
        argv[argv.index("--train_file") + 1] = folder / "train.csv"
    elif change == "tokenizer":  # the same words, in another order: other ids
        vocab = (tokenizer_dir / "vocab.txt").read_text().splitlines()
        write_bert_vocab(tmp_path / "vocab", vocab[5:][::-1])  # the special tokens first, as before
        BertTokenizer.from_pretrained(str(tmp_path / "vocab")).save_pretrained(tmp_path / "tok")
        argv += ["--tokenizer_name", tmp_path / "tok"]
    else:
        argv += change
    line = input_error(run_glue.main, argv)
    assert "was run with other settings" in line and expected in line, line
    assert results.read_text() == text


# ----------------------------------------------------------------------------------------------------------
# Labels and texts that would make a wrong task


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(
    "train, expected",
    [
        ("text,label\ngood,1\nbad,\nfine,1\nmeh,\n", "no label at lines 3, 5 (column 'label')"),
        ("text,label\ngood,1\nbad,0\nfine,positive\nmeh,negative\n",
         "mixes numbers (0, 1) and names ('negative', 'positive')"),
        ("text,label\ngood,yes\nbad,yes\n", "holds one value only ('yes')"),
        ("text,label\n", "holds no rows"),
        ('{"text": "good", "label": 1}\n{"text": null, "label": 0}\n', "no text (null) in column 'text' at line 2"),
        ('{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n', "line 2 is not valid JSON"),
        ("text,label\ngood,1\ncaf\u00e9,0\n", "is not UTF-8 text: line 3 holds the byte 0xe9"),
        ("text,label\ngood,1\nbad,0,extra\n", "line 3 has 3 fields, the header 2"),
    ],
)
def test_user_files_that_would_make_a_wrong_task_are_refused(tmp_path, train, expected):
    suffix = ".jsonl" if train.startswith("{") else ".csv"
    train_file = write(tmp_path / f"train{suffix}", train, "latin-1" if "\u00e9" in train else "utf-8")
    dev_file = write(tmp_path / "dev.csv", "text,label\nok,1\n")
    with pytest.raises(glue.InputError) as e:
        glue.load_task(None, train_file=train_file, validation_file=dev_file)
    assert expected in str(e.value) and str(train_file) in str(e.value)


def test_glue_labels_name_their_lines_and_a_single_class_is_refused(tmp_path):
    write_tsv(tmp_path / "SST-2/train.tsv", ["sentence", "label"], [["good", 1], ["bad", ""], ["ok", 7]])
    write_tsv(tmp_path / "SST-2/dev.tsv", ["sentence", "label"], [["fine", 1]])
    with pytest.raises(glue.InputError, match="no label at line 3"):
        glue.load_task("sst2", tmp_path)
    write_tsv(tmp_path / "SST-2/train.tsv", ["sentence", "label"], [["good", 1], ["fine", 7], ["ok", 7]])
    with pytest.raises(glue.InputError, match="labels outside SST-2's set: '7' at lines 3, 4; expected 0=negative"):
        glue.load_task("sst2", tmp_path)
    write_tsv(tmp_path / "SST-2/train.tsv", ["sentence", "label"], [["good", 1], ["fine", 1], ["bad", 0]])
    task = glue.load_task("sst2", tmp_path)
    task.check_classes()
    task.train = task.train.head(2)  # --max_train_samples 2 on a file sorted by label
    with pytest.raises(glue.InputError, match="all 2 training examples have the label 'positive'"):
        task.check_classes()


# ----------------------------------------------------------------------------------------------------------
# Flags, checked before anything is written


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--learning_rate", "inf"], "--learning_rate inf: give a number finite and at least 0"),
        (["--learning_rate", "nan"], "--learning_rate nan"),
        (["--learning_rate=-1e-5"], "--learning_rate -1e-05"),
        (["--max_train_samples", "-150"], "--max_train_samples -150: give at least 1"),
        (["--max_train_samples", "0"], "--max_train_samples 0: give at least 1"),
        (["--max_eval_samples", "0"], "--max_eval_samples 0: give at least 1"),
        (["--max_seq_length", "0"], "--max_seq_length 0: give at least 1"),
        (["--max_seq_length", "-5"], "--max_seq_length -5: give at least 1"),
        (["--max_seq_length", "3"], "--max_seq_length 3 leaves no room for text: give at least 5"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: give at least 1"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size 0: give at least 1"),
        (["--learning_rate_grid", "3e-5,3e-5"], "gives 3e-05 twice"),
        (["--learning_rate_grid", "3e-5,nan"], "give positive, finite learning rates"),
        (["--text_columns", "label"], "--text_columns names the label column 'label'"),
        ("glue task", "--text_columns is for your own --train_file/--validation_file"),
        ("sorted", "training examples have the label 'born'"),
        ("no output_dir", "--output_dir is required"),
    ],
)
def test_bad_flags_fail_with_one_line_and_write_nothing(tmp_path, teacher, custom_task, extra, expected, capsys):
    out = tmp_path / "out"
    argv = custom_args(teacher, custom_task, out)
    if extra == "glue task":
        write_tsv(tmp_path / "SST-2/train.tsv", ["sentence", "label"], [["good", 1], ["bad", 0]])
        write_tsv(tmp_path / "SST-2/dev.tsv", ["sentence", "label"], [["fine", 1]])
        argv = ["--model_name_or_path", teacher, "--task_name", "sst2", "--data_dir", tmp_path, "--output_dir", out,
                "--text_columns", "sentence"]
    elif extra == "sorted":
        lines = (custom_task / "train.csv").read_text().splitlines()
        ordered = sorted(lines[1:], key=lambda line: line.endswith(",other"))
        write(tmp_path / "train.csv", "\n".join([lines[0], *ordered]) + "\n")
        argv[argv.index("--train_file") + 1] = tmp_path / "train.csv"
        argv += ["--max_train_samples", sum(line.endswith(",born") for line in lines)]
    elif extra == "no output_dir":
        argv = [a for a in argv if a not in ("--output_dir", out)]
    else:
        argv += extra
    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp_path)  # transformers 5 would default to ./trainer_output
        line = input_error(run_glue.main, argv)
    assert expected in line, line
    assert not out.exists() and not (tmp_path / "trainer_output").exists()


def test_a_diverging_run_stops_with_status_3_and_records_nothing(tmp_path, teacher, custom_task, capsys):
    argv = custom_args(teacher, custom_task, tmp_path / "out", "--learning_rate", "1e30", "--logging_steps", 1)
    argv[argv.index("--max_steps") + 1] = 4  # step 1 is warmup at lr 0, steps 2 and 3 overflow the weights
    with pytest.raises(SystemExit) as e:
        glue_main(*argv)
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the error
    assert e.value.code == 3 and "is not recorded" in err[-1] and not any("Traceback" in line for line in err)
    assert err[-1].startswith("run_glue.py: error: custom lr 1e+30 seed 42: the ")
    assert not (tmp_path / "out" / "custom" / "lr1e+30_seed42").exists()
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("flag, message", [
    ("--fp16", "--fp16 needs a CUDA GPU: training in fp32"),
    ("--bf16", "has no native bf16 (a bf16 matmul measured no faster than fp32"),
])
def test_a_precision_this_cpu_lacks_says_so_and_records_fp32(flag, message, tmp_path, teacher, custom_task,
                                                             capsys, monkeypatch):
    """The same decision as train.py's (precision.Precision): --fp16 without CUDA, and --bf16 on a CPU whose
    bf16 is emulated (~11x slower), run fp32, say so, and record what was asked and what ran."""
    monkeypatch.delenv(precision.PROBE_ENV)  # measured, and the probe says slow
    monkeypatch.setattr(precision, "_measure", lambda: False)
    cpu = ["--use_cpu"] if flag == "--bf16" else []  # the Trainer takes bf16 on a CPU only with --use_cpu
    glue_main(*custom_args(teacher, custom_task, tmp_path / "out", flag, *cpu))
    assert message in capsys.readouterr().out
    run = json.loads((tmp_path / "out" / "custom" / "lr2e-05_seed42" / "results.json").read_text())
    assert run["precision"] == "fp32" and run["hyper_parameters"][flag[2:]] is False
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["precision"] == {"asked": flag[2:], "ran": "fp32"}


# ----------------------------------------------------------------------------------------------------------
# Damaged results: named, and refused before any training


@pytest.mark.parametrize(
    "where, content, expected",
    [
        ("top", "{not json", "results.json is damaged"),
        ("top", '{"model": "m", "tasks": []}', "is not a run_glue.py results.json"),
        ("top", '{"model": "m", "tasks": {"custom": {"score": 1}}}', "its metrics are not"),
        ("top", "folder", "is a folder: give a file path"),
        ("run", "{not json", "custom/lr2e-05_seed42/results.json is damaged"),
        ("run", '{"score": 50}', "custom/lr2e-05_seed42/results.json is not a run_glue.py results.json"),
        ("run", "folder", "custom/lr2e-05_seed42/results.json is a folder"),
    ],
)
def test_damaged_results_are_named_before_any_training(finished, where, content, expected, capsys, monkeypatch):
    args, results, _ = finished
    path = results if where == "run" else results.parents[2] / "results.json"
    path.unlink()
    if content == "folder":
        path.mkdir()
    else:
        path.write_text(content)
    monkeypatch.setattr(runner, "fine_tune", lambda *a, **k: pytest.fail("trained before the check"))
    line = input_error(run_glue.main, args)
    assert expected in line, line


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"model": "m", "tasks": {"sst2": {"score": "high", "metrics": {}}}}', "task 'sst2' has no score"),
        ('{"model": "m", "tasks": {"sst2": {"score": 80, "metrics": {"sst2": {"accuracy": "0.8"}}}}}',
         "its metrics are not"),
        ("[1, 2]", "is not a run_glue.py results.json"),
        ("{damaged", "is not a readable results.json"),
    ],
)
def test_glue_table_refuses_results_of_the_wrong_shape(tmp_path, content, expected, capsys):
    (tmp_path / "results.json").write_text(content)
    line = input_error(glue_table.main, [tmp_path])
    assert expected in line and str(tmp_path / "results.json") in line, line
