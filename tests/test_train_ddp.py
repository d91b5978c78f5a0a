"""Multi-process training with torchrun (gloo on CPU), and train.sh as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_parameters(run_files, tmp_path):
    _, argv = run_files
    dump = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "train.py"),
        *argv,
        "--dump_path",
        str(dump),
        "--n_epoch",
        "2",
        "--checkpoint_interval",
        "10",
        *["--alpha_att", "1", "--alpha_vv", "1", "--teacher_layer", "3"],  # the relation losses under DDP too
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed: world size 2, backend gloo" in proc.stderr
    log = (dump / "train.log").read_text()
    assert "student parameters identical on all 2 ranks" in log
    params = json.loads((dump / "parameters.json").read_text())
    assert params["world_size"] == 2
    # each rank sees half of the 719 sequences: 23 batches of 16 per epoch, 12 optimizer steps
    last = [json.loads(line) for line in (dump / "metrics.jsonl").read_text().splitlines()][-1]
    assert (last["iter"], last["step"]) == (46, 24)
    assert last["att"] > 0 and last["vv"] > 0 and "vv" in log
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(dump)


@pytest.mark.slow
def test_train_sh_runs_the_reference_setup(run_files, tmp_path):
    folder, argv = run_files
    config = argv[argv.index("--student_config") + 1]
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        TEACHER=argv[argv.index("--teacher_name") + 1],  # a folder named tiny-bert, like the data run_files
        DATA_DIR=str(folder / "data"),
        STUDENT_CONFIG=config,
        INIT=str(tmp_path / "init.safetensors"),
        DUMP_PATH=str(tmp_path / "run"),
    )
    extra = [
        "--n_epoch",
        "1",
        "--batch_size",
        "16",
        "--gradient_accumulation_steps",
        "2",
        "--num_workers",
        "0",
        "--log_interval",
        "10",
    ]
    proc = subprocess.run(
        ["bash", str(ROOT / "train.sh"), *extra], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copied teacher layers [0, 3] into a 2-layer student" in proc.stdout  # extraction ran first
    assert "--fp16 needs a CUDA GPU" in proc.stderr  # the CPU fallback, announced
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert (params["alpha_ce"], params["alpha_mlm"], params["alpha_cos"], params["batch_size"]) == (5.0, 2.0, 1.0, 16)
    assert params["student_pretrained_weights"] == env["INIT"] and params["mlm"] is True
    assert (tmp_path / "run" / "model.safetensors").is_file()

    bad = subprocess.run(
        ["bash", str(ROOT / "train.sh")], capture_output=True, text=True, env=dict(env, STUDENT="huge")
    )
    expected = "STUDENT must be small (4 layers), base (6 layers), cased, multilingual, roberta or gpt2"
    assert bad.returncode == 2 and expected in bad.stderr

    # OBJECTIVE picks the losses: MiniLM's flag set, and MiniLMv2's 48 relation heads, too many for this student
    run = lambda objective, *args: subprocess.run(  # noqa: E731
        ["bash", str(ROOT / "train.sh"), "--force", *extra, *args], capture_output=True, text=True, timeout=300,
        env=dict(env, OBJECTIVE=objective))
    proc = run("minilm", "--stop_after_iter", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert [params[f"alpha_{k}"] for k in ("ce", "mlm", "cos", "att", "vv", "qq")] == [0, 0, 0, 1.0, 1.0, 0]
    proc = run("minilmv2")
    assert proc.returncode == 2
    assert "--relation_heads 48 does not divide the student's attention width 32" in proc.stderr
    proc = run("tinybert")
    assert proc.returncode == 2 and "OBJECTIVE must be distilbert, minilm or minilmv2" in proc.stderr
