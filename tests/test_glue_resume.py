"""run_glue.py's interrupted runs: resumed only under the same settings and from a complete checkpoint; a run
stopped after its last checkpoint trains no step more."""

import json

import pytest

from conftest import input_error
from glue_helpers import custom_args, glue_main
from scripts import run_glue
from tasks import runner

# ----------------------------------------------------------------------------------------------------------
# Interrupted runs: resumed only under the same settings, from a complete checkpoint


def interrupt_after_save(monkeypatch, step):
    """Stop the next run with a KeyboardInterrupt right after it has saved the checkpoint of `step`."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    real = runner.callbacks
    monkeypatch.setattr(runner, "callbacks", lambda: [*real(), Stop()])


def stopped_run(out, teacher, custom_task, monkeypatch, step, *save):
    """A 4-step run into `out` with the checkpoint flags `save`, stopped right after saving the checkpoint of
    `step`: (its args, its folder)."""
    args = custom_args(teacher, custom_task, out, "--save_strategy", "steps", *save)
    args[args.index("--max_steps") + 1] = 4
    interrupt_after_save(monkeypatch, step)
    with pytest.raises(KeyboardInterrupt):
        glue_main(*args)
    monkeypatch.undo()
    return args, out / "custom" / "lr2e-05_seed42"


@pytest.fixture
def interrupted(tmp_path, teacher, custom_task, monkeypatch):
    """A run stopped after its checkpoints of steps 1 and 2 (of 4): (its args, its folder)."""
    args, run = stopped_run(tmp_path / "out", teacher, custom_task, monkeypatch, 2, "--save_steps", 1,
                            "--save_total_limit", 2)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    return args, run


def test_an_interrupted_run_resumes_under_its_own_settings_only(interrupted, capsys):
    args, run = interrupted
    line = input_error(run_glue.main, [*args, "--weight_decay", 0.1])
    assert "was interrupted under other settings (weight_decay 0.01 there, 0.1 now)" in line
    glue_main(*args)
    assert f"resuming from {run / 'checkpoint-2'}" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["steps"] == 4
    assert not list(run.glob("checkpoint-*"))  # removed once the run has its results


def test_a_run_stopped_after_its_last_checkpoint_trains_no_step_more(
    tmp_path, teacher, custom_task, monkeypatch, capsys
):
    """The Trainer resumed from a checkpoint of the last step takes one step more; the run restores it instead
    and scores exactly what an unstopped run scores."""
    args, run = stopped_run(tmp_path / "out", teacher, custom_task, monkeypatch, 4, "--save_steps", 2)
    assert (run / "checkpoint-4").is_dir() and not (run / "results.json").exists()
    glue_main(*args)
    assert f"{run / 'checkpoint-4'} is the run's last step: nothing left to train" in capsys.readouterr().out
    resumed = json.loads((run / "results.json").read_text())
    whole = custom_args(teacher, custom_task, tmp_path / "whole", "--save_strategy", "steps", "--save_steps", 2)
    whole[whole.index("--max_steps") + 1] = 4
    glue_main(*whole)
    unstopped = json.loads((tmp_path / "whole" / "custom" / "lr2e-05_seed42" / "results.json").read_text())
    assert resumed["steps"] == unstopped["steps"] == 4
    assert resumed["metrics"] == unstopped["metrics"]


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("optimizer.pt", "it has no optimizer.pt"),
        ("scheduler.pt", "it has no scheduler.pt"),
        ("trainer_state.json", "it has no trainer_state.json"),
        ("truncate model.safetensors", "its model.safetensors is truncated"),
        ("truncate optimizer.pt", "its optimizer.pt is truncated"),
    ],
)
def test_a_checkpoint_cut_short_is_not_resumed(interrupted, damage, problem, capsys):
    args, run = interrupted
    newest = run / "checkpoint-2"
    if damage.startswith("truncate "):
        path = newest / damage.split()[1]
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        (newest / damage).unlink()
    glue_main(*args)
    out = capsys.readouterr().out
    assert f"checkpoint-2 is incomplete ({problem}) and is removed: resuming from {run / 'checkpoint-1'}" in out
    assert json.loads((run / "results.json").read_text())["steps"] == 4


def test_no_complete_checkpoint_or_no_settings_record_starts_over(interrupted, capsys):
    args, run = interrupted
    for checkpoint in run.glob("checkpoint-*"):
        (checkpoint / "optimizer.pt").unlink()
    glue_main(*args)
    assert "and is removed: starting over" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["steps"] == 4
