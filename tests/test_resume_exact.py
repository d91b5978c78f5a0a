"""A run killed mid-epoch and resumed ends with exactly the weights of the same run uninterrupted, whatever the
sampler: run_glue.py fine-tuning and distillation, and run_qa.py, with the default
length-grouped batches and with random ones. Before, the length-grouped order of the resumed epoch came from
the global RNG and differed."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_main
from glue_helpers import FAST
from qa_helpers import qa_argv
from scripts import run_glue, run_qa
from tasks import runner


def killed_at(monkeypatch, step):
    """The next run (run_glue.py or run_qa.py) stops (KeyboardInterrupt) right after saving the checkpoint of
    `step`."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    real = runner.callbacks  # both scripts' runs take theirs from the one task runner
    monkeypatch.setattr(runner, "callbacks", lambda: [*real(), Stop()])


def weights(out, task, run):
    return load_file(str(out / task / run / "model" / "model.safetensors"))


def resumed_equals_whole(tmp_path, monkeypatch, script, argv_for, task, run, kill_at, steps=None):
    whole = tmp_path / "whole"
    run_main(script.main, *argv_for(whole), check=True)
    cut = tmp_path / "cut"
    killed_at(monkeypatch, kill_at)
    with pytest.raises(KeyboardInterrupt):
        script.main([str(a) for a in argv_for(cut)])
    monkeypatch.undo()
    assert (cut / task / run / f"checkpoint-{kill_at}").is_dir() and not (cut / task / run / "results.json").exists()
    proc = run_main(script.main, *argv_for(cut), check=True)
    state = json.loads((cut / task / run / "results.json").read_text())
    assert state["steps"] == (steps or int(argv_for(cut)[argv_for(cut).index("--max_steps") + 1]))
    assert f"resuming from {cut / task / run / f'checkpoint-{kill_at}'}" in proc.stdout
    a, b = weights(whole, task, run), weights(cut, task, run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(
        a[k], b[k])][:3]


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["group_by_length", "random"])
@pytest.mark.parametrize("distil", [False, True])
def test_run_glue_resumed_mid_epoch_is_the_run_uninterrupted(tmp_path, monkeypatch, teacher, bpe_teacher,
                                                             custom_task, sampling, distil):
    def argv_for(out):  # 48 rows, batches of 8: 6 steps an epoch; 14 steps; killed at step 8, in epoch 1
        extra = ["--teacher_name_or_path", bpe_teacher, "--alpha_ce", 0.5, "--alpha_task", 0.5,
                 "--unlabeled_samples", 8] if distil else []
        return ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv", "--validation_file",
                custom_task / "dev.csv", "--output_dir", out, "--max_train_samples", 40, "--max_steps", 14,
                "--per_device_train_batch_size", 8, "--train_sampling_strategy", sampling, "--save_model",
                *FAST[:2], "--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps", 8, *extra]

    resumed_equals_whole(tmp_path, monkeypatch, run_glue, argv_for, "custom", "lr2e-05_seed42", 8)


@pytest.mark.slow
@pytest.mark.parametrize("two_stages", [False, True])
def test_a_run_with_a_hidden_state_projection_resumes_exactly(tmp_path, monkeypatch, teacher, custom_task,
                                                              two_stages):
    """--alpha_hidden from a wider teacher: the projection trained with the student is in the checkpoint, so
    the resumed run goes on with it (a new random one would change every later step). With two stages, killed
    in the second: it goes on with its own optimizer state and schedule, as it would have."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from train_helpers import tiny_bert_config

    tok = AutoTokenizer.from_pretrained(str(teacher))
    config = tiny_bert_config(len(tok), layers=4, hidden=48)
    config.update(dict(id2label={0: "born", 1: "other"}, label2id={"born": 0, "other": 1}))
    torch.manual_seed(4)
    wide = tmp_path / "wide"
    BertForSequenceClassification(config).save_pretrained(wide)
    tok.save_pretrained(wide)

    # 40 rows, batches of 8: 5 steps an epoch. One stage: 8 steps, killed at step 4; two: 5 + 5, killed in the second
    length = ["--intermediate_epochs", 1, "--num_train_epochs", 1] if two_stages else ["--max_steps", 8]
    kill_at = 7 if two_stages else 4

    def argv_for(out):
        return ["--model_name_or_path", teacher, "--train_file", custom_task / "train.csv", "--validation_file",
                custom_task / "dev.csv", "--output_dir", out, "--max_train_samples", 40, *length,
                "--per_device_train_batch_size", 8, "--save_model", *FAST[:2], "--disable_tqdm", "true",
                "--save_strategy", "steps", "--save_steps", kill_at, "--teacher_name_or_path", wide,
                "--alpha_hidden", 1, "--learning_rate", 1e-3]

    resumed_equals_whole(tmp_path, monkeypatch, run_glue, argv_for, "custom", "lr0.001_seed42", kill_at,
                         10 if two_stages else 8)


@pytest.mark.slow
def test_run_qa_resumed_mid_epoch_is_the_run_uninterrupted(tmp_path, monkeypatch, tiny, syn_qa):
    def argv_for(out):
        argv = qa_argv(tiny, syn_qa, out, "--max_steps", 16, "--save_model", "--per_device_train_batch_size", 8,
                       "--max_train_samples", 24)  # a few steps an epoch: killed in a later epoch
        i = argv.index("--save_strategy")
        return argv[:i] + ["--save_strategy", "steps", "--save_steps", 10] + argv[i + 2:]

    resumed_equals_whole(tmp_path, monkeypatch, run_qa, argv_for, "squad", "lr0.001_seed42", 10)
