"""Task distillation runs that take longer: torchrun on 2 processes against the cached logits, a resume from a
checkpoint; and the student folder a task run starts from (scripts/extract). The pieces: test_task_distill.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    BertTokenizer,
)

from conftest import ROOT, input_error
from glue_helpers import FAST, glue_main, task_argv
from scripts.extract import distilbert as extract
from tasks import runner
from train_helpers import make_headless_teacher_dir, write_student_config

# ----------------------------------------------------------------------------------------------------------
# torchrun and resume, with a teacher


@pytest.mark.slow
def test_distillation_under_torchrun_matches_its_cached_logits_and_writes_once(
    tmp_path, teacher, task_teacher, custom_task
):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "scripts/run_glue.py"),
        "--model_name_or_path",
        str(teacher),
        "--train_file",
        str(custom_task / "train.csv"),
        "--validation_file",
        str(custom_task / "dev.csv"),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "25",
        "--num_train_epochs",
        "1",
        "--teacher_name_or_path",
        str(task_teacher),
        "--max_train_samples",
        "150",
        "--unlabeled_samples",
        "50",
        *FAST,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "custom" / "lr2e-05_seed42" / "results.json").read_text())
    # 150 labelled + 50 unlabelled, 25 a process, 2 processes: 4 steps; each process computed half the logits
    assert run["hyper_parameters"]["world_size"] == 2 and run["steps"] == 4
    assert run["teacher"]["teacher_logits"] == "computed once"
    assert proc.stdout.count("custom accuracy") == 1


def test_a_distillation_interrupted_resumes_from_its_checkpoint(
    tmp_path, teacher, task_teacher, custom_task, monkeypatch
):
    from transformers import TrainerCallback

    class StopAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt

    args = task_argv(teacher, custom_task, tmp_path / "out", "--max_steps", 4, "--save_strategy", "steps",
                     "--save_steps", 2, "--report_to", "none", "--disable_tqdm", "true", "--teacher_name_or_path",
                     task_teacher, "--alpha_cos", 0.5)
    real = runner.callbacks
    monkeypatch.setattr(runner, "callbacks", lambda: [*real(), StopAfterFirstCheckpoint()])
    with pytest.raises(KeyboardInterrupt):
        glue_main(*args)
    run_dir = tmp_path / "out" / "custom" / "lr2e-05_seed42"
    assert (run_dir / "checkpoint-2").is_dir() and not (run_dir / "results.json").exists()
    monkeypatch.setattr(runner, "callbacks", real)
    with pytest.raises(SystemExit):  # another teacher weight: not resumed
        glue_main(*args[:-1], 0.7)
    glue_main(*args)
    run = json.loads((run_dir / "results.json").read_text())
    assert run["steps"] == 4 and run["teacher"]["alpha_cos"] == 0.5


# ----------------------------------------------------------------------------------------------------------
# A student folder extracted from a headless BERT, then distilled


def test_a_student_folder_from_a_headless_bert_and_a_random_one(tmp_path, tokenizer_dir, capsys):
    from transformers import DistilBertForMaskedLM

    headless, bert, tok = make_headless_teacher_dir(tmp_path / "headless", tokenizer_dir, layers=4)
    config = write_student_config(tmp_path / "student.json", len(tok))
    extract.main(
        [
            "--model_name",
            str(headless),
            "--student_config",
            str(config),
            "--dump_checkpoint",
            str(tmp_path / "s.safetensors"),
            "--save_pretrained",
            str(tmp_path / "student"),
        ]
    )
    printed = capsys.readouterr().out
    assert "no masked-LM head: the student's head is left at random initialisation" in printed
    student = DistilBertForMaskedLM.from_pretrained(tmp_path / "student").eval()
    ids = torch.tensor([tok("the city was born")["input_ids"]])
    with torch.no_grad():  # the student's embeddings are the teacher's (token type 0 folded in)
        s_emb = student.distilbert.embeddings(ids)
        t_emb = bert.embeddings(ids)
    torch.testing.assert_close(s_emb, t_emb, rtol=1e-5, atol=1e-5)
    meta = json.loads((tmp_path / "student" / "extraction.json").read_text())
    assert meta["teacher_mlm_head"] is False and meta["teacher_layers"] == "0,3"
    assert BertTokenizer.from_pretrained(str(tmp_path / "student")).get_vocab() == tok.get_vocab()
    # the no-pretraining baseline: the same shape, none of the teacher's weights
    extract.main(
        [
            "--model_name",
            str(headless),
            "--student_config",
            str(config),
            "--dump_checkpoint",
            str(tmp_path / "r.safetensors"),
            "--save_pretrained",
            str(tmp_path / "random"),
            "--random_init",
        ]
    )
    rand = DistilBertForMaskedLM.from_pretrained(tmp_path / "random")
    assert not torch.allclose(rand.distilbert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    assert "no teacher layers" in capsys.readouterr().out
    line = input_error(extract.main,
        [
            "--model_name",
            headless,
            "--student_config",
            config,
            "--random_init",
            "--layers",
            "0,1",
            "--dump_checkpoint",
            tmp_path / "x.safetensors",
        ],
    )
    assert "--random_init copies no layers" in line and not (tmp_path / "x.safetensors").exists()
