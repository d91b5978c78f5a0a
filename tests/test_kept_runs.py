"""A kept run answers a command only when it holds everything the command asks for (issue 46, class 2). The
flags that only add an output to a run (tasks/glue_runs.OUTPUTS): --save_model, in run_glue.py and run_qa.py.
A finished run without the model is trained again with the same settings to make it, and gives the same
results; a run that has it is kept."""

import json

from conftest import run_main
from scripts import run_glue, run_qa
from tasks import glue_runs
from test_glue import FAST, custom_task, teacher  # noqa: F401 (fixtures)
from test_qa import letters, syn_qa, tiny  # noqa: F401 (fixtures)
from test_qa_runs import qa_argv


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


def test_run_glue_save_model_on_a_kept_run_makes_the_model(tmp_path, teacher, custom_task, capsys):  # noqa: F811
    argv = ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv", "--validation_file",
            custom_task / "dev.csv", "--output_dir", tmp_path / "out", "--max_steps", 2, *FAST]  # fmt: skip
    check_model_made_then_kept(run_glue.main, argv, tmp_path / "out" / "custom" / "lr2e-05_seed42", capsys)


def test_run_qa_save_model_on_a_kept_run_makes_the_model(tmp_path, tiny, syn_qa, capsys):  # noqa: F811
    argv = qa_argv(tiny, syn_qa, tmp_path / "qa", "--max_steps", 3)
    check_model_made_then_kept(run_qa.main, argv, tmp_path / "qa" / "squad" / "lr0.001_seed42", capsys)


def test_a_model_folder_without_weights_is_not_a_kept_model(tmp_path):
    has_model = glue_runs.OUTPUTS["model"][1]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert not has_model(tmp_path)  # a save cut short: the config alone
    (tmp_path / "model" / "model.safetensors").write_bytes(b"x")
    assert has_model(tmp_path)
