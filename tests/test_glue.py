"""GLUE evaluation: the metrics by hand, both local data forms, fine-tuning on real SST-2, run folders of
train.py, bad input, resumed sweeps and the results table (glue.py, scripts/run_glue.py, scripts/glue_table.py)."""

import collections
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import train
from conftest import ROOT, run_main, run_script, write_bert_vocab
from core import precision
from glue_helpers import FAST, GLUE_DATA, glue_main, write_tsv
from scripts import glue_table
from tasks import glue
from train_helpers import make_teacher_dir, tiny_run_files, with_args

needs_real_glue = pytest.mark.skipif(
    not (GLUE_DATA / "SST-2" / "dev.tsv").is_file() or not (GLUE_DATA / "rte").is_dir(),
    reason=f"the real GLUE data ({GLUE_DATA}) is not on this machine",
)


def write_parquet(path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


# ----------------------------------------------------------------------------------------------------------
# Metrics, against hand computations


PRED = [1, 0, 1, 1, 0, 0]
GOLD = [1, 0, 0, 1, 1, 0]  # tp 2, tn 2, fp 1, fn 1


def test_classification_metrics_equal_hand_computations():
    tp, tn, fp, fn = 2, 2, 1, 1
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue.compute_metrics(glue.TASKS["sst2"], PRED, GOLD) == {"accuracy": pytest.approx(4 / 6)}
    mrpc = glue.compute_metrics(glue.TASKS["mrpc"], PRED, GOLD)
    assert mrpc["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert mrpc["accuracy"] == pytest.approx(4 / 6)
    cola = glue.compute_metrics(glue.TASKS["cola"], PRED, GOLD)
    assert cola["matthews_correlation"] == pytest.approx(mcc) and mcc == pytest.approx(1 / 3)
    # the positive class is 1 (equivalent, duplicate): swapping the classes changes F1
    swapped = glue.compute_metrics(glue.TASKS["qqp"], [1 - p for p in PRED], [1 - g for g in GOLD])
    assert swapped["f1"] == pytest.approx(2 / 3) and swapped["accuracy"] == pytest.approx(4 / 6)
    assert glue.task_score(mrpc) == pytest.approx(100 * (mrpc["f1"] + mrpc["accuracy"]) / 2)


def test_correlations_equal_hand_computations():
    x = [1.0, 2.5, 0.5, 4.0]
    y = [1.0, 3.0, 2.0, 5.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    pearson = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    # ranks: x 2,3,1,4 and y 1,3,2,4; d = 1,0,-1,0; rho = 1 - 6 * sum(d^2) / (n (n^2 - 1))
    spearman = 1 - 6 * 2 / (4 * 15)
    got = glue.compute_metrics(glue.TASKS["stsb"], x, y)
    assert got == {"pearson": pytest.approx(pearson), "spearmanr": pytest.approx(spearman)}
    # a constant prediction carries no information: 0, not NaN
    assert glue.compute_metrics(glue.TASKS["stsb"], [2.0] * 4, y) == {"pearson": 0.0, "spearmanr": 0.0}


# ----------------------------------------------------------------------------------------------------------
# Data: GLUE's TSV files and the hub's parquet files, written here


def test_glue_tsv_single_sentence_pair_and_headerless_cola(tmp_path):
    # a sentence with an unbalanced quote stays one example (GLUE's files are not quoted)
    write_tsv(tmp_path / "SST-2/train.tsv", ["sentence", "label"], [['it \'s "great', 1], ["dull , flat", 0]])
    write_tsv(tmp_path / "SST-2/dev.tsv", ["sentence", "label"], [["fine", 1]])
    sst2 = glue.load_task("sst2", tmp_path)  # the GLUE root: the task's folder is found by its name
    assert sst2.train.texts == [['it \'s "great', "dull , flat"]] and sst2.train.labels == [1, 0]
    assert list(sst2.dev) == ["sst2"] and sst2.dev["sst2"].labels == [1]

    rows = [[0, "a man sleeps", "a man rests", "entailment"], [1, "cats bark", "cats are dogs", "not_entailment"]]
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], rows)
    write_tsv(tmp_path / "RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], rows[::-1])
    rte = glue.load_task("rte", tmp_path / "RTE")
    assert rte.train.texts == [["a man sleeps", "cats bark"], ["a man rests", "cats are dogs"]]
    assert rte.train.labels == [0, 1] and rte.dev["rte"].labels == [1, 0]  # the hub's ids

    write_tsv(tmp_path / "CoLA/train.tsv", None, [["gj04", 1, "", "the dog barked ."], ["gj04", 0, "*", "dog the ."]])
    write_tsv(tmp_path / "CoLA/dev.tsv", None, [["gj04", 1, "", "it rained ."]])
    cola = glue.load_task("cola", tmp_path)
    assert cola.train.texts == [["the dog barked .", "dog the ."]] and cola.train.labels == [1, 0]


def test_mnli_has_both_dev_sets_in_both_forms(tmp_path):
    header = ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"]
    train_rows = [[0, "g", "p1", "h1", "neutral", "neutral"], [1, "g", "p2", "h2", "contradiction", "contradiction"]]
    write_tsv(tmp_path / "tsv/train.tsv", header, train_rows + [[2, "g", "a line cut short"]])
    write_tsv(tmp_path / "tsv/dev_matched.tsv", header, [[0, "g", "pm", "hm", "entailment", "entailment"]])
    write_tsv(tmp_path / "tsv/dev_mismatched.tsv", header, [[0, "g", "pmm", "hmm", "neutral", "neutral"]])
    tsv = glue.load_task("mnli", tmp_path / "tsv")
    assert tsv.train.labels == [1, 2] and tsv.train.skipped == 1  # the malformed line is left out and counted
    assert {k: (v.texts, v.labels) for k, v in tsv.dev.items()} == {
        "mnli-m": ([["pm"], ["hm"]], [0]),
        "mnli-mm": ([["pmm"], ["hmm"]], [1]),
    }

    def split(premises, labels):
        hypotheses = [p + "?" for p in premises]
        return {"premise": premises, "hypothesis": hypotheses, "label": labels, "idx": list(range(len(labels)))}

    write_parquet(tmp_path / "pq/train-00000-of-00001.parquet", split(["p1", "p2"], [1, 2]))
    write_parquet(tmp_path / "pq/validation_matched-00000-of-00001.parquet", split(["pm"], [0]))
    write_parquet(tmp_path / "pq/validation_mismatched-00000-of-00001.parquet", split(["pmm"], [1]))
    hub = glue.load_task("mnli", tmp_path / "pq")
    assert hub.source.startswith("parquet") and hub.train.texts == [["p1", "p2"], ["p1?", "p2?"]]
    assert {k: v.labels for k, v in hub.dev.items()} == {"mnli-m": [0], "mnli-mm": [1]}


def test_parquet_single_sentence_task_in_shards(tmp_path):
    for i, (texts, labels) in enumerate([(["good", "bad"], [1, 0]), (["ok"], [1])]):
        write_parquet(tmp_path / f"train-0000{i}-of-00002.parquet", {"sentence": texts, "label": labels})
    write_parquet(tmp_path / "validation-00000-of-00001.parquet", {"sentence": ["meh"], "label": [0]})
    sst2 = glue.load_task("sst2", tmp_path)
    assert sst2.train.texts == [["good", "bad", "ok"]] and sst2.train.labels == [1, 0, 1]


@needs_real_glue
def test_real_sst2_tsv_and_rte_parquet_load_whole():
    sst2 = glue.load_task("sst2", GLUE_DATA / "SST-2")
    assert len(sst2.train) == 67_349 and len(sst2.dev["sst2"]) == 872 and sst2.train.skipped == 0
    assert sum(sst2.train.labels) == 37_569 and sum(sst2.dev["sst2"].labels) == 444
    rte = glue.load_task("rte", GLUE_DATA / "rte")
    assert len(rte.train) == 2_490 and len(rte.dev["rte"]) == 277
    assert sum(rte.train.labels) == 1_241 and sum(rte.dev["rte"].labels) == 131
    assert all(a and b for a, b in zip(*rte.train.texts))  # sentence pairs


# ----------------------------------------------------------------------------------------------------------
# Fine-tuning (the tiny BERT `teacher` and the sentence task `custom_task`: tests/fixtures_glue.py)


def test_train_py_run_folder_and_bert_teacher_both_fine_tune(tmp_path, tokenizer_dir, articles, teacher, custom_task):
    argv = tiny_run_files(tmp_path / "files", tokenizer_dir, articles)
    train.main(with_args(argv, dump_path=tmp_path / "student"))  # a DistilBERT student: no token types
    for model in (tmp_path / "student", teacher):
        out = tmp_path / "glue" / Path(model).name
        glue_main("--model_name_or_path", model, "--train_file", custom_task / "train.csv", "--validation_file",
                  custom_task / "dev.csv", "--output_dir", out, "--max_steps", 4, "--save_model", *FAST)
        run = json.loads((out / "custom" / "lr2e-05_seed42" / "results.json").read_text())
        assert run["steps"] == 4 and 0 <= run["metrics"]["custom"]["accuracy"] <= 1
        assert run["hyper_parameters"]["eval_examples"] == {"custom": 40}
        saved = json.loads((out / "custom" / "lr2e-05_seed42" / "model" / "config.json").read_text())
        kind = "DistilBert" if model != teacher else "Bert"
        assert saved["architectures"] == [f"{kind}ForSequenceClassification"]
        assert saved["id2label"] == {"0": "born", "1": "other"}  # the file's own label strings, sorted


def test_each_precision_fine_tunes_with_the_attention_measured_for_it(tmp_path, teacher, custom_task, cpu_bf16):
    """precision.ATTENTION in run_glue.py: bf16 on a CPU switches the model to eager attention, fp32 keeps SDPA;
    results.json records which ran (--bf16 where bf16 does not pay: fp32)."""
    bf16 = "bf16" if cpu_bf16 else "fp32"
    for flags, used in (((), "fp32"), (("--bf16", "--use_cpu"), bf16)):  # transformers wants both on a CPU
        out = tmp_path / ("bf16" if flags else "fp32")
        glue_main("--model_name_or_path", teacher, "--train_file", custom_task / "train.csv", "--validation_file",
                  custom_task / "dev.csv", "--output_dir", out, "--max_steps", 2, *flags, *FAST)
        run = json.loads((out / "custom" / "lr2e-05_seed42" / "results.json").read_text())
        assert run["precision"] == used and run["steps"] == 2
        assert run["attention"] == (precision.attention_for("cpu", used) or "sdpa")


def sst2_vocab(folder, n_lines=20_000, n_words=2000):
    """A WordPiece vocabulary of the commonest words of SST-2's training sentences (the real one is offline)."""
    split = glue.load_task("sst2", GLUE_DATA / "SST-2").train
    counts = collections.Counter(w for t in split.texts[0][:n_lines] for w in re.findall(r"[a-z]+|[^\sa-z]", t.lower()))
    return write_bert_vocab(folder, [w for w, _ in counts.most_common(n_words)])


@pytest.mark.slow
@needs_real_glue
def test_tiny_model_fine_tuned_on_real_sst2_beats_chance_on_real_dev(tmp_path):
    vocab = sst2_vocab(tmp_path / "sst2-bert")
    make_teacher_dir(vocab, vocab, layers=2, hidden=64, heads=2, ffn=128, max_pos=128)  # random weights
    glue_main("--model_name_or_path", vocab, "--task_name", "sst2", "--data_dir", GLUE_DATA, "--output_dir",
              tmp_path / "out", "--max_train_samples", 3000, "--num_train_epochs", 3, "--learning_rate", 1e-3,
              "--per_device_train_batch_size", 16, *FAST)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    accuracy = results["tasks"]["sst2"]["metrics"]["sst2"]["accuracy"]
    majority = 444 / 872
    assert accuracy > majority + 0.1, accuracy  # from scratch on 3,000 real sentences, judged on all 872 dev ones


def test_seeds_and_grid_report_the_best_median_and_a_rerun_keeps_finished_runs(tmp_path, teacher, custom_task, capsys):
    args = ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv", "--validation_file",
            custom_task / "dev.csv", "--output_dir", tmp_path, "--max_steps", 3, "--seeds", 3,
            "--learning_rate_grid", "1e-3,1e-5", *FAST]
    glue_main(*args)
    summary = json.loads((tmp_path / "results.json").read_text())["tasks"]["custom"]
    runs = {(r["learning_rate"], r["seed"]): r for r in summary["runs"]}
    assert sorted(runs) == [(1e-5, 42), (1e-5, 43), (1e-5, 44), (1e-3, 42), (1e-3, 43), (1e-3, 44)]
    medians = {lr: float(np.median([runs[lr, s]["score"] for s in (42, 43, 44)])) for lr in (1e-3, 1e-5)}
    best = max(medians, key=medians.get)
    assert summary["learning_rate"] == best and summary["seeds"] == [42, 43, 44]
    accuracy = np.median([json.loads((tmp_path / f"custom/lr{best:g}_seed{s}/results.json").read_text())
                          ["metrics"]["custom"]["accuracy"] for s in (42, 43, 44)])
    assert summary["metrics"]["custom"]["accuracy"] == pytest.approx(accuracy)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("custom/*/results.json")}
    capsys.readouterr()
    glue_main(*args)
    assert capsys.readouterr().out.count(": kept ") == 6
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("custom/*/results.json")} == stamps
    # a run made with other settings is not passed off as this one
    longer = list(args)
    longer[longer.index("--max_steps") + 1] = 5
    with pytest.raises(SystemExit) as e:
        glue_main(*longer)
    assert e.value.code == 2
    assert "was run with other settings (max_steps 3 there, 5 now)" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("custom/*/results.json")} == stamps


@pytest.mark.slow
def test_torchrun_two_processes_share_the_data_and_write_once(tmp_path, teacher, custom_task):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts/run_glue.py"), "--model_name_or_path", str(teacher), "--train_file",
           str(custom_task / "train.csv"), "--validation_file", str(custom_task / "dev.csv"), "--output_dir",
           str(out), "--per_device_train_batch_size", "25", "--num_train_epochs", "1", *FAST]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "custom" / "lr2e-05_seed42" / "results.json").read_text())
    # 200 examples, 25 a process, 2 processes (gloo): 4 steps an epoch, not 8
    assert run["hyper_parameters"]["world_size"] == 2 and run["steps"] == 4
    assert run["hyper_parameters"]["eval_examples"] == {"custom": 40}
    assert proc.stdout.count("custom accuracy") == 1  # one process reports


# ----------------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written


@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown task", "unknown task 'sst3'"),
        ("missing split", "no validation split for SST-2"),
        ("wrong label column", "has no label column 'label'"),
        ("label outside the task", "labels outside SST-2's set: '2' at line 2"),
        ("dev label unseen in training", "labels outside custom's set: 'maybe'"),
        ("unfinished train.py run", "a train.py run that has not finished"),
        ("grid", "--learning_rate_grid 'fast'"),
        ("hub out of reach", "cannot fetch RTE from the hub (nyu-mll/glue)"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, teacher, case, expected, capsys):
    sst2 = tmp_path / "SST-2"
    write_tsv(sst2 / "train.tsv", ["sentence", "label"], [["good", 1], ["bad", 0]])
    write_tsv(sst2 / "dev.tsv", ["sentence", "label"], [["fine", 1]])
    (tmp_path / "train.csv").write_text("sentence,label\nyes,ok\nno,bad\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nmaybe,maybe\n")
    model, data = teacher, ["--task_name", "sst2", "--data_dir", sst2]
    if case == "unknown task":
        data = ["--task_name", "sst3", "--data_dir", sst2]
    elif case == "missing split":
        (sst2 / "dev.tsv").unlink()
    elif case == "wrong label column":
        (tmp_path / "train.csv").write_text("sentence,polarity\nyes,1\n")
        data = ["--train_file", tmp_path / "train.csv", "--validation_file", tmp_path / "dev.csv"]
    elif case == "label outside the task":
        write_tsv(sst2 / "dev.tsv", ["sentence", "label"], [["fine", 2]])
    elif case == "dev label unseen in training":
        data = ["--train_file", tmp_path / "train.csv", "--validation_file", tmp_path / "dev.csv"]
    elif case == "unfinished train.py run":
        model = tmp_path / "run"
        model.mkdir()
        (model / "checkpoint.pth").write_bytes(b"")
    elif case == "grid":
        data += ["--learning_rate_grid", "fast"]
    elif case == "hub out of reach":  # offline (HF_HUB_OFFLINE, set by conftest): no --data_dir
        data = ["--task_name", "rte"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        glue_main("--model_name_or_path", model, *data, "--output_dir", out, *FAST)
    message = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message.startswith("run_glue.py: error: ") and expected in message
    assert "\n" not in message
    assert not out.exists()


@pytest.mark.slow
def test_bad_input_from_the_command_line(tmp_path, teacher):
    proc = run_script("scripts/run_glue.py", "--model_name_or_path", tmp_path / "missing", "--task_name", "sst2",
                      "--output_dir", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"run_glue.py: error: the model {tmp_path / 'missing'} does not exist: check the path (or give a hub name)"
    ]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# The table


def summary(model, **scores):
    tasks = {}
    for name, metrics in scores.items():
        devs = metrics if name == "mnli" else {name: metrics}
        tasks[name] = {"metrics": devs, "score": sum(glue.task_score(m) for m in devs.values()) / len(devs)}
    return {"model": model, "tasks": tasks}


def test_table_rows_columns_averages_and_published_rows(tmp_path):
    ours = summary("ours", sst2={"accuracy": 0.8}, rte={"accuracy": 0.6})
    partial = summary("partial", sst2={"accuracy": 0.9})
    table = glue_table.markdown_table([ours, partial])
    lines = table.splitlines()
    assert lines[0] == "| model | SST-2 | RTE | average (2 tasks) |"
    assert "| ours | 80.0 | 60.0 | 70.0 |" in lines
    assert "| partial | 90.0 |  |  |" in lines  # no average over a different set of tasks
    # published rows for the same columns, averaged the same way, each with its source
    row = next(line for line in lines if line.startswith("| DistilBERT 6L, dev"))
    assert row.endswith("| 91.3 | 59.9 | 75.6 |")
    assert any(line.startswith("[2] Sanh et al. 2019, DistilBERT (arXiv 1910.01108), Table 1") for line in lines)
    assert "general distillation only" not in table  # TinyBERT GD has neither task
    assert glue_table.markdown_table([ours], published=False).count("\n") == 2

    both = {"mnli-m": {"accuracy": 0.7}, "mnli-mm": {"accuracy": 0.72}}
    mnli = summary("m", mnli=both, mrpc={"f1": 0.8, "accuracy": 0.7})
    lines = glue_table.markdown_table([mnli]).splitlines()
    assert lines[0] == "| model | MRPC (F1/acc) | MNLI (m/mm) | average (2 tasks) |"
    assert "| m | 80.0/70.0 | 70.0/72.0 | 73.0 |" in lines
    assert any(line.startswith("| DistilBERT 4L, test (published") and "| 82.4 | 78.9/78.0 |" in line for line in lines)


def test_glue_table_script_names_rows_and_writes_markdown(tmp_path):
    for name, acc in (("a", 0.8), ("b", 0.7)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(summary(name, sst2={"accuracy": acc})))
    proc = run_script("scripts/glue_table.py", tmp_path / "a", f"student={tmp_path / 'b' / 'results.json'}",
                      "--no_published", "--output", tmp_path / "table.md", check=True)
    assert proc.stdout.splitlines()[2:] == ["| a | 80.0 | 80.0 |", "| student | 70.0 | 70.0 |"]
    assert (tmp_path / "table.md").read_text() == proc.stdout
    proc = run_main(glue_table.main, tmp_path / "missing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
