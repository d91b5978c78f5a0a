"""train.py end to end on CPU with tiny models: the loss falls, the run folder is complete, resume is exact."""

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT, input_error, run_script
from core import precision
from core.precision import bf16_pays
from train_helpers import make_teacher_dir, read_metrics, sentences, with_args, write_student_config


def test_short_run_learns_and_writes_a_complete_run_folder(tmp_path, base_argv):
    dump = tmp_path / "run"
    train.main(with_args(base_argv, dump_path=dump, n_epoch=3, learning_rate=1e-3))

    metrics = read_metrics(dump)
    first, last = metrics[min(metrics)], metrics[max(metrics)]
    assert last["loss"] < 0.95 * first["loss"], (first, last)
    assert last["cos"] < first["cos"] and last["mlm"] < first["mlm"]
    assert {"ce", "mlm", "cos", "lr", "tokens_per_s", "rss_gib", "empty_cache_calls"} <= set(last)
    assert last["step"] == 3 * 23  # 45 batches per epoch, 2 per optimizer step: 23 steps per epoch
    assert last["lr"] == 0.0  # linear decay reaches 0 at the last step

    params = json.loads((dump / "parameters.json").read_text())
    assert params["alpha_ce"] == 5.0 and params["special_tok_ids"]["mask_token"] == 4
    assert "repo_sha" in json.loads((dump / "git_log.json").read_text())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(dump / "log" / "train"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"losses/loss", "losses/ce", "learning_rate/lr", "global/tokens_per_s", "memory/empty_cache_calls"} <= tags
    assert len(events.Scalars("losses/loss")) == len(metrics)
    assert (dump / "checkpoint.pth").is_file() and (dump / "model_epoch_2.pth").is_file()
    assert "training finished" in (dump / "train.log").read_text()

    from transformers import AutoModelForMaskedLM, pipeline

    model = AutoModelForMaskedLM.from_pretrained(dump)
    assert type(model).__name__ == "DistilBertForMaskedLM" and model.config.n_layers == 2
    fill = pipeline("fill-mask", model=str(dump))
    assert len(fill("the city is on the [MASK] river")) == 5
    final = load_file(str(dump / "model.safetensors"))
    epoch_weights = torch.load(dump / "model_epoch_2.pth", weights_only=True)
    assert torch.equal(
        final["distilbert.transformer.layer.1.ffn.lin1.weight"],
        epoch_weights["distilbert.transformer.layer.1.ffn.lin1.weight"],
    )


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_losses(tmp_path, base_argv):
    argv = with_args(base_argv, n_epoch=2, log_interval=1, checkpoint_interval=8)
    train.main(with_args(argv, dump_path=tmp_path / "full"))
    # Killed at iteration 60. Checkpoints wait for the end of an accumulation cycle: epoch 1 starts at
    # iteration 46 and its cycles end at odd iterations, so the last one is at 57 (epoch 1, batch 12).
    train.main(with_args(argv, dump_path=tmp_path / "cut", stop_after_iter=60))
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    state = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert (state["progress"]["n_total_iter"], state["progress"]["epoch"]) == (57, 1)
    train.main(with_args(argv, dump_path=tmp_path / "cut", resume=True))

    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert sorted(full) == sorted(resumed) == list(range(1, 91))
    for it in range(58, 91):
        for k in ("loss", "ce", "mlm", "cos", "lr"):
            assert resumed[it][k] == full[it][k], (it, k)
    a, b = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "cut" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings(tmp_path, base_argv, capsys):
    argv = with_args(base_argv, dump_path=tmp_path / "run", checkpoint_interval=4, stop_after_iter=6)
    train.main(argv)
    with pytest.raises(SystemExit) as e:
        train.main(with_args(argv, resume=True, batch_size=8))
    assert e.value.code == 2 and "batch_size 16 -> 8" in capsys.readouterr().err


def test_fp16_falls_back_to_fp32_without_cuda(tmp_path, base_argv, caplog):
    train.main(with_args(base_argv, dump_path=tmp_path / "fp16", fp16=True, stop_after_iter=5))
    assert "--fp16 needs a CUDA GPU: training in fp32" in caplog.text
    params = json.loads((tmp_path / "fp16" / "parameters.json").read_text())
    assert params["fp16"] is True  # the flag as given, and beside it what ran and why
    assert params["precision"]["requested"] == "fp16" and params["precision"]["used"] == "fp32"
    assert params["precision"]["why"].startswith("--fp16 needs a CUDA GPU")


def test_bf16_on_a_cpu_trains_in_bf16_where_it_pays_and_in_fp32_where_not(tmp_path, base_argv, caplog, cpu_bf16):
    train.main(with_args(base_argv, dump_path=tmp_path / "run", bf16=True, stop_after_iter=10))
    m = read_metrics(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in m.values()) and len(m) == 2
    params = json.loads((tmp_path / "run" / "parameters.json").read_text())
    assert params["bf16"] is True and params["precision"]["requested"] == "bf16"  # the flag as given
    assert params["precision"]["used"] == ("bf16" if cpu_bf16 else "fp32")  # what ran, and how that was decided
    assert params["precision"]["cpu_bf16"] == f"DISTIL_CPU_BF16={'fast' if cpu_bf16 else 'slow'}"
    said = "DISTIL_CPU_BF16=slow says this CPU has no fast bf16, so training runs in fp32"
    assert (said in caplog.text) != cpu_bf16


def test_a_bad_distil_cpu_bf16_stops_train_py_in_one_line(tmp_path, base_argv, monkeypatch):
    monkeypatch.setenv(precision.PROBE_ENV, "maybe")
    line = input_error(train.main, with_args(base_argv, dump_path=tmp_path / "run", bf16=True, stop_after_iter=2))
    assert line == "train.py: error: DISTIL_CPU_BF16='maybe': give fast or slow (or leave it unset to measure)"
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.bf16_probe
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AVX2 is an x86 instruction set")
def test_avx2_kernels_have_no_fast_bf16():
    """PyTorch's and oneDNN's kernels both limited to AVX2 run as on a CPU without AVX-512: bf16 is emulated there
    (~75x slower than fp32, far beyond what a load can hide), and measuring it must report it slow.
    (ATEN_CPU_CAPABILITY alone leaves oneDNN's AMX matmuls in place.)"""
    code = "from core import precision; print(precision.cpu_bf16()); print(precision.cpu_description())"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    env.pop(precision.PROBE_ENV, None)  # measure
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    answer, description = proc.stdout.strip().splitlines()
    assert answer == "(False, 'measured')" and description.endswith("(AVX2)")


def test_the_bf16_decision_compares_the_fastest_run_of_each():
    assert bf16_pays([(1.0, 0.9), (1.2, 0.5)])  # 0.5 <= 0.8 x 1.0
    assert not bf16_pays([(1.0, 0.9)] * 5)  # never within 0.8x of fp32
    assert not bf16_pays([(1.0, 0.7), (0.5, 0.7)])  # a fast fp32 run later raises the bar: 0.7 > 0.8 x 0.5
    # under load a run can only be slower, so one quiet run of each decides however noisy the rest are
    assert bf16_pays([(9.0, 0.6), (1.0, 9.0), (5.0, 2.0)])

    assert bf16_pays([(1.0, 4.0), (1.0, 0.5)])  # one slow bf16 run alone is not enough to stop

    def emulated():
        yield 1.0, 40.0
        yield 1.0, 40.0
        raise AssertionError("a bf16 run far over fp32's time must end the measurement")

    assert not bf16_pays(emulated())


def test_non_finite_loss_stops_with_the_iteration(tmp_path, base_argv, capsys):
    argv = with_args(base_argv, dump_path=tmp_path / "nan", learning_rate=1e30, warmup_prop=0, log_interval=4)
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert e.value.code == 3
    assert err.startswith("train.py: error: the loss is not finite at iteration")
    first_bad = int(err.split("iteration ")[1].split()[0])
    assert 2 < first_bad <= 4  # the first optimizer step (after 2 batches) blows the weights up
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_git_log_outside_a_git_clone(tmp_path):
    shutil.copy(ROOT / "utils.py", tmp_path / "utils.py")
    code = "import utils, sys; utils.git_log(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, check=True, capture_output=True)
    record = json.loads((tmp_path / "git_log.json").read_text())
    assert record["repo_sha"] is None and "error" in record


@pytest.mark.slow
def test_steps_4_to_6_on_the_data_pipeline_output(tmp_path, tokenizer_dir, articles):
    """Text dump -> binarized_data.py -> token_counts.py -> extract -> train.py, as the README runs them."""

    dump_txt = tmp_path / "dump.txt"
    dump_txt.write_text("\n".join(sentences(articles)) + "\n")
    run_script(
        "scripts/binarized_data.py",
        "--file_path",
        dump_txt,
        "--tokenizer_type",
        "bert",
        "--tokenizer_name",
        tokenizer_dir,
        "--dump_file",
        tmp_path / "binarized_text",
        check=True,
    )
    data_file = tmp_path / "binarized_text.tiny-bert.pickle"
    teacher_dir, _, tok = make_teacher_dir(tmp_path / "teacher" / "tiny-bert", tokenizer_dir)
    counts_file = tmp_path / "token_counts.tiny-bert.pickle"
    run_script(
        "scripts/token_counts.py",
        "--data_file",
        data_file,
        "--token_counts_dump",
        counts_file,
        "--vocab_size",
        len(tok),
        check=True,
    )
    config = write_student_config(tmp_path / "student.json", len(tok))
    init = tmp_path / "init.safetensors"
    run_script(
        "scripts/extract/distilbert.py",
        "--model_name",
        teacher_dir,
        "--student_config",
        config,
        "--dump_checkpoint",
        init,
        check=True,
    )
    proc = run_script(
        "train.py",
        "--dump_path",
        tmp_path / "run",
        "--data_file",
        data_file,
        "--token_counts",
        counts_file,
        "--student_type",
        "distilbert",
        "--student_config",
        config,
        "--student_pretrained_weights",
        init,
        "--teacher_type",
        "bert",
        "--teacher_name",
        teacher_dir,
        "--mlm",
        "--n_epoch",
        "1",
        "--batch_size",
        "16",
        "--gradient_accumulation_steps",
        "2",
        "--log_interval",
        "10",
        "--num_workers",
        "1",
        check=True,
    )
    assert "student initialised from" in proc.stderr and "was made with tokenizer" not in proc.stderr
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) >= 4 and all(r["loss"] > 0 for r in metrics.values())
    assert (tmp_path / "run" / "model.safetensors").is_file()
