"""benchmarks/deploy_table.py on a deploy_models.sh folder made here with given figures: each real model's scores
come from its run and its export, its speed from the benchmark at all cores, the student beside its teacher,
and each goal met or missed by the measured margin."""

import json

from benchmarks import deploy_table
from conftest import input_error, run_main


def row(model, runtime, throughput, threads=2, **more):
    return {"model": model, "runtime": runtime, "threads": threads, "throughput": throughput, "bytes": 2**20 * 10,
            "latency_32_ms": 1.0, "latency_128_ms": 4.0, **more}


def deploy_folder(tmp_path):
    out = tmp_path / "deploy_run"
    for name, score, fp32, int8 in (("sst2_teacher", 92.43, 92.43, 91.97), ("sst2_student", 87.0, 87.0, 85.5)):
        run = tmp_path / name / "sst2" / "lr_seed" / "model"
        run.mkdir(parents=True)
        (run.parent / "results.json").write_text(json.dumps({"score": score}))
        (out / "onnx" / name).mkdir(parents=True)
        (out / "onnx" / name / "export.json").write_text(json.dumps({
            "source": str(run), "dev": {"fp32": {"score": fp32}, "int8": {"score": int8}},
            "int8": {"dev_points_lost": fp32 - int8, "argmax_agreement_with_fp32": 0.975}}))
    rows = [row("sst2_teacher", "eager", 10.0), row("sst2_student", "eager", 150.0),
            row("sst2_student", "eager", 99.0, threads=1),  # one thread: not the table's
            row("task-student", "onnx", 130.0, flops_speedup=16.2), row("mpnet-base", "onnx", 10.0),
            row("distilbert-small", "onnx", 100.0, flops_speedup=3.0), row("bert-base", "onnx", 40.0),
            row("distilbert-small", "onnx-int8", 250.0)]
    bench = {"cpu": "a CPU", "sentences": "SST-2 dev", "settings": {"batch": 32}, "rows": rows}
    (out / "inference.json").write_text(json.dumps(bench))
    return out


def test_the_tables_read_the_runs_the_exports_and_the_benchmark(tmp_path):
    out = run_main(deploy_table.main, deploy_folder(tmp_path), check=True).stdout
    assert "| sst2_teacher | PyTorch fp32 | 92.43 | 10 | 1.0 / 4.0 | 10 |  |" in out
    assert out.index("| sst2_teacher |") < out.index("| sst2_student |")  # each teacher above its student
    assert "| sst2_student | PyTorch fp32 | 87.00 | 10 | 1.0 / 4.0 | 150 | 15.0x |" in out  # all cores, not 99
    assert "| 3x384 task student / MPNet teacher, same runtime | onnx | 13.00x | 12x | 16.2x | met |" in out
    small = "| DistilBERT_small (4 x 768) / bert-base, same runtime | onnx"
    assert f"{small} | 2.50x | 2.8x | 3.0x | missed by 0.30x |" in out
    assert "| ONNX int8 / ONNX fp32, DistilBERT_small | onnx-int8 | 2.50x | 2x |  | met |" in out
    assert "- sst2_teacher: int8 loses +0.46 dev points against ONNX fp32 (at most 1: met)" in out
    assert "- sst2_student: int8 loses +1.50 dev points against ONNX fp32 (at most 1: missed by 0.50 points)" in out
    assert "agrees with fp32 on 97.5% of predictions" in out


def test_a_folder_without_the_benchmark_fails_in_one_line(tmp_path):
    line = input_error(deploy_table.main, [str(tmp_path)])
    assert line == (f"deploy_table.py: error: {tmp_path}: no inference.json (run benchmarks/deploy_models.sh "
                    f"{tmp_path} first)")
