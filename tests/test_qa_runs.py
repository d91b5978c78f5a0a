"""run_qa.py end to end on tiny models and generated questions: a teacher saved then distilled, kept runs and the
logits cache, SQuAD v2, resume and overwrite, torchrun. The pieces are pinned in test_qa.py."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
)

from conftest import ROOT, input_error, run_main
from qa_helpers import qa_argv
from scripts import run_qa
from tasks import qa, runner
from tasks.runs import finite_check

# ----------------------------------------------------------------------------------------------------------
# End to end on tiny models


def answers_alone(folder, dev):
    """A saved QA model's answers to the dev questions, each window run on its own (no batch, no padding), with
    qa_argv's window settings."""
    model = AutoModelForQuestionAnswering.from_pretrained(str(folder)).eval()
    cols = qa.features(AutoTokenizer.from_pretrained(str(folder)), dev.examples, 64, 16, 24, training=False)
    with torch.no_grad():
        outs = [model(**{k: torch.tensor([cols[k][i]]) for k in ("input_ids", "token_type_ids", "attention_mask")})
                for i in range(len(cols["input_ids"]))]
    answers, _, _ = qa.postprocess(dev.examples, cols, [o.start_logits[0].numpy() for o in outs],
                                   [o.end_logits[0].numpy() for o in outs])
    return answers


@pytest.mark.slow
def test_a_qa_teacher_is_saved_then_distilled_into_a_student_and_runs_are_kept(tmp_path, tiny, syn_qa):
    out_t = tmp_path / "teacher"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, out_t, "--max_steps", 40, "--save_model"), check=True)
    run = out_t / "squad" / "lr0.001_seed42"
    result = json.loads((run / "results.json").read_text())
    dev = qa.load_split(str(syn_qa / "v1" / "dev.flat.json"), "dev", False, False).head(60)
    preds = json.loads((run / "predictions.json").read_text())
    nbest = json.loads((run / "nbest_predictions.json").read_text())
    assert set(preds) == set(nbest) == {e.id for e in dev.examples}
    assert result["metrics"]["dev"] == pytest.approx(qa.squad_metrics(dev.examples, preds))
    assert result["steps"] == 40 and result["hyper_parameters"]["eval_data"] == dev.digest
    assert not (run / "null_odds.json").exists()

    # the saved model reproduces its own predictions (transformers 5 has no question-answering pipeline)
    assert answers_alone(run / "model", dev) == preds

    # the same model, now distilled from the saved teacher; the teacher's logits kept, then read
    cache = tmp_path / "cache"
    kd = ("--teacher_name_or_path", run / "model", "--alpha_ce", 0.7, "--alpha_squad", 0.3, "--temperature", 3,
          "--teacher_logits_cache", cache, "--max_steps", 10)
    proc = run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "student", *kd), check=True)
    assert "took" in proc.stdout and len(list(cache.glob("*.npz"))) == 1
    student = json.loads((tmp_path / "student" / "results.json").read_text())
    assert student["teacher"]["alpha_ce"] == 0.7 and student["teacher"]["temperature"] == 3
    kept = run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "student", *kd), check=True)
    assert "kept" in kept.stdout and "fine-tuning" not in kept.stdout
    redo = run_main(run_qa.main, *qa_argv(tiny, syn_qa, tmp_path / "student", *kd, "--overwrite_output_dir"),
                    check=True)
    assert "read from" in redo.stdout
    hotter = [*kd[:7], 4, *kd[8:]]  # --temperature 4: another distillation, not the kept run
    line = input_error(run_qa.main, qa_argv(tiny, syn_qa, tmp_path / "student", *hotter))
    assert "was run with other settings" in line and "temperature" in line, line

    # a transfer set is data the run depends on: not the kept run; a damaged one is refused before anything runs
    transfer = ("--transfer_file", syn_qa / "v1" / "dev.flat.json")
    line = input_error(run_qa.main, qa_argv(tiny, syn_qa, tmp_path / "student", *kd, *transfer))
    assert "was run with other settings" in line and "transfer_data" in line, line
    (tmp_path / "broken.json").write_text("{not json")
    broken = ("--transfer_file", tmp_path / "broken.json")
    line = input_error(run_qa.main, qa_argv(tiny, syn_qa, tmp_path / "t2", *kd, *broken))
    assert "broken.json is not JSON" in line and not (tmp_path / "t2").exists(), line


@pytest.mark.slow
def test_squad_v2_writes_null_odds_and_scores_both_kinds_of_question(tmp_path, tiny, syn_qa):
    out = tmp_path / "v2"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, out, "--max_steps", 6, "--seeds", 2, version="v2"), check=True)
    summary = json.loads((out / "results.json").read_text())["tasks"]["squad_v2"]
    assert set(summary["metrics"]["dev"]) == {"exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"}
    for seed in (42, 43):
        run = out / "squad_v2" / f"lr0.001_seed{seed}"
        odds = json.loads((run / "null_odds.json").read_text())
        preds = json.loads((run / "predictions.json").read_text())
        assert set(odds) == set(preds) and len(preds) == 60
        assert all((preds[q] == "") == (odds[q] > 0) for q in preds)  # threshold 0
        assert all(math.isfinite(v) for v in odds.values())
    assert not any(Path(out).rglob("checkpoint-*"))


@pytest.mark.slow
def test_a_stopped_run_resumes_and_a_failed_overwrite_keeps_the_old_run(tmp_path, tiny, syn_qa, monkeypatch):
    out = tmp_path / "resume"
    argv = qa_argv(tiny, syn_qa, out, "--max_steps", 4, "--save_strategy", "steps", "--save_steps", 2)
    run = out / "squad" / "lr0.001_seed42"

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped after training, before the answers")

    with monkeypatch.context() as m:
        m.setattr(qa, "postprocess", stopped)
        with pytest.raises(RuntimeError):
            run_main(run_qa.main, *argv)
    assert (run / "checkpoint-4").is_dir() and not (run / "results.json").exists()
    resumed = run_main(run_qa.main, *argv, check=True)
    assert f"resuming from {run / 'checkpoint-4'}" in resumed.stdout, resumed.stdout
    first = (run / "results.json").read_text()
    assert json.loads(first)["steps"] == 4 and not list(run.glob("checkpoint-*"))

    with monkeypatch.context() as m:  # a replacement that fails puts the finished run back as it was
        m.setattr(qa, "postprocess", stopped)
        with pytest.raises(RuntimeError):
            run_main(run_qa.main, *argv, "--overwrite_output_dir")
    assert (run / "results.json").read_text() == first
    assert not any(p.name.endswith(("overwrite", "aside")) for p in run.parent.iterdir()), list(run.parent.iterdir())


@pytest.mark.slow
def test_torchrun_distils_on_two_processes_and_answers_in_order(tmp_path, tiny, syn_qa):
    teacher = tmp_path / "teacher"
    run_main(run_qa.main, *qa_argv(tiny, syn_qa, teacher, "--max_steps", 6, "--save_model"), check=True)
    teacher_model = teacher / "squad" / "lr0.001_seed42" / "model"
    out = tmp_path / "ddp"
    argv = qa_argv(tiny, syn_qa, out, "--num_train_epochs", 1, "--save_model", "--teacher_name_or_path",
                   teacher_model, "--teacher_logits_cache", "off")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "scripts" / "run_qa.py"), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "squad" / "lr0.001_seed42"
    result = json.loads((run / "results.json").read_text())
    assert result["hyper_parameters"]["world_size"] == 2 and result["teacher"]["path"] == str(teacher_model)
    assert proc.stdout.count("squad lr 0.001 seed 42: exact_match") == 1  # one process reports
    # the two processes' answers, gathered, are each question's own: the saved student gives them alone
    dev = qa.load_split(str(syn_qa / "v1" / "dev.flat.json"), "dev", False, False).head(60)
    assert answers_alone(run / "model", dev) == json.loads((run / "predictions.json").read_text())


# ----------------------------------------------------------------------------------------------------------
# The intermediate losses and TinyBERT's two stages, through the one task runner


@pytest.mark.slow
def test_qa_distils_hidden_states_and_relations_in_two_stages(tmp_path, tiny, syn_qa, monkeypatch):
    """A QA teacher 1.5 times as wide: --alpha_hidden (through the projection) and --alpha_att train alone for an
    epoch, then the span KD and the span loss for another, the second stage on the teacher's cached logits."""
    from transformers import BertConfig, BertForQuestionAnswering, TrainerCallback

    tok = AutoTokenizer.from_pretrained(str(tiny))
    torch.manual_seed(5)
    wide = tmp_path / "wide"
    BertForQuestionAnswering(BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=4,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=64)).save_pretrained(wide)
    tok.save_pretrained(wide)

    class Logs(TrainerCallback):
        steps = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.steps.append(sorted(k for k in logs if k.startswith("loss_")))

    monkeypatch.setattr(runner, "callbacks", lambda: [finite_check(), Logs()])
    out = tmp_path / "kd"
    proc = run_main(run_qa.main, *qa_argv(tiny, syn_qa, out, "--teacher_name_or_path", wide, "--alpha_hidden", 1,
                                          "--alpha_att", 1, "--intermediate_epochs", 1, "--num_train_epochs", 1,
                                          "--max_train_samples", 40, "--logging_steps", 1,
                                          "--teacher_logits_cache", tmp_path / "cache"), check=True)
    run = json.loads((out / "squad" / "lr0.001_seed42" / "results.json").read_text())
    half = round(run["steps"] / 2)  # the first stage's steps, as the Trainer counts them
    assert run["steps"] == len(Logs.steps) and half > 0
    assert all(s == ["loss_att", "loss_hidden"] for s in Logs.steps[:half]), Logs.steps
    assert all(s == ["loss_ce", "loss_task"] for s in Logs.steps[half:]), Logs.steps
    record = run["teacher"]
    assert record["alpha_hidden"] == 1 and record["alpha_att"] == 1 and record["intermediate_epochs"] == 1
    assert record["teacher_logits"] == "every step of the first stage, computed once for the second"
    assert "took" in proc.stdout and len(list((tmp_path / "cache").glob("*.npz"))) == 1


@pytest.mark.parametrize("flags, expected", [
    (["--alpha_hidden", -1], "--alpha_hidden -1.0: give a finite weight of at least 0"),
    (["--intermediate_epochs", 1], "--intermediate_epochs needs an intermediate loss for its first stage"),
    (["--alpha_att", 1, "--intermediate_epochs", 1, "--alpha_ce", 0, "--alpha_squad", 0],
     "--intermediate_epochs: the second stage trains --alpha_ce and --alpha_squad, both 0"),
    (["--alpha_ce", 0], "--alpha_ce 0 and no --alpha_cos/--alpha_att/--alpha_vv/--alpha_hidden: the teacher would "
                        "teach nothing"),
    (["--alpha_ce", 0, "--alpha_att", 1, "--transfer_file", "t.json"], "--transfer_file needs --alpha_ce above 0"),
])
def test_bad_qa_intermediate_flags_are_refused_in_one_line(tmp_path, tiny, syn_qa, flags, expected):
    line = input_error(run_qa.main, qa_argv(tiny, syn_qa, tmp_path / "o", "--teacher_name_or_path", tiny, *flags))
    assert expected in line, line
    assert not (tmp_path / "o").exists()


def test_a_qa_intermediate_flag_without_a_teacher_is_refused(tmp_path, tiny, syn_qa):
    line = input_error(run_qa.main, qa_argv(tiny, syn_qa, tmp_path / "o", "--alpha_hidden", 1))
    assert "--alpha_hidden needs --teacher_name_or_path" in line, line
