"""A kept run answers a command only when it holds everything the command asks for. The
flags that only add an output to a run (tasks/OUTPUTS): --save_model, in run_glue.py and run_qa.py.
A finished run without the model is trained again with the same settings to make it, and gives the same
results; a run that has it is kept."""

import json
from types import SimpleNamespace

from conftest import run_main
from glue_helpers import FAST
from qa_helpers import qa_argv
from scripts import run_glue, run_qa
from tasks import glue_family, qa_family
from tasks.runs import OUTPUTS


def check_model_made_then_kept(main, argv, run, capsys):
    run_main(main, *argv, check=True)
    before = json.loads((run / "results.json").read_text())
    assert not (run / "model").exists()
    proc = run_main(main, *argv, "--save_model", check=True)
    assert "was run without --save_model (its output is not there): training it again" in proc.stdout
    assert (run / "model" / "config.json").is_file() and (run / "model" / "README.md").is_file()
    after = json.loads((run / "results.json").read_text())
    assert after["metrics"] == before["metrics"] and after["steps"] == before["steps"]  # the same run, again
    assert not [p.name for p in run.parent.iterdir() if p.name.startswith(".")]  # no aside folder left
    again = run_main(main, *argv, "--save_model", check=True)
    assert "kept" in again.stdout and "training it again" not in again.stdout


def test_run_glue_save_model_on_a_kept_run_makes_the_model(tmp_path, teacher, custom_task, capsys):
    argv = ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv", "--validation_file",
            custom_task / "dev.csv", "--output_dir", tmp_path / "out", "--max_steps", 2, *FAST]
    check_model_made_then_kept(run_glue.main, argv, tmp_path / "out" / "custom" / "lr2e-05_seed42", capsys)


def test_run_qa_save_model_on_a_kept_run_makes_the_model(tmp_path, tiny, syn_qa, capsys):
    argv = qa_argv(tiny, syn_qa, tmp_path / "qa", "--max_steps", 3)
    check_model_made_then_kept(run_qa.main, argv, tmp_path / "qa" / "squad" / "lr0.001_seed42", capsys)


def test_a_model_folder_without_weights_is_not_a_kept_model(tmp_path):
    has_model = OUTPUTS["model"][1]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert not has_model(tmp_path)  # a save cut short: the config alone
    (tmp_path / "model" / "model.safetensors").write_bytes(b"x")
    assert has_model(tmp_path)


def test_one_output_folder_for_both_scripts_averages_only_the_classification_tasks(tmp_path, tiny, syn_qa,
                                                                                    custom_task):
    """An output folder's results.json never averages SQuAD F1 with an accuracy."""
    out = tmp_path / "out"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, out, "--max_steps", 2), check=True)
    run_main(run_glue.main, "--model_name_or_path", tiny, "--train_file", custom_task / "train.csv",
             "--validation_file", custom_task / "dev.csv", "--output_dir", out, "--max_steps", 2, *FAST,
             check=True)
    summary = json.loads((out / "results.json").read_text())
    assert sorted(summary["tasks"]) == ["custom", "squad"] and summary["tasks"]["squad"]["kind"] == "question-answering"
    assert summary["average"] == summary["tasks"]["custom"]["score"] and summary["average_of"] == ["custom"]
    older = {"squad": {"score": 50.0, "metrics": {"dev": {"exact_match": 0.4, "f1": 0.5}}}}  # QA, no kind
    assert glue_family.glue_average(older) == (None, [])  # told by its metrics


def test_run_qa_pad_to_max_length_pads_the_windows_it_records(tmp_path, tiny, syn_qa):
    """--pad_to_max_length was recorded as on and did nothing: now every batch is padded to
    the windows' length, in training and evaluation, and the answers are those of the unpadded run."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    rows = [{"input_ids": [2, 7, 3], "attention_mask": [1, 1, 1]}, {"input_ids": [2, 3], "attention_mask": [1, 1]}]
    half = SimpleNamespace(fp16=False, bf16=False)

    def collator(pad):
        family = qa_family.QAFamily(SimpleNamespace(pad_to_max_length=pad))
        family.max_length = 64
        return family.collator(tok, half)

    padded = collator(True)(rows)
    assert padded["input_ids"].shape == (2, 64) and padded["attention_mask"][1].sum() == 2
    assert collator(False)(rows)["input_ids"].shape == (2, 3)
    for name, extra in (("plain", ()), ("padded", ("--pad_to_max_length",))):
        run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / name, "--max_steps", 2, *extra), check=True)
    runs = [json.loads((tmp_path / n / "squad" / "lr0.001_seed42" / "results.json").read_text())
            for n in ("plain", "padded")]
    assert runs[1]["hyper_parameters"]["pad_to_max_length"] is True
    preds = [json.loads((tmp_path / n / "squad" / "lr0.001_seed42" / "predictions.json").read_text())
             for n in ("plain", "padded")]
    same = sum(preds[0][k] == preds[1][k] for k in preds[0]) / len(preds[0])
    assert preds[0].keys() == preds[1].keys() and same >= 0.9  # padding is masked out (up to float rounding)
